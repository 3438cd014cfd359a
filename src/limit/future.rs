//! [`LimitFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::{BoxError, Service};

use super::permits::Permit;
use crate::metrics::ListenerMetrics;
use crate::Error;

/// The wait for a permit (boxed: an async fn's future has no nameable type; only calls that wait pay it).
pub(crate) type Acquire = Pin<Box<dyn Future<Output = Result<Permit, Error>> + Send + 'static>>;

struct Waiting<S, R> {
    acquire: Acquire,
    service: S,
    request: Option<R>,
    metrics: Option<Arc<ListenerMetrics>>,
}

pin_project! {
    #[project = StateProj]
    enum State<S, R, F> {
        Rejected { error: Option<Error> },
        // Only calls that find no free permit wait; boxed to keep the common future small.
        Waiting { waiting: Box<Waiting<S, R>> },
        Running { #[pin] future: F, permit: Option<Permit> },
    }
}

pin_project! {
    /// The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit).
    ///
    /// Dropping it while waiting leaves the queue; dropping it while running drops the inner future and
    /// releases the permit. The permit is also released as soon as the inner future completes.
    pub struct LimitFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R, S::Future>,
    }
}

impl<S: Service<R>, R> LimitFuture<S, R> {
    pub(crate) fn rejected(error: Error) -> Self {
        LimitFuture {
            state: State::Rejected { error: Some(error) },
        }
    }

    /// A call holding `permit`: `call`'s future, built in place.
    #[inline]
    pub(crate) fn running(call: impl FnOnce() -> S::Future, permit: Permit) -> Self {
        LimitFuture {
            state: State::Running {
                permit: Some(permit),
                future: call(),
            },
        }
    }

    pub(crate) fn waiting(
        acquire: Acquire,
        service: S,
        request: R,
        metrics: Option<Arc<ListenerMetrics>>,
    ) -> Self {
        LimitFuture {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    acquire,
                    service,
                    request: Some(request),
                    metrics,
                }),
            },
        }
    }
}

impl<S, R> Future for LimitFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Rejected { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or(Error::Overloaded)));
                }
                StateProj::Waiting { waiting } => {
                    let Waiting {
                        acquire,
                        service,
                        request,
                        metrics,
                    } = &mut **waiting;
                    let permit = match ready!(acquire.as_mut().poll(cx)) {
                        Ok(permit) => permit,
                        Err(error) => {
                            if let Some(metrics) = metrics {
                                metrics.rejected(crate::metrics::Rejection::Overloaded);
                            }
                            return Poll::Ready(Err(error));
                        }
                    };
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(Error::Overloaded)); // polled after completion
                    };
                    let future = service.call(request);
                    this.state.set(State::Running {
                        future,
                        permit: Some(permit),
                    });
                }
                StateProj::Running { future, permit } => {
                    let result = ready!(future.poll(cx));
                    permit.take(); // release now, not when the caller drops us
                    return Poll::Ready(result.map_err(|e| Error::from_boxed(e.into())));
                }
            }
        }
    }
}
