//! [`RetryPolicy`]: when and how often to retry, with its defaults.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use super::backoff::{Backoff, Jitter};
use super::budget::RetryBudget;
use crate::error::check_duration;
use crate::metrics::ListenerMetrics;
use crate::Error;

/// Decides whether an error is worth a retry (see [`RetryPolicy::retry_condition`]).
pub type RetryCondition = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// Settings of a [`RetryLayer`](super::RetryLayer).
///
/// Defaults: 3 retries after the first attempt, 100 ms initial delay, exponential backoff (factor 2) capped
/// at 30 s, no jitter, retry handler errors, timeouts and panics but never rejections.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{Backoff, Jitter, RetryPolicy};
///
/// let policy = RetryPolicy {
///     max_retries: 5,
///     initial_delay: Duration::from_millis(50),
///     max_delay: Some(Duration::from_secs(5)),
///     backoff: Backoff::Linear,
///     jitter: Jitter::Full,
///     ..RetryPolicy::default()
/// };
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt: an always-failing handler runs `1 + max_retries` times (the Go
    /// package's `MaxAttempts`). Default 3; 0 disables retrying.
    pub max_retries: u32,
    /// `d`, the base of every backoff formula. Default 100 ms.
    pub initial_delay: Duration,
    /// The cap on each delay (applied before jitter). `None` means no cap, never "zero". Default 30 s.
    pub max_delay: Option<Duration>,
    /// How the delay grows. Default [`Backoff::Exponential`] with factor 2.
    pub backoff: Backoff,
    /// Randomness added after the cap. Default [`Jitter::None`].
    pub jitter: Jitter,
    /// Which errors are retried. Default ([`RetryPolicy::default_condition`]): handler errors, timeouts and
    /// panics; never rejections. A panic inside it counts as "do not retry" and is logged. It is not asked
    /// about [permanent](Error::Permanent) errors: those are never retried.
    pub retry_condition: Option<RetryCondition>,
    /// A budget shared by every clone of this policy. Default `None` (no budget).
    pub budget: Option<RetryBudget>,
    /// Seed of the jitter's random source, for reproducible tests. Default `None` (seeded from the OS).
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Some(Duration::from_secs(30)),
            backoff: Backoff::exponential(),
            jitter: Jitter::None,
            retry_condition: None,
            budget: None,
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// The default policy (the Go package's `DefaultRetryPolicy`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that never retries.
    pub fn never() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The default condition: retry [`Error::Handler`], [`Error::Timeout`] and [`Error::Panicked`].
    pub fn default_condition(error: &Error) -> bool {
        matches!(
            error,
            Error::Handler(_) | Error::Timeout { .. } | Error::Panicked { .. }
        )
    }

    /// Sets the retry condition.
    pub fn with_condition(
        mut self,
        condition: impl Fn(&Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_condition = Some(Arc::new(condition));
        self
    }

    /// Whether `error` should be retried under this policy's condition. A permanent error never is,
    /// whatever the condition. A panicking condition is caught, counted in `metrics`, and answers false.
    pub(crate) fn should_retry(&self, error: &Error, metrics: Option<&ListenerMetrics>) -> bool {
        if error.is_permanent() {
            return false;
        }
        match &self.retry_condition {
            None => Self::default_condition(error),
            Some(condition) => match catch_unwind(AssertUnwindSafe(|| condition(error))) {
                Ok(retry) => retry,
                Err(_) => {
                    if let Some(metrics) = metrics {
                        metrics.panicked();
                    }
                    tracing::error!(target: "tower_listener::retry", "retry_condition panicked; not retrying");
                    false
                }
            },
        }
    }

    /// Checks every field; the error names the first bad one, as `"retry_policy.<field>"`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_listener::{Error, RetryPolicy};
    ///
    /// let bad = RetryPolicy { max_delay: Some(Duration::from_millis(10)), ..RetryPolicy::default() };
    /// match bad.validate() {
    ///     Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "retry_policy.max_delay"),
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        check_duration("retry_policy.initial_delay", self.initial_delay)?;
        if let Some(max) = self.max_delay {
            check_duration("retry_policy.max_delay", max)?;
            if max < self.initial_delay {
                return Err(Error::invalid_config(
                    "retry_policy.max_delay",
                    "must not be less than initial_delay",
                ));
            }
        }
        if let Backoff::Exponential { factor } = self.backoff {
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(Error::invalid_config(
                    "retry_policy.backoff",
                    format!(
                        "exponential factor must be a finite number of at least 1, got {factor}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_retries", &self.max_retries)
            .field("initial_delay", &self.initial_delay)
            .field("max_delay", &self.max_delay)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field(
                "retry_condition",
                &self.retry_condition.as_ref().map(|_| "custom"),
            )
            .field("budget", &self.budget)
            .field("seed", &self.seed)
            .finish()
    }
}
