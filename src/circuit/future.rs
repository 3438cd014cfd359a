//! [`CircuitFuture`]: the response future of [`CircuitBreaker`](super::CircuitBreaker).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::{BoxError, Service};

use super::handle::{Breaker, Ticket};
use super::state::CallOutcome;
use crate::shared::Handle;
use crate::Error;

/// An admitted call's claim on the breaker: reports the outcome once, and gives a half-open probe slot back
/// if the call is dropped before it finishes.
///
/// Kept to 32 bytes: it sits in every attempt's future next to the inner call's, and the outer layers move
/// that future; up to 128 bytes a move is a few register copies, past it a call to `memcpy`.
struct Admitted {
    breaker: Handle<Breaker>,
    /// Its `probe` is cleared once the outcome is reported, so that a drop after it gives nothing back.
    ticket: Ticket,
    /// When the call started, on the breaker's own scale; read only when the breaker measures latency.
    started: u64,
}

impl Admitted {
    fn settle<T: 'static>(&mut self, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(response) => {
                if self.breaker.measures_latency()
                    && self.breaker.is_slow(self.breaker.since(self.started))
                {
                    CallOutcome::Failure
                } else {
                    self.breaker.classify_response(response)
                }
            }
            Err(error) => self.breaker.classify(error),
        };
        let ticket = self.ticket;
        self.ticket.probe = false;
        self.breaker.record(ticket, outcome);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.ticket.probe {
            // Cancelled probe: its slot comes back, and it counts as neither success nor failure.
            self.breaker.record(self.ticket, CallOutcome::Ignored);
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R, F> {
        Rejected { error: Option<Error> },
        // Rare (admitted while the inner service was not polled ready): boxed to keep the future small.
        NotReady { waiting: Box<(S, Option<R>)> },
        Running { #[pin] future: F },
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// A rejected call resolves at once to [`Error::CircuitOpen`] (nothing is allocated). Dropping the future
    /// of an admitted call drops the inner future; if the call was a half-open probe its slot is given
    /// back and it counts as neither success nor failure.
    pub struct CircuitFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R, S::Future>,
        admitted: Option<Admitted>,
    }
}

impl<S, R> CircuitFuture<S, R>
where
    S: Service<R>,
{
    pub(crate) fn rejected(error: Error) -> Self {
        CircuitFuture {
            state: State::Rejected { error: Some(error) },
            admitted: None,
        }
    }

    fn admitted(breaker: Handle<Breaker>, ticket: Ticket) -> Option<Admitted> {
        let started = if breaker.measures_latency() {
            breaker.now()
        } else {
            0
        };
        Some(Admitted {
            breaker,
            ticket,
            started,
        })
    }

    /// An admitted call: `call`'s future, built in place (after the start time is taken).
    #[inline]
    pub(crate) fn running(
        call: impl FnOnce() -> S::Future,
        breaker: Handle<Breaker>,
        ticket: Ticket,
    ) -> Self {
        CircuitFuture {
            admitted: Self::admitted(breaker, ticket),
            state: State::Running { future: call() },
        }
    }

    pub(crate) fn not_ready(
        service: S,
        request: R,
        breaker: Handle<Breaker>,
        ticket: Ticket,
    ) -> Self {
        CircuitFuture {
            state: State::NotReady {
                waiting: Box::new((service, Some(request))),
            },
            admitted: Self::admitted(breaker, ticket),
        }
    }
}

impl<S, R> Future for CircuitFuture<S, R>
where
    S: Service<R>,
    S::Response: 'static,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Rejected { error } => {
                    // `error` is Some until this first (and only) Ready.
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or(Error::CircuitOpen { retry_after: None })));
                }
                StateProj::NotReady { waiting } => {
                    let (service, request) = &mut **waiting;
                    match ready!(service.poll_ready(cx)) {
                        Ok(()) => match request.take() {
                            Some(request) => {
                                let future = service.call(request);
                                this.state.set(State::Running { future });
                                continue;
                            }
                            // Polled again after completion: the request is gone.
                            None => Err(Error::NotRunning),
                        },
                        Err(e) => Err(Error::from_boxed(e.into())),
                    }
                }
                StateProj::Running { future } => {
                    ready!(future.poll(cx)).map_err(|e| Error::from_boxed(e.into()))
                }
            };
            if let Some(mut admitted) = this.admitted.take() {
                admitted.settle(&result);
            }
            return Poll::Ready(result);
        }
    }
}
