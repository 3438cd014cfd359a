//! [`DeadLetterService`]: the service.

use std::fmt;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::future::DeadLetterFuture;
use super::layer::DeadLetterShared;
use crate::shared::Shared;
use crate::Error;

/// A service whose failed calls end in a dead-letter sink. Made by
/// [`DeadLetterLayer`](super::DeadLetterLayer).
pub struct DeadLetterService<S, R> {
    inner: S,
    shared: Shared<DeadLetterShared<R>>,
}

impl<S, R> DeadLetterService<S, R> {
    pub(crate) fn new(inner: S, shared: Shared<DeadLetterShared<R>>) -> Self {
        DeadLetterService { inner, shared }
    }
}

impl<S: Clone, R> Clone for DeadLetterService<S, R> {
    fn clone(&self) -> Self {
        DeadLetterService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for DeadLetterService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterService")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, R> Service<R> for DeadLetterService<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = DeadLetterFuture<S::Future, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_boxed(e.into()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        DeadLetterFuture::start(self.shared.handle(), request, |request| {
            self.inner.call(request)
        })
    }
}
