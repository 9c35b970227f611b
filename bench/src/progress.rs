//! The progress bar: one step per phase, with the phase's live figures as its message.
//!
//! A run takes minutes and most of it is silent waiting on load; the bar tells the person
//! watching that it is alive, where it is, and what rate it sees right now. indicatif hides
//! it by itself when stderr is not a terminal (CI logs), and results that finish a phase are
//! printed above it so they stay on screen.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(steps: u64) -> Self {
        let bar = ProgressBar::new(steps);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {wide_msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// Starts a phase: shows its name.
    pub fn phase(&self, name: impl Into<String>) {
        self.bar.set_message(name.into());
    }

    /// Updates the current phase's live figures.
    pub fn message(&self, text: String) {
        self.bar.set_message(text);
    }

    /// Ends a phase, printing its one-line result above the bar.
    pub fn done(&self, line: impl AsRef<str>) {
        self.note(line);
        self.bar.inc(1);
    }

    /// Prints one more line of the current phase's result above the bar.
    pub fn note(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
