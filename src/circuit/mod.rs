//! The circuit breaker: stop calling a dependency that keeps failing, and probe it again after a while.
//!
//! Reach for it in front of anything that can go down as a whole (a database, a payment provider, another
//! service): while it is down, calls fail fast with [`Error::CircuitOpen`](crate::Error::CircuitOpen)
//! instead of piling up, and the dependency gets room to recover.
//!
//! - **Closed**: calls pass. Failures are counted in a time-bucketed sliding window of length
//!   [`sliding_window`](CircuitConfig::sliding_window) (a real window: old failures fall out; O(1) per call
//!   whatever the window holds). When the failures inside it reach
//!   [`failure_threshold`](CircuitConfig::failure_threshold), or, in rate mode, the failure ratio reaches
//!   [`failure_rate_threshold`](CircuitConfig::failure_rate_threshold) over at least
//!   [`minimum_calls`](CircuitConfig::minimum_calls), the breaker opens.
//! - **Open**: every call is rejected without reaching the inner service and without allocating. After
//!   [`timeout`](CircuitConfig::timeout) (plus optional jitter) the next call moves it to half-open and is
//!   admitted as a probe.
//! - **Half-open**: at most [`half_open_max_calls`](CircuitConfig::half_open_max_calls) probes run at once;
//!   other calls are rejected. [`success_threshold`](CircuitConfig::success_threshold) consecutive probe
//!   successes close it (the window is cleared); a probe failure reopens it with a fresh timeout.
//!
//! What counts as a failure: handler errors, panics and timeouts (and successes slower than
//! [`slow_call_threshold`](CircuitConfig::slow_call_threshold)); never rejections by an inner layer
//! ([`Error::Overloaded`](crate::Error::Overloaded)) nor shutdowns. A
//! [`classifier`](CircuitConfig::classifier) can decide otherwise, and a
//! [`response_classifier`](CircuitConfig::response_classifier) can count a response as a failure (an HTTP
//! 5xx, see [`CircuitConfig::classify_responses`]).
//!
//! A result from a call that started before a state change is ignored (each state change starts a new
//! generation). Every transition is logged as a `tracing` event (target `tower_listener::circuit`, fields
//! `breaker`, `from`, `to`) and handed to [`on_state_change`](CircuitConfig::on_state_change).
//!
//! **Cancellation**: dropping a response future drops the inner call; a dropped half-open probe gives its
//! slot back and counts as neither success nor failure.
//!
//! Written here rather than taken from a peer: tower has no breaker, and the breaker must produce this
//! crate's typed [`Error`](crate::Error), share its metrics and keep the hot path free of locks.

mod config;
mod future;
mod handle;
mod layer;
mod service;
mod state;

pub use config::{
    CircuitConfig, ErrorClassifier, ResponseClassifier, StateChange, StateChangeHook,
};
pub use future::CircuitFuture;
pub use handle::CircuitBreakerHandle;
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use state::{CallOutcome, CircuitState};
