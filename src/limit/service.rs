//! [`ConcurrencyLimit`]: the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tower::{BoxError, Service};

use super::future::LimitFuture;
use super::layer::LimitMode;
use crate::metrics::ListenerMetrics;
use crate::Error;

/// A service whose calls share one concurrency limit. Made by
/// [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
///
/// `poll_ready` only asks the inner service; the permit is taken in the response future. When a call has
/// to wait, the (ready) inner service moves into the future and a clone takes its place, hence `S: Clone`.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    mode: LimitMode,
    metrics: Option<Arc<ListenerMetrics>>,
}

impl<S> ConcurrencyLimit<S> {
    pub(crate) fn new(
        inner: S,
        semaphore: Arc<Semaphore>,
        mode: LimitMode,
        metrics: Option<Arc<ListenerMetrics>>,
    ) -> Self {
        ConcurrencyLimit {
            inner,
            semaphore,
            mode,
            metrics,
        }
    }

    fn overloaded(&self) -> Error {
        if let Some(metrics) = &self.metrics {
            metrics.rejected();
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => LimitFuture::running(self.inner.call(request), permit),
            Err(TryAcquireError::Closed) => LimitFuture::rejected(self.overloaded()),
            Err(TryAcquireError::NoPermits) => {
                let semaphore = self.semaphore.clone();
                let acquire: super::future::Acquire = match self.mode {
                    LimitMode::Reject => return LimitFuture::rejected(self.overloaded()),
                    LimitMode::Wait => Box::pin(async move {
                        semaphore
                            .acquire_owned()
                            .await
                            .map_err(|_| Error::Overloaded)
                    }),
                    LimitMode::WaitFor(wait) => Box::pin(async move {
                        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
                            Ok(Ok(permit)) => Ok::<OwnedSemaphorePermit, Error>(permit),
                            _ => Err(Error::Overloaded),
                        }
                    }),
                };
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                LimitFuture::waiting(acquire, service, request, self.metrics.clone())
            }
        }
    }
}
