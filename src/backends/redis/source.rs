//! [`RedisSource`]: events from a Redis stream, through a consumer group.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{entries, failed, manager, shown, Fields};
use crate::source::{Acker, Capabilities, Delivery, Malformed, Origin, Source};
use crate::{Error, Event};

/// Where a [`RedisSource`] reads from.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::backends::redis::RedisSourceConfig;
///
/// let config = RedisSourceConfig {
///     claim_idle: Duration::from_secs(60),
///     ..RedisSourceConfig::new("orders", "order-processor", "instance-1")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSourceConfig {
    /// The stream's key.
    pub stream: String,
    /// The consumer group every instance of the service shares; created (with the stream, reading it
    /// from its start) if it does not exist.
    pub group: String,
    /// This instance's name in the group: unique per running instance.
    pub consumer: String,
    /// How long a read waits for new entries when there are none. Default 500 ms.
    pub block: Duration,
    /// How long an entry stays pending on a consumer before another may take it: the "ack wait". The pump
    /// signals progress at half of it for events still running. Default 30 s.
    pub claim_idle: Duration,
    /// How often the source claims entries that became due (naks, entries of consumers that died): a nak
    /// comes back at most this late. Default 200 ms.
    pub reclaim_every: Duration,
}

impl RedisSourceConfig {
    /// The defaults, for `consumer` in `group` on `stream`.
    pub fn new(
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        RedisSourceConfig {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(30),
            reclaim_every: Duration::from_millis(200),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, name) in [
            ("stream", &self.stream),
            ("group", &self.group),
            ("consumer", &self.consumer),
        ] {
            if name.is_empty() {
                return Err(Error::invalid_config(field, "must not be empty"));
            }
        }
        for (field, value) in [
            ("block", self.block),
            ("claim_idle", self.claim_idle),
            ("reclaim_every", self.reclaim_every),
        ] {
            crate::error::check_duration(field, value)?;
        }
        Ok(())
    }
}

