//! Redis Streams (feature `redis`, Rust 1.88): a consumer-group [`RedisSource`] and a dead-letter stream
//! [`RedisStore`].
//!
//! Redis 7.0 settles differently from JetStream: there is no nak and no delayed redelivery. An entry
//! read by a consumer stays pending until it is acknowledged (`XACK`), and goes to another consumer only
//! when one claims it after it has been idle long enough (`XAUTOCLAIM`). The settlement table maps onto
//! that as follows:
//!
//! - ack, and term after a stored dead letter: `XACK` (a [`RedisStore`] stores the letter and
//!   acknowledges the entry in one `MULTI`/`EXEC`);
//! - nak with a delay `d`: the entry stays pending with its idle time set to `claim_idle - d`
//!   (`XCLAIM … IDLE … JUSTID`), so it becomes claimable `d` from now; the source reclaims due entries
//!   every `reclaim_every`, so a nak comes back between `d` and `d + reclaim_every` later (delays above
//!   `claim_idle` are cut to it);
//! - progress: `XCLAIM … JUSTID` to itself, which restarts the entry's idle time;
//! - the delivery count is the pending entry's (`XPENDING`); entries pending on a consumer that died are
//!   claimed by the live ones once idle for `claim_idle`.
//!
//! Built on [redis-rs](https://docs.rs/redis) with its `ConnectionManager`, which reconnects with
//! backoff; the source keeps one connection for its blocking reads and one for everything else.
//! Durability is the Redis server's: as durable as its persistence settings (`appendonly yes` with
//! `appendfsync always` survives a crash of the server; with no persistence a restart loses
//! everything, dead letters included).

mod source;
mod store;

pub use source::{RedisAcker, RedisSource, RedisSourceConfig};
pub use store::{RedisStore, RedisStoreConfig};

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;

pub use super::redacted;
use crate::Error;

/// A connection manager to Redis at `url` (`redis://[:password@]host:6379/0`), which reconnects with
/// backoff. `response_timeout` bounds every request (a blocking read needs more than its block time).
pub(crate) async fn manager(
    client: &redis::Client,
    response_timeout: Option<Duration>,
) -> Result<ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(response_timeout)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(5))
        .set_number_of_retries(usize::MAX);
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| failed(format!("cannot connect to Redis at {}", shown(client)), e))
}

/// The client's address, without credentials.
pub(crate) fn shown(client: &redis::Client) -> String {
    let info = client.get_connection_info();
    format!("{}", info.addr())
}

/// A redis-rs error with what was being done.
pub(crate) fn failed(context: impl Into<String>, error: impl std::fmt::Display) -> Error {
    Error::backend(context, error.to_string())
}

/// A client for `url`.
///
/// ```
/// let client = tower_listener::backends::redis::client("redis://127.0.0.1:6379")?;
/// # let _ = client;
/// # Ok::<_, tower_listener::Error>(())
/// ```
///
/// # Errors
/// [`Error::Backend`] when the URL does not parse; the message shows it without credentials.
pub fn client(url: &str) -> Result<redis::Client, Error> {
    redis::Client::open(url)
        .map_err(|e| failed(format!("Redis URL {}", redacted(url)), e.kind_str()))
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// What went wrong, without the URL (a parse error may repeat it).
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

/// A stream entry's fields, in order.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of an `XRANGE`/`XREADGROUP`/`XAUTOCLAIM` reply: `[[id, [field, value, …]], …]`.
pub(crate) fn entries(value: &Value) -> Vec<(String, Fields)> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                Some(Value::Array(flat)) => flat
                    .chunks(2)
                    .filter_map(|pair| Some((bytes(pair.first()?)?, bytes(pair.get(1)?)?)))
                    .collect(),
                Some(Value::Map(map)) => map
                    .iter()
                    .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                    .collect(),
                _ => Vec::new(),
            };
            Some((id, fields))
        })
        .collect()
}

pub(crate) fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

pub(crate) fn text(value: &Value) -> Option<String> {
    bytes(value).and_then(|b| String::from_utf8(b).ok())
}

/// Whether `id` is a stream entry id (`<ms>-<seq>`).
pub(crate) fn is_entry_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    matches!(
        (parts.next(), parts.next()),
        (Some(ms), Some(seq)) if !ms.is_empty() && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    )
}
