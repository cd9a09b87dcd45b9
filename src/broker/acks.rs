//! Coalesced acknowledgements: one `basic.ack multiple=true` for a run of settled deliveries.
//!
//! Acks cost the broker as much as a publish; acking every delivery alone cut its ceiling by about
//! 30 %. Deliveries settle out of order (calls finish when they finish), so an [`Acks`] keeps, per
//! channel, the lowest delivery tag not yet settled. Once the tags below a settled one are all
//! settled, a single multiple-ack covers the run, sent when [`BATCH`] are waiting or after
//! [`LINGER`]. Requeues are sent at once and alone.
//!
//! One slow delivery must not hold the others' acks (their unacked count would fill the prefetch
//! and stall the channel): once the gap below the waiting acks has lasted [`PATIENCE`], or a
//! quarter of the prefetch waits behind it, they are acked one by one. While the gap lasts
//! (a call running into its timeout), the acks that settle behind it are gathered for up to
//! [`LINGER`] and sent together, each its own frame but all in one hand-off to lapin, rather
//! than one awaited ack per delivery as it settles.
//!
//! Nothing is acked that has not settled, and an ack still waiting when the process dies only
//! means a redelivery, which at-least-once allows. The task ends, flushing what it holds, when
//! every handle is dropped; it holds the channel open until then, and closes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::Acker;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::faults::Faults;

/// Send a multiple-ack once this many deliveries wait in the settled run.
pub const BATCH: usize = 64;
/// Send a multiple-ack at most this long after the first delivery of a run settled.
pub const LINGER: Duration = Duration::from_millis(10);
/// Ack deliveries one by one once a slower one below them has held them this long.
pub const PATIENCE: Duration = Duration::from_millis(25);
/// How long a crowd (a quarter of the prefetch) behind a gap waits for it to close before they
/// are acked one by one. Settlements come in bursts (a frame of confirms wakes many tasks, which
/// two threads run in any order), and the lowest of a burst is often a moment behind the rest:
/// without this wait a fifth of the router's acks went one by one at full speed.
pub const CROWD_GRACE: Duration = Duration::from_millis(2);

/// A handle to one channel's ack coalescer; cheap to clone.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Settled<Acker>>,
    /// Refusals in a row on this channel.
    refusals: Arc<Refusals>,
}

/// How long a delivery whose outcome the broker refused waits before it goes back to its queue.
///
/// While the broker refuses messages (a quorum queue whose leader was on a node that just died,
/// until its followers elect another), a delivery handed back at once comes straight back, is
/// refused again, and so on at full speed: a loop that loads the broker while it recovers, floods
/// the log, and on a worker calls the remote each time. So the wait doubles with each refusal in
/// a row on the channel, from 100 ms to 5 s, and one ack ends the streak. A waiting delivery
/// keeps its prefetch slot, so at most a prefetch of refusals per wait. Each requeue counts
/// towards a quorum queue's delivery limit ([`DELIVERY_LIMIT`](super::DELIVERY_LIMIT), 20): with
/// these waits a refusal lasting over about 75 s dead-letters the delivery (an event to
/// `events.rejected`, an action to the dead-letter queue; at full speed it took a fraction of a
/// second).
///
/// A streak also says how long it has lasted ([`Refusal::lasted`]): the router starts a new
/// session once it has lasted [`Refusal::RECONNECT_AFTER`] (see there).
#[derive(Debug, Default)]
pub struct Refusals {
    /// Refusals since the last ack.
    streak: AtomicU32,
    /// When the streak's first refusal came (`None` without a streak).
    since: std::sync::Mutex<Option<Instant>>,
}

/// One refusal: how long its delivery waits, and how long the channel has been refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The wait before the delivery goes back to its queue.
    pub wait: Duration,
    /// Since the first refusal with no ack after it on this channel.
    pub lasted: Duration,
}

