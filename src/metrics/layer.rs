//! [`MetricsLayer`]: counts events or attempts and records their latency into a [`ListenerMetrics`].

use std::cell::Cell;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use super::{AttemptOutcome, ListenerMetrics};
use crate::shared::{Handle, Shared};
use crate::{clock, Error};

// Clock readings shared where a per-event and a per-attempt metrics layer meet, so an event whose attempt
// runs synchronously inside it reads the clock twice, not four times (a read costs ~25 ns, as much as the
// rest of a layer). A reading is only handed over within one synchronous call or poll: the receiving side
// clears it before that call or poll, so a reading never outlives the moment it was taken in.
std::thread_local! {
    /// Set by a per-event `call` around its inner `call`: the event's start, for the first attempt.
    static EVENT_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Set by a per-attempt future when it completes: the attempt's end, for the event polling it.
    static ATTEMPT_FINISHED: Cell<Option<Finished>> = const { Cell::new(None) };
}

/// An attempt's end as lent to the event around it: when the two started at the same reading (the first
/// attempt, run synchronously), the event's latency is the attempt's, and is not computed twice.
#[derive(Clone, Copy)]
pub(crate) struct Finished {
    at: Instant,
    started: Instant,
    latency: Duration,
    /// Whether a per-attempt metrics layer recorded the attempt itself. The manager's attempts are only
    /// timed ([`AttemptTiming`]) and recorded by whoever receives this: the retry future for an attempt it
    /// retries, the event for its last (once, for both, when it was its only one), or the event once it
    /// sees it, when the event goes on (to its dead letter's sink) after its last attempt.
    recorded: bool,
    outcome: AttemptOutcome,
    /// The error's kind, for the log (`"ok"` for a success).
    kind: &'static str,
}

impl Finished {
    #[inline]
    fn new(started: Instant, at: Instant, result: Result<(), &Error>, recorded: bool) -> Self {
        Finished {
            at,
            started,
            latency: at.saturating_duration_since(started),
            recorded,
            outcome: AttemptOutcome::of(result),
            kind: result.err().map_or("ok", Error::kind),
        }
    }
}

/// Clears the attempt end lent in this thread (before polling what may lend a new one).
#[inline]
pub(crate) fn clear_finished_attempt() {
    ATTEMPT_FINISHED.set(None);
}

/// Takes the end of an attempt that ended in the poll just made and that nobody recorded yet.
#[inline]
pub(crate) fn take_unrecorded_attempt() -> Option<Finished> {
    match ATTEMPT_FINISHED.take() {
        Some(finished) if !finished.recorded => Some(finished),
        _ => None,
    }
}

/// Records an attempt a manager's stack timed (see [`Finished::recorded`]).
pub(crate) fn record_attempt(metrics: &ListenerMetrics, finished: Finished) {
    metrics.attempt_ended(finished.outcome, finished.latency, finished.at);
    log_attempt(metrics, finished);
}

#[inline]
fn log_attempt(metrics: &ListenerMetrics, finished: Finished) {
    tracing::debug!(
        target: "tower_listener::attempt",
        listener = metrics.name(),
        outcome = finished.kind,
        latency_us = finished.latency.as_micros() as u64,
        "attempt finished"
    );
}

/// The clock reading a per-event `call` lends to the layers inside it, if this runs inside one.
#[inline]
pub(crate) fn lent_event_start() -> Option<Instant> {
    EVENT_STARTED.get()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Event,
    Attempt,
}

