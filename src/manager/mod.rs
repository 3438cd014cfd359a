//! The [`ListenerManager`]: a registry that builds one resilient stack per listener, runs events through it
//! (`process`, or `dispatch` through a bounded worker pool), and reports health and stats.
//!
//! Reach for it when a service handles several kinds of events and each needs its own protection: register
//! a handler with a [`ListenerConfig`] and the manager builds, in this order (outermost first),
//!
//! metrics (per event) → dead letter → retry → circuit breaker → concurrency limit → timeout →
//! metrics (per attempt) → panic catcher → handler,
//!
//! all sharing one [`ListenerMetrics`].
//!
//! **Lifecycle.** `start` starts the dispatch workers (a second `start` is [`Error::AlreadyRunning`]);
//! `process`/`dispatch` before `start` or after `stop` are [`Error::NotRunning`]; `register` while running
//! starts the listener at once; `start` after `stop` works. `stop(deadline)` stops accepting, waits for
//! every accepted event (queued, running, or sleeping between retries) up to the deadline, then cancels what
//! is left and dead-letters it with reason [`Shutdown`](crate::DeadLetterReason::Shutdown), and flushes the
//! sinks. `unregister` does the same for one listener without blocking the others.
//!
//! **Guarantee.** Every event accepted by `dispatch` ends exactly once as succeeded or dead-lettered, and
//! every `process` call returns its event's outcome. A listener whose dead letters are disabled gives this
//! up: its failed events are logged (and counted in `events_failed`) instead.
//!
//! **How it fails.** Bad configuration is [`Error::InvalidConfig`] from `register`, naming the field. A full
//! dispatch queue is [`Error::Overloaded`] at once, with the event handed back in the [`DispatchError`].

mod config;
mod consume;
mod health;
mod listener;
mod pool;
mod redrive;
mod registry;
mod stack;

pub use config::{ListenerConfig, ManagerConfig, PermanentPredicate};
pub use consume::{ConsumeConfig, Consumer};
pub use health::{HealthStatus, HealthThresholds, ManagerHealthThresholds};
pub use listener::{listener_fn, Listener};

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tower::{BoxError, Service};

use crate::circuit::CircuitBreakerHandle;
use crate::dead_letter::{DeadLetterQueue, DeadLetterStore, LetterFilter, RedriveReport};
use crate::metrics::{ListenerMetrics, Stats};
use crate::shared::{Handle, Shared};
use crate::{Error, Event};
use listener::{Accepted, ManagedListener};
use pool::{Job, Pool};
use registry::Registry;

/// `dispatch` refused an event: why, and the event itself, untouched.
///
/// ```
/// use tower_listener::{Error, Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(listener_fn("audit", |_e: Event| async { Ok::<_, std::io::Error>(()) }), ListenerConfig::default())?;
/// // Not started yet: the event comes back, so the caller can keep it, retry later, or answer 503.
/// let refused = manager.dispatch("audit", Event::new("a-1", "audit.logged", serde_json::json!({}))).unwrap_err();
/// assert!(matches!(refused.error, Error::NotRunning));
/// assert_eq!(refused.event.id(), "a-1");
/// # Ok(()) }
/// ```
pub struct DispatchError<T = serde_json::Value> {
    /// [`Error::Overloaded`] (queue full), [`Error::NotRunning`] or [`Error::NotFound`].
    pub error: Error,
    /// The event, handed back.
    pub event: Event<T>,
}

impl<T> fmt::Debug for DispatchError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatchError")
            .field("error", &self.error)
            .field("event", &self.event.id())
            .finish()
    }
}

impl<T> fmt::Display for DispatchError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} not dispatched: {}",
            self.event.id(),
            self.error
        )
    }
}

impl<T> std::error::Error for DispatchError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> From<DispatchError<T>> for Error {
    fn from(e: DispatchError<T>) -> Self {
        e.error
    }
}

