//! How the retry layer tells the dead-letter layer around it what happened to an event: the number of
//! attempts, when the first one failed, and why retrying stopped.
//!
//! The dead-letter future runs its inner future inside a tokio task-local scope holding an
//! [`AttemptRecord`]; the retry future, polled inside that scope, updates it after each attempt. The two
//! layers stay independent (either works alone; with no retry layer the record says one attempt) and no
//! request type has to carry anything.

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

tokio::task_local! {
    pub(crate) static ATTEMPTS: Cell<AttemptRecord>;
}

/// Records a failed attempt (number `attempt`, 1-based) and, if retrying stops here, why. Does nothing
/// outside a dead-letter scope.
pub(crate) fn record_failure(attempt: u32, stop: Option<RetryStop>) {
    let _ = ATTEMPTS.try_with(|cell| {
        let mut record = cell.get();
        record.attempts = attempt;
        record.first_failure.get_or_insert_with(SystemTime::now);
        record.stop = stop;
        cell.set(record);
    });
}
