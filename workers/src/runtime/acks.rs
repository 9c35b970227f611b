//! One `multiple` ack per settled run of deliveries, never past an unsettled one.
//!
//! A worker settles each delivery of a batch on its own (`broker::carry_out`), but a batch
//! of 32 acked one by one is 32 frames and 32 broker operations where one `basic.ack` with
//! `multiple` does. [`AckRun`] is the in-order bookkeeping that makes that safe: it knows
//! which delivery tags of its channel are settled and how, and names the highest tag below
//! which *every* delivery is settled, so a `multiple` ack through it covers no delivery still
//! being handled (a crash then redelivers those, and the inbox keeps them to one effect).
//!
//! It relies on what AMQP 0-9-1 says of delivery tags: a channel numbers its deliveries
//! 1, 2, 3, … with no gap. A tag not yet seen — sent by the broker but not yet taken from a
//! consumer's buffer, since two consumers share the channel — is therefore unsettled, and
//! the run stops before it. A delivery acked or nacked on its own (a dead letter, a requeue)
//! is settled [`How::Alone`]: a run passes over it but never ends on it, because the broker
//! answers a `multiple` ack whose own tag is no longer outstanding with a channel error, and
//! must not hear of the same tag twice.
//!
//! [`ChannelAcks`] is one consume channel's tracker with the sending side: runs go out in
//! order, one at a time (a later run sent first would leave the earlier one's tag unknown to
//! the broker). It never sends a frame itself: `broker::ack_through` does, as every ack lives
//! in `broker.rs`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use lapin::Channel;

use super::broker::{self, BrokerError};

/// How a delivery was settled, as its channel's acks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Its settlement is carried out, and the ack is left to the next run.
    InRun,
    /// Acked or nacked by itself already: a run may pass it, never cover it again.
    Alone,
}

/// The settled delivery tags of one channel above the last run.
#[derive(Debug, Default)]
pub struct AckRun {
    /// Every tag up to here is settled with the broker (acked by a run, or alone).
    through: u64,
    /// Tags above `through` settled since, and how.
    settled: BTreeMap<u64, How>,
}

impl AckRun {
    /// A fresh channel's tracker: no delivery yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that delivery `tag` is settled. A tag already settled, or already behind a
    /// run, keeps what it had: it must not be covered twice.
    pub fn settle(&mut self, tag: u64, how: How) {
        if tag > self.through {
            self.settled.entry(tag).or_insert(how);
        }
    }

    /// The tag to ack with `multiple` now, if any: the highest [`How::InRun`] tag of the
    /// unbroken run of settled tags after the last run. The run is then behind us. `None`
    /// when the next tag is unsettled, or the run holds only tags settled alone.
    pub fn take_run(&mut self) -> Option<u64> {
        let mut ack_through = None;
        while let Some(how) = self.settled.remove(&(self.through + 1)) {
            self.through += 1;
            if how == How::InRun {
                ack_through = Some(self.through);
            }
        }
        ack_through
    }

    /// Tags settled [`How::InRun`] that no run can reach yet, because an earlier tag is
    /// unsettled: on shutdown each is acked alone (and recorded so), while the earlier ones
    /// go back to the queue with the channel.
    pub fn take_stragglers(&mut self) -> Vec<u64> {
        let mut stragglers = Vec::new();
        for (tag, how) in &mut self.settled {
            if *how == How::InRun {
                *how = How::Alone;
                stragglers.push(*tag);
            }
        }
        stragglers
    }
}

/// One consume channel's acks: deliveries settle into the tracker, and a run goes out as
/// one `multiple` ack.
pub struct ChannelAcks {
    channel: Channel,
    run: Mutex<AckRun>,
    /// Held while a run is worked out and sent, so runs reach the broker in tag order.
    sending: tokio::sync::Mutex<()>,
}