/// What `stop` (or `unregister`) did.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(
///     listener_fn("slow", |_e: Event| async {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok::<_, std::io::Error>(())
///     }),
///     ListenerConfig { timeout: Duration::from_secs(120), ..Default::default() },
/// )?;
/// manager.start().await?;
/// manager.dispatch("slow", Event::new("s-1", "slow", serde_json::json!({})))?;
/// let report = manager.stop(Duration::from_secs(5)).await?;
/// // It ran past the deadline: cancelled, and dead-lettered with reason `shutdown`.
/// assert!(!report.drained);
/// assert_eq!(report.cancelled, 1);
/// assert_eq!(manager.dead_letters("slow")?.unwrap().len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// True when every accepted event ended before the deadline.
    pub drained: bool,
    /// Events cancelled at the deadline (each dead-lettered with reason `Shutdown`).
    pub cancelled: u64,
}

/// A registry of resilient listeners. See the [module docs](self).
///
/// `ListenerManager` is a cheap handle (`Clone`, `Send + Sync`): axum state and many tasks can hold it.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{Event, HealthStatus, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(ManagerConfig::named("app-manager"))?;
/// manager.register(
///     listener_fn("order-processor", |event: Event| async move {
///         // ... process the order ...
///         Ok::<_, std::io::Error>(())
///     }),
///     ListenerConfig::default(),
/// )?;
/// manager.start().await?;
/// manager.process("order-processor", Event::new("o-1", "order.created", serde_json::json!({}))).await?;
/// assert_eq!(manager.health(), HealthStatus::Healthy);
/// assert_eq!(manager.stats().events_succeeded, 1);
/// manager.stop(Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
pub struct ListenerManager<T = serde_json::Value> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for ListenerManager<T> {
    fn clone(&self) -> Self {
        ListenerManager {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    config: ManagerConfig,
    listeners: Registry<T>,
    /// Read on every `process`/`dispatch`; written under `lifecycle`.
    running: AtomicBool,
    /// Serializes start/stop.
    lifecycle: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
    pool: Pool<T>,
    /// The consumers `consume` started; `stop` (and `unregister` of their listener) stops them first.
    consumers: std::sync::Mutex<Vec<Consumer>>,
}

impl<T> fmt::Debug for ListenerManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerManager")
            .field("name", &self.inner.config.name)
            .field("running", &self.is_running())
            .field("listeners", &self.listeners())
            .finish()
    }
}

impl<T> ListenerManager<T> {
    /// Whether the manager is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// The manager's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn get(&self, id: &str) -> Result<Handle<ManagedListener<T>>, Error> {
        self.inner
            .listeners
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    fn all(&self) -> Vec<Arc<ManagedListener<T>>> {
        self.inner
            .listeners
            .current()
            .values()
            .map(|listener| listener.arc().clone())
            .collect()
    }

    /// The ids of the registered listeners, sorted.
    pub fn listeners(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.listeners.current().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The health of one listener.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn listener_health(&self, id: &str) -> Result<HealthStatus, Error> {
        Ok(self.get(id)?.health())
    }

    /// The health of the manager, from its listeners' (see [`ManagerHealthThresholds`]). Never changes a
    /// breaker.
    pub fn health(&self) -> HealthStatus {
        let listeners = self.all();
        self.inner
            .config
            .health
            .manager_health(listeners.iter().map(|l| l.health()))
    }

    /// The health of every listener, by id, sorted.
    pub fn listener_healths(&self) -> Vec<(String, HealthStatus)> {
        let mut all: Vec<_> = self
            .all()
            .iter()
            .map(|l| (l.id.clone(), l.health()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// One listener's stats.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn listener_stats(&self, id: &str) -> Result<Stats, Error> {
        let listener = self.get(id)?;
        Ok(self.stats_of(&listener))
    }

    fn stats_of(&self, listener: &ManagedListener<T>) -> Stats {
        let mut stats = listener.metrics.snapshot();
        stats.active_listeners = u64::from(self.is_running());
        stats
    }

    /// The sum of every listener's stats (latency percentiles: the largest of the listeners', an upper
    /// bound).
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for listener in self.all() {
            total.add(&self.stats_of(&listener));
        }
        total
    }

    /// The metrics of one listener, to read or to share.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn listener_metrics(&self, id: &str) -> Result<Arc<ListenerMetrics>, Error> {
        Ok(self.get(id)?.metrics.clone())
    }

    /// The handle to one listener's circuit breaker (for `force_open`, `reset`, …).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn circuit_breaker(&self, id: &str) -> Result<CircuitBreakerHandle, Error> {
        Ok(self.get(id)?.breaker.clone())
    }

