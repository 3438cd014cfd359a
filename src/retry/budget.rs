//! [`RetryBudget`]: a cap on retries as a share of traffic, shared by every clone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::Error;

/// A retry budget: retries may add at most `retry_percent` of the recent first attempts, plus a floor of
/// `min_per_sec` retries per second, measured over `ttl`. Clones share one budget, so retries cannot
/// multiply load when a dependency is down.
///
/// Built on tower's `TpsBudget` (whose semantics fit exactly); the arguments are validated here so a bad
/// value is an [`Error::InvalidConfig`] instead of tower's panic.
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
    inner: Arc<TpsBudget>,
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
        Ok(RetryBudget {
            inner: Arc::new(TpsBudget::new(ttl, min_per_sec, retry_percent)),
            ttl,
            min_per_sec,
            retry_percent,
        })
    }

    /// Counts a first attempt (it earns budget for retries).
    pub(crate) fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes budget for one retry; false when there is none.
    pub(crate) fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
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
