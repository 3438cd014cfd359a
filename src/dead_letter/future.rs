//! [`DeadLetterFuture`].

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
    enum State<F, R> {
        Running { #[pin] future: F },
        Passthrough { #[pin] future: F },
        // Boxed: only an event being dead-lettered gets here (its letter is allocated anyway), while
        // every event's future is as large as its largest state.
        Sending { letter: Box<Sending<R>> },
    }
}

/// A letter on its way to the sink, with what the event's end reports about it.
struct Sending<R> {
    sending: SinkFuture,
    // The letter's request, for whoever reads it from this future meanwhile (see `HoldsRequest`).
    request: R,
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
        lettering: Lettering<F, R, Handle<DeadLetterShared<R>>, Option<R>>,
    }
}

impl<F: Future, R: Clone> DeadLetterFuture<F, R> {
    pub(crate) fn start(
        shared: Handle<DeadLetterShared<R>>,
        request: R,
        call: impl FnOnce(R) -> F,
    ) -> Self {
        let future = call(request.clone());
        DeadLetterFuture {
            lettering: Lettering::start(shared, Some(request), future),
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

/// A call's future that holds its request for as long as it lives: the retry's future keeps the event
/// for its next attempt, so the manager's dead-letter step reads the event from there when it needs it
/// instead of keeping a copy of its own (one reference count less per event).
pub(crate) trait HoldsRequest<R> {
    /// The request, while this future holds it.
    fn request(&self) -> Option<&R>;
}

/// Where [`Lettering`] finds the request for a letter: kept beside the call (`Option<R>`, `None` once
/// released), or read from the call's own future ([`InCall`]).
pub(crate) trait Keep<R, F> {
    /// The request, given the call's future.
    fn get<'a>(&'a self, call: &'a F) -> Option<&'a R>;
    /// Lets go of a request kept only for a letter (dead letters are disabled).
    fn release(&mut self);
}

impl<R, F> Keep<R, F> for Option<R> {
    #[inline]
    fn get<'a>(&'a self, _call: &'a F) -> Option<&'a R> {
        self.as_ref()
    }

    #[inline]
    fn release(&mut self) {
        *self = None;
    }
}

/// The request is read from the call's future, which holds it (see [`HoldsRequest`]).
pub(crate) struct InCall;

impl<R, F: HoldsRequest<R>> Keep<R, F> for InCall {
    #[inline]
    fn get<'a>(&'a self, call: &'a F) -> Option<&'a R> {
        call.request()
    }

    #[inline]
    fn release(&mut self) {}
}

pin_project! {
    /// What [`DeadLetterFuture`] does, over any way `H` of holding the layer's settings and any way `K`
    /// of keeping the request for its letter: the layer's future holds a handle and a clone of the
    /// request; the manager (which runs the per-event step itself) borrows the settings and reads the
    /// event from its stack's future, which keeps it for retries anyway. The letter clones the request
    /// only when it is written.
    pub(crate) struct Lettering<F, R, H, K>
    where
        H: Deref<Target = DeadLetterShared<R>>,
        K: Keep<R, F>,
    {
        #[pin]
        state: State<F, R>,
        request: K,
        shared: H,
    }
}

impl<F, R, H, K> Lettering<F, R, H, K>
where
    F: Future,
    H: Deref<Target = DeadLetterShared<R>>,
    K: Keep<R, F>,
{
    /// Watches the call `future`, with its request kept by `request` for its dead letter (released when
    /// dead letters are disabled).
    #[inline]
    pub(crate) fn start(shared: H, mut request: K, future: F) -> Self {
        if !shared.config.enabled {
            request.release();
            return Lettering {
                state: State::Passthrough { future },
                request,
                shared,
            };
        }
        Lettering {
            state: State::Running { future },
            request,
            shared,
        }
    }
}

impl<F, R, H, K> HoldsRequest<R> for Lettering<F, R, H, K>
where
    H: Deref<Target = DeadLetterShared<R>>,
    K: Keep<R, F>,
{
    fn request(&self) -> Option<&R> {
        match &self.state {
            State::Running { future } | State::Passthrough { future } => self.request.get(future),
            State::Sending { letter } => Some(&letter.request),
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
    K: Keep<R, F>,
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
                StateProj::Running { mut future } => {
                    attempts::take(); // stale: not from this poll
                    let error = match ready!(future.as_mut().poll(cx)) {
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
                    let (Some(sink), true, Some(request)) = (
                        &shared.config.sink,
                        capture,
                        this.request.get(future.as_ref().get_ref()),
                    ) else {
                        return Poll::Ready(Err(error));
                    };
                    let now = SystemTime::now();
                    let attempts = record.attempts.max(1);
                    let id = shared.id_of.map(|id_of| id_of(request));
                    let request = request.clone();
                    let letter = DeadLetter {
                        request: request.clone(),
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
                                request,
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
                        request: _,
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
