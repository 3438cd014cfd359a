//! [`DeadLetterLayer`] and its [`DeadLetterConfig`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tower::Layer;

use super::service::DeadLetterService;
use super::sink::{DeadLetterReason, DeadLetterSink};
use crate::metrics::ListenerMetrics;
use crate::shared::Shared;
use crate::{Error, Event};

/// Which dead letters to hand to the sink (see [`DeadLetterConfig::capture`]).
pub type CaptureFilter = Arc<dyn Fn(DeadLetterReason) -> bool + Send + Sync>;

/// Settings of a [`DeadLetterLayer`].
///
/// ```
/// use tower_listener::{DeadLetterConfig, DeadLetterQueue, DeadLetterReason, Event};
///
/// let queue = DeadLetterQueue::<Event>::new(1_000);
/// let config = DeadLetterConfig::to_sink(queue.clone())
///     // keep only real failures, not rejections
///     .capture_only(|reason| !matches!(reason, DeadLetterReason::CircuitOpen | DeadLetterReason::Overloaded));
/// assert!(config.enabled);
/// ```
pub struct DeadLetterConfig<R = Event> {
    /// Whether failed events are dead-lettered. Default `true`.
    pub enabled: bool,
    /// In a [`ListenerConfig`](crate::ListenerConfig): when set, the manager uses it in place of the retry
    /// policy's `max_retries` (the Go package's documented `DeadLetter.MaxRetries`). The layer itself does
    /// not read it. Default `None`.
    pub max_retries: Option<u32>,
    /// Where dead letters go. Required for the layer when enabled; the manager gives each listener a
    /// [`DeadLetterQueue`](super::DeadLetterQueue) when it is `None`.
    pub sink: Option<Arc<dyn DeadLetterSink<R>>>,
    /// Which reasons are dead-lettered. Default `None`: every failure, rejections included, so a
    /// rejected event is not lost.
    pub capture: Option<CaptureFilter>,
}

impl<R> Default for DeadLetterConfig<R> {
    fn default() -> Self {
        DeadLetterConfig {
            enabled: true,
            max_retries: None,
            sink: None,
            capture: None,
        }
    }
}

impl<R> Clone for DeadLetterConfig<R> {
    fn clone(&self) -> Self {
        DeadLetterConfig {
            enabled: self.enabled,
            max_retries: self.max_retries,
            sink: self.sink.clone(),
            capture: self.capture.clone(),
        }
    }
}

impl<R> fmt::Debug for DeadLetterConfig<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterConfig")
            .field("enabled", &self.enabled)
            .field("max_retries", &self.max_retries)
            .field("sink", &self.sink.as_ref().map(|_| "sink"))
            .field("capture", &self.capture.as_ref().map(|_| "filter"))
            .finish()
    }
}

impl<R> DeadLetterConfig<R> {
    /// The defaults (enabled, no sink yet: the Go package's `DefaultDeadLetterConfig`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Enabled, sending to `sink`.
    pub fn to_sink(sink: impl DeadLetterSink<R>) -> Self {
        DeadLetterConfig {
            sink: Some(Arc::new(sink)),
            ..Self::default()
        }
    }

    /// Disabled: failed events are only returned to the caller. In a manager this gives up the guarantee
    /// that every dispatched event ends succeeded or dead-lettered.
    pub fn disabled() -> Self {
        DeadLetterConfig {
            enabled: false,
            ..Self::default()
        }
    }

    /// Dead-letters only the reasons for which `filter` is true.
    pub fn capture_only(
        mut self,
        filter: impl Fn(DeadLetterReason) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.capture = Some(Arc::new(filter));
        self
    }

    /// Checks the fields for use by a layer: an enabled config needs a sink.
    pub fn validate(&self) -> Result<(), Error> {
        if self.enabled && self.sink.is_none() {
            return Err(Error::invalid_config(
                "dead_letter.sink",
                "is required when dead letters are enabled",
            ));
        }
        Ok(())
    }
}

/// Whether `filter` (none = all) captures `reason`. A panicking filter captures (losing a letter is worse
/// than keeping one too many); the panic is logged and counted.
pub(crate) fn captures(
    filter: Option<&CaptureFilter>,
    reason: DeadLetterReason,
    metrics: Option<&ListenerMetrics>,
) -> bool {
    let Some(filter) = filter else { return true };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| filter(reason))) {
        Ok(captured) => captured,
        Err(_) => {
            if let Some(metrics) = metrics {
                metrics.panicked();
            }
            tracing::error!(target: "tower_listener::dead_letter", reason = reason.as_str(), "dead-letter capture filter panicked; capturing");
            true
        }
    }
}

