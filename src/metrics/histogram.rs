//! Latency histograms that concurrent callers record into without a lock.
//!
//! Each histogram is split into shards, one per thread shard, each an array of atomic counters with the
//! bucket layout of an hdrhistogram of two significant digits (every value below 256 ns exact, then 128
//! buckets per power of two: within 0.8 %). Recording is one relaxed atomic add on the recording thread's
//! own shard (a shard's counters are allocated on its first use). Reading sums the shards into an
//! [`hdrhistogram::Histogram`] with the same buckets, which computes the percentiles. (It was one
//! hdrhistogram per shard behind a mutex: the lock and hdrhistogram's bookkeeping cost ~140 instructions
//! per record, more than the rest of the metrics layer.)

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest trackable latency: one hour. Longer values saturate to it.
const HIGHEST_NANOS: u64 = 3_600_000_000_000;
/// Two significant digits: each percentile within 1% of the true value.
const SIGNIFICANT_DIGITS: u8 = 2;
/// Values below this are counted exactly (hdrhistogram's sub-bucket count for two significant digits).
const EXACT: u64 = 256;
/// Buckets per power of two above [`EXACT`].
const PER_OCTAVE: u64 = EXACT / 2;
/// Buckets for 0 ..= [`HIGHEST_NANOS`].
const BUCKETS: usize = bucket(HIGHEST_NANOS) + 1;

/// The bucket of `nanos` (at most [`HIGHEST_NANOS`]).
const fn bucket(nanos: u64) -> usize {
    if nanos < EXACT {
        return nanos as usize;
    }
    let octave = 63 - nanos.leading_zeros() as u64; // 8 for 256..=511
    let shift = octave - 7; // keeps the top 8 bits: 128..=255
    (EXACT + (octave - 8) * PER_OCTAVE + ((nanos >> shift) - PER_OCTAVE)) as usize
}

/// The lowest value counted in bucket `index`.
fn bucket_floor(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let octave = (index - EXACT) / PER_OCTAVE + 8;
    let top = (index - EXACT) % PER_OCTAVE + PER_OCTAVE;
    top << (octave - 7)
}

/// A summary of recorded latencies.
///
/// With the `serde` feature it serializes with each duration as whole nanoseconds (`p50_ns`, …), exact
/// and readable by any tool.
///
/// ```
/// use std::sync::Arc;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{Error, ListenerMetrics, MetricsLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let metrics = Arc::new(ListenerMetrics::new("orders"));
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::per_event(metrics.clone()))
///     .service(service_fn(|n: u32| async move { Ok::<_, Error>(n) }));
/// svc.oneshot(1).await.unwrap();
/// let latency = metrics.snapshot().event_latency;
/// assert_eq!(latency.count, 1);
/// assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LatencySummary {
    /// How many latencies were recorded.
    pub count: u64,
    /// Median.
    #[cfg_attr(feature = "serde", serde(rename = "p50_ns", with = "nanos"))]
    pub p50: Duration,
    /// 90th percentile.
    #[cfg_attr(feature = "serde", serde(rename = "p90_ns", with = "nanos"))]
    pub p90: Duration,
    /// 99th percentile.
    #[cfg_attr(feature = "serde", serde(rename = "p99_ns", with = "nanos"))]
    pub p99: Duration,
    /// 99.9th percentile.
    #[cfg_attr(feature = "serde", serde(rename = "p999_ns", with = "nanos"))]
    pub p999: Duration,
    /// The largest recorded latency (saturated at one hour).
    #[cfg_attr(feature = "serde", serde(rename = "max_ns", with = "nanos"))]
    pub max: Duration,
}

/// A duration as whole nanoseconds (a `u64` holds 584 years; recorded latencies saturate at one hour).
#[cfg(feature = "serde")]
mod nanos {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_nanos)
    }
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

/// A histogram in coarse buckets (see [`LatencyHistogram::coarse`]).
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) struct Coarse {
    pub(crate) counts: Vec<u64>,
    pub(crate) count: u64,
    pub(crate) sum_seconds: f64,
}

#[repr(align(128))] // one shard per cache line pair, so shards do not false-share
struct Shard(OnceLock<Box<[AtomicU64]>>);

pub(crate) struct LatencyHistogram {
    shards: Box<[Shard]>,
}

