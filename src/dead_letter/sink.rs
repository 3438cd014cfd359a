//! [`DeadLetter`], its [`DeadLetterReason`], and the [`DeadLetterSink`] trait with its closure and mpsc
//! implementations.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tower::BoxError;

#[cfg(doc)]
use crate::Error;
use crate::ErrorRecord;

/// Why an event was dead-lettered.
///
/// ```
/// use tower_listener::{DeadLetterConfig, DeadLetterQueue, DeadLetterReason, Event};
///
/// // Keep real failures; let rejected events go back to their sender instead.
/// let config = DeadLetterConfig::to_sink(DeadLetterQueue::<Event>::new(1_000))
///     .capture_only(|reason| !matches!(reason, DeadLetterReason::CircuitOpen | DeadLetterReason::Overloaded));
/// assert_eq!(DeadLetterReason::Permanent.to_string(), "permanent");
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Every retry was used and the last attempt failed.
    Exhausted,
    /// The retry condition declined the error.
    NotRetryable,
    /// The retry budget had nothing left.
    BudgetExhausted,
    /// A circuit breaker rejected the event.
    CircuitOpen,
    /// A concurrency limit or a full queue rejected the event.
    Overloaded,
    /// A shutdown cancelled the event.
    Shutdown,
    /// The event failed with no retry layer in the stack.
    Failed,
    /// The handler said the event can never succeed ([`Error::Permanent`]): dead-lettered at once,
    /// without retries.
    Permanent,
    /// A source's payload did not decode into an event: kept as raw bytes (a [`MalformedLetter`]), never
    /// run, never redelivered.
    Malformed,
    /// A source delivered the event more times than its `max_deliveries`: dead-lettered without running
    /// it again.
    Redelivered,
}

impl DeadLetterReason {
    /// Every reason, for capture filters.
    pub const ALL: [DeadLetterReason; 10] = [
        DeadLetterReason::Exhausted,
        DeadLetterReason::NotRetryable,
        DeadLetterReason::BudgetExhausted,
        DeadLetterReason::CircuitOpen,
        DeadLetterReason::Overloaded,
        DeadLetterReason::Shutdown,
        DeadLetterReason::Failed,
        DeadLetterReason::Permanent,
        DeadLetterReason::Malformed,
        DeadLetterReason::Redelivered,
    ];

    /// The name: "exhausted", "not_retryable", "budget_exhausted", "circuit_open", "overloaded",
    /// "shutdown", "failed", "permanent", "malformed", "redelivered".
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::Exhausted => "exhausted",
            DeadLetterReason::NotRetryable => "not_retryable",
            DeadLetterReason::BudgetExhausted => "budget_exhausted",
            DeadLetterReason::CircuitOpen => "circuit_open",
            DeadLetterReason::Overloaded => "overloaded",
            DeadLetterReason::Shutdown => "shutdown",
            DeadLetterReason::Failed => "failed",
            DeadLetterReason::Permanent => "permanent",
            DeadLetterReason::Malformed => "malformed",
            DeadLetterReason::Redelivered => "redelivered",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event (or any request) whose final outcome was a failure, with what is known about that failure.
///
/// With the `serde` feature it serializes (when `R` does) as a self-describing record, so a durable store
/// or a broker can keep it and another process can read it back: the error as an [`ErrorRecord`], times
/// as RFC 3339 strings.
///
/// ```
/// use tower_listener::{DeadLetter, DeadLetterReason, Error, Event};
///
/// let event = Event::new("o-1", "order.created", serde_json::json!({"total": -5}));
/// let letter = DeadLetter::new(event, Error::permanent(std::fmt::Error), "orders", 1, DeadLetterReason::Permanent);
/// let json = serde_json::to_string(&letter).unwrap();
/// let back: DeadLetter<Event> = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.error.kind, "permanent");
/// assert_eq!(back.request.id(), "o-1");
/// assert_eq!(back, letter);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct DeadLetter<R> {
    /// The original request, exactly as it was handed to the stack.
    pub request: R,
    /// The final error, as a record (which keeps the [`Error`] itself while in this process).
    pub error: ErrorRecord,
    /// The listener (or layer) name.
    pub listener: Arc<str>,
    /// Attempts made (1 when there was no retry layer, or the event was rejected before its first one;
    /// redrives that failed add theirs).
    pub attempts: u32,
    /// When the first attempt failed.
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339"))]
    pub first_failure_at: SystemTime,
    /// When the event was dead-lettered (or last failed a redrive).
    #[cfg_attr(feature = "serde", serde(with = "crate::rfc3339"))]
    pub dead_lettered_at: SystemTime,
    /// Why.
    pub reason: DeadLetterReason,
    /// Where the event came from, when a [source](crate::source) delivered it from a broker.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub origin: Option<Origin>,
}

