//! [`Listener`] (a handler with an id), [`listener_fn`], and the manager's per-listener state: the built
//! stack, its metrics and breaker, and the bookkeeping that lets `stop` and `unregister` wait for and
//! cancel in-flight events without losing one.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tower::util::{MapErr, MapResponseLayer, ServiceFn};
use tower::{BoxError, Service, ServiceBuilder};
use tracing::{Instrument, Span};

use super::config::{ListenerConfig, ManagerConfig};
use super::health::{HealthStatus, HealthThresholds};
use super::stack::{EventStack, Lease, Stack};
use crate::catch_panic::CatchPanicLayer;
use crate::circuit::{CircuitBreakerHandle, CircuitBreakerLayer};
use crate::dead_letter::{
    captures, sink_failed, DeadLetter, DeadLetterConfig, DeadLetterLayer, DeadLetterQueue,
    DeadLetterReason, DeadLetterShared, DeadLetterSink, HoldsRequest, InCall, Lettering,
};
use crate::limit::ConcurrencyLimitLayer;
use crate::metrics::{AttemptTimingLayer, ListenerMetrics, Recording};
use crate::retry::RetryLayer;
use crate::shared::Handle;
use crate::timeout::TimeoutLayer;
use crate::{Error, Event};

/// An event handler with an id: any `tower::Service<Event<T>>` that is `Clone`.
///
/// ```
/// use tower::service_fn;
/// use tower_listener::{Event, Listener, listener_fn};
///
/// // From an async closure:
/// let a = listener_fn("order-processor", |event: Event| async move {
///     println!("processing {}", event.id());
///     Ok::<_, std::io::Error>(())
/// });
/// // From any service:
/// let b = Listener::new("audit", service_fn(|_event: Event| async { Ok::<_, std::io::Error>(()) }));
/// assert_eq!(a.id(), "order-processor");
/// # let _ = b;
/// ```
#[derive(Debug, Clone)]
pub struct Listener<S> {
    id: String,
    service: S,
}

impl<S> Listener<S> {
    /// A listener named `id` around `service`.
    pub fn new(id: impl Into<String>, service: S) -> Self {
        Listener {
            id: id.into(),
            service,
        }
    }

