//! A time limit per attempt.
//!
//! Reach for it around anything that can hang: an attempt that runs past the limit is cancelled (its future
//! is dropped) and fails with [`Error::Timeout`](crate::Error::Timeout), which carries the limit. Put it
//! inside the retry layer, so each attempt gets the full limit, and inside the concurrency limit, so time
//! spent waiting for a permit does not count.
//!
//! The clock starts when the attempt first has to wait: an inner future that completes on its first poll
//! never touches the timer, so the success path of a fast handler costs no timer registration. An attempt
//! that does wait arms a tokio `Sleep` in a box of its own (one allocation per waiting attempt): kept
//! inline, its ~140 bytes would be copied by every outer layer on every event, waiting or not, which costs
//! more than the allocation.
//!
//! **Cancellation**: dropping the response future drops the inner future and the timer.
//!
//! Written here rather than using `tower::timeout::Timeout`: tower's returns a boxed `Elapsed` without the
//! limit, and always arms the timer.

mod future;
mod layer;
mod service;

pub use future::TimeoutFuture;
pub use layer::TimeoutLayer;
pub use service::Timeout;