/// One consumer of a Redis consumer group, as a [`Source`]. Start one per instance of the service, each
/// with its own consumer name in the same group: Redis gives each entry to one of them, and the entries
/// a dead one held pending are claimed by the others after `claim_idle`. See the
/// [module docs](super) for how the settlement table maps onto Redis.
///
/// Decoding: an entry's `event` field holding CloudEvents JSON is an [`Event<T>`]; otherwise its `data`
/// field holding JSON is the event's data, with the `id` field (else the entry id) as its id and the
/// `type` field (else the stream's key) as its type. Anything else is
/// [malformed](crate::source::Malformed).
///
/// ```no_run
/// use tower_listener::backends::redis::{client, RedisSource, RedisSourceConfig};
/// use tower_listener::{ConsumeConfig, ListenerManager};
///
/// # async fn run(manager: ListenerManager) -> Result<(), tower_listener::Error> {
/// let redis = client("redis://127.0.0.1:6379")?;
/// let source = RedisSource::new(&redis, RedisSourceConfig::new("orders", "order-processor", "instance-1")).await?;
/// manager.consume("orders", source, ConsumeConfig::default())?;
/// # Ok(()) }
/// ```
pub struct RedisSource<T> {
    /// For the blocking reads (a blocked read would hold up every request behind it).
    reader: ConnectionManager,
    /// For claims, pending lookups and settlements.
    writer: ConnectionManager,
    config: RedisSourceConfig,
    broker: Arc<str>,
    stream: Arc<str>,
    group: Arc<str>,
    consumer: Arc<str>,
    name: String,
    next_reclaim: Instant,
    _payload: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RedisSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T> RedisSource<T> {
    /// A source for `config.consumer` in `config.group`, creating the group (and the stream) if it does
    /// not exist.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad field; [`Error::Backend`] when Redis cannot be reached or the
    /// group cannot be created.
    pub async fn new(client: &redis::Client, config: RedisSourceConfig) -> Result<Self, Error> {
        config.validate()?;
        let reader = manager(client, Some(config.block + Duration::from_secs(5))).await?;
        let mut writer = manager(client, Some(Duration::from_secs(5))).await?;
        let created: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&config.stream)
            .arg(&config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut writer)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {} // it exists: used as it is
            Err(e) => {
                return Err(failed(
                    format!(
                        "Redis at {}: cannot create group {} on {}",
                        shown(client),
                        config.group,
                        config.stream
                    ),
                    e,
                ))
            }
        }
        Ok(RedisSource {
            reader,
            writer,
            broker: Arc::from("redis"),
            stream: Arc::from(config.stream.as_str()),
            group: Arc::from(config.group.as_str()),
            consumer: Arc::from(config.consumer.as_str()),
            name: format!(
                "redis:{}/{}/{}",
                config.stream, config.group, config.consumer
            ),
            next_reclaim: Instant::now(),
            config,
            _payload: PhantomData,
        })
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> RedisSource<T> {
    fn delivery(
        &self,
        id: String,
        fields: &[(Vec<u8>, Vec<u8>)],
        delivered: u32,
    ) -> Delivery<T, RedisAcker> {
        let payload = decode(&id, fields, &self.stream);
        Delivery {
            payload,
            origin: Origin::new(self.broker.clone(), self.stream.clone(), id.clone())
                .group(&*self.group)
                .delivered(delivered),
            acker: RedisAcker {
                writer: self.writer.clone(),
                stream: self.stream.clone(),
                group: self.group.clone(),
                consumer: self.consumer.clone(),
                id,
                claim_idle: self.config.claim_idle,
            },
        }
    }

    /// Claims up to `max` entries that have been idle for `claim_idle` (naks now due, entries of
    /// consumers that died).
    async fn reclaim(&mut self, max: usize) -> Result<Vec<Delivery<T, RedisAcker>>, Error> {
        let context = || format!("claiming from Redis stream {}", self.stream);
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(&*self.consumer)
            .arg(millis(self.config.claim_idle))
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.writer)
            .await
            .map_err(|e| failed(context(), e))?;
        let Value::Array(parts) = reply else {
            return Ok(Vec::new());
        };
        let claimed = parts.get(1).map(entries).unwrap_or_default();
        // Entries deleted from the stream while pending: nothing left to run, so acknowledged.
        if let Some(Value::Array(deleted)) = parts.get(2) {
            let ids: Vec<String> = deleted.iter().filter_map(super::text).collect();
            if !ids.is_empty() {
                let _: Result<Value, _> = redis::cmd("XACK")
                    .arg(&*self.stream)
                    .arg(&*self.group)
                    .arg(&ids)
                    .query_async(&mut self.writer)
                    .await;
            }
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.delivery_counts(&claimed).await?;
        Ok(claimed
            .into_iter()
            .map(|(id, fields)| {
                let delivered = counts
                    .iter()
                    .find(|(pending, _)| *pending == id)
                    .map_or(2, |(_, n)| *n);
                self.delivery(id, &fields, delivered)
            })
            .collect())
    }

    /// How many times each of `claimed` has been delivered, from the group's pending list.
    async fn delivery_counts(
        &mut self,
        claimed: &[(String, Fields)],
    ) -> Result<Vec<(String, u32)>, Error> {
        let (first, last) = match (claimed.first(), claimed.last()) {
            (Some(first), Some(last)) => (first.0.clone(), last.0.clone()),
            _ => return Ok(Vec::new()),
        };
        let reply: Value = redis::cmd("XPENDING")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(first)
            .arg(last)
            .arg(claimed.len())
            .arg(&*self.consumer)
            .query_async(&mut self.writer)
            .await
            .map_err(|e| {
                failed(
                    format!("reading Redis stream {}'s pending entries", self.stream),
                    e,
                )
            })?;
        let Value::Array(rows) = reply else {
            return Ok(Vec::new());
        };
        Ok(rows
            .iter()
            .filter_map(|row| {
                let Value::Array(fields) = row else {
                    return None;
                };
                let id = super::text(fields.first()?)?;
                let delivered = match fields.get(3)? {
                    Value::Int(n) => u32::try_from(*n).unwrap_or(u32::MAX),
                    other => super::text(other)?.parse().ok()?,
                };
                Some((id, delivered))
            })
            .collect())
    }

    /// New entries for this consumer, waiting up to `wait` for the first.
    async fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery<T, RedisAcker>>, Error> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&*self.group)
            .arg(&*self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(millis(wait).max(1))
            .arg("STREAMS")
            .arg(&*self.stream)
            .arg(">")
            .query_async(&mut self.reader)
            .await
            .map_err(|e| failed(format!("reading Redis stream {}", self.stream), e))?;
        // [[stream, [entries]]] (or a map of stream to entries over RESP3); nil when nothing came.
        let streams: Vec<&Value> = match &reply {
            Value::Array(streams) => streams.iter().collect(),
            Value::Map(map) => map.iter().map(|(_, entries)| entries).collect(),
            _ => Vec::new(),
        };
        let mut batch = Vec::new();
        for stream in streams {
            let entries_value = match stream {
                Value::Array(parts) => parts.get(1),
                other => Some(other),
            };
            for (id, fields) in entries_value.map(entries).unwrap_or_default() {
                batch.push(self.delivery(id, &fields, 1));
            }
        }
        Ok(batch)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An entry as an `Event<T>` (see [`RedisSource`]).
fn decode<T: DeserializeOwned>(
    id: &str,
    fields: &[(Vec<u8>, Vec<u8>)],
    stream: &str,
) -> Result<Event<T>, Malformed> {
    let field = |name: &[u8]| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let malformed = |error: String| Malformed {
        raw: match field(b"event").or(field(b"data")) {
            Some(value) => value.clone(),
            None => {
                let shown: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(k),
                            String::from_utf8_lossy(v)
                        )
                    })
                    .collect();
                shown.join(" ").into_bytes()
            }
        },
        error,
    };
    if let Some(event) = field(b"event") {
        return serde_json::from_slice(event).map_err(|e| malformed(e.to_string()));
    }
    if let Some(data) = field(b"data") {
        let data = serde_json::from_slice::<T>(data).map_err(|e| malformed(e.to_string()))?;
        let text = |name: &[u8]| field(name).map(|v| String::from_utf8_lossy(v).into_owned());
        return Ok(Event::new(
            text(b"id").unwrap_or_else(|| id.to_owned()),
            text(b"type").unwrap_or_else(|| stream.to_owned()),
            data,
        ));
    }
    Err(malformed(
        "the entry has neither an `event` nor a `data` field".to_owned(),
    ))
}