    /// The id it is registered under.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A listener from an async closure `Fn(Event<T>) -> impl Future<Output = Result<R, E>>`, where `E` is any
/// error (`Into<tower::BoxError>`); the response `R` is discarded.
///
/// ```
/// use tower_listener::{Error, Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("inventory service unavailable")]
/// struct InventoryDown;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(
///     listener_fn("reserve-stock", |event: Event| async move {
///         let sku = event.data()["sku"].as_str().unwrap_or_default().to_owned();
///         if sku.is_empty() {
///             return Err(InventoryDown); // retried with backoff, then dead-lettered
///         }
///         Ok(sku) // the response is discarded
///     }),
///     ListenerConfig::default(),
/// )?;
/// manager.start().await?;
/// manager.process("reserve-stock", Event::new("r-1", "stock.reserve", serde_json::json!({"sku": "A-7"}))).await?;
/// # Ok(()) }
/// ```
pub fn listener_fn<F>(id: impl Into<String>, f: F) -> Listener<ServiceFn<F>> {
    Listener::new(id, tower::service_fn(f))
}

/// The state of a registered listener.
pub(crate) struct ManagedListener<T> {
    pub(crate) id: String,
    pub(crate) metrics: Arc<ListenerMetrics>,
    pub(crate) breaker: CircuitBreakerHandle,
    pub(crate) health: HealthThresholds,
    /// The attempts of an event: retry → breaker → limit → timeout → metrics → panic catcher → handler.
    /// [`run`](Self::run) wraps it in the per-event layers (metrics → dead letter); redrive uses it bare.
    pub(crate) stack: Box<dyn EventStack<T>>,
    /// The dead-letter layer's settings and sink (always a sink: the listener's own queue by default).
    pub(crate) dead_letters: Arc<DeadLetterShared<Event<T>>>,
    /// Attempts in flight at most (the concurrency limit), and a consumer's default.
    pub(crate) concurrency: usize,
    /// The listener's own queue when no sink was configured.
    pub(crate) queue: Option<DeadLetterQueue<Event<T>>>,
    /// The current run (bumped by every `start`); events remember the run they were accepted in.
    run: AtomicU64,
    /// Runs up to and including this one are cancelled.
    cancelled_through: AtomicU64,
    cancelled: Notify,
    /// Events cancelled by a shutdown, over the listener's life.
    pub(crate) shutdowns: AtomicU64,
}

impl<T: Send + Sync + 'static> ManagedListener<T> {
    pub(crate) fn build<S, R, E>(
        listener: Listener<S>,
        config: ListenerConfig<T>,
        manager: &ManagerConfig,
    ) -> Result<Self, Error>
    where
        S: Service<Event<T>, Response = R, Error = E> + Clone + Send + 'static,
        S::Future: Send + 'static,
        E: Into<BoxError> + 'static,
        R: 'static,
    {
        if listener.id.trim().is_empty() {
            return Err(Error::invalid_config("id", "must not be empty"));
        }
        config.validate()?;
        let name = config.name.clone().unwrap_or_else(|| listener.id.clone());
        let metrics = Arc::new(ListenerMetrics::with_health_window(
            name,
            config.health_window,
        ));
        let (sink, queue): (Arc<dyn DeadLetterSink<Event<T>>>, _) = match &config.dead_letter.sink {
            Some(sink) => (sink.clone(), None),
            None => {
                let queue = DeadLetterQueue::new(manager.dead_letter_capacity);
                (Arc::new(queue.clone()), Some(queue))
            }
        };
        let dead_letters = DeadLetterLayer::with_ids(
            DeadLetterConfig {
                enabled: config.dead_letter.enabled,
                max_retries: config.dead_letter.max_retries,
                sink: Some(sink),
                capture: config.dead_letter.capture.clone(),
            },
            metrics.clone(),
            |event: &Event<T>| event.id().to_owned(),
        )?
        .shared();
        let layers = AttemptLayers {
            retry: RetryLayer::with_metrics(config.effective_retry_policy(), metrics.clone())?,
            breaker: CircuitBreakerLayer::with_metrics(config.circuit.clone(), metrics.clone())?,
            limit: ConcurrencyLimitLayer::new(config.concurrency_config())?
                .with_metrics(metrics.clone()),
            timeout: TimeoutLayer::new(config.timeout)?,
        };
        let handle = layers.breaker.handle();
        let handler = ServiceBuilder::new()
            .layer(MapResponseLayer::new(|_: R| ()))
            .service(listener.service);
        // The predicate, when there is one, is a step of its own around the handler (inside the panic
        // catcher, so a panicking predicate is contained too); a listener without one pays nothing for it.
        let stack = match config.permanent_when.clone() {
            None => layers.stack(handler),
            Some(predicate) => {
                let counted = metrics.clone();
                layers.stack(MapErr::new(handler, move |error: E| {
                    mark_permanent(Error::from_boxed(error.into()), &*predicate, &counted)
                }))
            }
        };
        Ok(ManagedListener {
            id: listener.id,
            metrics,
            breaker: handle,
            health: config.health,
            stack,
            dead_letters,
            concurrency: config.concurrency,
            queue,
            run: AtomicU64::new(0),
            cancelled_through: AtomicU64::new(0),
            cancelled: Notify::new(),
            shutdowns: AtomicU64::new(0),
        })
    }
}

/// The layers of a listener's attempts, before they wrap its handler.
struct AttemptLayers {
    retry: RetryLayer,
    breaker: CircuitBreakerLayer,
    limit: ConcurrencyLimitLayer,
    timeout: TimeoutLayer,
}

impl AttemptLayers {
    /// retry → breaker → limit → metrics (per attempt, which counts timeouts) → timeout → panic catcher →
    /// `handler`, type-erased.
    fn stack<T, H>(self, handler: H) -> Box<dyn EventStack<T>>
    where
        T: Send + Sync + 'static,
        H: Service<Event<T>, Response = ()> + Clone + Send + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send + 'static,
    {
        let attempts = ServiceBuilder::new()
            .layer(self.retry)
            .layer(self.breaker)
            .layer(self.limit)
            // Times each attempt; the retry future and the event record it (see `AttemptTimingLayer`).
            .layer(AttemptTimingLayer)
            .layer(self.timeout)
            .layer(CatchPanicLayer)
            .service(handler);
        Box::new(Stack::new(attempts))
    }
}

