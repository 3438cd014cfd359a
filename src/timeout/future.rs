//! [`TimeoutFuture`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::BoxError;

use crate::metrics::ListenerMetrics;
use crate::shared::Handle;
use crate::Error;

pin_project! {
    #[project = TimerProj]
    enum Timer {
        Unarmed,
        Armed { #[pin] sleep: Sleep },
    }
}

pin_project! {
    /// The response future of [`Timeout`](super::Timeout). Dropping it drops the inner future and the timer.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        timer: Timer,
        limit: Duration,
        metrics: Option<Handle<ListenerMetrics>>,
    }
}

impl<F> TimeoutFuture<F> {
    pub(crate) fn new(inner: F, limit: Duration, metrics: Option<Handle<ListenerMetrics>>) -> Self {
        TimeoutFuture {
            inner: Some(inner),
            timer: Timer::Unarmed,
            limit,
            metrics,
        }
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Polled after it completed or timed out.
            return Poll::Ready(Err(Error::Timeout {
                limit: Some(*this.limit),
            }));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result.map_err(|e| Error::from_boxed(e.into())));
        }
        if let TimerProj::Unarmed = this.timer.as_mut().project() {
            this.timer.set(Timer::Armed {
                sleep: tokio::time::sleep(*this.limit),
            });
        }
        let TimerProj::Armed { sleep } = this.timer.project() else {
            unreachable!("armed just above")
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Drop the attempt now, not when the caller drops us.
        this.inner.set(None);
        if let Some(metrics) = this.metrics {
            metrics.attempt_timed_out(*this.limit);
        }
        Poll::Ready(Err(Error::Timeout {
            limit: Some(*this.limit),
        }))
    }
}
