//! A concurrency limit: at most `limit` calls in flight through one layer, however many clones of its
//! service exist.
//!
//! Reach for it to protect a dependency (or the process) from more parallel work than it can take. Three
//! modes ([`LimitMode`]):
//! - [`Wait`](LimitMode::Wait) (default): backpressure; a call waits for a permit as long as it takes.
//! - [`WaitFor(d)`](LimitMode::WaitFor): waits at most `d`, then fails with
//!   [`Error::Overloaded`](crate::Error::Overloaded).
//! - [`Reject`](LimitMode::Reject): fails at once with `Overloaded` when no permit is free.
//!
//! The permit is taken when the call starts (in the response future, not in `poll_ready`) and released
//! when the response future completes or is dropped. So an idle clone that was polled ready never sits on a
//! permit, a clone that is called without `poll_ready` works, and a breaker in front of the limit can
//! reject without waiting for it. The uncontended path takes a permit with one atomic operation and
//! allocates nothing; a call that has to wait allocates its waiting future once.
//!
//! **Cancellation**: dropping the response future while it waits stops its wait; dropping it
//! while it runs drops the inner future and releases the permit.
//!
//! Written here rather than taken from tower: `tower::limit::ConcurrencyLimit` holds a permit from
//! `poll_ready` until `call` (a ready clone starves the others), allocates when cloned, and has no reject or
//! bounded-wait mode; and tokio's `Semaphore` under it takes a mutex on every release. The permit count here
//! is kept per thread shard, each shard's part one atomic (see the `permits` module): the limit holds
//! exactly, and threads taking permits at once do not write a common cache line. Waiters wait on a
//! `tokio::sync::Notify`, and a waiter may be overtaken by a newly arriving call (not strictly FIFO).

mod future;
mod layer;
mod permits;
mod service;

pub use future::LimitFuture;
pub use layer::{ConcurrencyConfig, ConcurrencyLimitLayer, LimitMode, MAX_LIMIT};
pub use service::ConcurrencyLimit;