/// `error`, made permanent when it is a handler error `predicate` matches. A panicking predicate is
/// counted and leaves the error as it is.
fn mark_permanent(
    error: Error,
    predicate: &(dyn Fn(&(dyn std::error::Error + 'static)) -> bool + Send + Sync),
    metrics: &ListenerMetrics,
) -> Error {
    let Error::Handler(source) = &error else {
        return error;
    };
    let source: &(dyn std::error::Error + 'static) = &**source;
    match catch_unwind(AssertUnwindSafe(|| predicate(source))) {
        Ok(true) => error.into_permanent(),
        Ok(false) => error,
        Err(_) => {
            metrics.panicked();
            tracing::error!(target: "tower_listener::manager", listener = metrics.name(), "permanent_when panicked; the error is not permanent");
            error
        }
    }
}

impl<T> ManagedListener<T> {
    pub(crate) fn health(&self) -> HealthStatus {
        self.health
            .listener_health(self.breaker.state(), self.metrics.windowed_attempts())
    }

    /// Starts a new run: events accepted from now on are not cancelled by an earlier `stop`.
    pub(crate) fn start_run(&self) {
        self.run.fetch_add(1, Ordering::SeqCst);
    }

    /// Cancels every event accepted in the current or an earlier run.
    pub(crate) fn cancel_run(&self) {
        self.cancelled_through
            .store(self.run.load(Ordering::SeqCst), Ordering::SeqCst);
        self.cancelled.notify_waiters();
    }

    fn is_cancelled(&self, run: u64) -> bool {
        self.cancelled_through.load(Ordering::SeqCst) >= run
    }
}

impl<T: Send + Sync + 'static> ManagedListener<T> {
    /// Runs one accepted event through the full stack, inside the event's span. If the listener's run is
    /// cancelled (a shutdown past its deadline) first, the event is dropped from the stack and
    /// dead-lettered with reason `Shutdown`.
    pub(crate) async fn run(&self, event: Event<T>, run: u64) -> Result<(), Error> {
        let span = tracing::debug_span!(
            target: "tower_listener::event",
            "event",
            listener = %self.id,
            event.id = event.id(),
            "event.type" = event.event_type(),
        );
        if self.is_cancelled(run) {
            return Err(Box::pin(self.shut_down(event).instrument(span)).await);
        }
        // The per-event layers (metrics, then dead letter) around the listener's stack: what the futures of
        // `MetricsLayer::per_event` and `DeadLetterLayer` do, borrowing this listener's metrics and
        // settings for the event instead of holding references (and the boxed stack future stays small).
        // The event moves into the stack, whose retry keeps it until the event ends: the dead-letter step,
        // the warning and the shutdown below read it from there instead of keeping a copy per event.
        // The span is entered around the call, and around each poll and the drop by `UntilCancelled`
        // itself (what `tracing::Instrumented` did around a second async fn: ~35 instructions per event).
        let future = span.in_scope(|| {
            // In flight since `Accepted`: the recording does not count it again.
            Recording::per_counted_event(&*self.metrics, || {
                Lettering::start(&*self.dead_letters, InCall, Lease::new(&*self.stack, event))
            })
        });
        let ended = UntilCancelled {
            future: Some(future),
            notified: None,
            listener: self,
            run,
            span: &span,
        }
        .await;
        // The stack's future is dropped by now.
        match ended {
            Ended::Succeeded => Ok(()),
            Ended::Failed(error, event) => {
                if let (false, Some(event)) = (self.dead_letters.config.enabled, event) {
                    span.in_scope(|| tracing::warn!(target: "tower_listener::manager", listener = %self.id, event.id = event.id(), error = %error, "event failed; dead letters are disabled for this listener"));
                }
                Err(error)
            }
            Ended::Cancelled(Some(event)) => {
                Err(Box::pin(self.shut_down(event).instrument(span)).await)
            }
            // Every stack future holds its event until it is dropped, so this is not reached; were it,
            // the event could not be dead-lettered, and that is said.
            Ended::Cancelled(None) => {
                span.in_scope(|| tracing::error!(target: "tower_listener::manager", listener = %self.id, "event cancelled by shutdown; its event could not be read back to dead-letter it"));
                Err(Error::Stopped)
            }
        }
    }

    /// Dead-letters an event cancelled by a shutdown and counts it as a failed event.
    async fn shut_down(&self, event: Event<T>) -> Error {
        self.shutdowns.fetch_add(1, Ordering::Relaxed);
        self.metrics.event_cancelled();
        let reason = DeadLetterReason::Shutdown;
        let config = &self.dead_letters.config;
        let capture = captures(config.capture.as_ref(), reason, Some(&self.metrics));
        let (true, true, Some(sink)) = (config.enabled, capture, &config.sink) else {
            tracing::warn!(target: "tower_listener::manager", listener = %self.id, event.id = event.id(), "event cancelled by shutdown and not dead-lettered");
            return Error::Stopped;
        };
        let event_id = event.id().to_owned();
        let letter = DeadLetter::new(event, Error::Stopped, self.metrics.name(), 0, reason);
        let sending = match catch_unwind(AssertUnwindSafe(|| sink.send(letter))) {
            Ok(sending) => sending,
            Err(_) => {
                sink_failed(Some(&self.metrics), &self.id, true, &"sink panicked");
                return Error::Stopped;
            }
        };
        // The letter is counted by a task of its own, so the count is right even when the caller that is
        // shutting this event down is itself cancelled meanwhile; the sink's future runs in a nested task
        // so that a panic in it is caught too.
        let metrics = self.metrics.clone();
        let id = self.id.clone();
        let counted = tokio::spawn(
            async move {
                match tokio::spawn(sending).await {
                    Ok(Ok(())) => {
                        metrics.dead_lettered(DeadLetterReason::Shutdown);
                        tracing::warn!(
                            target: "tower_listener::dead_letter",
                            listener = %id,
                            event.id = %event_id,
                            reason = DeadLetterReason::Shutdown.as_str(),
                            attempts = 0u32,
                            error = Error::Stopped.kind(),
                            "event dead-lettered"
                        );
                    }
                    Ok(Err(e)) => sink_failed(Some(&metrics), &id, false, &e),
                    Err(join) => sink_failed(Some(&metrics), &id, true, &join),
                }
            }
            .in_current_span(),
        );
        let _ = counted.await;
        Error::Stopped
    }

    /// Flushes the dead-letter sink, logging a failure.
    pub(crate) async fn flush(&self) {
        let Some(sink) = &self.dead_letters.config.sink else {
            return;
        };
        let flushed = match catch_unwind(AssertUnwindSafe(|| sink.flush())) {
            Ok(flushing) => match tokio::spawn(flushing).await {
                Ok(result) => result,
                Err(join) => Err(BoxError::from(format!("sink panicked: {join}"))),
            },
            Err(_) => Err(BoxError::from("sink panicked")),
        };
        if let Err(e) = flushed {
            tracing::error!(target: "tower_listener::dead_letter", listener = %self.id, error = %e, "dead-letter sink failed to flush");
        }
    }
}

pin_project! {
    /// An event's future that ends early, with [`Ended::Cancelled`], once a shutdown cancels the run the
    /// event was accepted in. The event's own future is polled first; the cancellation is watched only
    /// while it is pending.
    struct UntilCancelled<'a, F, T> {
        // The event's future: `None` only once dropped, inside the span, by the drop below.
        #[pin]
        future: Option<F>,
        #[pin]
        notified: Option<Notified<'a>>,
        listener: &'a ManagedListener<T>,
        run: u64,
        // The event's span, entered around each poll and the drop of the event's future.
        span: &'a Span,
    }

    impl<F, T> PinnedDrop for UntilCancelled<'_, F, T> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _entered = this.span.enter();
            this.future.set(None);
        }
    }
}

