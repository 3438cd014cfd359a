//! [`Retry`]: the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::future::RetryFuture;
use super::layer::RetryShared;
use crate::Error;

/// A service whose failed calls are retried. Made by [`RetryLayer`](super::RetryLayer).
///
/// The inner service is cloned once per call (the called clone goes into the future to run the retries), so
/// it should be cheap to clone; every service of this crate is.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<RetryShared>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<RetryShared>) -> Self {
        Retry { inner, shared }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<S, R> Service<R> for Retry<S>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    R: Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = RetryFuture<S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(budget) = &self.shared.policy.budget {
            budget.deposit();
        }
        let future = self.inner.call(request.clone());
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        RetryFuture::new(future, service, request, self.shared.clone())
    }
}
