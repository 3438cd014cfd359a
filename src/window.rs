//! A time-bucketed sliding window of success and failure counts, shared by the circuit breaker (its failure
//! count and rate) and by [`ListenerMetrics`](crate::ListenerMetrics) (the health window).
//!
//! It is a real sliding window, not a running total: the window of length `L` is cut into [`BUCKETS`]
//! buckets of `L / BUCKETS`, a call is counted in the bucket of its time, and a read sums only the buckets
//! younger than `L`. Recording is O(1) (two atomic operations on one bucket) and a read is O(`BUCKETS`),
//! whatever the number of calls the window holds. A call counts for at least `L - L/BUCKETS` and never
//! more than `L`.
//!
//! It uses neither tokio nor tower: every method takes the time as a plain [`Instant`], so it is tested
//! without a runtime. Recording never loses a call: when a bucket turns over to a new period, the thread
//! that claims it marks it as being reset, zeroes it and only then publishes the new period; threads that
//! record into it meanwhile wait those few instructions. (An earlier version zeroed after publishing, and
//! the loom model in `tests/loom.rs` found the interleaving that lost a concurrent failure.)
//!
//! A window can be sharded by thread ([`SlidingWindow::sharded`]): each thread records into its own set of
//! buckets (no cache line shared between threads on the write path) and a read sums the shards. The health
//! window is sharded (written on every attempt, read rarely); the breaker's is not (read on every failure).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::sync::AtomicU64;

/// Buckets per window: a 60 s window has ~0.94 s resolution.
#[cfg(not(tower_listener_loom))]
pub(crate) const BUCKETS: usize = 64;
/// Under the loom model, few buckets: each bucket read is a point where loom explores interleavings.
#[cfg(tower_listener_loom)]
pub(crate) const BUCKETS: usize = 4;

/// Counts read from a [`SlidingWindow`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

impl WindowCounts {
    pub(crate) fn total(&self) -> u64 {
        self.successes + self.failures
    }

    /// Failures over all calls; 0 when empty.
    pub(crate) fn failure_ratio(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.failures as f64 / total as f64,
        }
    }
}

/// A bucket being zeroed for a new period.
const RESETTING: u64 = u64::MAX;

#[derive(Default)]
struct Bucket {
    /// The period this bucket counts (1-based); 0 = never used; `RESETTING` while it is being zeroed.
    period: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
}

pub(crate) struct SlidingWindow {
    origin: Instant,
    bucket_nanos: u64,
    /// One set of `BUCKETS` buckets per shard, back to back.
    buckets: Box<[Bucket]>,
    shards: usize,
}

impl SlidingWindow {
    /// A window of `length` (at least [`BUCKETS`] nanoseconds are used) whose periods count from `origin`.
    pub(crate) fn new(length: Duration, origin: Instant) -> Self {
        Self::with_shards(length, origin, 1)
    }

    /// A window sharded by thread (see the module docs).
    pub(crate) fn sharded(length: Duration, origin: Instant) -> Self {
        Self::with_shards(length, origin, crate::metrics::shard_count())
    }

    fn with_shards(length: Duration, origin: Instant, shards: usize) -> Self {
        let nanos = u64::try_from(length.as_nanos()).unwrap_or(u64::MAX);
        SlidingWindow {
            origin,
            bucket_nanos: (nanos / BUCKETS as u64).max(1),
            buckets: (0..BUCKETS * shards).map(|_| Bucket::default()).collect(),
            shards,
        }
    }

    /// The 1-based period of `now` (0 is reserved for "unused").
    #[inline]
    fn period(&self, now: Instant) -> u64 {
        let since = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        since / self.bucket_nanos + 1
    }

