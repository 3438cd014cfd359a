//! [`DeadLetterFuture`].

use std::borrow::Borrow;
use std::future::Future;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use pin_project_lite::pin_project;
use tower::BoxError;

use super::layer::{captures, DeadLetterShared};
use super::sink::{DeadLetter, DeadLetterReason, SinkFuture};
use crate::attempts::{self, AttemptRecord, RetryStop};
use crate::metrics::ListenerMetrics;
use crate::shared::Handle;
use crate::{Error, ErrorRecord};

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        Passthrough { #[pin] future: F },
        // Boxed: only an event being dead-lettered gets here (its letter is allocated anyway), while
        // every event's future is as large as its largest state.
        Sending { letter: Box<Sending> },
    }
}

/// A letter on its way to the sink, with what the event's end reports about it.
struct Sending {
    sending: SinkFuture,
    error: Option<Error>,
    reason: DeadLetterReason,
    attempts: u32,
    id: Option<String>,
}

pin_project! {
    /// The response future of [`DeadLetterService`](super::DeadLetterService).
    ///
    /// Dropping it while the inner call runs drops the call and dead-letters nothing (the caller who
    /// cancelled still holds the event). Dropping it while the sink is storing a letter drops the sink's
    /// future: whether that letter was stored depends on the sink (the in-memory queue and the closure
    /// sink store synchronously, before this future first returns `Pending`).
    pub struct DeadLetterFuture<F, R> {
        #[pin]
        lettering: Lettering<F, R, Handle<DeadLetterShared<R>>, R>,
    }
}

impl<F: Future, R: Clone> DeadLetterFuture<F, R> {
    pub(crate) fn start(
        shared: Handle<DeadLetterShared<R>>,
        request: R,
        call: impl FnOnce(R) -> F,
    ) -> Self {
        DeadLetterFuture {
            lettering: Lettering::start(shared, request, call),
        }
    }
}

impl<F, R, T, E> Future for DeadLetterFuture<F, R>
where
    R: Clone + 'static,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().lettering.poll(cx)
    }
}

pin_project! {
    /// What [`DeadLetterFuture`] does, over any way `H` of holding the layer's settings and any way `K`
    /// of keeping the request for its letter: the layer's future holds a handle and a clone of the
    /// request, the manager (which runs the per-event step itself) borrows both, as it holds the event
    /// for the whole call anyway; the letter clones a borrowed request only when it is written.
    pub(crate) struct Lettering<F, R, H, K>
    where
        H: Deref<Target = DeadLetterShared<R>>,
        K: Borrow<R>,
    {
        #[pin]
        state: State<F>,
        request: Option<K>,
        shared: H,
    }
}

impl<F, R, H, K> Lettering<F, R, H, K>
where
    F: Future,
    R: Clone,
    H: Deref<Target = DeadLetterShared<R>>,
    K: Borrow<R>,
{
    /// Starts one call through `call` with a clone of `request`, keeping `request` for its dead letter
    /// (dropping it when dead letters are disabled).
    #[inline]
    pub(crate) fn start(shared: H, request: K, call: impl FnOnce(R) -> F) -> Self {
        let future = call(request.borrow().clone());
        if !shared.config.enabled {
            return Lettering {
                state: State::Passthrough { future },
                request: None,
                shared,
            };
        }
        Lettering {
            state: State::Running { future },
            request: Some(request),
            shared,
        }
    }
}

/// Why an event that ended with `error` is dead-lettered, given what the retry layer recorded.
pub(crate) fn reason_for(error: &Error, record: &AttemptRecord) -> DeadLetterReason {
    match error {
        Error::CircuitOpen { .. } => DeadLetterReason::CircuitOpen,
        Error::Overloaded => DeadLetterReason::Overloaded,
        Error::Stopped => DeadLetterReason::Shutdown,
        Error::Permanent(_) => DeadLetterReason::Permanent,
        _ => match record.stop {
            Some(RetryStop::Exhausted) => DeadLetterReason::Exhausted,
            Some(RetryStop::NotRetryable) => DeadLetterReason::NotRetryable,
            Some(RetryStop::BudgetExhausted) => DeadLetterReason::BudgetExhausted,
            None => DeadLetterReason::Failed,
        },
    }
}