fn new_histogram() -> Histogram<u64> {
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
fn thread_index() -> usize {
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

    /// Records one latency; values past one hour saturate.
    #[inline]
    pub(crate) fn record(&self, latency: Duration) {
        let nanos =
            u64::try_from(latency.as_nanos()).map_or(HIGHEST_NANOS, |n| n.min(HIGHEST_NANOS));
        let counts = self.shards[thread_shard(self.shards.len())]
            .0
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
        // Relaxed: a count only has to be exact once the recording threads are done, and a reader that
        // races with them sees some of the latest records or not (they are all counted eventually).
        counts[bucket(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every bucket's count, summed over the shards of every histogram in `parts`.
    fn totals(parts: &[&LatencyHistogram]) -> Vec<u64> {
        let mut totals = vec![0u64; BUCKETS];
        for part in parts {
            for counts in part.shards.iter().filter_map(|shard| shard.0.get()) {
                for (total, count) in totals.iter_mut().zip(counts.iter()) {
                    *total += count.load(Ordering::Relaxed);
                }
            }
        }
        totals
    }

    /// Percentiles over everything recorded.
    #[cfg(test)]
    pub(crate) fn summary(&self) -> LatencySummary {
        Self::summary_of(&[self])
    }

    /// [`coarse_of`](Self::coarse_of) this histogram alone.
    #[cfg(test)]
    pub(crate) fn coarse(&self, bounds: &[u64]) -> Coarse {
        Self::coarse_of(&[self], bounds)
    }

    /// What was recorded in `parts` (as one histogram), in the coarse buckets `bounds` (upper bounds in
    /// nanoseconds, ascending): the count in each (not cumulative; one more for what is above the last),
    /// the total count, and the sum in seconds. A fine bucket goes to the first bound at or above its lowest value (buckets are within
    /// 0.8 %), and counts in the sum at its middle.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn coarse_of(parts: &[&LatencyHistogram], bounds: &[u64]) -> Coarse {
        let mut coarse = Coarse {
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum_seconds: 0.0,
        };
        for (index, count) in Self::totals(parts)
            .into_iter()
            .enumerate()
            .filter(|(_, c)| *c > 0)
        {
            let floor = bucket_floor(index);
            let next = if index + 1 < BUCKETS {
                bucket_floor(index + 1)
            } else {
                floor
            };
            let slot = bounds.partition_point(|&bound| bound < floor);
            coarse.counts[slot] += count;
            coarse.count += count;
            coarse.sum_seconds += count as f64 * (floor as f64 + next as f64) / 2.0 / 1e9;
        }
        coarse
    }

    /// Percentiles over everything recorded in `parts`, as one histogram.
    pub(crate) fn summary_of(parts: &[&LatencyHistogram]) -> LatencySummary {
        let mut merged = new_histogram();
        let totals = Self::totals(parts);
        for (index, &count) in totals.iter().enumerate().filter(|(_, &c)| c > 0) {
            // The same buckets on both sides: the floor lands in this bucket's hdrhistogram bucket.
            merged.saturating_record_n(bucket_floor(index), count);
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
    fn buckets_are_hdrhistogram_buckets() {
        let reference = new_histogram();
        let mut values: Vec<u64> = (0..4096)
            .chain((12..43).flat_map(|p| [(1u64 << p) - 1, 1 << p, (1 << p) + 1, 3 << (p - 1)]))
            .map(|nanos| nanos.min(HIGHEST_NANOS))
            .collect();
        values.sort_unstable();
        let mut previous = 0;
        for nanos in values {
            let index = bucket(nanos);
            assert!(index >= previous, "buckets grow with the value");
            previous = index;
            let floor = bucket_floor(index);
            assert!(floor <= nanos, "{nanos}: floor {floor}");
            assert_eq!(bucket(floor), index, "{nanos}: the floor is in the bucket");
            assert!(
                reference.equivalent(floor.max(1), nanos.max(1)),
                "{nanos} and {floor} share an hdrhistogram bucket"
            );
        }
        assert_eq!(bucket(HIGHEST_NANOS), BUCKETS - 1);
    }

    #[test]
    fn coarse_buckets_count_each_value_once_under_its_bound() {
        let h = LatencyHistogram::new();
        for micros in [50u64, 100, 150, 999, 1_000, 1_001, 2_000_000] {
            h.record(Duration::from_micros(micros));
        }
        let bounds = [100_000, 1_000_000, 1_000_000_000];
        let coarse = h.coarse(&bounds);
        assert_eq!(coarse.count, 7);
        // ≤ 100 µs: 50, 100; ≤ 1 ms: 150, 999, 1000 (1001 µs is in a bucket whose floor is 1 ms within
        // 0.8 %, so it lands under the bound too); ≤ 1 s: none; above: 2 s.
        assert_eq!(coarse.counts, [2, 4, 0, 1]);
        let exact = (50 + 100 + 150 + 999 + 1_000 + 1_001 + 2_000_000) as f64 / 1e6;
        assert!(
            (coarse.sum_seconds - exact).abs() < exact * 0.01,
            "{}",
            coarse.sum_seconds
        );
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