/// Records outcomes and latencies into a [`ListenerMetrics`].
///
/// Use [`per_event`](MetricsLayer::per_event) outermost (it counts each event once, retries included, and
/// tracks `in_flight`) and [`per_attempt`](MetricsLayer::per_attempt) around the timeout, inside the retry,
/// breaker and limit (it counts each attempt, feeds the health window, and counts an [`Error::Timeout`] as
/// a timeout). The manager places both.
///
/// Dropping the response future before it completes records nothing but the end of `in_flight`.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{Error, ListenerMetrics, MetricsLayer, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), Error> {
/// let metrics = Arc::new(ListenerMetrics::new("inventory"));
/// let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::per_event(metrics.clone()))
///     .layer(RetryLayer::with_metrics(RetryPolicy::default(), metrics.clone())?)
///     .layer(MetricsLayer::per_attempt(metrics.clone()))
///     .service(service_fn(move |_: ()| {
///         let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         async move { if n == 0 { Err(Error::handler(std::fmt::Error)) } else { Ok(()) } }
///     }));
/// svc.oneshot(()).await?;
/// let stats = metrics.snapshot();
/// // One event, two attempts (the first failed and was retried).
/// assert_eq!((stats.events_succeeded, stats.attempts, stats.attempt_failures, stats.events_retried), (1, 2, 1, 1));
/// assert!(stats.event_latency.max >= Duration::from_millis(100)); // the backoff is part of the event
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Shared<ListenerMetrics>,
    scope: Scope,
}

impl MetricsLayer {
    /// Counts whole events: `events_processed`, `events_succeeded`/`events_failed`, `in_flight` and the
    /// event latency.
    pub fn per_event(metrics: Arc<ListenerMetrics>) -> Self {
        MetricsLayer {
            metrics: Shared::new(metrics),
            scope: Scope::Event,
        }
    }

    /// Counts single attempts: `attempts`, `attempt_failures`, the health window and the attempt latency.
    pub fn per_attempt(metrics: Arc<ListenerMetrics>) -> Self {
        MetricsLayer {
            metrics: Shared::new(metrics),
            scope: Scope::Attempt,
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
            scope: self.scope,
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Shared<ListenerMetrics>,
    scope: Scope,
}

impl<S, R> Service<R> for MetricsService<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = MetricsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let recording = match self.scope {
            Scope::Event => {
                Recording::per_event(self.metrics.handle(), || self.inner.call(request))
            }
            Scope::Attempt => Recording {
                started: EVENT_STARTED.take().unwrap_or_else(clock::now),
                inner: self.inner.call(request),
                metrics: self.metrics.handle(),
                scope: Scope::Attempt,
                in_flight: None,
            },
        };
        MetricsFuture { recording }
    }
}

pin_project! {
    /// The response future of [`MetricsService`]. Dropping it early only ends its `in_flight` count.
    pub struct MetricsFuture<F> {
        #[pin]
        recording: Recording<F, Handle<ListenerMetrics>>,
    }
}

impl<F, T, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().recording.poll(cx)
    }
}

pin_project! {
    /// What [`MetricsFuture`] does, over any way `M` of holding the metrics: the layer's future holds a
    /// handle, the manager (which runs the per-event step itself) a borrow of its listener's metrics.
    pub(crate) struct Recording<F, M>
    where
        M: Deref<Target = ListenerMetrics>,
    {
        #[pin]
        inner: F,
        metrics: M,
        scope: Scope,
        started: Instant,
        // The shard of the event's in-flight count, until it ends (an event counted by this recording).
        in_flight: Option<usize>,
    }

    impl<F, M> PinnedDrop for Recording<F, M>
    where
        M: Deref<Target = ListenerMetrics>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(shard) = this.in_flight.take() {
                this.metrics.in_flight.exit(shard);
            }
        }
    }
}

impl<F, M: Deref<Target = ListenerMetrics>> Recording<F, M> {
    /// Starts one event: counts it in flight, reads the clock, and makes the inner call with that reading
    /// lent to a per-attempt layer inside.
    #[inline]
    pub(crate) fn per_event(metrics: M, call: impl FnOnce() -> F) -> Self {
        let shard = metrics.event_started();
        let mut recording = Self::per_counted_event(metrics, call);
        recording.in_flight = Some(shard);
        recording
    }