impl<T: DeserializeOwned + Send + Sync + 'static> Source<T> for RedisSource<T> {
    type Acker = RedisAcker;

    fn name(&self) -> &str {
        &self.name
    }

    async fn pull(&mut self, max: usize) -> Result<Vec<Delivery<T, RedisAcker>>, Error> {
        let now = Instant::now();
        if now >= self.next_reclaim {
            self.next_reclaim = now + self.config.reclaim_every;
            let claimed = self.reclaim(max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        // Wait for new entries, but not past the next reclaim.
        let wait = self
            .config
            .block
            .min(self.next_reclaim.saturating_duration_since(Instant::now()));
        self.read(max, wait).await
    }

    fn ack_wait(&self) -> Option<Duration> {
        Some(self.config.claim_idle)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::nak_granularity(self.config.reclaim_every)
    }
}

/// Settles one entry of a [`RedisSource`] (see the [module docs](super)).
pub struct RedisAcker {
    writer: ConnectionManager,
    stream: Arc<str>,
    group: Arc<str>,
    consumer: Arc<str>,
    id: String,
    claim_idle: Duration,
}

impl std::fmt::Debug for RedisAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAcker")
            .field("stream", &self.stream)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RedisAcker {
    async fn acknowledge(&self, what: &str) -> Result<(), Error> {
        let mut writer = self.writer.clone();
        let _: Value = redis::cmd("XACK")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(&self.id)
            .query_async(&mut writer)
            .await
            .map_err(|e| failed(format!("Redis {what} of {}", self.id), e))?;
        Ok(())
    }

    /// Keeps the entry pending on this consumer with its idle time set to `idle`.
    async fn claim(&self, idle: Duration, what: &str) -> Result<(), Error> {
        let mut writer = self.writer.clone();
        let _: Value = redis::cmd("XCLAIM")
            .arg(&*self.stream)
            .arg(&*self.group)
            .arg(&*self.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("IDLE")
            .arg(millis(idle))
            .arg("JUSTID")
            .query_async(&mut writer)
            .await
            .map_err(|e| failed(format!("Redis {what} of {}", self.id), e))?;
        Ok(())
    }
}

impl Acker for RedisAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.acknowledge("ack").await
    }

    /// Claimable again `delay` from now (at most `claim_idle`): its idle time is set to what is left.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), Error> {
        let delay = delay.unwrap_or_default().min(self.claim_idle);
        self.claim(self.claim_idle - delay, "nak").await
    }

    async fn term(&self) -> Result<(), Error> {
        self.acknowledge("term").await
    }

    async fn progress(&self) -> Result<(), Error> {
        self.claim(Duration::ZERO, "progress").await
    }
}
