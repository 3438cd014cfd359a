//! Backoff and jitter: the delay before each retry, as plain functions (no tokio, no tower).

use std::fmt;
use std::time::Duration;

/// How the delay grows from one retry to the next, before the cap. `d` is the initial delay and `n` the
/// retry number (1, 2, …).
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{Backoff, RetryPolicy};
///
/// let d = Duration::from_millis(100);
/// assert_eq!(Backoff::exponential().delay(d, 3), Duration::from_millis(400)); // d·2^(n-1)
/// assert_eq!(Backoff::Quadratic.delay(d, 3), Duration::from_millis(900));     // the Go package's table
/// assert_eq!(Backoff::Linear.delay(d, 3), Duration::from_millis(300));
/// assert_eq!(Backoff::Fixed.delay(d, 3), d);
/// let policy = RetryPolicy { backoff: Backoff::Exponential { factor: 3.0 }, ..RetryPolicy::default() };
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// `d` every time.
    Fixed,
    /// `d·n`: 100 ms, 200 ms, 300 ms, …
    Linear,
    /// `d·factor^(n−1)`: with factor 2, 100 ms, 200 ms, 400 ms, 800 ms, …
    Exponential {
        /// The growth factor (at least 1). The default policy uses 2.
        factor: f64,
    },
    /// `d·n²`: 100 ms, 400 ms, 900 ms, 1.6 s, 2.5 s. This is the table the Go package documents (and
    /// computes) under the name "exponential"; here it carries its true name.
    Quadratic,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::exponential()
    }
}

impl Backoff {
    /// Exponential backoff with factor 2.
    pub const fn exponential() -> Self {
        Backoff::Exponential { factor: 2.0 }
    }

    /// The name: "fixed", "linear", "exponential", "quadratic".
    pub fn as_str(&self) -> &'static str {
        match self {
            Backoff::Fixed => "fixed",
            Backoff::Linear => "linear",
            Backoff::Exponential { .. } => "exponential",
            Backoff::Quadratic => "quadratic",
        }
    }

    /// The delay before retry `n` (1-based) from the initial delay `d`, before cap and jitter. Saturates at
    /// `Duration::MAX` instead of overflowing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_listener::Backoff;
    ///
    /// let d = Duration::from_millis(100);
    /// let table: Vec<u128> = (1..=5).map(|n| Backoff::Quadratic.delay(d, n).as_millis()).collect();
    /// assert_eq!(table, [100, 400, 900, 1600, 2500]);
    /// assert_eq!(Backoff::exponential().delay(d, 4), Duration::from_millis(800));
    /// ```
    pub fn delay(&self, initial: Duration, n: u32) -> Duration {
        let n = n.max(1);
        match *self {
            Backoff::Fixed => initial,
            Backoff::Linear => initial.checked_mul(n).unwrap_or(Duration::MAX),
            Backoff::Quadratic => n
                .checked_mul(n)
                .and_then(|n2| initial.checked_mul(n2))
                .unwrap_or(Duration::MAX),
            Backoff::Exponential { factor } => {
                let exponent = i32::try_from(n - 1).unwrap_or(i32::MAX);
                let nanos = initial.as_nanos() as f64 * factor.powi(exponent);
                if nanos.is_finite() && nanos < u64::MAX as f64 {
                    Duration::from_nanos(nanos.round() as u64)
                } else {
                    Duration::MAX
                }
            }
        }
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Randomness added to each delay, after the cap (so it survives at the cap).
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{Jitter, RetryPolicy};
///
/// // A fleet of consumers retrying the same outage should not retry in step.
/// let policy = RetryPolicy {
///     jitter: Jitter::Full,            // each delay drawn from U(0, delay)
///     max_delay: Some(Duration::from_secs(10)),
///     seed: Some(7),                   // reproducible in tests
///     ..RetryPolicy::default()
/// };
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// The delay as computed. The default.
    #[default]
    None,
    /// `U(0, delay)`.
    Full,
    /// `delay/2 + U(0, delay/2)`.
    Equal,
    /// `min(cap, U(d, 3·previous))`, where `previous` is the last delay slept (`d` at first): AWS's
    /// "decorrelated jitter". It replaces the backoff formula.
    Decorrelated,
}

