//! NATS JetStream (feature `nats`, Rust 1.89): a pull-consumer [`NatsSource`] and a dead-letter stream
//! [`NatsStore`].
//!
//! JetStream maps one-to-one onto the settlement table: an ack confirmed by the server (double ack), a
//! nak with a delay, a term, and in-progress signals; a durable consumer shared by every instance of a
//! service gives each message to one of them and redelivers what a dead instance held. JetStream has no
//! dead-letter queue of its own (at max deliveries it only emits an advisory carrying a sequence number),
//! so the reliable pattern is the one the pump follows: store a copy in the dead-letter stream, wait for
//! its acknowledgement, then term.
//!
//! Built on [async-nats](https://docs.rs/async-nats), the official client: it reconnects by itself after
//! the server goes away, and the source retries its pulls with backoff meanwhile. Connection URLs are
//! shown with their credentials removed ([`redacted`]); nothing here logs a credential.
//!
//! Streams: use Limits (or Interest) retention for the source stream. On nats-server 2.9, a WorkQueue
//! stream can keep messages after a server crash that its consumer never delivers again.

mod source;
mod store;

pub use source::{NatsAcker, NatsSource, NatsSourceConfig};
pub use store::{NatsStore, NatsStoreConfig, RepublishReport};

use crate::Error;

/// Connects to NATS at `url` (`nats://user:password@host:4222` or a comma-separated list), retrying the
/// first connection, and reconnecting forever after it.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_listener::Error> {
/// let client = tower_listener::backends::nats::connect("nats://127.0.0.1:4222").await?;
/// # let _ = client;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Backend`] when the URL does not parse or the first connection fails; the message shows the
/// URL without its credentials.
pub async fn connect(url: &str) -> Result<async_nats::Client, Error> {
    async_nats::ConnectOptions::new()
        .name("tower-listener")
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| {
            Error::backend(
                format!("cannot connect to NATS at {}", redacted(url)),
                e.kind().to_string(),
            )
        })
}

pub use super::redacted;

/// An async-nats error with what was being done.
pub(crate) fn failed(context: impl Into<String>, error: impl std::fmt::Display) -> Error {
    Error::backend(context, error.to_string())
}
