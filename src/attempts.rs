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

use crate::metrics::{
    clear_finished_attempt, record_attempt, take_unrecorded_attempt, ListenerMetrics,
};

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
    /// A manager's stack future run without a per-event step around it (redrive, a source's delivery):
    /// returns also the record a retry layer inside it handed over as it gave up (none when it succeeded,
    /// or there is no retry layer), clearing stale records before each poll and taking the record on the
    /// poll that completes, as the dead-letter future does; and records the stack's last attempt in
    /// `metrics`, which a per-event step would have recorded.
    pub(crate) struct WithAttempts<'a, F> {
        #[pin]
        inner: F,
        metrics: &'a ListenerMetrics,
    }
}

impl<'a, F> WithAttempts<'a, F> {
    pub(crate) fn new(inner: F, metrics: &'a ListenerMetrics) -> Self {
        WithAttempts { inner, metrics }
    }
}

impl<F, T> std::future::Future for WithAttempts<'_, F>
where
    F: std::future::Future<Output = Result<T, crate::Error>>,
{
    type Output = (F::Output, Option<AttemptRecord>);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        take(); // stale: not from this poll
        clear_finished_attempt();
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(finished) = take_unrecorded_attempt() {
            record_attempt(this.metrics, finished);
        }
        std::task::Poll::Ready((output, take()))
    }
}