impl Jitter {
    /// The name: "none", "full", "equal", "decorrelated".
    pub fn as_str(&self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

/// A uniformly drawn duration in `[low, high]`.
fn uniform(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
    low + Duration::from_nanos(rng.u64(0..=span))
}

/// The delay before retry `n`: backoff, then cap, then jitter.
pub(crate) fn retry_delay(
    backoff: Backoff,
    jitter: Jitter,
    initial: Duration,
    cap: Option<Duration>,
    n: u32,
    previous: Duration,
    rng: &mut fastrand::Rng,
) -> Duration {
    let capped = |d: Duration| cap.map_or(d, |cap| d.min(cap));
    match jitter {
        Jitter::None => capped(backoff.delay(initial, n)),
        Jitter::Full => uniform(rng, Duration::ZERO, capped(backoff.delay(initial, n))),
        Jitter::Equal => {
            let delay = capped(backoff.delay(initial, n));
            let half = delay / 2;
            uniform(rng, half, delay)
        }
        Jitter::Decorrelated => {
            let high = previous.max(initial).saturating_mul(3);
            capped(uniform(rng, initial, high))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: Duration = Duration::from_millis(100);

    /// `draws` delays from `jitter` with a seeded generator, sorted.
    fn draws(jitter: Jitter, n: u32, previous: Duration, draws: usize) -> Vec<Duration> {
        let mut rng = fastrand::Rng::with_seed(20261202);
        let mut delays: Vec<Duration> = (0..draws)
            .map(|_| {
                retry_delay(
                    Backoff::exponential(),
                    jitter,
                    D,
                    None,
                    n,
                    previous,
                    &mut rng,
                )
            })
            .collect();
        delays.sort();
        delays
    }

    #[test]
    fn jitter_spreads_delays_over_its_whole_range() {
        // Attempt 3 of exponential backoff from 100 ms: 400 ms before jitter.
        let base = Duration::from_millis(400);
        let ranges = [
            (Jitter::Full, Duration::ZERO, base),
            (Jitter::Equal, base / 2, base),
            // Decorrelated: between the initial delay and three times the previous one (here 400 ms).
            (Jitter::Decorrelated, D, base * 3),
        ];
        for (jitter, low, high) in ranges {
            let delays = draws(jitter, 3, base, 1_000);
            let mut distinct = delays.clone();
            distinct.dedup();
            assert!(
                distinct.len() > 990,
                "{jitter:?}: {} distinct of 1000",
                distinct.len()
            );
            let (first, last) = (delays[0], delays[delays.len() - 1]);
            assert!(
                first >= low && last <= high,
                "{jitter:?}: {first:?}..{last:?}"
            );
            // Both ends of the range are reached (within 2 % of its width), and the middle is its middle.
            let width = high - low;
            assert!(first - low < width / 50, "{jitter:?}: lowest {first:?}");
            assert!(high - last < width / 50, "{jitter:?}: highest {last:?}");
            let median = delays[delays.len() / 2];
            let middle = low + width / 2;
            let off = median.abs_diff(middle);
            assert!(
                off < width / 10,
                "{jitter:?}: median {median:?}, middle {middle:?}"
            );
        }
        // No jitter: every draw is the backoff itself.
        assert!(draws(Jitter::None, 3, base, 10).iter().all(|d| *d == base));
    }

    #[test]
    fn uniform_on_an_empty_range_is_its_low_end() {
        let mut rng = fastrand::Rng::with_seed(1);
        let at = Duration::from_millis(250);
        assert_eq!(uniform(&mut rng, at, at), at);
        assert_eq!(uniform(&mut rng, at, Duration::from_millis(100)), at);
        // A cap below the initial delay: decorrelated jitter is held to the cap.
        let capped = retry_delay(
            Backoff::Fixed,
            Jitter::Decorrelated,
            D,
            Some(Duration::from_millis(50)),
            4,
            D,
            &mut rng,
        );
        assert_eq!(capped, Duration::from_millis(50));
    }

    #[test]
    fn each_backoff_grows_as_documented() {
        let delays = |b: Backoff| {
            (0..=5)
                .map(|n| b.delay(D, n).as_millis())
                .collect::<Vec<_>>()
        };
        // Attempt 0 counts as the first.
        assert_eq!(delays(Backoff::Fixed), [100, 100, 100, 100, 100, 100]);
        assert_eq!(delays(Backoff::Linear), [100, 100, 200, 300, 400, 500]);
        assert_eq!(delays(Backoff::Quadratic), [100, 100, 400, 900, 1600, 2500]);
        assert_eq!(
            delays(Backoff::exponential()),
            [100, 100, 200, 400, 800, 1600]
        );
        assert_eq!(
            delays(Backoff::Exponential { factor: 1.5 }),
            [100, 100, 150, 225, 337, 506]
        );
    }

    #[test]
    fn exponential_backoff_saturates_exactly_at_the_largest_duration_it_can_hold() {
        // 2^33 ns doubled 31 times is 2^64 ns: one past u64::MAX nanoseconds, so the maximum.
        let initial = Duration::from_nanos(1 << 33);
        assert_eq!(Backoff::exponential().delay(initial, 32), Duration::MAX);
        // One doubling less fits in nanoseconds, and is exact.
        assert_eq!(
            Backoff::exponential().delay(initial, 31),
            Duration::from_nanos(1 << 63)
        );
        assert_eq!(Backoff::Linear.delay(Duration::MAX, 2), Duration::MAX);
        assert_eq!(Backoff::Quadratic.delay(D, u32::MAX), Duration::MAX);
    }

    #[test]
    fn backoffs_and_jitters_have_stable_names() {
        let backoffs = [
            (Backoff::Fixed, "fixed"),
            (Backoff::Linear, "linear"),
            (Backoff::exponential(), "exponential"),
            (Backoff::Quadratic, "quadratic"),
        ];
        for (backoff, name) in backoffs {
            assert_eq!(backoff.as_str(), name);
            assert_eq!(backoff.to_string(), name);
        }
        let jitters = [
            (Jitter::None, "none"),
            (Jitter::Full, "full"),
            (Jitter::Equal, "equal"),
            (Jitter::Decorrelated, "decorrelated"),
        ];
        for (jitter, name) in jitters {
            assert_eq!(jitter.as_str(), name);
        }
        assert_eq!(Backoff::default(), Backoff::exponential());
        assert_eq!(Jitter::default(), Jitter::None);
    }

    proptest! {
        #[test]
        fn every_jitter_stays_inside_its_bounds(seed: u64, n in 1u32..40, cap_ms in 100u64..60_000,
                                                previous_ms in 100u64..200_000) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let cap = Duration::from_millis(cap_ms);
            let previous = Duration::from_millis(previous_ms);
            for backoff in [Backoff::Fixed, Backoff::Linear, Backoff::exponential(), Backoff::Quadratic] {
                let base = backoff.delay(D, n).min(cap);
                let full = retry_delay(backoff, Jitter::Full, D, Some(cap), n, previous, &mut rng);
                prop_assert!(full <= base);
                let equal = retry_delay(backoff, Jitter::Equal, D, Some(cap), n, previous, &mut rng);
                prop_assert!(equal >= base / 2 && equal <= base);
                let none = retry_delay(backoff, Jitter::None, D, Some(cap), n, previous, &mut rng);
                prop_assert_eq!(none, base);
            }
            let dec = retry_delay(Backoff::Fixed, Jitter::Decorrelated, D, Some(cap), n, previous, &mut rng);
            prop_assert!(dec <= cap);
            prop_assert!(dec >= D.min(cap));
            prop_assert!(dec <= previous * 3);
        }

        #[test]
        fn backoff_never_overflows(n in 1u32..=u32::MAX, initial_ms in 1u64..u64::MAX / 1_000_000) {
            let d = Duration::from_millis(initial_ms);
            for backoff in [Backoff::Fixed, Backoff::Linear, Backoff::exponential(), Backoff::Quadratic] {
                prop_assert!(backoff.delay(d, n) >= d);
            }
        }
    }
}