impl Refusal {
    /// How long a channel may see nothing but refusals before the router starts a new session.
    ///
    /// A quorum queue that lost its leader refuses for about a second, until its followers elect
    /// another. In the cluster test the http queue had a leader again 13 ms after its old one was seen down, both
    /// members at the same commit index, yet a publish channel opened just after the kill had
    /// every publish to it refused for over a minute, and none reached the queue's log: they were
    /// refused before the queue. A new session starts over with a new connection, to the next
    /// node, and new channels. A queue that is really full (a `reject-publish` limit) is refused
    /// on every connection; then the session restarts at this pace, with the supervisor's
    /// backoff between sessions.
    pub const RECONNECT_AFTER: Duration = Duration::from_secs(15);

    /// Whether the refusals have lasted long enough to start a new session.
    pub fn calls_for_a_new_session(&self) -> bool {
        self.lasted >= Self::RECONNECT_AFTER
    }
}

impl Refusals {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(5);

    /// Counts a refusal: the wait before its delivery goes back, and how long the streak lasts.
    fn refused(&self) -> Refusal {
        let streak = self.streak.fetch_add(1, Ordering::Relaxed);
        let wait = Self::FIRST
            .saturating_mul(1 << streak.min(6))
            .min(Self::LONGEST);
        let now = Instant::now();
        let lasted = match self.since.lock() {
            Ok(mut since) => {
                // The first refusal of a streak starts its clock, whatever an earlier streak
                // left: an ack racing a refusal on another task can clear `since` before that
                // refusal sets it, and a start kept from then would end a later streak's session
                // at its first refusal.
                if streak == 0 {
                    *since = Some(now);
                }
                now.saturating_duration_since(*since.get_or_insert(now))
            }
            Err(_) => Duration::ZERO,
        };
        Refusal { wait, lasted }
    }

    /// A delivery was acked.
    fn confirmed(&self) {
        // A load first: the common case writes nothing to a line every router task reads.
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
            if let Ok(mut since) = self.since.lock() {
                *since = None;
            }
        }
    }
}

/// What became of one delivery.
struct Settled<A> {
    tag: u64,
    acker: A,
    requeue: bool,
}

/// What the coalescer needs of a delivery's acker (lapin's [`Acker`]; a recording fake in tests).
trait Settle: Send + 'static {
    /// basic.ack for this delivery's tag; with `multiple`, for every earlier one too.
    fn ack(self, multiple: bool) -> impl Future<Output = Result<bool, lapin::Error>> + Send;
    /// basic.nack with requeue, for this delivery alone.
    fn requeue(self) -> impl Future<Output = Result<bool, lapin::Error>> + Send;
}

impl Settle for Acker {
    async fn ack(self, multiple: bool) -> Result<bool, lapin::Error> {
        Acker::ack(&self, BasicAckOptions { multiple }).await
    }

    async fn requeue(self) -> Result<bool, lapin::Error> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        Acker::nack(&self, options).await
    }
}

impl Acks {
    /// Starts the coalescer for `channel` on `tracker` (so a graceful shutdown waits for its last
    /// flush). `what` names the consumer in logs; `prefetch` is the channel's `basic.qos`.
    pub fn spawn(
        tracker: &TaskTracker,
        faults: &Arc<Faults>,
        channel: Channel,
        what: &'static str,
        prefetch: u16,
    ) -> Acks {
        let (tx, rx) = mpsc::unbounded_channel();
        let run = Run::new(what, usize::from(prefetch).div_ceil(4).max(1));
        tracker.spawn(faults.guard("acks", async move {
            let sent = run.serve(rx).await;
            info!(
                consumer = what,
                multiple_acks = sent.multiple,
                single_acks = sent.single,
                requeues = sent.requeues,
                "a consumer channel's acks are out; closing it"
            );
            // Closed here, once its acks are out, rather than by lapin when the last handle
            // drops, which could race the connection's close at shutdown (an ERROR line).
            super::close_channel(&channel, 200, "done").await;
        }));
        Acks {
            tx,
            refusals: Arc::default(),
        }
    }

    /// The delivery is done with: ack it (soon, possibly with others).
    pub fn ack(&self, delivery: Delivery) {
        self.refusals.confirmed();
        self.settle(delivery, false);
    }

    /// The broker refused what would have made a delivery's outcome durable: how long to wait
    /// before [`Acks::requeue`], and how long this channel has been refused (see [`Refusals`]).
    pub fn refused(&self) -> Refusal {
        self.refusals.refused()
    }