/// Counts (in `dead_letter_failures`, and in `panics` when it panicked) and logs a letter the sink did not
/// take. Shared by the layer and the manager's shutdown path.
pub(crate) fn sink_failed(
    metrics: Option<&ListenerMetrics>,
    listener: &str,
    panicked: bool,
    error: &dyn std::fmt::Display,
) {
    if let Some(metrics) = metrics {
        if panicked {
            metrics.panicked();
        }
        metrics.dead_letter_failed();
    }
    tracing::error!(
        target: "tower_listener::dead_letter",
        listener = %listener,
        error = %error,
        "dead-letter sink failed; the letter is lost to the sink"
    );
}

impl<R> DeadLetterShared<R> {
    fn sink_panicked(&self) {
        sink_failed(self.metrics.as_deref(), &self.name, true, &"sink panicked");
    }

    fn sink_failed(&self, what: &dyn std::fmt::Display) {
        sink_failed(self.metrics.as_deref(), &self.name, false, what);
    }
}

impl<F, R, H, K, T, E> Future for Lettering<F, R, H, K>
where
    R: Clone + 'static,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    H: Deref<Target = DeadLetterShared<R>>,
    K: Borrow<R>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Passthrough { future } => {
                    return future
                        .poll(cx)
                        .map(|r| r.map_err(|e| Error::from_boxed(e.into())));
                }
                StateProj::Running { future } => {
                    attempts::take(); // stale: not from this poll
                    let error = match ready!(future.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => Error::from_boxed(e.into()),
                    };
                    let record = attempts::take().unwrap_or_default();
                    let reason = reason_for(&error, &record);
                    let shared = &**this.shared;
                    let capture = captures(
                        shared.config.capture.as_ref(),
                        reason,
                        shared.metrics.as_deref(),
                    );
                    let (Some(sink), true, Some(request)) =
                        (&shared.config.sink, capture, this.request.take())
                    else {
                        return Poll::Ready(Err(error));
                    };
                    let now = SystemTime::now();
                    let attempts = record.attempts.max(1);
                    let id = shared.id_of.map(|id_of| id_of(request.borrow()));
                    let letter = DeadLetter {
                        request: request.borrow().clone(),
                        error: ErrorRecord::from(&error),
                        listener: shared.name.clone(),
                        attempts,
                        first_failure_at: record.first_failure.unwrap_or(now),
                        dead_lettered_at: now,
                        reason,
                        origin: None,
                    };
                    match catch_unwind(AssertUnwindSafe(|| sink.send(letter))) {
                        Ok(sending) => this.state.set(State::Sending {
                            letter: Box::new(Sending {
                                sending,
                                error: Some(error),
                                reason,
                                attempts,
                                id,
                            }),
                        }),
                        Err(_) => {
                            shared.sink_panicked();
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Sending { letter } => {
                    let Sending {
                        sending,
                        error,
                        reason,
                        attempts,
                        id,
                    } = &mut **letter;
                    let shared = &**this.shared;
                    let outcome = match catch_unwind(AssertUnwindSafe(|| sending.as_mut().poll(cx)))
                    {
                        Ok(poll) => ready!(poll),
                        Err(_) => {
                            shared.sink_panicked();
                            return Poll::Ready(Err(error.take().unwrap_or(Error::Stopped)));
                        }
                    };
                    match outcome {
                        Ok(()) => {
                            if let Some(metrics) = &shared.metrics {
                                metrics.dead_lettered(*reason);
                            }
                            tracing::warn!(
                                target: "tower_listener::dead_letter",
                                listener = %shared.name,
                                event.id = id.as_deref(),
                                reason = reason.as_str(),
                                attempts = *attempts,
                                error = error.as_ref().map(|e| e.kind()).unwrap_or("unknown"),
                                "event dead-lettered"
                            );
                        }
                        Err(e) => shared.sink_failed(&e),
                    }
                    // `error` is Some from the moment this state is entered until here.
                    return Poll::Ready(Err(error.take().unwrap_or(Error::Stopped)));
                }
            }
        }
    }
}