    /// Counts one call at `now`. Inlined, as the other small steps of an event's success path: they
    /// are called from code instantiated in the user's crate, and without `#[inline]` (or LTO) every one
    /// of them stays a call across the crate boundary.
    #[inline]
    pub(crate) fn record(&self, now: Instant, success: bool) {
        let period = self.period(now);
        let shard = crate::metrics::thread_shard(self.shards);
        let bucket = &self.buckets[shard * BUCKETS + (period % BUCKETS as u64) as usize];
        // Acquire pairs with the Release that publishes a bucket's period after its zeroing, so an
        // increment made after seeing the period lands on the zeroed counts.
        let mut seen = bucket.period.load(Ordering::Acquire);
        loop {
            if seen == period {
                break;
            }
            if seen == RESETTING {
                crate::sync::spin_loop();
                seen = bucket.period.load(Ordering::Acquire);
                continue;
            }
            if seen > period {
                // Already moved to a newer period by a thread with a later clock reading: this call is
                // older than the window can place, and would fall out within one bucket anyway.
                return;
            }
            match bucket.period.compare_exchange(
                seen,
                RESETTING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    bucket.successes.store(0, Ordering::Relaxed);
                    bucket.failures.store(0, Ordering::Relaxed);
                    bucket.period.store(period, Ordering::Release);
                    break;
                }
                Err(actual) => seen = actual,
            }
        }
        let counter = if success {
            &bucket.successes
        } else {
            &bucket.failures
        };
        // Relaxed: a count has no ordering relation with other memory.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of the calls recorded in the last window before `now`.
    pub(crate) fn counts(&self, now: Instant) -> WindowCounts {
        let current = self.period(now);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1).max(1);
        let mut counts = WindowCounts::default();
        for bucket in self.buckets.iter() {
            let period = bucket.period.load(Ordering::Acquire);
            if period != RESETTING && period >= oldest && period <= current {
                counts.successes += bucket.successes.load(Ordering::Relaxed);
                counts.failures += bucket.failures.load(Ordering::Relaxed);
            }
        }
        counts
    }

    /// Forgets every call.
    pub(crate) fn clear(&self) {
        // Counts first, period last: a racing increment then lands in a bucket marked unused, which the next
        // record zeroes, rather than in a bucket that reads as current.
        for bucket in self.buckets.iter() {
            bucket.successes.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
            bucket.period.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_only_calls_inside_the_window() {
        let origin = Instant::now();
        let window = SlidingWindow::new(Duration::from_secs(64), origin);
        window.record(origin, false);
        window.record(origin + Duration::from_secs(10), true);
        let c = window.counts(origin + Duration::from_secs(20));
        assert_eq!((c.successes, c.failures), (1, 1));
        // 64 s later the first call has aged out, the second not yet.
        let c = window.counts(origin + Duration::from_secs(64));
        assert_eq!((c.successes, c.failures), (1, 0));
        let c = window.counts(origin + Duration::from_secs(75));
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn a_recycled_bucket_starts_from_zero() {
        let origin = Instant::now();
        let window = SlidingWindow::new(Duration::from_secs(64), origin);
        window.record(origin, false);
        // Same bucket slot, one full window later.
        window.record(origin + Duration::from_secs(64), true);
        let c = window.counts(origin + Duration::from_secs(64));
        assert_eq!((c.successes, c.failures), (1, 0));
    }

    #[test]
    fn an_older_record_does_not_reset_a_newer_bucket() {
        let origin = Instant::now();
        let window = SlidingWindow::new(Duration::from_secs(64), origin); // 1 s buckets
                                                                          // Periods 71 and 7 share a bucket slot: a thread with a later clock reading has moved the slot to
                                                                          // the newer period when one with an older reading records into it.
        let newer = origin + Duration::from_millis(70_500);
        let older = origin + Duration::from_millis(6_500);
        window.record(newer, false);
        window.record(newer, true);
        window.record(older, false);
        assert_eq!(
            window.counts(newer),
            WindowCounts {
                successes: 1,
                failures: 1
            }
        );
        // The same slot in its own period still counts normally afterwards.
        window.record(newer, false);
        assert_eq!(window.counts(newer).failures, 2);
    }

    #[test]
    fn out_of_order_readings_from_two_threads_never_lose_a_newer_count() {
        // Thread A records at the newer period, thread B at the older one in the same slot, interleaved
        // however the scheduler likes: every newer record is counted, no older one resets them.
        for _ in 0..200 {
            let origin = Instant::now();
            let window = std::sync::Arc::new(SlidingWindow::new(Duration::from_secs(64), origin));
            let newer = origin + Duration::from_millis(70_500);
            let older = origin + Duration::from_millis(6_500);
            window.record(newer, true);
            let b = {
                let window = window.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        window.record(older, false);
                    }
                })
            };
            for _ in 0..50 {
                window.record(newer, true);
            }
            b.join().unwrap();
            assert_eq!(
                window.counts(newer),
                WindowCounts {
                    successes: 51,
                    failures: 0
                }
            );
        }
    }

    proptest! {
        /// Against a model that keeps every call: the window never counts a call older than its length, and
        /// always counts every call younger than its length minus one bucket.
        #[test]
        fn window_counts_match_a_model(offsets in proptest::collection::vec(0u64..10_000, 1..200),
                                       fails in proptest::collection::vec(any::<bool>(), 200),
                                       read_at in 0u64..12_000) {
            let origin = Instant::now();
            let length_ms = 1_280u64; // 20 ms buckets
            let window = SlidingWindow::new(Duration::from_millis(length_ms), origin);
            let mut offsets = offsets;
            offsets.sort_unstable();
            let read_at = read_at.max(*offsets.last().unwrap());
            for (i, off) in offsets.iter().enumerate() {
                window.record(origin + Duration::from_millis(*off), !fails[i]);
            }
            let c = window.counts(origin + Duration::from_millis(read_at));
            let bucket = length_ms / BUCKETS as u64;
            let surely_in = offsets.iter().filter(|o| read_at - **o < length_ms - bucket).count() as u64;
            let maybe_in = offsets.iter().filter(|o| read_at - **o < length_ms).count() as u64;
            prop_assert!(c.total() >= surely_in, "{} < {}", c.total(), surely_in);
            prop_assert!(c.total() <= maybe_in, "{} > {}", c.total(), maybe_in);
        }
    }
}
