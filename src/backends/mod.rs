//! Integrations with stores and brokers, one module per integration, each behind its feature. A backend
//! knows the [`DeadLetterStore`](crate::dead_letter::DeadLetterStore) trait and its client crate; the
//! core never names a backend, so a feature switched off leaves no trace.

#[cfg(feature = "redb")]
pub mod redb;

#[cfg(feature = "nats")]
pub mod nats;
