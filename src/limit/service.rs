//! [`ConcurrencyLimit`]: the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::future::LimitFuture;
use super::layer::LimitMode;
use super::permits::Permits;
use crate::metrics::ListenerMetrics;
use crate::shared::Shared;
use crate::Error;

/// A service whose calls share one concurrency limit. Made by
/// [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
///
/// `poll_ready` only asks the inner service; the permit is taken in the response future. When a call has
/// to wait, the (ready) inner service moves into the future and a clone takes its place, hence `S: Clone`.
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Shared<Permits>,
    mode: LimitMode,
    metrics: Option<Arc<ListenerMetrics>>,
}

impl<S> ConcurrencyLimit<S> {
    pub(crate) fn new(
        inner: S,
        permits: Shared<Permits>,
        mode: LimitMode,
        metrics: Option<Arc<ListenerMetrics>>,
    ) -> Self {
        ConcurrencyLimit {
            inner,
            permits,
            mode,
            metrics,
        }
    }

    fn overloaded(&self) -> Error {
        if let Some(metrics) = &self.metrics {
            metrics.rejected(crate::metrics::Rejection::Overloaded);
        }
        Error::Overloaded
    }
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = LimitFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        if let Some(permit) = self.permits.try_acquire() {
            let inner = &mut self.inner;
            return LimitFuture::running(|| inner.call(request), permit);
        }
        let permits = self.permits.clone();
        let acquire: super::future::Acquire = match self.mode {
            LimitMode::Reject => return LimitFuture::rejected(self.overloaded()),
            LimitMode::Wait => Box::pin(async move { Ok(permits.acquire().await) }),
            LimitMode::WaitFor(wait) => Box::pin(async move {
                tokio::time::timeout(wait, permits.acquire())
                    .await
                    .map_err(|_| Error::Overloaded)
            }),
        };
        // Wait in the future: the (ready) inner service goes with it, a clone stays here.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        LimitFuture::waiting(acquire, service, request, self.metrics.clone())
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("mode", &self.mode)
            .field("available_permits", &self.permits.available())
            .finish()
    }
}
