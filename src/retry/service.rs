//! [`Retry`]: the service.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::future::RetryFuture;
use super::layer::RetryShared;
use crate::shared::Shared;
use crate::Error;

/// A service whose failed calls are retried. Made by [`RetryLayer`](super::RetryLayer).
///
/// The first attempt uses this service's inner service. A retry runs on a fresh clone of a prototype the
/// service keeps behind an `Arc<Mutex<_>>`: a call costs one reference count instead of a clone of the
/// whole inner stack, and the mutex is taken only when a retry happens.
pub struct Retry<S> {
    inner: S,
    core: Shared<RetryCore<S>>,
}

/// What a retry future needs beyond the request, behind one `Arc` (one reference count per call).
pub(crate) struct RetryCore<S> {
    /// Retries run on clones of this.
    pub(crate) prototype: Mutex<S>,
    pub(crate) shared: Arc<RetryShared>,
}

impl<S: Clone> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<RetryShared>) -> Self {
        Retry {
            core: Shared::new(Arc::new(RetryCore {
                prototype: Mutex::new(inner.clone()),
                shared,
            })),
            inner,
        }
    }
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            core: self.core.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.core.shared.policy)
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

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        if let Some(budget) = &self.core.shared.policy.budget {
            // The event's start, when a per-event metrics layer outside has read the clock already.
            budget.deposit(crate::metrics::lent_event_start().unwrap_or_else(crate::clock::now));
        }
        let first = request.clone();
        RetryFuture::new(|| self.inner.call(first), self.core.handle(), request)
    }
}
