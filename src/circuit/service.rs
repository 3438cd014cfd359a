//! [`CircuitBreaker`]: the service.

use std::task::{Context, Poll};

use tower::{BoxError, Service};

use super::future::CircuitFuture;
use super::handle::{Breaker, CircuitBreakerHandle};
use crate::shared::Shared;
use crate::Error;

/// A service guarded by a circuit breaker. Made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` never fails because of the breaker: the open check is made in `call`, since an error from
/// `poll_ready` is permanent in tower. While the breaker rejects, `poll_ready` is ready at once without
/// polling the inner service, so a call that will be rejected never waits for an inner permit. When such a
/// call is admitted after all (the open timeout passed in between), the future first waits for the inner
/// service's readiness on a clone of it, which is why the inner service must be `Clone`.
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Shared<Breaker>,
    inner_ready: bool,
}

impl<S> CircuitBreaker<S> {
    pub(crate) fn new(inner: S, breaker: Shared<Breaker>) -> Self {
        CircuitBreaker {
            inner,
            breaker,
            inner_ready: false,
        }
    }

    /// The handle to this service's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            breaker: self.breaker.arc().clone(),
        }
    }
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        // A clone has not been polled ready, whatever the original was.
        CircuitBreaker::new(self.inner.clone(), self.breaker.clone())
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.handle())
            .finish()
    }
}

impl<S, R> Service<R> for CircuitBreaker<S>
where
    S: Service<R> + Clone,
    S::Response: 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = CircuitFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.inner_ready {
            return Poll::Ready(Ok(()));
        }
        if self.breaker.rejects_now() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::from_boxed(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let ticket = match self.breaker.admit() {
            Ok(ticket) => ticket,
            Err(rejection) => return CircuitFuture::rejected(rejection),
        };
        if std::mem::take(&mut self.inner_ready) {
            let inner = &mut self.inner;
            CircuitFuture::running(|| inner.call(request), self.breaker.handle(), ticket)
        } else {
            // Admitted without a ready inner service: take this (unready) one into the future and wait
            // for its readiness there; keep a fresh clone here.
            let clone = self.inner.clone();
            let service = std::mem::replace(&mut self.inner, clone);
            CircuitFuture::not_ready(service, request, self.breaker.handle(), ticket)
        }
    }
}
