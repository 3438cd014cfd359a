//! [`RetryFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{BoxError, Service};

use super::backoff::retry_delay;
use super::service::RetryCore;
use crate::attempts::{self, RetryStop};
use crate::metrics;
use crate::shared::Handle;
use crate::Error;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Sleeping,
        Readying,
    }
}

pin_project! {
    /// What only a retried event needs, boxed once at its first retry so the common future stays small.
    struct Retrying<S> {
        #[pin]
        sleep: Sleep,
        // The service retries run on: a clone of the prototype.
        service: Option<S>,
        rng: fastrand::Rng,
        // When the first attempt failed, for the dead letter.
        first_failure: SystemTime,
    }
}

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    ///
    /// Dropping it cancels at once whatever it is doing: the running attempt (its future is dropped, which
    /// releases its permit or probe slot) or the backoff sleep; no further attempt is made.
    pub struct RetryFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S::Future>,
        retrying: Option<Pin<Box<Retrying<S>>>>,
        core: Handle<RetryCore<S>>,
        request: R,
        attempt: u32,
        previous_delay: Duration,
    }
}

impl<S: Service<R>, R> RetryFuture<S, R> {
    /// The first attempt is `call`'s future, built in place.
    #[inline]
    pub(crate) fn new(
        call: impl FnOnce() -> S::Future,
        core: Handle<RetryCore<S>>,
        request: R,
    ) -> Self {
        RetryFuture {
            retrying: None,
            previous_delay: core.shared.policy.initial_delay,
            core,
            request,
            attempt: 1,
            state: State::Calling { future: call() },
        }
    }
}

impl<S: Service<R>, R> crate::dead_letter::HoldsRequest<R> for RetryFuture<S, R> {
    /// The event, kept for the next attempt until this future is dropped.
    fn request(&self) -> Option<&R> {
        Some(&self.request)
    }
}

/// The longest single backoff sleep (about 30 years), so `Instant` arithmetic cannot overflow with
/// `max_delay: None`.
const MAX_SLEEP: Duration = Duration::from_secs(1 << 30);

/// A splitmix64 step: spreads consecutive seeds over the whole space.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<S, R> Future for RetryFuture<S, R>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    R: Clone,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    // A manager's attempt lends its end (unrecorded) as it completes: see below.
                    metrics::clear_finished_attempt();
                    let error = match ready!(future.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => Error::from_boxed(e.into()),
                    };
                    let policy = &this.core.shared.policy;
                    let stop = if *this.attempt > policy.max_retries {
                        Some(RetryStop::Exhausted)
                    } else if !policy.should_retry(&error, this.core.shared.metrics.as_deref()) {
                        Some(RetryStop::NotRetryable)
                    } else if policy.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                        Some(RetryStop::BudgetExhausted)
                    } else {
                        None
                    };
                    if let Some(stop) = stop {
                        let first_failure = match this.retrying.as_ref() {
                            Some(retrying) => retrying.first_failure,
                            None => SystemTime::now(),
                        };
                        attempts::finished(*this.attempt, first_failure, stop);
                        return Poll::Ready(Err(error));
                    }
                    let retrying = this.retrying.get_or_insert_with(|| {
                        let rng = match policy.seed {
                            // Relaxed: the counter only hands out distinct numbers.
                            Some(_) => fastrand::Rng::with_seed(mix(this
                                .core
                                .shared
                                .next_seed
                                .fetch_add(1, Ordering::Relaxed))),
                            None => fastrand::Rng::new(),
                        };
                        Box::pin(Retrying {
                            sleep: tokio::time::sleep(Duration::ZERO),
                            service: None,
                            rng,
                            first_failure: SystemTime::now(),
                        })
                    });
                    // An attempt that only lent its end is recorded here, as it is retried (the last
                    // attempt is left to the event around).
                    if let (Some(finished), Some(metrics)) = (
                        metrics::take_unrecorded_attempt(),
                        &this.core.shared.metrics,
                    ) {
                        metrics::record_attempt(metrics, finished);
                    }
                    let retry = retrying.as_mut().project();
                    let delay = retry_delay(
                        policy.backoff,
                        policy.jitter,
                        policy.initial_delay,
                        policy.max_delay,
                        *this.attempt,
                        *this.previous_delay,
                        retry.rng,
                    );
                    retry
                        .sleep
                        .reset(tokio::time::Instant::now() + delay.min(MAX_SLEEP));
                    *this.previous_delay = delay;
                    if let Some(metrics) = &this.core.shared.metrics {
                        metrics.retried();
                    }
                    tracing::debug!(
                        target: "tower_listener::retry",
                        attempt = *this.attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "retrying after failure"
                    );
                    *this.attempt += 1;
                    this.state.set(State::Sleeping);
                }
                StateProj::Sleeping => {
                    // Sleeping is only entered after `retrying` is set.
                    let Some(retrying) = this.retrying.as_mut() else {
                        return Poll::Ready(Err(Error::Stopped));
                    };
                    ready!(retrying.as_mut().project().sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Some(retrying) = this.retrying.as_mut() else {
                        return Poll::Ready(Err(Error::Stopped));
                    };
                    let service = retrying.as_mut().project().service.get_or_insert_with(|| {
                        // Only clones happen under this lock; a poisoned one still holds a valid service.
                        this.core
                            .prototype
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone()
                    });
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        let error = Error::from_boxed(e.into());
                        attempts::finished(
                            *this.attempt,
                            retrying.first_failure,
                            RetryStop::NotRetryable,
                        );
                        return Poll::Ready(Err(error));
                    }
                    let future = service.call(this.request.clone());
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