/// What every service of one dead-letter layer shares.
pub(crate) struct DeadLetterShared<R> {
    pub(crate) config: DeadLetterConfig<R>,
    pub(crate) name: Arc<str>,
    pub(crate) metrics: Option<Arc<ListenerMetrics>>,
    /// The request's id for the "event dead-lettered" log line (the manager's events have one).
    pub(crate) id_of: Option<fn(&R) -> String>,
}

/// Hands every failed event to a [`DeadLetterSink`], then returns the error to the caller.
///
/// Place it outside the retry layer: it sees an event's final outcome, and learns from the retry layer
/// how many attempts were made and why retrying stopped. See the [module docs](super).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{DeadLetterLayer, DeadLetterQueue, DeadLetterReason, Error, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), Error> {
/// let queue = DeadLetterQueue::new(100);
/// let svc = ServiceBuilder::new()
///     .layer(DeadLetterLayer::with_sink(queue.clone()))
///     .layer(RetryLayer::new(RetryPolicy { max_retries: 2, ..RetryPolicy::default() })?)
///     .service(service_fn(|order: u32| async move { Err::<(), _>(Error::handler(std::fmt::Error)) }));
/// assert!(svc.oneshot(7).await.is_err());
/// let letter = &queue.list()[0];
/// assert_eq!((letter.request, letter.attempts, letter.reason), (7, 3, DeadLetterReason::Exhausted));
/// # Ok(()) }
/// ```
pub struct DeadLetterLayer<R = Event> {
    shared: Shared<DeadLetterShared<R>>,
    _request: PhantomData<fn(R)>,
}

impl<R> Clone for DeadLetterLayer<R> {
    fn clone(&self) -> Self {
        DeadLetterLayer {
            shared: self.shared.clone(),
            _request: PhantomData,
        }
    }
}

impl<R> fmt::Debug for DeadLetterLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<R> DeadLetterLayer<R> {
    /// A layer with `config`, named "dead-letter" in letters and logs.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `dead_letter.sink` when enabled without a sink.
    pub fn new(config: DeadLetterConfig<R>) -> Result<Self, Error> {
        Self::build(config, Arc::from("dead-letter"), None, None)
    }

    /// A layer sending every failure to `sink`.
    pub fn with_sink(sink: impl DeadLetterSink<R>) -> Self {
        DeadLetterLayer {
            shared: Shared::new(Arc::new(DeadLetterShared {
                config: DeadLetterConfig::to_sink(sink),
                name: Arc::from("dead-letter"),
                metrics: None,
                id_of: None,
            })),
            _request: PhantomData,
        }
    }

    /// A layer with `config` that reports to `metrics` (`dead_letter_events`, `dead_letter_failures`) and
    /// names its letters after them.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `dead_letter.sink` when enabled without a sink.
    pub fn with_metrics(
        config: DeadLetterConfig<R>,
        metrics: Arc<ListenerMetrics>,
    ) -> Result<Self, Error> {
        Self::build(config, Arc::from(metrics.name()), Some(metrics), None)
    }

    /// [`with_metrics`](Self::with_metrics), logging each letter with the id `id_of` reads from its
    /// request (the manager's events).
    pub(crate) fn with_ids(
        config: DeadLetterConfig<R>,
        metrics: Arc<ListenerMetrics>,
        id_of: fn(&R) -> String,
    ) -> Result<Self, Error> {
        Self::build(
            config,
            Arc::from(metrics.name()),
            Some(metrics),
            Some(id_of),
        )
    }

    fn build(
        config: DeadLetterConfig<R>,
        name: Arc<str>,
        metrics: Option<Arc<ListenerMetrics>>,
        id_of: Option<fn(&R) -> String>,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(DeadLetterLayer {
            shared: Shared::new(Arc::new(DeadLetterShared {
                config,
                name,
                metrics,
                id_of,
            })),
            _request: PhantomData,
        })
    }
}

impl<R> DeadLetterLayer<R> {
    /// What its services share: the manager runs the dead-letter step itself with it.
    pub(crate) fn shared(&self) -> Arc<DeadLetterShared<R>> {
        self.shared.arc().clone()
    }
}

impl<S, R> Layer<S> for DeadLetterLayer<R> {
    type Service = DeadLetterService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetterService::new(inner, self.shared.clone())
    }
}