    /// Hands the delivery back to its queue, now.
    pub fn requeue(&self, delivery: Delivery) {
        self.settle(delivery, true);
    }

    fn settle(&self, delivery: Delivery, requeue: bool) {
        let settled = Settled {
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            requeue,
        };
        // The task outlives every handle, so this only fails if it panicked; the delivery then
        // stays unacked and the broker redelivers it when the channel closes.
        if self.tx.send(settled).is_err() {
            warn!(
                tag = delivery.delivery_tag,
                "the ack coalescer is gone; the broker will redeliver"
            );
        }
    }
}

/// The coalescer's state for one channel.
struct Run<A> {
    /// The consumer, for logs.
    what: &'static str,
    /// Ack one by one once this many wait behind a gap.
    crowd: usize,
    /// The lowest tag not yet settled (tags start at 1 on a new channel).
    low: u64,
    /// Settled tags above `low`: `Some` still to ack, `None` already acked or requeued.
    above: BTreeMap<u64, Option<A>>,
    /// How many acks in `above` are still owed.
    owed_above: usize,
    /// When `low` last moved (the gap's age).
    low_since: Instant,
    /// When the oldest ack still owed in `above` settled.
    above_since: Instant,
    /// Since when a crowd has waited in `above`.
    crowd_since: Option<Instant>,
    /// The highest acker of the contiguous settled run, not yet sent, and the run's length.
    run: Option<(A, usize)>,
    /// When the current run began.
    run_since: Instant,
    /// The frames sent so far.
    sent: Sent,
}

/// How many frames of each kind a coalescer sent: how well its acks coalesced.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    multiple: u64,
    single: u64,
    requeues: u64,
}

impl<A: Settle> Run<A> {
    fn new(what: &'static str, crowd: usize) -> Run<A> {
        Run {
            what,
            crowd,
            low: 1,
            above: BTreeMap::new(),
            owed_above: 0,
            low_since: Instant::now(),
            above_since: Instant::now(),
            crowd_since: None,
            run: None,
            run_since: Instant::now(),
            sent: Sent::default(),
        }
    }

