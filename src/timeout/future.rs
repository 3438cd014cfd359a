//! [`TimeoutFuture`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::BoxError;

use crate::Error;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout). Dropping it drops the inner future and the timer.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: Option<F>,
        // Armed when the attempt first has to wait. Boxed: a tokio `Sleep` is ~140 bytes, and inline it
        // would be copied (armed or not) each time an outer layer moves this future into its own.
        timer: Option<Pin<Box<Sleep>>>,
        // In nanoseconds, 8 bytes instead of a `Duration`'s 16: this future sits inside every outer
        // layer's, and up to 128 bytes a move of theirs is a few register copies, past it a `memcpy`.
        limit: u64,
    }
}

impl<F> TimeoutFuture<F> {
    /// The attempt is `call`'s future, built in place.
    #[inline]
    pub(crate) fn new(call: impl FnOnce() -> F, limit: u64) -> Self {
        TimeoutFuture {
            timer: None,
            limit,
            inner: Some(call()),
        }
    }
}

impl<F> TimeoutFuture<F> {
    fn limit(&self) -> Duration {
        Duration::from_nanos(self.limit)
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let limit = self.limit();
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Polled after it completed or timed out.
            return Poll::Ready(Err(Error::Timeout { limit: Some(limit) }));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result.map_err(|e| Error::from_boxed(e.into())));
        }
        let sleep = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Drop the attempt now, not when the caller drops us.
        this.inner.set(None);
        Poll::Ready(Err(Error::Timeout { limit: Some(limit) }))
    }
}
