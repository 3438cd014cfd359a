//! Latency histograms that concurrent callers record into without sharing a lock.
//!
//! The histogram is split into shards, each an hdrhistogram behind its own mutex; a thread records into the
//! shard its thread index picks (falling back to the next free one if that is busy), so two threads almost
//! never meet on one lock. A shard is allocated on its first use. Reading merges the shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest trackable latency: one hour. Longer values saturate to it.
const HIGHEST_NANOS: u64 = 3_600_000_000_000;
/// Two significant digits: each percentile within 1% of the true value.
const SIGNIFICANT_DIGITS: u8 = 2;

/// A summary of recorded latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many latencies were recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// The largest recorded latency (saturated at one hour).
    pub max: Duration,
}

impl LatencySummary {
    /// The summary of the union of two sets of latencies, for sums over listeners. Percentiles of a union
    /// cannot be derived from two summaries, so each is the larger of the two (an upper bound).
    pub fn merge_upper_bound(self, other: LatencySummary) -> LatencySummary {
        LatencySummary {
            count: self.count + other.count,
            p50: self.p50.max(other.p50),
            p90: self.p90.max(other.p90),
            p99: self.p99.max(other.p99),
            p999: self.p999.max(other.p999),
            max: self.max.max(other.max),
        }
    }
}

#[repr(align(128))] // one shard per cache line pair, so shards do not false-share
struct Shard(OnceLock<Mutex<Histogram<u64>>>);

pub(crate) struct LatencyHistogram {
    shards: Box<[Shard]>,
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low 1 ≤ high/2, sigfig ≤ 5): this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_NANOS, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    // Const-initialised (no lazy-init check on access); `usize::MAX` until the thread's first use.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A small number that differs between threads (assigned in order of first use): picks a thread's shard.
#[inline]
pub(crate) fn thread_index() -> usize {
    match THREAD_INDEX.get() {
        usize::MAX => assign_thread_index(),
        assigned => assigned,
    }
}

/// A thread's first use: out of line, so the hot path above stays small enough to inline everywhere.
#[cold]
#[inline(never)]
fn assign_thread_index() -> usize {
    let assigned = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
    THREAD_INDEX.set(assigned);
    assigned
}

/// This thread's shard among `shards`, a power of two (as [`shard_count`] gives): a mask, not a division,
/// since it runs several times per event.
#[inline]
pub(crate) fn thread_shard(shards: usize) -> usize {
    debug_assert!(shards.is_power_of_two());
    thread_index() & (shards - 1)
}

/// How many shards a per-thread structure gets: twice the parallelism, a power of two, 2 to 32.
pub(crate) fn shard_count() -> usize {
    let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
    (parallelism * 2).next_power_of_two().clamp(2, 32)
}

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        LatencyHistogram {
            shards: (0..shard_count()).map(|_| Shard(OnceLock::new())).collect(),
        }
    }

    fn shard(&self, index: usize) -> &Mutex<Histogram<u64>> {
        self.shards[index & (self.shards.len() - 1)]
            .0
            .get_or_init(|| Mutex::new(new_histogram()))
    }

    /// Records one latency; values past one hour saturate.
    pub(crate) fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let home = thread_index();
        // Try our own shard, then the next one, before waiting on our own.
        for step in 0..2 {
            if let Ok(mut h) = self.shard(home + step).try_lock() {
                h.saturating_record(nanos);
                return;
            }
        }
        let mut h = self
            .shard(home)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        h.saturating_record(nanos);
    }

    /// Percentiles over everything recorded.
    pub(crate) fn summary(&self) -> LatencySummary {
        let mut merged = new_histogram();
        for shard in self.shards.iter() {
            if let Some(h) = shard.0.get() {
                let h = h.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Same bounds on both sides: adding cannot fail.
                let _ = merged.add(&*h);
            }
        }
        if merged.is_empty() {
            return LatencySummary::default();
        }
        let at = |q: f64| Duration::from_nanos(merged.value_at_quantile(q));
        LatencySummary {
            count: merged.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(merged.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_recorded_values() {
        let h = LatencyHistogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        let close = |d: Duration, ms: u64| {
            let want = Duration::from_millis(ms).as_secs_f64();
            (d.as_secs_f64() - want).abs() <= want * 0.01
        };
        assert!(close(s.p50, 50), "{:?}", s.p50);
        assert!(close(s.p90, 90), "{:?}", s.p90);
        assert!(close(s.p99, 99), "{:?}", s.p99);
        assert!(close(s.max, 100), "{:?}", s.max);
    }

    #[test]
    fn a_value_past_the_range_saturates() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_secs(10 * 3600));
        h.record(Duration::MAX);
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert!(s.max <= Duration::from_secs(3600 + 36), "{:?}", s.max);
        assert!(s.max >= Duration::from_secs(3600 - 36), "{:?}", s.max);
    }
}
