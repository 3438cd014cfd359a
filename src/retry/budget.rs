//! [`RetryBudget`]: a cap on retries as a share of traffic, shared by every clone.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::window::SlidingWindow;
use crate::{clock, Error};

/// A retry budget: retries may add at most `retry_percent` of the recent first attempts, plus a floor of
/// `min_per_sec` retries per second, measured over `ttl`. Clones share one budget, so retries cannot
/// multiply load when a dependency is down.
///
/// The semantics and the arguments are those of tower's `TpsBudget` (a bad value is an
/// [`Error::InvalidConfig`] here instead of tower's panic), but not its implementation: tower's takes a
/// mutex that every caller shares on every first attempt. Here deposits and withdrawals are counted in a
/// sliding window sharded by thread (the one the health window uses), so a first attempt costs one atomic
/// add on its own thread's cache line, and only a retry reads the whole window.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap();
/// assert!(RetryBudget::new(Duration::from_secs(0), 1, 0.2).is_err());
/// # drop(budget);
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Balance>,
    ttl: Duration,
    min_per_sec: u32,
    retry_percent: f32,
}

impl RetryBudget {
    /// A budget over `ttl` (1 to 60 s) allowing `min_per_sec` retries per second plus `retry_percent`
    /// (0 to 1000, as a fraction: 0.2 = 20 %) of first attempts.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `retry_policy.budget` when a value is out of range.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Result<Self, Error> {
        const FIELD: &str = "retry_policy.budget";
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(Error::invalid_config(
                FIELD,
                "ttl must be between 1 and 60 seconds",
            ));
        }
        if !(0.0..=1000.0).contains(&retry_percent) {
            return Err(Error::invalid_config(
                FIELD,
                "retry_percent must be between 0 and 1000",
            ));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(Error::invalid_config(FIELD, "min_per_sec is too large"));
        }
        // tower's units: a deposit earns `deposit` units and a retry costs `withdraw`, so that
        // `retry_percent` retries are earned per first attempt; the floor is `min_per_sec` retries per
        // second over the whole window.
        let (deposit, withdraw) = if retry_percent == 0.0 {
            (0, 1)
        } else if retry_percent <= 1.0 {
            (1, (1.0 / retry_percent) as i64)
        } else {
            (1000, (1000.0 / retry_percent) as i64)
        };
        Ok(RetryBudget {
            inner: Arc::new(Balance {
                // Successes are deposits, failures withdrawals.
                window: SlidingWindow::sharded(ttl, clock::now()),
                reserve: i64::from(min_per_sec) * ttl.as_secs() as i64 * withdraw,
                deposit,
                withdraw,
            }),
            ttl,
            min_per_sec,
            retry_percent,
        })
    }

    /// Counts a first attempt made at `now` (it earns budget for retries).
    pub(crate) fn deposit(&self, now: Instant) {
        self.inner.window.record(now, true);
    }

    /// Takes budget for one retry; false when there is none. Two threads that withdraw the last unit at
    /// once may both get it (as with tower's): the cap holds to within the number of racing retries.
    pub(crate) fn withdraw(&self) -> bool {
        let now = clock::now();
        let Balance {
            window,
            reserve,
            deposit,
            withdraw,
        } = &*self.inner;
        let counts = window.counts(now);
        let earned = i64::try_from(counts.successes).unwrap_or(i64::MAX);
        let spent = i64::try_from(counts.failures).unwrap_or(i64::MAX);
        let balance = reserve
            .saturating_add(earned.saturating_mul(*deposit))
            .saturating_sub(spent.saturating_mul(*withdraw));
        if balance < *withdraw {
            return false;
        }
        window.record(now, false);
        true
    }
}

/// What the clones of a [`RetryBudget`] share.
struct Balance {
    window: SlidingWindow,
    /// Units available without any deposit: the floor of retries per second, over the window.
    reserve: i64,
    /// Units a first attempt earns.
    deposit: i64,
    /// Units a retry costs.
    withdraw: i64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("retry_percent", &self.retry_percent)
            .finish()
    }
}