/// Where a delivered event sits on its broker: enough to find it there, and to send a redriven event back.
///
/// ```
/// use tower_listener::dead_letter::Origin;
///
/// let origin = Origin::new("nats", "ORDERS", "42").subject("orders.created").delivered(3);
/// assert_eq!(origin.to_string(), "nats ORDERS #42 (orders.created), delivery 3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Origin {
    /// The kind of broker: "nats", "redis", "memory".
    pub broker: Arc<str>,
    /// The stream (JetStream stream, Redis stream key).
    pub stream: Arc<str>,
    /// The subject it was published on, where the broker has one.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub subject: Option<String>,
    /// Its position in the stream: a sequence number or an entry id.
    pub sequence: String,
    /// The consumer group it was delivered through, where the broker has them (Redis Streams): what a
    /// store needs to acknowledge the entry in the transaction that stores its letter.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub group: Option<String>,
    /// How many times it had been delivered (1 the first time).
    pub delivered: u32,
}

impl Origin {
    /// An origin in `stream` of `broker`, at `sequence`, first delivery.
    pub fn new(
        broker: impl Into<Arc<str>>,
        stream: impl Into<Arc<str>>,
        sequence: impl Into<String>,
    ) -> Self {
        Origin {
            broker: broker.into(),
            stream: stream.into(),
            subject: None,
            sequence: sequence.into(),
            group: None,
            delivered: 1,
        }
    }

    /// With the consumer group it was delivered through.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// With the subject it was published on.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// With its delivery count.
    pub fn delivered(mut self, delivered: u32) -> Self {
        self.delivered = delivered;
        self
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} #{}", self.broker, self.stream, self.sequence)?;
        if let Some(subject) = &self.subject {
            write!(f, " ({subject})")?;
        }
        write!(f, ", delivery {}", self.delivered)
    }
}

/// A payload a source could not decode into an event: kept as its raw bytes, with why it did not decode,
/// so that it is dead-lettered (reason [`Malformed`](DeadLetterReason::Malformed)) instead of being
/// redelivered forever. A store lists it as an [`Undecodable`](super::Undecodable) entry whose `raw` is
/// the payload.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MalformedLetter {
    /// The payload, as the broker delivered it.
    pub payload: Vec<u8>,
    /// Why it did not decode (kind "malformed", permanent).
    pub error: ErrorRecord,
    /// The listener it was for.
    pub listener: Arc<str>,
    /// When it was dead-lettered.
    pub dead_lettered_at: SystemTime,
    /// Where it came from.
    pub origin: Option<Origin>,
}

impl MalformedLetter {
    /// A malformed letter of `payload` for `listener`, that did not decode because of `why`, dated now.
    pub fn new(payload: Vec<u8>, why: impl Into<String>, listener: impl Into<Arc<str>>) -> Self {
        let mut error = ErrorRecord::new("malformed", why);
        error.permanent = true;
        MalformedLetter {
            payload,
            error,
            listener: listener.into(),
            dead_lettered_at: SystemTime::now(),
            origin: None,
        }
    }
}

impl<R> DeadLetter<R> {
    /// A dead letter of `request`, failed with `error` for `reason`, dated now.
    pub fn new(
        request: R,
        error: impl Into<ErrorRecord>,
        listener: impl Into<Arc<str>>,
        attempts: u32,
        reason: DeadLetterReason,
    ) -> Self {
        let now = SystemTime::now();
        DeadLetter {
            request,
            error: error.into(),
            listener: listener.into(),
            attempts,
            first_failure_at: now,
            dead_lettered_at: now,
            reason,
            origin: None,
        }
    }
}

