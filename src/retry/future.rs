//! [`RetryFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{BoxError, Service};

use super::backoff::retry_delay;
use super::layer::RetryShared;
use crate::attempts::{record_failure, RetryStop};
use crate::Error;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Sleeping { #[pin] sleep: Sleep },
        Readying,
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
        service: S,
        request: R,
        attempt: u32,
        previous_delay: Duration,
        rng: Option<fastrand::Rng>,
        shared: Arc<RetryShared>,
    }
}

impl<S: Service<R>, R> RetryFuture<S, R> {
    pub(crate) fn new(future: S::Future, service: S, request: R, shared: Arc<RetryShared>) -> Self {
        RetryFuture {
            state: State::Calling { future },
            service,
            request,
            attempt: 1,
            previous_delay: shared.policy.initial_delay,
            rng: None,
            shared,
        }
    }
}

/// A splitmix64 step: spreads consecutive seeds over the whole space.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<S, R> Future for RetryFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: Clone,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let error = match ready!(future.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => Error::from_boxed(e.into()),
                    };
                    let policy = &this.shared.policy;
                    let stop = if *this.attempt > policy.max_retries {
                        Some(RetryStop::Exhausted)
                    } else if !policy.should_retry(&error) {
                        Some(RetryStop::NotRetryable)
                    } else if policy.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                        Some(RetryStop::BudgetExhausted)
                    } else {
                        None
                    };
                    record_failure(*this.attempt, stop);
                    if stop.is_some() {
                        return Poll::Ready(Err(error));
                    }
                    let rng = this.rng.get_or_insert_with(|| match policy.seed {
                        // Relaxed: the counter only hands out distinct numbers.
                        Some(_) => fastrand::Rng::with_seed(mix(this
                            .shared
                            .next_seed
                            .fetch_add(1, Ordering::Relaxed))),
                        None => fastrand::Rng::new(),
                    });
                    let delay = retry_delay(
                        policy.backoff,
                        policy.jitter,
                        policy.initial_delay,
                        policy.max_delay,
                        *this.attempt,
                        *this.previous_delay,
                        rng,
                    );
                    *this.previous_delay = delay;
                    if let Some(metrics) = &this.shared.metrics {
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
                    this.state.set(State::Sleeping {
                        sleep: tokio::time::sleep(delay),
                    });
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        let error = Error::from_boxed(e.into());
                        record_failure(*this.attempt, Some(RetryStop::NotRetryable));
                        return Poll::Ready(Err(error));
                    }
                    let future = this.service.call(this.request.clone());
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
