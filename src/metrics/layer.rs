//! [`MetricsLayer`]: counts events or attempts and records their latency into a [`ListenerMetrics`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use super::ListenerMetrics;
use crate::{clock, Error};

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
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<ListenerMetrics>,
    scope: Scope,
}

impl MetricsLayer {
    /// Counts whole events: `events_processed`, `events_succeeded`/`events_failed`, `in_flight` and the
    /// event latency.
    pub fn per_event(metrics: Arc<ListenerMetrics>) -> Self {
        MetricsLayer {
            metrics,
            scope: Scope::Event,
        }
    }

    /// Counts single attempts: `attempts`, `attempt_failures`, the health window and the attempt latency.
    pub fn per_attempt(metrics: Arc<ListenerMetrics>) -> Self {
        MetricsLayer {
            metrics,
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
    metrics: Arc<ListenerMetrics>,
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        if self.scope == Scope::Event {
            self.metrics.event_started();
        }
        MetricsFuture {
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            scope: self.scope,
            started: clock::now(),
            done: false,
        }
    }
}

pin_project! {
    /// The response future of [`MetricsService`]. Dropping it early only ends its `in_flight` count.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<ListenerMetrics>,
        scope: Scope,
        started: Instant,
        done: bool,
    }

    impl<F> PinnedDrop for MetricsFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done && *this.scope == Scope::Event {
                this.metrics.event_abandoned();
            }
        }
    }
}

impl<F, T, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(|e| Error::from_boxed(e.into()));
        let latency = clock::now().saturating_duration_since(*this.started);
        *this.done = true;
        match this.scope {
            Scope::Event => this.metrics.event_finished(result.is_ok(), latency),
            Scope::Attempt => this.metrics.attempt_finished(result.is_ok(), latency),
        }
        Poll::Ready(result)
    }
}