/// The future a sink returns: `'static`, so a sink clones what it needs into it.
pub type SinkFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// Where dead letters go. Async and fallible, so durable stores (a database, a broker topic) fit behind it.
///
/// A sink that returns an error or panics never crashes the caller: the dead-letter layer counts it in
/// `dead_letter_failures`, logs it, and still returns the event's own error.
///
/// Besides the ready-made sinks ([`DeadLetterQueue`](super::DeadLetterQueue), [`dead_letter_fn`], mpsc
/// senders), any type can be one. A sink that writes somewhere slow clones what it needs into its future:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_listener::{DeadLetter, DeadLetterSink, Event, SinkFuture};
///
/// /// Keeps the id and the error of each letter, as an audit log would.
/// #[derive(Clone, Default)]
/// struct AuditLog(Arc<Mutex<Vec<String>>>);
///
/// impl DeadLetterSink<Event> for AuditLog {
///     fn send(&self, letter: DeadLetter<Event>) -> SinkFuture {
///         let log = self.0.clone();
///         Box::pin(async move {
///             let line = format!("{} {}: {}", letter.reason, letter.request.id(), letter.error);
///             log.lock().map_err(|_| "audit log poisoned")?.push(line);
///             Ok(())
///         })
///     }
/// }
///
/// let config = tower_listener::DeadLetterConfig::to_sink(AuditLog::default());
/// # let _ = config;
/// ```
pub trait DeadLetterSink<R>: Send + Sync + 'static {
    /// Takes one dead letter.
    fn send(&self, letter: DeadLetter<R>) -> SinkFuture;

    /// Takes a payload a source could not decode. The default refuses it: a sink that can keep raw bytes
    /// (every store of this crate, the in-memory queue) says so by implementing this. A source whose
    /// listener's sink refuses it redelivers the payload later instead of dropping it.
    fn send_malformed(&self, letter: MalformedLetter) -> SinkFuture {
        let _ = letter;
        Box::pin(std::future::ready(Err(BoxError::from(
            "this dead-letter sink cannot keep malformed payloads (use a DeadLetterStore)",
        ))))
    }

    /// Waits until every letter taken so far is stored (called by the manager on `stop`). The default
    /// does nothing.
    fn flush(&self) -> SinkFuture {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A sink that calls a closure: the Go package's `Handler(event, err)`. See [`dead_letter_fn`].
#[derive(Clone)]
pub struct FnSink<F> {
    f: F,
}

/// Makes a sink from a closure that takes each [`DeadLetter`].
///
/// ```
/// use tower_listener::{dead_letter_fn, DeadLetter, Event};
///
/// let sink = dead_letter_fn(|letter: DeadLetter<Event>| {
///     eprintln!("dead letter {}: {} ({})", letter.request.id(), letter.error, letter.reason);
/// });
/// # let _ = sink;
/// ```
pub fn dead_letter_fn<F>(f: F) -> FnSink<F> {
    FnSink { f }
}

impl<R, F> DeadLetterSink<R> for FnSink<F>
where
    F: Fn(DeadLetter<R>) + Send + Sync + 'static,
{
    fn send(&self, letter: DeadLetter<R>) -> SinkFuture {
        (self.f)(letter);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl<F> fmt::Debug for FnSink<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSink")
    }
}

/// A `tokio::sync::mpsc` sender is a sink: each letter is sent, waiting for room in the channel; a closed
/// channel is a sink failure.
impl<R: Send + 'static> DeadLetterSink<R> for mpsc::Sender<DeadLetter<R>> {
    fn send(&self, letter: DeadLetter<R>) -> SinkFuture {
        let sender = self.clone();
        Box::pin(async move {
            sender
                .send(letter)
                .await
                .map_err(|_| BoxError::from("dead-letter channel is closed"))
        })
    }
}

/// An unbounded mpsc sender is a sink too (it never waits).
impl<R: Send + 'static> DeadLetterSink<R> for mpsc::UnboundedSender<DeadLetter<R>> {
    fn send(&self, letter: DeadLetter<R>) -> SinkFuture {
        let result = mpsc::UnboundedSender::send(self, letter)
            .map_err(|_| BoxError::from("dead-letter channel is closed"));
        Box::pin(std::future::ready(result))
    }
}
