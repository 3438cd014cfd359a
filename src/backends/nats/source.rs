//! [`NatsSource`]: events from a JetStream durable pull consumer.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, Consumer};
use async_nats::jetstream::message::Acker as JetStreamAcker;
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::failed;
use crate::source::{Acker, Capabilities, Delivery, Malformed, Origin, Source};
use crate::{Error, Event};

/// Where a [`NatsSource`] reads from.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::backends::nats::NatsSourceConfig;
///
/// let config = NatsSourceConfig {
///     filter_subject: Some("orders.>".into()),
///     ack_wait: Duration::from_secs(60),
///     ..NatsSourceConfig::new("ORDERS", "order-processor")
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSourceConfig {
    /// The stream (it must exist; use Limits or Interest retention).
    pub stream: String,
    /// The durable consumer every instance of the service shares. Created with the settings below if it
    /// does not exist; an existing one is used as it is (its own ack wait and filter apply).
    pub consumer: String,
    /// Only the stream's messages on these subjects. Default `None`: all of them.
    pub filter_subject: Option<String>,
    /// How long the server waits for a settlement before it redelivers. Default 30 s; the pump signals
    /// progress at half of it for events still running.
    pub ack_wait: Duration,
    /// Messages delivered and not yet settled, at most, across all instances. Default 1,000.
    pub max_ack_pending: i64,
    /// How long an idle pull waits for a first message. Default 500 ms.
    pub wait: Duration,
}

