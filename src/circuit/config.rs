//! [`CircuitConfig`]: the breaker's settings, with their defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::state::{CallOutcome, CircuitState};
use crate::error::{check_duration, MAX_CONFIG_DURATION};
use crate::Error;

/// Classifies a failed call for the breaker (see [`CircuitConfig::classifier`]).
pub type ErrorClassifier = Arc<dyn Fn(&Error) -> CallOutcome + Send + Sync>;

/// Classifies a successful response for the breaker (see [`CircuitConfig::response_classifier`]); it sees
/// the response as `&dyn Any` (see [`CircuitConfig::classify_responses`] for a typed one).
pub type ResponseClassifier = Arc<dyn Fn(&dyn std::any::Any) -> CallOutcome + Send + Sync>;

/// Called on every state change (see [`CircuitConfig::on_state_change`]).
pub type StateChangeHook = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// A state change of a breaker, as handed to [`CircuitConfig::on_state_change`].
///
/// ```
/// use tower_listener::{CircuitConfig, CircuitState, StateChange};
///
/// let config = CircuitConfig::default().on_state_change(|change: &StateChange| {
///     if change.to == CircuitState::Open {
///         eprintln!("breaker {} opened (was {})", change.name, change.from);
///     }
/// });
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange {
    /// The breaker's name (its listener's name in a manager).
    pub name: Arc<str>,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
}

/// Settings of a [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// The defaults are those of the Go package and resilience4j's count-based breaker: open after 5 failures
/// inside 60 s, stay open 30 s, close after 3 consecutive probe successes, one probe at a time.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::CircuitConfig;
///
/// let config = CircuitConfig {
///     failure_threshold: 3,
///     timeout: Duration::from_secs(10),
///     ..CircuitConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// assert_eq!(config.success_threshold, 3);
/// ```
#[derive(Clone)]
pub struct CircuitConfig {
    /// Whether the breaker acts at all. Default `true`; `false` lets every call through and counts nothing.
    pub enabled: bool,
    /// Failures inside `sliding_window` that open the breaker (count mode). Default 5.
    pub failure_threshold: u32,
    /// Consecutive probe successes that close a half-open breaker. Default 3.
    pub success_threshold: u32,
    /// How long the breaker stays open before it admits a probe. Default 30 s.
    pub timeout: Duration,
    /// The length of the sliding window failures are counted in. Default 60 s.
    pub sliding_window: Duration,
    /// Probes that may run at once while half-open; further calls are rejected. Default 1.
    pub half_open_max_calls: u32,
    /// Rate mode: open when the failure ratio inside the window reaches this (in `(0, 1]`), once the window
    /// holds at least `minimum_calls` calls. Replaces `failure_threshold`. Default `None` (count mode).
    pub failure_rate_threshold: Option<f64>,
    /// Rate mode: calls the window must hold before the ratio is judged. Default 10.
    pub minimum_calls: u32,
    /// A success slower than this counts as a failure. Default `None`.
    pub slow_call_threshold: Option<Duration>,
    /// Adds a random `U(0, open_jitter)` to each open period, so a fleet of breakers does not probe in
    /// step. Default `None`.
    pub open_jitter: Option<Duration>,
    /// How an error counts. Default ([`CircuitConfig::default_classifier`]): rejections
    /// ([`Error::is_rejection`]) and [`Error::Stopped`] are ignored, every other error is a failure. It is
    /// not asked about [permanent](Error::Permanent) errors: those say nothing about the dependency and
    /// are always ignored.
    pub classifier: Option<ErrorClassifier>,
    /// How a successful response counts: for services that report failure in the response itself (an HTTP
    /// 5xx from an axum handler). Default `None`: every response is a success (unless slow).
    pub response_classifier: Option<ResponseClassifier>,
    /// Called after every state change, outside the breaker's lock (it may call the handle). A panic in
    /// it is caught and logged.
    pub on_state_change: Option<StateChangeHook>,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            enabled: true,
            failure_threshold: 5,
            success_threshold: 3,
            timeout: Duration::from_secs(30),
            sliding_window: Duration::from_secs(60),
            half_open_max_calls: 1,
            failure_rate_threshold: None,
            minimum_calls: 10,
            slow_call_threshold: None,
            open_jitter: None,
            classifier: None,
            response_classifier: None,
            on_state_change: None,
        }
    }
}

