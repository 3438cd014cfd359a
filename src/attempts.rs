//! How the retry layer tells the dead-letter layer around it what happened to an event: the number of
//! attempts, when the first one failed, and why retrying stopped.
//!
//! The retry future hands its [`AttemptRecord`] over as it returns its final error, through a
//! thread-local slot that the dead-letter future clears before it polls its inner future and takes right
//! after that poll returns the error: the error and its record travel up one synchronous poll together.
//! The two layers stay independent (either works alone; with no retry layer the record says one attempt),
//! no request or error type has to carry anything, and an event that succeeds pays one thread-local write
//! per poll (a tokio task-local scope around the whole call cost several times that).

use std::cell::Cell;
use std::time::SystemTime;

/// Why the retry layer stopped retrying a failed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryStop {
    /// `max_retries` retries were made.
    Exhausted,
    /// The retry condition declined the error.
    NotRetryable,
    /// The retry budget had nothing left.
    BudgetExhausted,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AttemptRecord {
    pub(crate) attempts: u32,
    pub(crate) first_failure: Option<SystemTime>,
    pub(crate) stop: Option<RetryStop>,
}

std::thread_local! {
    static FINISHED: Cell<Option<AttemptRecord>> = const { Cell::new(None) };
}

/// The retry layer gives up on an event: `attempts` made, the first of which failed at `first_failure`.
/// Call it just before returning the final error.
pub(crate) fn finished(attempts: u32, first_failure: SystemTime, stop: RetryStop) {
    FINISHED.set(Some(AttemptRecord {
        attempts,
        first_failure: Some(first_failure),
        stop: Some(stop),
    }));
}

/// Takes the record handed over since the last call (none when no retry layer gave up meanwhile). The
/// dead-letter future calls it before polling its inner future (dropping anything stale) and after.
#[inline]
pub(crate) fn take() -> Option<AttemptRecord> {
    FINISHED.take()
}

pin_project_lite::pin_project! {
    /// A future that also returns the record a retry layer inside it handed over as it gave up (none when
    /// it succeeded, or there is no retry layer): clears stale records before each poll and takes the
    /// record on the poll that completes, as the dead-letter future does.
    pub(crate) struct WithAttempts<F> {
        #[pin]
        inner: F,
    }
}

impl<F> WithAttempts<F> {
    pub(crate) fn new(inner: F) -> Self {
        WithAttempts { inner }
    }
}

impl<F: std::future::Future> std::future::Future for WithAttempts<F> {
    type Output = (F::Output, Option<AttemptRecord>);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        take(); // stale: not from this poll
        let output = std::task::ready!(self.project().inner.poll(cx));
        std::task::Poll::Ready((output, take()))
    }
}
