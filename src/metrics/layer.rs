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

use super::ListenerMetrics;
use crate::shared::{Handle, Shared};
use crate::{clock, Error};

// Clock readings shared where a per-event and a per-attempt metrics layer meet, so an event whose attempt
// runs synchronously inside it reads the clock twice, not four times (a read costs ~25 ns, as much as the
// rest of a layer). A reading is only handed over within one synchronous call or poll: the per-event
// side clears it around that call or poll, so a reading never outlives the moment it was taken in.
std::thread_local! {
    /// Set by a per-event `call` around its inner `call`: the event's start, for the first attempt.
    static EVENT_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Set by a per-attempt future when it completes: the attempt's end, for the event polling it.
    static ATTEMPT_FINISHED: Cell<Option<Finished>> = const { Cell::new(None) };
}

/// An attempt's end as lent to the event around it: when the two started at the same reading (the first
/// attempt, run synchronously), the event's latency is the attempt's, and is not computed twice.
#[derive(Clone, Copy)]
struct Finished {
    at: Instant,
    started: Instant,
    latency: Duration,
}

/// The clock reading a per-event `call` lends to the layers inside it, if this runs inside one.
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
/// tracks `in_flight`) and [`per_attempt`](MetricsLayer::per_attempt) just around the handler (it counts each
/// attempt and feeds the health window). The manager places both.
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
                done: false,
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
        done: bool,
    }

    impl<F, M> PinnedDrop for Recording<F, M>
    where
        M: Deref<Target = ListenerMetrics>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done && *this.scope == Scope::Event {
                this.metrics.event_abandoned();
            }
        }
    }
}

impl<F, M: Deref<Target = ListenerMetrics>> Recording<F, M> {
    /// Starts one event: counts it, reads the clock, and makes the inner call with that reading lent to a
    /// per-attempt layer inside.
    #[inline]
    pub(crate) fn per_event(metrics: M, call: impl FnOnce() -> F) -> Self {
        metrics.event_started();
        let started = clock::now();
        EVENT_STARTED.set(Some(started));
        let inner = call();
        EVENT_STARTED.set(None);
        Recording {
            inner,
            metrics,
            scope: Scope::Event,
            started,
            done: false,
        }
    }
}

impl<F, M, T, E> Future for Recording<F, M>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    M: Deref<Target = ListenerMetrics>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.scope == Scope::Event {
            ATTEMPT_FINISHED.set(None);
        }
        let result = ready!(this.inner.poll(cx)).map_err(|e| Error::from_boxed(e.into()));
        *this.done = true;
        match this.scope {
            Scope::Event => {
                let latency = match ATTEMPT_FINISHED.take() {
                    Some(attempt) if attempt.started == *this.started => attempt.latency,
                    Some(attempt) => attempt.at.saturating_duration_since(*this.started),
                    None => clock::now().saturating_duration_since(*this.started),
                };
                match &result {
                    Ok(_) => this.metrics.event_finished(true, latency),
                    Err(error) => this.metrics.event_failed(error, latency),
                }
            }
            Scope::Attempt => {
                let now = clock::now();
                let latency = now.saturating_duration_since(*this.started);
                ATTEMPT_FINISHED.set(Some(Finished {
                    at: now,
                    started: *this.started,
                    latency,
                }));
                match &result {
                    Ok(_) => this.metrics.attempt_finished(true, latency, now),
                    Err(error) => this.metrics.attempt_failed(error, latency, now),
                }
                tracing::debug!(
                    target: "tower_listener::attempt",
                    listener = this.metrics.name(),
                    outcome = match &result {
                        Ok(_) => "ok",
                        Err(e) => e.kind(),
                    },
                    latency_us = latency.as_micros() as u64,
                    "attempt finished"
                );
            }
        }
        Poll::Ready(result)
    }
}