impl CircuitConfig {
    /// The default configuration (the Go package's `DefaultCircuitConfig`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A disabled breaker: every call passes.
    pub fn disabled() -> Self {
        CircuitConfig {
            enabled: false,
            ..Self::default()
        }
    }

    /// The default classification of an error: rejections, shutdowns and permanent errors are
    /// [`CallOutcome::Ignored`], everything else is a [`CallOutcome::Failure`].
    pub fn default_classifier(error: &Error) -> CallOutcome {
        if error.is_rejection() || matches!(error, Error::Stopped | Error::Permanent(_)) {
            CallOutcome::Ignored
        } else {
            CallOutcome::Failure
        }
    }

    /// Sets the error classifier.
    pub fn with_classifier(
        mut self,
        classifier: impl Fn(&Error) -> CallOutcome + Send + Sync + 'static,
    ) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// Classifies responses of type `R`: `f` decides whether each counts as a success, a failure, or
    /// neither. Responses of another type count as successes.
    ///
    /// ```
    /// use tower_listener::{CallOutcome, CircuitConfig};
    ///
    /// // A service answering with a status code: 5xx counts as a failure.
    /// let config = CircuitConfig::default().classify_responses(|status: &u16| {
    ///     if *status >= 500 { CallOutcome::Failure } else { CallOutcome::Success }
    /// });
    /// # let _ = config;
    /// ```
    pub fn classify_responses<R: 'static>(
        mut self,
        f: impl Fn(&R) -> CallOutcome + Send + Sync + 'static,
    ) -> Self {
        self.response_classifier = Some(Arc::new(move |response: &dyn std::any::Any| {
            response
                .downcast_ref::<R>()
                .map_or(CallOutcome::Success, &f)
        }));
        self
    }

    /// Sets the state-change hook.
    pub fn on_state_change(mut self, hook: impl Fn(&StateChange) + Send + Sync + 'static) -> Self {
        self.on_state_change = Some(Arc::new(hook));
        self
    }

    /// Checks every field; the error names the first bad one, as `"circuit.<field>"` (the path of the field
    /// inside a [`ListenerConfig`](crate::ListenerConfig)).
    ///
    /// ```
    /// use tower_listener::{CircuitConfig, Error};
    ///
    /// let bad = CircuitConfig { failure_threshold: 0, ..CircuitConfig::default() };
    /// match bad.validate() {
    ///     Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "circuit.failure_threshold"),
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("circuit.failure_threshold", self.failure_threshold),
            ("circuit.success_threshold", self.success_threshold),
            ("circuit.half_open_max_calls", self.half_open_max_calls),
        ] {
            if value == 0 {
                return Err(Error::invalid_config(field, "must be at least 1"));
            }
        }
        check_duration("circuit.timeout", self.timeout)?;
        check_duration("circuit.sliding_window", self.sliding_window)?;
        if let Some(rate) = self.failure_rate_threshold {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(Error::invalid_config(
                    "circuit.failure_rate_threshold",
                    format!("must be in (0, 1], got {rate}"),
                ));
            }
            if self.minimum_calls == 0 {
                return Err(Error::invalid_config(
                    "circuit.minimum_calls",
                    "must be at least 1",
                ));
            }
        }
        if let Some(slow) = self.slow_call_threshold {
            check_duration("circuit.slow_call_threshold", slow)?;
        }
        if let Some(jitter) = self.open_jitter {
            if jitter > MAX_CONFIG_DURATION {
                return Err(Error::invalid_config(
                    "circuit.open_jitter",
                    "must be at most 365 days",
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CircuitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitConfig")
            .field("enabled", &self.enabled)
            .field("failure_threshold", &self.failure_threshold)
            .field("success_threshold", &self.success_threshold)
            .field("timeout", &self.timeout)
            .field("sliding_window", &self.sliding_window)
            .field("half_open_max_calls", &self.half_open_max_calls)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("minimum_calls", &self.minimum_calls)
            .field("slow_call_threshold", &self.slow_call_threshold)
            .field("open_jitter", &self.open_jitter)
            .field("classifier", &self.classifier.as_ref().map(|_| "custom"))
            .field(
                "response_classifier",
                &self.response_classifier.as_ref().map(|_| "custom"),
            )
            .field(
                "on_state_change",
                &self.on_state_change.as_ref().map(|_| "hook"),
            )
            .finish()
    }
}
