//! Production resilience for event handlers on tower: a circuit breaker, retry with backoff and jitter, a
//! concurrency limit, a timeout and dead letters, each a [`tower::Layer`], plus a [`ListenerManager`]
//! registry that builds the stack per listener and reports health and stats.
//!
//! It re-creates what the Go package `kolosys/nova/listener` documents, and keeps the promises that
//! package's code breaks: a real sliding window, a per-attempt timeout, exponential backoff that is
//! exponential, a `stop` that waits and loses nothing, no data races.
//!
//! # Three ways to use it
//!
//! **1. Single layers on any tower service.** Each layer works alone inside a [`tower::ServiceBuilder`],
//! over any request type. Only retry and dead letters need `Clone` requests.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_listener::{CircuitBreakerLayer, CircuitConfig, ConcurrencyLimitLayer, Error, RetryLayer,
//!                      RetryPolicy, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::default())?)
//!     .layer(CircuitBreakerLayer::new(CircuitConfig::default())?)
//!     .layer(ConcurrencyLimitLayer::new(10)?)
//!     .layer(TimeoutLayer::new(Duration::from_secs(5))?)
//!     .service(service_fn(|order_id: u64| async move { Ok::<_, Error>(order_id * 2) }));
//! assert_eq!(svc.oneshot(21).await?, 42);
//! # Ok(()) }
//! ```
//!
//! **2. Inside axum and tonic.** The layers wrap routes and services like any tower middleware, and the
//! manager's [`health`](ListenerManager::health) feeds a health endpoint.
//!
//! **3. The [`ListenerManager`] as a prebuilt stack.** Register a handler with a [`ListenerConfig`]; the
//! manager builds metrics → dead letter → retry → breaker → limit → timeout → metrics → handler for it,
//! runs events through it (`process`, or `dispatch` through a bounded worker pool) and reports health and
//! stats.
//!
//! ```
//! use std::time::Duration;
//! use tower_listener::{Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
//! let manager = ListenerManager::new(ManagerConfig::named("app-manager"))?;
//! manager.register(
//!     listener_fn("order-processor", |event: Event| async move {
//!         println!("order {}", event.id());
//!         Ok::<_, std::io::Error>(())
//!     }),
//!     ListenerConfig::default(),
//! )?;
//! manager.start().await?;
//! manager.process("order-processor", Event::new("o-1", "order.created", serde_json::json!({}))).await?;
//! manager.dispatch("order-processor", Event::new("o-2", "order.created", serde_json::json!({})))?;
//! manager.stop(Duration::from_secs(30)).await?; // waits for o-2
//! assert_eq!(manager.stats().events_succeeded, 2);
//! # Ok(()) }
//! ```
//!
//! # Dead letters that survive
//!
//! A failed event ends in a [`DeadLetterSink`]; a [`DeadLetterStore`](dead_letter::DeadLetterStore) keeps
//! it where it can be listed and [redriven](ListenerManager::redrive): in memory
//! ([`DeadLetterQueue`]), in one fsynced file (`RedbStore`, feature `redb`, on by default), or in a
//! broker every instance shares.
//!
//! # Errors
//!
//! Every layer and the manager return the one [`Error`] enum; match on it without downcasting. The
//! handler's own error stays reachable as its [`source`](std::error::Error::source).
//!
//! # Time
//!
//! Every timer, window and latency uses tokio's clock, so tests under paused time
//! (`#[tokio::test(start_paused = true)]`) run a 30 s breaker timeout in microseconds. With the
//! `tsc-clock` feature, `clock::use_tsc` moves what the crate measures (latencies, windows, the
//! breaker's open time) to the CPU's time-stamp counter, cheaper to read than the OS clock.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attempts;
pub mod backends;
mod catch_panic;
pub mod circuit;
// Public with the `tsc-clock` feature, for its switch.
#[cfg(feature = "tsc-clock")]
pub mod clock;
#[cfg(not(feature = "tsc-clock"))]
mod clock;
pub mod dead_letter;
mod error;
mod event;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "axum")]
pub mod http;
pub mod limit;
pub mod manager;
pub mod metrics;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod retry;
#[cfg(feature = "serde")]
mod rfc3339;
mod shared;
mod shutdown;
pub mod source;
mod sync;
pub mod timeout;
mod window;

#[cfg(feature = "redb")]
pub use backends::redb::{RedbConfig, RedbStore};
pub use catch_panic::{CatchPanic, CatchPanicFuture, CatchPanicLayer};
pub use circuit::{
    CallOutcome, CircuitBreakerHandle, CircuitBreakerLayer, CircuitConfig, CircuitState,
    StateChange,
};
pub use dead_letter::{
    dead_letter_fn, DeadLetter, DeadLetterConfig, DeadLetterLayer, DeadLetterQueue,
    DeadLetterReason, DeadLetterSink, RedriveReport, SinkFuture,
};
pub use error::{Error, ErrorRecord, HandlerError, Permanent, Result, MAX_CONFIG_DURATION};
pub use event::Event;
pub use limit::{ConcurrencyConfig, ConcurrencyLimitLayer, LimitMode};
pub use manager::{
    listener_fn, ConsumeConfig, Consumer, DispatchError, HealthStatus, HealthThresholds, Listener,
    ListenerConfig, ListenerManager, ManagerConfig, ManagerHealthThresholds, StopReport,
};
pub use metrics::{LatencySummary, ListenerMetrics, MetricsLayer, Stats};
pub use retry::{Backoff, Jitter, RetryBudget, RetryLayer, RetryPolicy};
pub use shutdown::shutdown_signal;
pub use timeout::TimeoutLayer;

/// The names a service using the crate needs, for a glob import: `use tower_listener::prelude::*;`.
///
/// It leaves out this crate's `Result` and `Error`, so that a glob import shadows neither the standard
/// `Result` nor an `Error` of your own: name ours `tower_listener::Error`.
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::prelude::*;
///
/// #[derive(Debug)]
/// struct Error; // your own `Error` is not shadowed
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default())?)
///     .layer(TimeoutLayer::new(Duration::from_secs(1))?)
///     .service(service_fn(|n: u32| async move { Ok::<_, tower_listener::Error>(n + 1) }));
/// assert_eq!(svc.oneshot(1).await?, 2);
/// # let _ = Error;
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use crate::{
        dead_letter_fn, listener_fn, shutdown_signal, Backoff, CallOutcome, CatchPanicLayer,
        CircuitBreakerHandle, CircuitBreakerLayer, CircuitConfig, CircuitState, ConcurrencyConfig,
        ConcurrencyLimitLayer, DeadLetter, DeadLetterConfig, DeadLetterLayer, DeadLetterQueue,
        DeadLetterReason, DeadLetterSink, ErrorRecord, Event, HealthStatus, Jitter, LimitMode,
        Listener, ListenerConfig, ListenerManager, ListenerMetrics, ManagerConfig, MetricsLayer,
        Permanent, RedriveReport, RetryBudget, RetryLayer, RetryPolicy, Stats, TimeoutLayer,
    };
}