    /// [`per_event`](Self::per_event) for an event its caller already counts in flight (the manager,
    /// from the moment it accepts the event).
    #[inline]
    pub(crate) fn per_counted_event(metrics: M, call: impl FnOnce() -> F) -> Self {
        let started = clock::now();
        EVENT_STARTED.set(Some(started));
        let inner = call();
        EVENT_STARTED.set(None);
        Recording {
            inner,
            metrics,
            scope: Scope::Event,
            started,
            in_flight: None,
        }
    }
}

impl<F, M, R> crate::dead_letter::HoldsRequest<R> for Recording<F, M>
where
    F: crate::dead_letter::HoldsRequest<R>,
    M: Deref<Target = ListenerMetrics>,
{
    fn request(&self) -> Option<&R> {
        self.inner.request()
    }
}

impl<F, M, T, E> Future for Recording<F, M>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    M: Deref<Target = ListenerMetrics>,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let metrics = &**this.metrics;
        let Scope::Event = this.scope else {
            let result = ready!(this.inner.poll(cx)).map_err(|e| Error::from_boxed(e.into()));
            let finished = Finished::new(
                *this.started,
                clock::now(),
                result.as_ref().map(|_| ()),
                true,
            );
            ATTEMPT_FINISHED.set(Some(finished));
            record_attempt(metrics, finished);
            return Poll::Ready(result);
        };
        ATTEMPT_FINISHED.set(None);
        let result = match this.inner.poll(cx) {
            Poll::Ready(result) => result.map_err(|e| Error::from_boxed(e.into())),
            Poll::Pending => {
                // The last attempt ended, and the event goes on (to its dead letter's sink): record
                // the attempt now, as the end it lent is gone by the next poll.
                if let Some(finished) = take_unrecorded_attempt() {
                    record_attempt(metrics, finished);
                }
                return Poll::Pending;
            }
        };
        let outcome = result.as_ref().map(|_| ());
        let started = *this.started;
        match ATTEMPT_FINISHED.take() {
            // The only attempt, timed but not recorded: one record for the event and it.
            Some(attempt) if !attempt.recorded && attempt.started == started => {
                metrics.solo_ended(attempt.outcome, outcome, attempt.latency, attempt.at);
                log_attempt(metrics, attempt);
            }
            Some(attempt) => {
                if !attempt.recorded {
                    record_attempt(metrics, attempt);
                }
                let latency = if attempt.started == started {
                    attempt.latency
                } else {
                    attempt.at.saturating_duration_since(started)
                };
                event_ended(metrics, outcome, latency);
            }
            None => {
                let latency = clock::now().saturating_duration_since(started);
                event_ended(metrics, outcome, latency);
            }
        }
        if let Some(shard) = this.in_flight.take() {
            metrics.in_flight.exit(shard);
        }
        Poll::Ready(result)
    }
}

/// Counts an event's end.
#[inline]
fn event_ended(metrics: &ListenerMetrics, outcome: Result<(), &Error>, latency: Duration) {
    match outcome {
        Ok(()) => metrics.event_succeeded(latency),
        Err(error) => metrics.event_failed(error, latency),
    }
}

/// Times each attempt and lends its end to whoever polls it, without recording anything: the manager's
/// per-attempt step. Its future holds no reference to the metrics (one reference count less per event);
/// the retry future records the attempts it retries and the event the last one (see
/// [`Finished::recorded`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptTimingLayer;

impl<S> Layer<S> for AttemptTimingLayer {
    type Service = AttemptTiming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTiming { inner }
    }
}

/// The service made by [`AttemptTimingLayer`].
#[derive(Debug, Clone)]
pub(crate) struct AttemptTiming<S> {
    inner: S,
}

impl<S, R> Service<R> for AttemptTiming<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Timed<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        Timed {
            started: EVENT_STARTED.take().unwrap_or_else(clock::now),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`AttemptTiming`].
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
        started: Instant,
    }
}

impl<F, T, E> Future for Timed<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(|e| Error::from_boxed(e.into()));
        ATTEMPT_FINISHED.set(Some(Finished::new(
            *this.started,
            clock::now(),
            result.as_ref().map(|_| ()),
            false,
        )));
        Poll::Ready(result)
    }
}