/// How an event's run through the stack ended. A failed or cancelled event comes back (a copy, read from
/// the stack's future before it was dropped): to be dead-lettered on shutdown, or named in a warning.
enum Ended<T> {
    Succeeded,
    Failed(Error, Option<Event<T>>),
    Cancelled(Option<Event<T>>),
}

impl<F, T> Future for UntilCancelled<'_, F, T>
where
    F: Future<Output = Result<(), Error>> + HoldsRequest<Event<T>>,
{
    type Output = Ended<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(future) = this.future.as_mut().as_pin_mut() {
            if let Poll::Ready(result) = this.span.in_scope(|| future.poll(cx)) {
                return Poll::Ready(match result {
                    Ok(()) => Ended::Succeeded,
                    Err(error) => Ended::Failed(error, event_of(this.future.as_ref())),
                });
            }
        }
        loop {
            let Some(notified) = this.notified.as_mut().as_pin_mut() else {
                // A `Notified` receives `notify_waiters` from its creation on, so a cancellation after
                // the check below wakes this task.
                this.notified.set(Some(this.listener.cancelled.notified()));
                continue;
            };
            if this.listener.is_cancelled(*this.run) {
                return Poll::Ready(Ended::Cancelled(event_of(this.future.as_ref())));
            }
            match notified.poll(cx) {
                Poll::Ready(()) => this.notified.set(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The event `future` holds (a copy of it).
fn event_of<F: HoldsRequest<Event<T>>, T>(future: Pin<&Option<F>>) -> Option<Event<T>> {
    future.get_ref().as_ref()?.request().cloned()
}

/// An accepted event's claim on its listener's in-flight count.
pub(crate) struct Accepted<T> {
    pub(crate) listener: Handle<ManagedListener<T>>,
    pub(crate) run: u64,
    shard: usize,
}

impl<T> Accepted<T> {
    /// Counts an event as in flight on `listener`. The increment is SeqCst and happens before the caller
    /// checks that the manager is running (also SeqCst), while `stop` clears that flag before it reads the
    /// count: so either the caller sees "not running" and backs out, or `stop` sees this event and waits.
    #[inline]
    pub(crate) fn new(listener: Handle<ManagedListener<T>>) -> Self {
        let shard = listener.metrics.in_flight.enter();
        let run = listener.run.load(Ordering::SeqCst);
        Accepted {
            listener,
            run,
            shard,
        }
    }
}

impl<T> Drop for Accepted<T> {
    fn drop(&mut self) {
        self.listener.metrics.in_flight.exit(self.shard);
    }
}
