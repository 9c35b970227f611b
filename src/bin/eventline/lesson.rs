//! `eventline lesson IDEA` (and `--list`): one of the seed's ideas, run and checked live.
//!
//! It must never judge a lesson itself: `eventline::lessons` returns the verdict; this prints
//! it and maps it to the exit status (0 only if the claim held, 1 with the reason otherwise).

use crate::{Exit, Globals};

pub async fn run(
    options: eventline::lessons::LessonOptions,
    globals: Globals,
) -> anyhow::Result<Exit> {
    let Some(idea) = options.idea.filter(|_| !options.list) else {
        print!("{}", eventline::lessons::list());
        return Ok(Exit::Success);
    };
    let verdict = eventline::lessons::run(&globals.config, idea, &options).await?;
    if verdict.held {
        println!("HELD: {}\n  {}", idea.claim(), verdict.evidence);
        Ok(Exit::Success)
    } else {
        println!("DID NOT HOLD: {}\n  {}", idea.claim(), verdict.evidence);
        Ok(Exit::Refused)
    }
}