    /// The in-memory dead-letter queue the manager made for a listener configured without a sink (`None`
    /// when the listener has its own sink).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub fn dead_letters(&self, id: &str) -> Result<Option<DeadLetterQueue<Event<T>>>, Error> {
        Ok(self.get(id)?.queue.clone())
    }
}

impl ListenerManager<serde_json::Value> {
    /// A stopped manager with no listeners, for events whose payload is JSON ([`serde_json::Value`], the
    /// common case). For a typed payload use [`typed`](ListenerManager::typed).
    ///
    /// ```
    /// use tower_listener::{ListenerManager, ManagerConfig};
    ///
    /// let manager = ListenerManager::new(ManagerConfig::named("app"))?; // ListenerManager<serde_json::Value>
    /// assert_eq!(manager.name(), "app");
    /// # Ok::<_, tower_listener::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field of `config`.
    pub fn new(config: ManagerConfig) -> Result<Self, Error> {
        Self::typed(config)
    }
}

impl<T: Send + Sync + 'static> ListenerManager<T> {
    /// A stopped manager with no listeners, for events whose payload is a `T`.
    ///
    /// ```
    /// use tower_listener::{Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
    ///
    /// #[derive(Clone, Debug)]
    /// struct Order { total: u64 }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
    /// let manager = ListenerManager::<Order>::typed(ManagerConfig::named("shop"))?;
    /// manager.register(
    ///     listener_fn("orders", |event: Event<Order>| async move {
    ///         assert_eq!(event.data().total, 42);
    ///         Ok::<_, std::io::Error>(())
    ///     }),
    ///     ListenerConfig::default(),
    /// )?;
    /// manager.start().await?;
    /// manager.process("orders", Event::new("o-1", "order.created", Order { total: 42 })).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field of `config`.
    pub fn typed(config: ManagerConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(ListenerManager {
            inner: Arc::new(Inner {
                pool: Pool::new(config.queue),
                config,
                listeners: Registry::new(),
                running: AtomicBool::new(false),
                lifecycle: tokio::sync::Mutex::new(Vec::new()),
                consumers: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// Builds the listener's stack and registers it under its id. If the manager is running, the listener
    /// accepts events at once.
    ///
    /// # Errors
    /// [`Error::AlreadyRegistered`] for a taken id; [`Error::InvalidConfig`] for an empty id or a bad
    /// config field (named).
    pub fn register<S, R, E>(
        &self,
        listener: Listener<S>,
        config: ListenerConfig<T>,
    ) -> Result<(), Error>
    where
        S: Service<Event<T>, Response = R, Error = E> + Clone + Send + 'static,
        S::Future: Send + 'static,
        E: Into<BoxError> + 'static,
        R: 'static,
    {
        let managed = ManagedListener::build(listener, config, &self.inner.config)?;
        let id = managed.id.clone();
        self.inner.listeners.update(|listeners| {
            if listeners.contains_key(&managed.id) {
                return Err(Error::AlreadyRegistered(managed.id));
            }
            managed.start_run();
            listeners.insert(managed.id.clone(), Shared::new(Arc::new(managed)));
            Ok(())
        })?;
        tracing::info!(target: "tower_listener::manager", manager = %self.inner.config.name, listener = %id, "listener registered");
        Ok(())
    }

    /// Removes a listener: new events for it fail with [`Error::NotFound`]; its in-flight events get up to
    /// [`ManagerConfig::unregister_timeout`] to end, then are cancelled and dead-lettered with reason
    /// `Shutdown`; its sink is flushed. Other listeners are not blocked meanwhile.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub async fn unregister(&self, id: &str) -> Result<StopReport, Error> {
        let listener = self.inner.listeners.update(|listeners| {
            listeners
                .remove(id)
                .map(|removed| removed.arc().clone())
                .ok_or_else(|| Error::NotFound(id.to_owned()))
        })?;
        let deadline = tokio::time::Instant::now() + self.inner.config.unregister_timeout;
        self.stop_consumers(Some(id), deadline).await;
        let report = drain(
            std::slice::from_ref(&listener),
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await;
        tracing::info!(target: "tower_listener::manager", manager = %self.inner.config.name, listener = %id, cancelled = report.cancelled, "listener unregistered");
        Ok(report)
    }

    /// Starts the manager: the dispatch workers start and every listener accepts events.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] when it is running.
    pub async fn start(&self) -> Result<(), Error> {
        let mut workers = self.inner.lifecycle.lock().await;
        if self.is_running() {
            return Err(Error::AlreadyRunning);
        }
        for listener in self.all() {
            listener.start_run();
        }
        *workers = self.inner.pool.spawn_workers(self.inner.config.workers);
        self.inner.running.store(true, Ordering::SeqCst);
        tracing::info!(target: "tower_listener::manager", manager = %self.inner.config.name, "manager started");
        Ok(())
    }

    /// Stops the manager: no new events are accepted; accepted ones (queued, running, or waiting between
    /// retries) get until `deadline` to end; what is left is cancelled and dead-lettered with reason
    /// `Shutdown`; the sinks are flushed and the workers stopped. Stopping a stopped manager is `Ok`.
    pub async fn stop(&self, deadline: Duration) -> Result<StopReport, Error> {
        let mut workers = self.inner.lifecycle.lock().await;
        if !self.is_running() {
            return Ok(StopReport {
                drained: true,
                cancelled: 0,
            });
        }
        self.inner.running.store(false, Ordering::SeqCst);
        // The consumers first: they stop pulling, and what they run gets the same deadline.
        let until = tokio::time::Instant::now() + deadline;
        let consumed = self.stop_consumers(None, until).await;
        let listeners = self.all();
        let mut report = drain(
            &listeners,
            until.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await;
        report.drained &= consumed.drained;
        report.cancelled += consumed.cancelled;
        self.inner
            .pool
            .stop_workers(std::mem::take(&mut *workers))
            .await;
        tracing::info!(target: "tower_listener::manager", manager = %self.inner.config.name, drained = report.drained, cancelled = report.cancelled, "manager stopped");
        Ok(report)
    }

    /// Consumes `source` through listener `id`: a pump pulls deliveries while the listener has free
    /// concurrency and its breaker admits calls, runs each through the listener's stack, and settles it
    /// on the broker by its outcome (the table of [`crate::source`]): ack on success; term once a failure's
    /// dead letter is stored (nak with a delay when it could not be); nak with the breaker's `retry_after`
    /// or a short delay when rejected; progress at half the broker's ack wait while it runs; a malformed
    /// payload, or one delivered more than `max_deliveries` times, dead-lettered without running. While
    /// the breaker is open the pump pulls nothing.
    ///
    /// The manager's [`stop`](Self::stop) stops its consumers first; a stopped consumer hands what it
    /// still runs at the deadline back to the broker (nak without delay), for another instance.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_listener::source::MemorySource;
    /// use tower_listener::{ConsumeConfig, Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), tower_listener::Error> {
    /// let manager = ListenerManager::new(ManagerConfig::default())?;
    /// manager.register(listener_fn("orders", |_e: Event| async { Ok::<_, std::io::Error>(()) }), ListenerConfig::default())?;
    /// manager.start().await?;
    /// let broker = MemorySource::new("orders"); // or a NATS JetStream / Redis Streams source
    /// let consumer = manager.consume("orders", broker.clone(), ConsumeConfig::default())?;
    /// broker.publish(Event::new("o-1", "order.created", serde_json::json!({})));
    /// tokio::time::sleep(Duration::from_millis(200)).await;
    /// assert_eq!(manager.listener_stats("orders")?.source_acks, 1);
    /// manager.stop(Duration::from_secs(5)).await?; // stops the consumer too
    /// assert!(consumer.is_stopped());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotRunning`], or [`Error::InvalidConfig`] for a bad `config` field,
    /// or for `dead_letter.enabled` when the listener's dead letters are disabled (a failed delivery must
    /// be stored before the broker may forget it).
    pub fn consume<S: crate::source::Source<T>>(
        &self,
        id: &str,
        source: S,
        config: ConsumeConfig,
    ) -> Result<Consumer, Error> {
        config.validate()?;
        let listener = self
            .inner
            .listeners
            .current()
            .get(id)
            .map(|l| l.arc().clone())
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        if !listener.dead_letters.config.enabled {
            return Err(Error::invalid_config(
                "dead_letter.enabled",
                "must be true for a consumed listener: a failed delivery is stored before the broker forgets it",
            ));
        }
        let mut consumers = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked under the consumers' lock, which `stop` takes after clearing the flag.
        if !self.is_running() {
            return Err(Error::NotRunning);
        }
        consumers.retain(|c| !c.is_stopped());
        let consumer = consume::start(listener, source, config);
        consumers.push(consumer.clone());
        Ok(consumer)
    }

    /// The consumers running now.
    pub fn consumers(&self) -> Vec<Consumer> {
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|c| !c.is_stopped())
            .cloned()
            .collect()
    }

    /// Stops the consumers (of listener `only`, or all) by `deadline`.
    async fn stop_consumers(
        &self,
        only: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> StopReport {
        let stopping: Vec<Consumer> = {
            let mut consumers = self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (stopping, kept) = std::mem::take(&mut *consumers)
                .into_iter()
                .partition(|c| only.is_none_or(|id| c.listener() == id));
            *consumers = kept;
            stopping
        };
        let mut stops = tokio::task::JoinSet::new();
        for consumer in stopping {
            stops.spawn(async move { consumer.stop_at(deadline).await });
        }
        let mut report = StopReport {
            drained: true,
            cancelled: 0,
        };
        while let Some(stopped) = stops.join_next().await {
            let stopped = stopped.unwrap_or_default();
            report.drained &= stopped.drained;
            report.cancelled += stopped.cancelled;
        }
        report
    }

    fn accept(&self, id: &str) -> Result<Accepted<T>, Error> {
        let listener = self.get(id)?;
        let accepted = Accepted::new(listener);
        // After the SeqCst increment in Accepted::new: see there.
        if !self.inner.running.load(Ordering::SeqCst) {
            return Err(Error::NotRunning);
        }
        Ok(accepted)
    }

    /// Runs one event through the listener's whole stack and returns its final outcome (after retries; a
    /// failure has been dead-lettered by then).
    ///
    /// Dropping the returned future cancels the event (nothing is dead-lettered: the caller still holds it).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotRunning`], or the event's own final error.
    pub async fn process(&self, id: &str, event: Event<T>) -> Result<(), Error> {
        let accepted = self.accept(id)?;
        let result = accepted.listener.run(event, accepted.run).await;
        drop(accepted);
        result
    }

    /// Queues an event for the worker pool and returns at once. Its outcome is final inside the stack:
    /// success, or a dead letter.
    ///
    /// # Errors
    /// A [`DispatchError`] holding the event: [`Error::Overloaded`] when the queue is full,
    /// [`Error::NotRunning`], or [`Error::NotFound`].
    pub fn dispatch(&self, id: &str, event: Event<T>) -> Result<(), DispatchError<T>> {
        let accepted = match self.accept(id) {
            Ok(accepted) => accepted,
            Err(error) => return Err(DispatchError { error, event }),
        };
        match self.inner.pool.try_send(Job { accepted, event }) {
            Ok(()) => Ok(()),
            Err(job) => {
                job.accepted
                    .listener
                    .metrics
                    .rejected(crate::metrics::Rejection::Overloaded);
                Err(DispatchError {
                    error: Error::Overloaded,
                    event: job.event,
                })
            }
        }
    }

    /// Runs dead letters from `store` through listener `id`'s stack again (without its dead-letter step):
    /// up to `limit` letters matching `filter`, oldest first, one at a time. When the filter names no
    /// listener, it takes this listener's letters (by its name).
    ///
    /// A letter that now succeeds is deleted from the store; one that fails again is kept, with its
    /// attempts and its last error updated. The run stops at the first rejection (an open breaker, an
    /// overloaded listener) and keeps that letter and the rest untouched: redriving into an open breaker
    /// would only fail them again. Two redrives at once never run one letter twice (a letter another
    /// redrive holds is skipped), and a letter that no longer decodes is skipped and kept. Outcomes are
    /// counted in the listener's stats (`redriven_succeeded`, `redriven_failed`) besides the attempts.
    ///
    /// ```
    /// use tower_listener::dead_letter::LetterFilter;
    /// use tower_listener::{Error, Event, ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy, listener_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
    /// let manager = ListenerManager::new(ManagerConfig::default())?;
    /// let fixed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    /// let up = fixed.clone();
    /// manager.register(
    ///     listener_fn("orders", move |_e: Event| {
    ///         let up = up.load(std::sync::atomic::Ordering::SeqCst);
    ///         async move { if up { Ok(()) } else { Err(std::io::Error::other("db down")) } }
    ///     }),
    ///     ListenerConfig { retry_policy: RetryPolicy::never(), ..Default::default() },
    /// )?;
    /// manager.start().await?;
    /// let _ = manager.process("orders", Event::new("o-1", "order.created", serde_json::json!({}))).await;
    ///
    /// fixed.store(true, std::sync::atomic::Ordering::SeqCst); // the database is back
    /// let store = manager.dead_letters("orders")?.unwrap(); // or a RedbStore, a broker-backed store, …
    /// let report = manager.redrive("orders", &store, LetterFilter::all(), 100).await?;
    /// assert_eq!((report.succeeded, report.failed), (1, 0));
    /// assert!(store.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotRunning`] while the manager is stopped, or the store's error when
    /// it cannot list. A store that fails later stops the run: the report says so in `stopped_by`.
    pub async fn redrive<S>(
        &self,
        id: &str,
        store: &S,
        filter: LetterFilter,
        limit: usize,
    ) -> Result<RedriveReport, Error>
    where
        S: DeadLetterStore<T> + ?Sized,
    {
        let accepted = self.accept(id)?;
        let report = accepted.listener.redrive(store, filter, limit).await;
        drop(accepted);
        report
    }
}

/// Waits for the listeners' accepted events up to `deadline`, cancels the rest, waits for the
/// cancellations to finish, and flushes the sinks.
async fn drain<T: Send + Sync + 'static>(
    listeners: &[Arc<ManagedListener<T>>],
    deadline: Duration,
) -> StopReport {
    let before: u64 = listeners
        .iter()
        .map(|l| l.shutdowns.load(Ordering::Relaxed))
        .sum();
    let all_idle = async {
        for listener in listeners {
            listener.metrics.in_flight.wait_idle().await;
        }
    };
    let drained = tokio::time::timeout(deadline, all_idle).await.is_ok();
    if !drained {
        for listener in listeners {
            tracing::warn!(target: "tower_listener::manager", listener = %listener.id, in_flight = listener.metrics.in_flight.count(), "shutdown deadline passed; cancelling in-flight events");
            listener.cancel_run();
        }
        for listener in listeners {
            listener.metrics.in_flight.wait_idle().await;
        }
    }
    for listener in listeners {
        listener.flush().await;
    }
    let after: u64 = listeners
        .iter()
        .map(|l| l.shutdowns.load(Ordering::Relaxed))
        .sum();
    StopReport {
        drained,
        cancelled: after - before,
    }
}
