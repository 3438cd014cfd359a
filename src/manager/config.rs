//! [`ManagerConfig`] and [`ListenerConfig`], with their defaults.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::health::{HealthThresholds, ManagerHealthThresholds};
use crate::circuit::CircuitConfig;
use crate::dead_letter::DeadLetterConfig;
use crate::error::check_duration;
use crate::limit::{ConcurrencyConfig, LimitMode};
use crate::metrics::DEFAULT_HEALTH_WINDOW;
use crate::retry::RetryPolicy;
use crate::{Error, Event};

/// Settings of a [`ListenerManager`](super::ListenerManager).
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{ListenerManager, ManagerConfig};
///
/// let manager = ListenerManager::new(ManagerConfig {
///     workers: 16,                                 // dispatched events processed at once
///     queue: 10_000,                               // dispatched events that may wait
///     unregister_timeout: Duration::from_secs(5),
///     ..ManagerConfig::named("billing")
/// })?;
/// assert_eq!(manager.name(), "billing");
///
/// // Bad values are refused, naming the field.
/// let bad = ManagerConfig { queue: 0, ..ManagerConfig::default() };
/// assert!(matches!(bad.validate(), Err(tower_listener::Error::InvalidConfig { field: "queue", .. })));
/// # Ok::<_, tower_listener::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The manager's name, for logs. Default "listener-manager".
    pub name: String,
    /// Worker tasks that run dispatched events: at most this many dispatched events are processed at once
    /// (each listener's own `concurrency` applies inside). Default: the available parallelism.
    pub workers: usize,
    /// Dispatched events that may wait for a worker; when full, `dispatch` fails at once with
    /// `Overloaded` and hands the event back. Default 1024.
    pub queue: usize,
    /// Capacity of the in-memory [`DeadLetterQueue`](crate::DeadLetterQueue) a listener gets when its
    /// `dead_letter.sink` is `None`. Default 10,000.
    pub dead_letter_capacity: usize,
    /// How long `unregister` waits for a listener's in-flight events before cancelling them. Default 30 s.
    pub unregister_timeout: Duration,
    /// The manager-level health rule. Default: half the listeners unhealthy → unhealthy, fewer than 80 %
    /// healthy → degraded (see [`ManagerHealthThresholds`]).
    pub health: ManagerHealthThresholds,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            name: "listener-manager".to_owned(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 1024,
            dead_letter_capacity: 10_000,
            unregister_timeout: Duration::from_secs(30),
            health: ManagerHealthThresholds::default(),
        }
    }
}

impl ManagerConfig {
    /// The defaults, named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        ManagerConfig {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.workers == 0 {
            return Err(Error::invalid_config("workers", "must be at least 1"));
        }
        if self.queue == 0 {
            return Err(Error::invalid_config("queue", "must be at least 1"));
        }
        if self.dead_letter_capacity == 0 {
            return Err(Error::invalid_config(
                "dead_letter_capacity",
                "must be at least 1",
            ));
        }
        check_duration("unregister_timeout", self.unregister_timeout)?;
        self.health.validate()
    }
}

