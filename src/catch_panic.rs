//! [`CatchPanicLayer`]: turns a panic in the handler into [`Error::Panicked`].
//!
//! Reach for it innermost, around the handler: a panicking handler then fails one attempt like any other
//! error (it can be retried, it counts for the breaker, it is dead-lettered) instead of unwinding through
//! the stack and killing the task that runs it. Both a panic inside `call` and one while polling the
//! response future are caught. The manager always puts it around each listener's handler.
//!
//! **Cancellation**: dropping the response future drops the inner future.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::Error;

/// Catches panics of the inner service and returns them as [`Error::Panicked`].
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{CatchPanicLayer, Error};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(CatchPanicLayer)
///     .service(service_fn(|_: ()| async { panic!("boom"); #[allow(unreachable_code)] Ok::<(), Error>(()) }));
/// match svc.oneshot(()).await {
///     Err(Error::Panicked { message }) => assert_eq!(message, "boom"),
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, R> Service<R> for CatchPanic<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = CatchPanicFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx))) {
            Ok(poll) => poll.map_err(|e| Error::from_boxed(e.into())),
            Err(payload) => Poll::Ready(Err(Error::from_panic(payload))),
        }
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => CatchPanicFuture {
                state: State::Running { future },
            },
            Err(payload) => CatchPanicFuture {
                state: State::Panicked {
                    error: Some(Error::from_panic(payload)),
                },
            },
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        Panicked { error: Option<Error> },
    }
}

pin_project! {
    /// The response future of [`CatchPanic`].
    pub struct CatchPanicFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F, T, E> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let future = match this.state.as_mut().project() {
            StateProj::Running { future } => future,
            StateProj::Panicked { error } => {
                return Poll::Ready(Err(error.take().unwrap_or(Error::Panicked {
                    message: "polled after a panic".into(),
                })))
            }
        };
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(|r| r.map_err(|e| Error::from_boxed(e.into()))),
            Err(payload) => {
                // The inner future is in an unknown state after a panic: drop it now.
                this.state.set(State::Panicked { error: None });
                Poll::Ready(Err(Error::from_panic(payload)))
            }
        }
    }
}
