//! [`Timeout`]: the service.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Service};

use super::future::TimeoutFuture;
use crate::Error;

/// A service whose attempts are cut off after a limit. Made by [`TimeoutLayer`](super::TimeoutLayer).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    /// The limit in nanoseconds (it is at most a year): what each attempt's future keeps.
    limit: u64,
}

impl<S> Timeout<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        Timeout {
            inner,
            limit: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = TimeoutFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let inner = &mut self.inner;
        TimeoutFuture::new(|| inner.call(request), self.limit)
    }
}
