//! [`InFlight`]: the count of a listener's events in flight.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::{shard_count, thread_shard};

/// Counts a listener's events in flight, so that `stop` and `unregister` can wait for them and
/// [`Stats::in_flight`](crate::Stats::in_flight) reports them.
///
/// One count per thread shard, so that events on different threads do not write one cache line. An event
/// is counted on the shard of the thread that accepted it and uncounted on the same shard (wherever it
/// ends), so no shard ever goes below zero: a sum read while an event is in flight counts it.
pub(crate) struct InFlight {
    counts: Box<[ShardCount]>,
    /// Tasks in `wait_idle`: an event that ends notifies only when someone waits, so the hot path never
    /// takes the `Notify`'s lock.
    waiters: AtomicUsize,
    idle: Notify,
}

#[repr(align(128))] // one count per cache line pair
struct ShardCount(AtomicUsize);

struct Waiter<'a>(&'a AtomicUsize);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            counts: (0..shard_count())
                .map(|_| ShardCount(AtomicUsize::new(0)))
                .collect(),
            waiters: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl InFlight {
    /// Counts an event on this thread's shard; returns the shard, for [`exit`](Self::exit). SeqCst: see
    /// the manager's `Accepted::new`.
    #[inline]
    pub(crate) fn enter(&self) -> usize {
        let shard = thread_shard(self.counts.len());
        self.counts[shard].0.fetch_add(1, Ordering::SeqCst);
        shard
    }

    /// Uncounts an event counted on `shard`, waking `wait_idle` if anyone waits.
    #[inline]
    pub(crate) fn exit(&self, shard: usize) {
        self.counts[shard].0.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no event is in flight.
    ///
    /// No lost wake-up: this counts itself in `waiters` and creates its `Notified` before it reads the
    /// counts; an ending event decrements its count before it reads `waiters` (all SeqCst). So either this
    /// sees the decrement, or the event sees the waiter and wakes it.
    pub(crate) async fn wait_idle(&self) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiter = Waiter(&self.waiters);
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Events in flight now.
    pub(crate) fn count(&self) -> usize {
        // SeqCst: pairs with the SeqCst increment in the manager's `Accepted::new`, see there.
        self.counts
            .iter()
            .map(|count| count.0.load(Ordering::SeqCst))
            .sum()
    }
}
