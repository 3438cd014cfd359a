//! Retry with backoff and jitter.
//!
//! Reach for it when failures are transient (a dropped connection, a deadlock victim, a 503): the
//! [`RetryLayer`] re-runs a failed call after a delay, up to [`max_retries`](RetryPolicy::max_retries)
//! times, as long as the [`retry_condition`](RetryPolicy::retry_condition) agrees and the optional
//! [`RetryBudget`] has room.
//!
//! The delay before retry `n` is the [`Backoff`] formula of the initial delay `d` (`Fixed` d, `Linear` d·n,
//! `Exponential` d·factor^(n−1), `Quadratic` d·n²), then capped by [`max_delay`](RetryPolicy::max_delay),
//! then spread by [`Jitter`] (so jitter survives at the cap). The random source is seedable
//! ([`seed`](RetryPolicy::seed)). Sleeps use `tokio::time`, so tests run under paused time.
//!
//! Each retry re-enters the inner stack: it waits for the inner service's readiness and passes the breaker,
//! the concurrency limit and the timeout again. Nothing is held while sleeping. By default rejections
//! ([`Error::CircuitOpen`](crate::Error::CircuitOpen), [`Error::Overloaded`](crate::Error::Overloaded)) are
//! never retried: retrying into an open breaker only adds load.
//!
//! **Cancellation**: dropping the response future cancels the running attempt or the backoff sleep at once;
//! no further attempt is made.
//!
//! Written here rather than with `tower::retry::Retry`: tower's clones the whole policy and service into
//! every response future and returns the inner error type; this one returns the typed
//! [`Error`](crate::Error), reports to the metrics, and tells a dead-letter layer around it how many attempts
//! were made and why retrying stopped. The budget keeps the semantics of tower's `TpsBudget` but not its
//! shared mutex (see [`RetryBudget`]).

mod backoff;
mod budget;
mod future;
mod layer;
mod policy;
mod service;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use future::RetryFuture;
pub use layer::RetryLayer;
pub use policy::{RetryCondition, RetryPolicy};
pub use service::Retry;