impl ChannelAcks {
    /// The acks of `channel`, which must be new (its first delivery is tag 1).
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            run: Mutex::new(AckRun::new()),
            sending: tokio::sync::Mutex::new(()),
        }
    }

    /// Records a carried-out settlement of delivery `tag`.
    pub fn settled(&self, tag: u64, how: How) {
        self.lock().settle(tag, how);
    }

    /// Sends the `multiple` ack for the run settled so far, if there is one.
    pub async fn ack_settled_run(&self) -> Result<(), BrokerError> {
        let _turn = self.sending.lock().await;
        let through = self.lock().take_run();
        match through {
            Some(tag) => broker::ack_through(&self.channel, tag).await,
            None => Ok(()),
        }
    }

    /// On shutdown, once nothing is in flight: the run, then each settled delivery that an
    /// unsettled earlier one holds back, alone, so nothing handled is delivered again.
    pub async fn ack_all_settled(&self) -> Result<(), BrokerError> {
        self.ack_settled_run().await?;
        let _turn = self.sending.lock().await;
        let stragglers = self.lock().take_stragglers();
        for tag in stragglers {
            broker::ack(&self.channel, tag).await?;
        }
        Ok(())
    }

    /// The tracker, even if a thread panicked holding it: each of its operations leaves it
    /// whole, and refusing every ack after a panic would stall the worker.
    fn lock(&self) -> MutexGuard<'_, AckRun> {
        self.run.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(run: &mut AckRun, tags: &[u64], how: How) {
        for tag in tags {
            run.settle(*tag, how);
        }
    }

    #[test]
    fn a_settled_run_is_acked_through_its_highest_tag_once() {
        let mut run = AckRun::new();
        settled(&mut run, &[3, 1, 2], How::InRun);
        assert_eq!(run.take_run(), Some(3));
        assert_eq!(run.take_run(), None, "the same run is never sent twice");
        run.settle(4, How::InRun);
        assert_eq!(run.take_run(), Some(4));
    }

    #[test]
    fn a_run_never_acks_past_an_unsettled_tag() {
        let mut run = AckRun::new();
        // 1 and 2 settled, 3 still in the database, 4 and 5 settled.
        settled(&mut run, &[1, 2, 4, 5], How::InRun);
        assert_eq!(run.take_run(), Some(2));
        assert_eq!(
            run.take_run(),
            None,
            "3 is unsettled: nothing may cover 4 or 5"
        );
        run.settle(3, How::InRun);
        assert_eq!(run.take_run(), Some(5));
    }

    #[test]
    fn a_tag_not_yet_seen_is_unsettled() {
        let mut run = AckRun::new();
        // Tag 1 sits in the other consumer's buffer; 2 and 3 came through first.
        settled(&mut run, &[2, 3], How::InRun);
        assert_eq!(run.take_run(), None);
        run.settle(1, How::InRun);
        assert_eq!(run.take_run(), Some(3));
    }

    #[test]
    fn a_tag_settled_alone_is_passed_but_never_covered() {
        let mut run = AckRun::new();
        // 2 was dead-lettered and acked alone, 4 requeued with a nack.
        settled(&mut run, &[1, 3], How::InRun);
        settled(&mut run, &[2, 4], How::Alone);
        assert_eq!(
            run.take_run(),
            Some(3),
            "ends on the last tag awaiting its ack, not on 4"
        );
        run.settle(5, How::Alone);
        assert_eq!(
            run.take_run(),
            None,
            "a run of tags settled alone sends nothing"
        );
        run.settle(6, How::InRun);
        assert_eq!(run.take_run(), Some(6));
    }

    #[test]
    fn a_tag_is_settled_once() {
        let mut run = AckRun::new();
        run.settle(1, How::Alone);
        run.settle(1, How::InRun);
        assert_eq!(run.take_run(), None, "1 went alone: no run may name it");
        run.settle(1, How::InRun);
        run.settle(2, How::InRun);
        assert_eq!(run.take_run(), Some(2));
    }

    #[test]
    fn stragglers_behind_an_unsettled_tag_go_alone_and_stay_settled() {
        let mut run = AckRun::new();
        settled(&mut run, &[1, 3, 4], How::InRun);
        run.settle(5, How::Alone);
        assert_eq!(run.take_run(), Some(1));
        assert_eq!(run.take_stragglers(), vec![3, 4]);
        assert_eq!(run.take_stragglers(), Vec::<u64>::new());
        // Should 2 still settle, the run passes 3 and 4 without covering them again.
        run.settle(2, How::InRun);
        assert_eq!(run.take_run(), Some(2));
    }

    #[test]
    fn any_settlement_order_acks_each_tag_exactly_once_and_none_early() {
        // Every order of settling 1..=6 (three alone), with a run taken after each step.
        let alone = [2, 5, 6];
        let mut tags: Vec<u64> = (1..=6).collect();
        let mut orders = Vec::new();
        permutations(&mut tags, 0, &mut orders);
        for order in orders {
            let mut run = AckRun::new();
            let mut done = std::collections::BTreeSet::new();
            let mut acked_through = 0;
            for tag in &order {
                let how = if alone.contains(tag) {
                    How::Alone
                } else {
                    How::InRun
                };
                run.settle(*tag, how);
                done.insert(*tag);
                if let Some(through) = run.take_run() {
                    assert!(through > acked_through, "{order:?}: a run went backwards");
                    assert!(
                        !alone.contains(&through),
                        "{order:?}: a run ended on {through}, settled alone"
                    );
                    assert!(
                        (1..=through).all(|t| done.contains(&t)),
                        "{order:?}: acked through {through} before all of 1..={through} settled"
                    );
                    acked_through = through;
                }
            }
            assert_eq!(acked_through, 4, "{order:?}: the last in-run tag is acked");
        }
    }

    fn permutations(tags: &mut Vec<u64>, at: usize, out: &mut Vec<Vec<u64>>) {
        if at == tags.len() {
            out.push(tags.clone());
            return;
        }
        for i in at..tags.len() {
            tags.swap(at, i);
            permutations(tags, at + 1, out);
            tags.swap(at, i);
        }
    }
}