/// Decides whether a handler's error means the event can never succeed (see
/// [`ListenerConfig::permanent_when`]). It sees the handler's own error.
pub type PermanentPredicate = Arc<dyn Fn(&(dyn StdError + 'static)) -> bool + Send + Sync>;

/// Settings of one listener: the Go package's `ListenerConfig` fields and defaults, plus the health rule.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{ListenerConfig, RetryPolicy};
///
/// let config: ListenerConfig = ListenerConfig {
///     concurrency: 20,
///     timeout: Duration::from_secs(5),
///     retry_policy: RetryPolicy { max_retries: 5, ..Default::default() },
///     ..Default::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
pub struct ListenerConfig<T = serde_json::Value> {
    /// The name used in metrics, logs and dead letters. Default `None`: the listener's id.
    pub name: Option<String>,
    /// Events processed at once (per attempt). Default 10.
    pub concurrency: usize,
    /// What an attempt does when every slot is busy. Default [`LimitMode::Wait`] (backpressure).
    pub concurrency_mode: LimitMode,
    /// Time limit of each attempt. Default 30 s.
    pub timeout: Duration,
    /// Retries. Default [`RetryPolicy::default`].
    pub retry_policy: RetryPolicy,
    /// The circuit breaker. Default [`CircuitConfig::default`].
    pub circuit: CircuitConfig,
    /// Dead letters. Default: enabled, into a per-listener [`DeadLetterQueue`](crate::DeadLetterQueue).
    /// When `max_retries` is set it replaces `retry_policy.max_retries`.
    pub dead_letter: DeadLetterConfig<Event<T>>,
    /// The window the listener's health is judged over. Default 60 s.
    pub health_window: Duration,
    /// The listener-level health rule. Default: ≥ 10 % failed attempts → degraded, > 50 % → unhealthy.
    pub health: HealthThresholds,
    /// Which handler errors are permanent, for error types the handler cannot wrap with
    /// [`Error::permanent`]. Default `None`: only errors the handler marks. See
    /// [`permanent_when`](Self::permanent_when).
    pub permanent_when: Option<PermanentPredicate>,
}

impl<T> Default for ListenerConfig<T> {
    fn default() -> Self {
        ListenerConfig {
            name: None,
            concurrency: 10,
            concurrency_mode: LimitMode::Wait,
            timeout: Duration::from_secs(30),
            retry_policy: RetryPolicy::default(),
            circuit: CircuitConfig::default(),
            dead_letter: DeadLetterConfig::default(),
            health_window: DEFAULT_HEALTH_WINDOW,
            health: HealthThresholds::default(),
            permanent_when: None,
        }
    }
}

impl<T> Clone for ListenerConfig<T> {
    fn clone(&self) -> Self {
        ListenerConfig {
            name: self.name.clone(),
            concurrency: self.concurrency,
            concurrency_mode: self.concurrency_mode,
            timeout: self.timeout,
            retry_policy: self.retry_policy.clone(),
            circuit: self.circuit.clone(),
            dead_letter: self.dead_letter.clone(),
            health_window: self.health_window,
            health: self.health,
            permanent_when: self.permanent_when.clone(),
        }
    }
}

impl<T> fmt::Debug for ListenerConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("name", &self.name)
            .field("concurrency", &self.concurrency)
            .field("concurrency_mode", &self.concurrency_mode)
            .field("timeout", &self.timeout)
            .field("retry_policy", &self.retry_policy)
            .field("circuit", &self.circuit)
            .field("dead_letter", &self.dead_letter)
            .field("health_window", &self.health_window)
            .field("health", &self.health)
            .field(
                "permanent_when",
                &self.permanent_when.as_ref().map(|_| "predicate"),
            )
            .finish()
    }
}

impl<T> ListenerConfig<T> {
    /// The defaults (the Go package's `DefaultListenerConfig`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Treats the handler errors for which `predicate` is true as permanent ([`Error::Permanent`]): for
    /// error types the handler cannot wrap, such as a serde error from `?`. The predicate sees the
    /// handler's own error (a panic in it is caught, counted, and answers "not permanent").
    ///
    /// ```
    /// use tower_listener::{Event, ListenerConfig};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { total: u64 }
    ///
    /// // The handler: `let order: Order = serde_json::from_value(event.data().clone())?;`
    /// // A payload that does not parse will never parse: dead-letter it at once, do not retry it.
    /// let config: ListenerConfig = ListenerConfig::default()
    ///     .permanent_when(|error| error.is::<serde_json::Error>());
    /// # let _ = config;
    /// ```
    pub fn permanent_when(
        mut self,
        predicate: impl Fn(&(dyn StdError + 'static)) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.permanent_when = Some(Arc::new(predicate));
        self
    }

    /// The retry policy the listener really uses: `retry_policy`, with `max_retries` replaced by
    /// `dead_letter.max_retries` when that is set.
    pub fn effective_retry_policy(&self) -> RetryPolicy {
        let mut policy = self.retry_policy.clone();
        if let Some(max_retries) = self.dead_letter.max_retries {
            policy.max_retries = max_retries;
        }
        policy
    }

    /// The concurrency limit settings.
    pub fn concurrency_config(&self) -> ConcurrencyConfig {
        ConcurrencyConfig::new(self.concurrency, self.concurrency_mode)
    }

    /// Checks every field; the error names the first bad one (`"concurrency"`, `"timeout"`,
    /// `"retry_policy.max_delay"`, `"circuit.failure_threshold"`, …).
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(Error::invalid_config("name", "must not be empty"));
        }
        self.concurrency_config().validate()?;
        check_duration("timeout", self.timeout)?;
        self.retry_policy.validate()?;
        self.circuit.validate()?;
        check_duration("health_window", self.health_window)?;
        self.health.validate()
    }
}
