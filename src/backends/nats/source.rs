//! [`NatsSource`]: events from a JetStream durable pull consumer.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, Consumer};
use async_nats::jetstream::message::Acker as NatsAcker;
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::failed;
use crate::source::{
    AckFuture, Acker, Capabilities, Delivery, Malformed, Origin, PullFuture, Source,
};
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
            stream: Arc::from(config.stream),
            ack_wait,
            wait: config.wait,
            _payload: PhantomData,
        })
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> NatsSource<T> {
    /// Up to `max` messages: those waiting now, or (with `wait`) the first to arrive within it.
    async fn fetch(&self, max: usize, wait: Option<Duration>) -> Result<Vec<Delivery<T>>, Error> {
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

    fn delivery(&self, message: async_nats::jetstream::Message) -> Delivery<T> {
        let (sequence, delivered, published) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
                SystemTime::from(info.published),
            ),
            Err(_) => (0, 1, SystemTime::now()),
        };
        let (message, acker) = message.split();
        let subject = message.subject.to_string();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| sequence.to_string());
        let payload = decode(&message.payload, id, &subject, published);
        Delivery {
            payload,
            origin: Origin::new("nats", &*self.stream, sequence.to_string())
                .subject(subject)
                .delivered(delivered),
            acker: Box::new(Settle(Arc::new(acker))),
        }
    }
}

/// A CloudEvents object as an `Event<T>`; other JSON as the data of an event with `id`, the subject as
/// its type, published at `published`.
fn decode<T: DeserializeOwned>(
    payload: &[u8],
    id: String,
    subject: &str,
    published: SystemTime,
) -> Result<Event<T>, Malformed> {
    let malformed = |error: serde_json::Error| Malformed {
        raw: payload.to_vec(),
        error: error.to_string(),
    };
    if payload.windows(13).any(|w| w == b"\"specversion\"") {
        serde_json::from_slice::<Event<T>>(payload).map_err(malformed)
    } else {
        serde_json::from_slice::<T>(payload)
            .map(|data| Event::new_at(id, subject, data, published))
            .map_err(malformed)
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Source<T> for NatsSource<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn pull(&mut self, max: usize) -> PullFuture<'_, T> {
        Box::pin(async move {
            let waiting = self.fetch(max, None).await?;
            if !waiting.is_empty() {
                return Ok(waiting);
            }
            // Nothing waits: wait for one (a pull of one ends as soon as it arrives, so no message is
            // left assigned to a pull nobody reads).
            self.fetch(1, Some(self.wait)).await
        })
    }

    fn ack_wait(&self) -> Option<Duration> {
        Some(self.ack_wait)
    }

    fn capabilities(&self) -> Capabilities {
        // A nak's delay is kept by the server's redelivery timer: measured 320–1043 ms for a 300 ms nak.
        Capabilities::nak_granularity(Duration::from_secs(1))
    }
}

/// Settles a JetStream message.
struct Settle(Arc<NatsAcker>);

impl Settle {
    fn send(&self, kind: AckKind, confirmed: bool, what: &'static str) -> AckFuture {
        let acker = self.0.clone();
        Box::pin(async move {
            let sent = if confirmed {
                acker.double_ack_with(kind).await
            } else {
                acker.ack_with(kind).await
            };
            sent.map_err(|e| failed(format!("NATS {what}"), e))
        })
    }
}

impl Acker for Settle {
    fn ack(&self) -> AckFuture {
        self.send(AckKind::Ack, true, "ack")
    }

    fn nak(&self, delay: Option<Duration>) -> AckFuture {
        self.send(AckKind::Nak(delay), false, "nak")
    }

    fn term(&self) -> AckFuture {
        self.send(AckKind::Term, true, "term")
    }

    fn progress(&self) -> AckFuture {
        self.send(AckKind::Progress, false, "progress")
    }
}