impl NatsSourceConfig {
    /// The defaults, for `consumer` on `stream`.
    pub fn new(stream: impl Into<String>, consumer: impl Into<String>) -> Self {
        NatsSourceConfig {
            stream: stream.into(),
            consumer: consumer.into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            wait: Duration::from_millis(500),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, name) in [("stream", &self.stream), ("consumer", &self.consumer)] {
            if name.is_empty() || name.contains(['.', ' ', '*', '>']) {
                return Err(Error::invalid_config(
                    field,
                    "must be a non-empty name without '.', ' ', '*' or '>'",
                ));
            }
        }
        crate::error::check_duration("ack_wait", self.ack_wait)?;
        crate::error::check_duration("wait", self.wait)?;
        if self.max_ack_pending < 1 {
            return Err(Error::invalid_config(
                "max_ack_pending",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// One instance of a JetStream durable pull consumer, as a [`Source`]. Start one per instance of the
/// service, each on the same durable consumer: the server gives each message to one of them.
///
/// Decoding: a payload that is a CloudEvents JSON object (it has `specversion`) is read as an
/// [`Event<T>`]; any other JSON is read as the event's data `T`, with the `Nats-Msg-Id` header as its id
/// (else the stream sequence), the subject as its type and the publication time as its time. A payload
/// that is neither is [malformed](crate::source::Malformed): dead-lettered once and termed, never
/// redelivered in a loop.
///
/// Settlement: ack is a double ack (it returns once the server confirmed it), term too; nak carries
/// its delay; progress is `+WPI`.
///
/// ```no_run
/// use tower_listener::backends::nats::{connect, NatsSource, NatsSourceConfig};
/// use tower_listener::{ConsumeConfig, ListenerManager};
///
/// # async fn run(manager: ListenerManager) -> Result<(), tower_listener::Error> {
/// let client = connect("nats://127.0.0.1:4222").await?;
/// let source = NatsSource::new(client, NatsSourceConfig::new("ORDERS", "order-processor")).await?;
/// manager.consume("orders", source, ConsumeConfig::default())?;
/// # Ok(()) }
/// ```
pub struct NatsSource<T> {
    consumer: Consumer<pull::Config>,
    /// "nats", and the stream's name, shared by every delivery's origin.
    broker: Arc<str>,
    stream: Arc<str>,
    name: String,
    ack_wait: Duration,
    wait: Duration,
    _payload: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for NatsSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("name", &self.name)
            .field("ack_wait", &self.ack_wait)
            .finish_non_exhaustive()
    }
}

impl<T> NatsSource<T> {
    /// A source on `config.consumer` of `config.stream`, creating the durable consumer if it does not
    /// exist.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad field; [`Error::Backend`] when the stream does not exist or the
    /// consumer cannot be read or created.
    pub async fn new(client: async_nats::Client, config: NatsSourceConfig) -> Result<Self, Error> {
        config.validate()?;
        let context = async_nats::jetstream::new(client);
        let stream = context
            .get_stream(&config.stream)
            .await
            .map_err(|e| failed(format!("NATS stream {}", config.stream), e))?;
        let wanted = pull::Config {
            durable_name: Some(config.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
            filter_subject: config.filter_subject.clone().unwrap_or_default(),
            ..Default::default()
        };
        let mut consumer: Consumer<pull::Config> = stream
            .get_or_create_consumer(&config.consumer, wanted)
            .await
            .map_err(|e| {
                failed(
                    format!(
                        "NATS consumer {} on stream {}",
                        config.consumer, config.stream
                    ),
                    e,
                )
            })?;
        let ack_wait = consumer
            .info()
            .await
            .map(|info| info.config.ack_wait)
            .unwrap_or(config.ack_wait);
        if ack_wait != config.ack_wait {
            tracing::info!(target: "tower_listener::source", consumer = %config.consumer, ack_wait_ms = ack_wait.as_millis() as u64, "using the existing consumer's ack wait");
        }
        Ok(NatsSource {
            consumer,
            name: format!("nats:{}/{}", config.stream, config.consumer),
            broker: Arc::from("nats"),
            stream: Arc::from(config.stream),
            ack_wait,
            wait: config.wait,
            _payload: PhantomData,
        })
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> NatsSource<T> {
    /// Up to `max` messages: those waiting now, or (with `wait`) the first to arrive within it.
    async fn fetch(
        &self,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Delivery<T, NatsAcker>>, Error> {
        let context = || format!("pulling from NATS consumer {}", self.name);
        let mut messages = match wait {
            None => self
                .consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(|e| failed(context(), e))?,
            Some(wait) => self
                .consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| failed(context(), e))?,
        };
        let mut batch = Vec::with_capacity(max);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| failed(context(), e))?;
            batch.push(self.delivery(message));
        }
        Ok(batch)
    }

    fn delivery(&self, message: async_nats::jetstream::Message) -> Delivery<T, NatsAcker> {
        let reply = message.reply.as_ref().map(|r| r.as_bytes());
        let info = reply.and_then(AckInfo::parse).unwrap_or_default();
        let (sequence, delivered) = (info.sequence, info.delivered);
        let published = || info.published().unwrap_or_else(SystemTime::now);
        let (message, acker) = message.split();
        let subject = message.subject.to_string();
        // The id of a payload that is not a CloudEvent, read only for such a payload.
        let id = || {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map_or_else(|| sequence.to_string(), |v| v.as_str().to_owned())
        };
        let payload = decode(&message.payload, id, &subject, published);
        Delivery {
            payload,
            origin: Origin::new(
                self.broker.clone(),
                self.stream.clone(),
                sequence.to_string(),
            )
            .subject(subject)
            .delivered(delivered),
            acker: NatsAcker(acker),
        }
    }
}

/// A CloudEvents object as an `Event<T>`; other JSON as the data of an event with `id()`, the subject as
/// its type, published at `published()`.
fn decode<T: DeserializeOwned>(
    payload: &[u8],
    id: impl FnOnce() -> String,
    subject: &str,
    published: impl FnOnce() -> SystemTime,
) -> Result<Event<T>, Malformed> {
    let malformed = |error: serde_json::Error| Malformed {
        raw: payload.to_vec(),
        error: error.to_string(),
    };
    if payload.windows(13).any(|w| w == b"\"specversion\"") {
        serde_json::from_slice::<Event<T>>(payload).map_err(malformed)
    } else {
        serde_json::from_slice::<T>(payload)
            .map(|data| Event::new_at(id(), subject, data, published()))
            .map_err(malformed)
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Source<T> for NatsSource<T> {
    type Acker = NatsAcker;

    fn name(&self) -> &str {
        &self.name
    }

    async fn pull(&mut self, max: usize) -> Result<Vec<Delivery<T, NatsAcker>>, Error> {
        let waiting = self.fetch(max, None).await?;
        if !waiting.is_empty() {
            return Ok(waiting);
        }
        // Nothing waits: wait for one (a pull of one ends as soon as it arrives, so no message is left
        // assigned to a pull nobody reads).
        self.fetch(1, Some(self.wait)).await
    }

    fn ack_wait(&self) -> Option<Duration> {
        Some(self.ack_wait)
    }

    fn capabilities(&self) -> Capabilities {
        // A nak's delay is kept by the server's redelivery timer: measured 320–1043 ms for a 300 ms nak.
        Capabilities::nak_granularity(Duration::from_secs(1))
    }
}

/// What the ack subject of a JetStream message says (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream
/// seq>.<consumer seq>.<published>.<pending>`, with `<domain>.<account hash>.` before the stream in the
/// newer form). Read by hand: async-nats's `Message::info` parses every field, the time as an `i128`,
/// for every message; the pump needs three numbers, which a loop over the bytes reads at a fraction of
/// that cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AckInfo {
    delivered: u32,
    sequence: u64,
    /// Nanoseconds since the epoch.
    published: Option<u64>,
}

impl AckInfo {
    fn parse(reply: &[u8]) -> Option<Self> {
        let rest = reply.strip_prefix(b"$JS.ACK.")?;
        let mut tokens: [&[u8]; 10] = [&[]; 10];
        let mut count = 0;
        for token in rest.split(|&b| b == b'.') {
            if count == tokens.len() {
                break;
            }
            tokens[count] = token;
            count += 1;
        }
        let first = match count {
            7 | 8 => 0,       // stream, consumer, …
            n if n >= 9 => 2, // domain, account hash, stream, consumer, …
            _ => return None,
        };
        Some(AckInfo {
            delivered: u32::try_from(number(tokens[first + 2])?).unwrap_or(u32::MAX),
            sequence: number(tokens[first + 3])?,
            published: number(tokens[first + 5]),
        })
    }

    /// When the server received the message (nanoseconds since the epoch in the subject).
    fn published(&self) -> Option<SystemTime> {
        self.published
            .map(|nanos| std::time::UNIX_EPOCH + Duration::from_nanos(nanos))
    }
}

/// A decimal number of ASCII digits.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// Settles one JetStream message: ack and term are double acks (they return once the server confirmed
/// them), nak carries its delay, progress is `+WPI`.
pub struct NatsAcker(JetStreamAcker);

impl std::fmt::Debug for NatsAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsAcker")
    }
}

impl NatsAcker {
    async fn send(&self, kind: AckKind, confirmed: bool, what: &'static str) -> Result<(), Error> {
        let sent = if confirmed {
            self.0.double_ack_with(kind).await
        } else {
            self.0.ack_with(kind).await
        };
        sent.map_err(|e| failed(format!("NATS {what}"), e))
    }
}

impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.send(AckKind::Ack, true, "ack").await
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.send(AckKind::Nak(delay), false, "nak").await
    }

    async fn term(&self) -> Result<(), Error> {
        self.send(AckKind::Term, true, "term").await
    }

    async fn progress(&self) -> Result<(), Error> {
        self.send(AckKind::Progress, false, "progress").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_subject_reads_in_both_forms() {
        let old = AckInfo::parse(b"$JS.ACK.ORDERS.proc.3.1042.17.1764624607123456789.5").unwrap();
        assert_eq!((old.delivered, old.sequence), (3, 1042));
        assert_eq!(
            old.published(),
            Some(std::time::UNIX_EPOCH + Duration::from_nanos(1_764_624_607_123_456_789))
        );
        let new =
            AckInfo::parse(b"$JS.ACK._.HASH.ORDERS.proc.1.7.7.1764624607000000000.0.tok").unwrap();
        assert_eq!((new.delivered, new.sequence), (1, 7));
        for bad in [
            &b"$JS.ACK.ORDERS.proc.x.7.7.1.0"[..],
            b"$JS.ACK.too.short",
            b"_INBOX.abc",
            b"$JS.ACK.S.C.1..2.3.4",
        ] {
            assert_eq!(
                AckInfo::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(number(b"18446744073709551616"), None, "overflow");
    }
}