    /// Serves until every sender is dropped, then sends what it still holds; says what it sent.
    async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Settled<A>>) -> Sent {
        loop {
            let deadline = self.deadline();
            let next = match deadline {
                Some(at) => tokio::select! {
                    next = rx.recv() => next,
                    () = tokio::time::sleep_until(at) => {
                        self.on_time().await;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(settled) = next else { break };
            self.on_settled(settled).await;
            // Drain what is already queued before deciding to send anything.
            while let Ok(settled) = rx.try_recv() {
                self.on_settled(settled).await;
            }
            if self.run.as_ref().is_some_and(|(_, n)| *n >= BATCH) {
                self.flush_run().await;
            }
            if self.owed_above >= self.crowd {
                let since = *self.crowd_since.get_or_insert_with(Instant::now);
                if self.owed_above >= 2 * self.crowd || Instant::now() >= since + CROWD_GRACE {
                    self.flush_above().await;
                }
            }
        }
        self.flush_run().await;
        self.flush_above().await;
        self.sent
    }

    /// When the next timed flush is due, if anything waits.
    fn deadline(&self) -> Option<Instant> {
        let run = self.run.as_ref().map(|_| self.run_since + LINGER);
        let gap = (self.owed_above > 0).then(|| self.gap_due());
        match (run, gap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_time(&mut self) {
        let now = Instant::now();
        if self.run.is_some() && now >= self.run_since + LINGER {
            self.flush_run().await;
        }
        if self.owed_above > 0 && now >= self.gap_due() {
            self.flush_above().await;
        }
    }

    /// When the acks owed behind the gap go: [`PATIENCE`] after the gap opened, and once it is
    /// older, [`LINGER`] after the first of them settled; a crowd of them [`CROWD_GRACE`] after
    /// it gathered.
    fn gap_due(&self) -> Instant {
        let patient = (self.low_since + PATIENCE).max(self.above_since + LINGER);
        match self.crowd_since {
            Some(since) => patient.min(since + CROWD_GRACE),
            None => patient,
        }
    }

    async fn on_settled(&mut self, settled: Settled<A>) {
        let Settled {
            tag,
            acker,
            requeue,
        } = settled;
        if requeue {
            // Sent before any multiple-ack that could cover it.
            report(self.what, "requeue", acker.requeue().await);
            self.sent.requeues += 1;
            if tag == self.low {
                self.advance(None);
            } else if tag > self.low {
                self.above.insert(tag, None);
            }
            return;
        }
        if tag < self.low || self.above.contains_key(&tag) {
            // Not a tag this channel handed out in order (cannot happen); ack it alone.
            report(self.what, "ack", acker.ack(false).await);
            self.sent.single += 1;
            return;
        }
        if tag > self.low {
            self.above.insert(tag, Some(acker));
            if self.owed_above == 0 {
                self.above_since = Instant::now();
            }
            self.owed_above += 1;
            return;
        }
        self.advance(Some(acker));
    }

    /// `low` settled: the run grows, and swallows what settled above it.
    fn advance(&mut self, acker: Option<A>) {
        self.extend_run(acker);
        self.low += 1;
        while let Some(entry) = self.above.remove(&self.low) {
            if entry.is_some() {
                self.owed_above -= 1;
            }
            self.extend_run(entry);
            self.low += 1;
        }
        self.low_since = Instant::now();
        if self.owed_above < self.crowd {
            self.crowd_since = None;
        }
    }

    fn extend_run(&mut self, acker: Option<A>) {
        let Some(acker) = acker else { return };
        match &mut self.run {
            Some((highest, n)) => {
                *highest = acker;
                *n += 1;
            }
            None => {
                self.run = Some((acker, 1));
                self.run_since = Instant::now();
            }
        }
    }

    /// Acks the contiguous run with one multiple-ack.
    async fn flush_run(&mut self) {
        if let Some((highest, _)) = self.run.take() {
            report(self.what, "ack", highest.ack(true).await);
            self.sent.multiple += 1;
        }
    }

    /// Acks, one by one, what waits behind a gap (the run below it first, so order holds). The
    /// acks are sent together: each is a round trip through lapin's tasks, which awaited in turn
    /// cost a thread hand-off per delivery.
    async fn flush_above(&mut self) {
        self.flush_run().await;
        let what = self.what;
        let owed = self.above.values_mut().filter_map(Option::take);
        let acks = owed.map(|acker| async move { report(what, "ack", acker.ack(false).await) });
        self.sent.single += futures::future::join_all(acks).await.len() as u64;
        self.owed_above = 0;
        self.crowd_since = None;
    }
}

/// Logs an ack or requeue the channel could not carry.
fn report(what: &'static str, verb: &'static str, result: Result<bool, lapin::Error>) {
    match result {
        Ok(true) => {}
        Ok(false) => {
            warn!(
                consumer = what,
                verb,
                "the channel closed before a delivery was settled; the broker will redeliver it"
            );
        }
        Err(e) => {
            warn!(
                consumer = what,
                verb,
                error = %e,
                "could not settle a delivery; the broker will redeliver it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn refused_deliveries_wait_longer_with_each_refusal_in_a_row_until_one_is_acked() {
        let refusals = Refusals::default();
        let waits: Vec<u128> = (0..7)
            .map(|_| refusals.refused().wait.as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000]);
        refusals.confirmed();
        assert_eq!(refusals.refused().wait, Duration::from_millis(100));
        refusals.confirmed();
        refusals.confirmed();
        assert_eq!(refusals.refused().wait, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_streak_starts_its_own_clock_whatever_an_earlier_one_left() {
        // What an ack racing a refusal can leave: no streak, and the start of an old one.
        let refusals = Refusals {
            streak: AtomicU32::new(0),
            since: std::sync::Mutex::new(Some(Instant::now())),
        };
        tokio::time::advance(Refusal::RECONNECT_AFTER * 2).await;
        let first = refusals.refused();
        assert_eq!(first.lasted, Duration::ZERO);
        assert!(!first.calls_for_a_new_session());
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_call_for_a_new_session_once_they_have_lasted_and_an_ack_ends_them() {
        let refusals = Refusals::default();
        let first = refusals.refused();
        assert_eq!(first.lasted, Duration::ZERO);
        assert!(!first.calls_for_a_new_session());
        tokio::time::advance(Refusal::RECONNECT_AFTER - Duration::from_millis(1)).await;
        assert!(!refusals.refused().calls_for_a_new_session());
        tokio::time::advance(Duration::from_millis(1)).await;
        let late = refusals.refused();
        assert_eq!(late.lasted, Refusal::RECONNECT_AFTER);
        assert!(late.calls_for_a_new_session());
        // An ack ends the streak: the next refusal starts a new one.
        refusals.confirmed();
        tokio::time::advance(Refusal::RECONNECT_AFTER).await;
        let after = refusals.refused();
        assert_eq!(after.lasted, Duration::ZERO);
        assert_eq!(after.wait, Duration::from_millis(100));
    }

    /// What the fake broker saw, in order.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Frame {
        Ack { tag: u64, multiple: bool },
        Requeue { tag: u64 },
    }

    #[derive(Clone)]
    struct FakeAcker {
        tag: u64,
        frames: Arc<Mutex<Vec<Frame>>>,
    }

    impl Settle for FakeAcker {
        async fn ack(self, multiple: bool) -> Result<bool, lapin::Error> {
            let frame = Frame::Ack {
                tag: self.tag,
                multiple,
            };
            self.frames.lock().map(|mut f| f.push(frame)).ok();
            Ok(true)
        }

        async fn requeue(self) -> Result<bool, lapin::Error> {
            let frame = Frame::Requeue { tag: self.tag };
            self.frames.lock().map(|mut f| f.push(frame)).ok();
            Ok(true)
        }
    }

    /// Delivery `tag`, settled (or requeued) through a fake acker that records into `frames`.
    fn settled(tag: u64, requeue: bool, frames: &Arc<Mutex<Vec<Frame>>>) -> Settled<FakeAcker> {
        let acker = FakeAcker {
            tag,
            frames: frames.clone(),
        };
        Settled {
            tag,
            acker,
            requeue,
        }
    }

    /// Drives a coalescer with `order` (tag, requeue) and replays its frames against a model of the
    /// broker: every frame may only cover settled tags, and every tag ends settled exactly once.
    async fn check(order: &[(u64, bool)], gap_every: Option<usize>) -> Vec<Frame> {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(Run::new("test", 16).serve(rx));
        for (i, &(tag, requeue)) in order.iter().enumerate() {
            tx.send(settled(tag, requeue, &frames)).ok();
            if gap_every.is_some_and(|n| i % n == 0) {
                tokio::time::sleep(PATIENCE * 2).await;
            }
        }
        drop(tx);
        let sent = task.await.unwrap_or_default();
        let frames = frames.lock().map(|f| f.clone()).unwrap_or_default();
        assert_eq!(
            (sent.multiple + sent.single + sent.requeues) as usize,
            frames.len(),
            "{sent:?} counts every frame"
        );

        let outcome: BTreeMap<u64, bool> = order.iter().copied().collect();
        let mut outstanding: BTreeSet<u64> = outcome.keys().copied().collect();
        for frame in &frames {
            let covered: Vec<u64> = match *frame {
                Frame::Ack {
                    tag,
                    multiple: true,
                } => outstanding.range(..=tag).copied().collect(),
                Frame::Ack { tag, .. } | Frame::Requeue { tag } => {
                    assert!(outstanding.contains(&tag), "{frame:?} names a settled tag");
                    vec![tag]
                }
            };
            assert!(!covered.is_empty(), "{frame:?} covers nothing");
            for tag in covered {
                let requeue = matches!(frame, Frame::Requeue { .. });
                assert_eq!(
                    outcome[&tag], requeue,
                    "{frame:?} settled {tag} the wrong way"
                );
                outstanding.remove(&tag);
            }
        }
        assert!(outstanding.is_empty(), "never settled: {outstanding:?}");
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn in_order_acks_become_few_multiple_acks() {
        let order: Vec<(u64, bool)> = (1..=1000).map(|t| (t, false)).collect();
        let frames = check(&order, None).await;
        assert!(frames.len() <= 1000 / BATCH + 1, "{} frames", frames.len());
        assert!(
            frames
                .iter()
                .all(|f| matches!(f, Frame::Ack { multiple: true, .. }))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shuffled_settlements_with_requeues_settle_each_tag_once_and_rightly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..50 {
            let n = rng.random_range(1..400u64);
            let mut order: Vec<(u64, bool)> = (1..=n).map(|t| (t, rng.random_bool(0.05))).collect();
            // Out of order, but each within a window, as concurrent calls finish.
            for chunk in order.chunks_mut(rng.random_range(1..64)) {
                chunk.shuffle(&mut rng);
            }
            let gaps = (round % 3 == 0).then_some(37);
            check(&order, gaps).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_delivery_does_not_hold_the_acks_above_it() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(Run::new("test", 1000).serve(rx));
        // Tag 1 is still in flight; 2..=10 settle.
        for tag in 2..=10 {
            tx.send(settled(tag, false, &frames)).ok();
        }
        tokio::time::sleep(PATIENCE * 2).await;
        let seen = frames.lock().map(|f| f.clone()).unwrap_or_default();
        let expected: Vec<Frame> = (2..=10)
            .map(|tag| Frame::Ack {
                tag,
                multiple: false,
            })
            .collect();
        assert_eq!(
            seen, expected,
            "acked one by one after PATIENCE, never tag 1"
        );
        drop(tx);
        task.await.ok();
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowd_waits_a_moment_for_the_lowest_of_its_burst() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let crowd = 16;
        let task = tokio::spawn(Run::new("test", crowd).serve(rx));
        // A burst whose lowest comes last, a moment after a crowd of the others.
        for tag in 2..=crowd as u64 + 4 {
            tx.send(settled(tag, false, &frames)).ok();
        }
        tokio::time::sleep(CROWD_GRACE / 2).await;
        tx.send(settled(1, false, &frames)).ok();
        tokio::time::sleep(LINGER * 2).await;
        let seen = frames.lock().map(|f| f.clone()).unwrap_or_default();
        let top = crowd as u64 + 4;
        assert_eq!(
            seen,
            [Frame::Ack {
                tag: top,
                multiple: true
            }],
            "one multiple-ack"
        );
        // A gap that stays: the crowd goes one by one once the grace is over.
        for tag in top + 2..=top + 1 + crowd as u64 {
            tx.send(settled(tag, false, &frames)).ok();
        }
        tokio::time::sleep(CROWD_GRACE * 2).await;
        let sent = frames.lock().map(|f| f.len()).unwrap_or_default();
        assert_eq!(
            sent,
            1 + crowd,
            "the crowd went one by one within the grace"
        );
        drop(tx);
        task.await.ok();
    }

    #[tokio::test(start_paused = true)]
    async fn behind_a_lasting_gap_acks_go_together_each_linger_not_each_as_it_settles() {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sent = || frames.lock().map(|f| f.len()).unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(Run::new("test", 1000).serve(rx));
        // Tag 1 hangs; 2..=10 go after PATIENCE.
        for tag in 2..=10 {
            tx.send(settled(tag, false, &frames)).ok();
        }
        tokio::time::sleep(PATIENCE * 2).await;
        assert_eq!(sent(), 9);
        // The gap is old now: what settles behind it waits for the others of its LINGER.
        let tick = LINGER / 10;
        for tag in 11..=15 {
            tx.send(settled(tag, false, &frames)).ok();
            tokio::time::sleep(tick).await;
            assert_eq!(sent(), 9, "tag {tag} went alone");
        }
        tokio::time::sleep(LINGER).await;
        assert_eq!(
            sent(),
            14,
            "11..=15 went together, within LINGER of the first"
        );
        let seen = frames.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(
            seen[9..].iter().zip(11..).all(|(f, tag)| *f
                == Frame::Ack {
                    tag,
                    multiple: false
                }),
            "{seen:?}"
        );
        // Tag 1 settles at last: one multiple-ack covers it and everything acked above it.
        tx.send(settled(1, false, &frames)).ok();
        drop(tx);
        task.await.ok();
        let last = frames.lock().ok().and_then(|f| f.last().copied());
        assert_eq!(
            last,
            Some(Frame::Ack {
                tag: 1,
                multiple: true
            })
        );
    }
}
