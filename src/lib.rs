//! WIP
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attempts;
mod catch_panic;
pub mod circuit;
mod clock;
pub mod dead_letter;
mod error;
mod event;
pub mod limit;
pub mod manager;
pub mod metrics;
pub mod retry;
pub mod timeout;
mod window;

pub use catch_panic::{CatchPanic, CatchPanicFuture, CatchPanicLayer};
pub use circuit::{
    CallOutcome, CircuitBreakerHandle, CircuitBreakerLayer, CircuitConfig, CircuitState,
    StateChange,
};
pub use dead_letter::{
    dead_letter_fn, DeadLetter, DeadLetterConfig, DeadLetterLayer, DeadLetterQueue,
    DeadLetterReason, DeadLetterSink, RedriveReport,
};
pub use error::{Error, HandlerError, Result, MAX_CONFIG_DURATION};
pub use event::Event;
pub use limit::{ConcurrencyConfig, ConcurrencyLimitLayer, LimitMode};
pub use manager::{
    listener_fn, DispatchError, HealthStatus, HealthThresholds, Listener, ListenerConfig,
    ListenerManager, ManagerConfig, ManagerHealthThresholds, StopReport,
};
pub use metrics::{LatencySummary, ListenerMetrics, MetricsLayer, Stats};
pub use retry::{Backoff, Jitter, RetryBudget, RetryLayer, RetryPolicy};
pub use timeout::TimeoutLayer;
