//! Sources: events from where they live (a broker), delivered at least once to a listener, and settled on
//! the broker by what happened to each.
//!
//! A [`Source`] pulls [`Delivery`]s; [`ListenerManager::consume`](crate::ListenerManager::consume) runs a
//! pump that pulls only while the listener has free concurrency and its breaker admits calls, runs each
//! event through the listener's stack, and settles it with the delivery's [`Acker`] as the settlement table
//! says ([`settlement`]):
//!
//! | the event's outcome | settlement |
//! |---|---|
//! | succeeded | ack (confirmed by the broker where it can) |
//! | failed (retries used, not retryable, permanent), its dead letter stored | term (the broker forgets it) |
//! | failed, its dead letter could not be stored | nak with a delay: redelivered later, never acked |
//! | rejected by an open breaker (in flight when it opened) | nak with the breaker's `retry_after` |
//! | rejected as overloaded | nak with a short delay |
//! | payload does not decode | dead-lettered as malformed (raw bytes kept), then term |
//! | still running when the manager stops past its deadline | nak without delay, for another instance |
//! | still running at half the broker's ack wait | progress, so the broker does not redeliver it |
//! | delivered more than `max_deliveries` times | dead-lettered as redelivered without running, then term |
//!
//! The rules live here, once; a backend only says how ack, nak, term and progress are spoken on its wire.
//! [`MemorySource`] keeps the same contract in memory, for tests; `NatsSource` (feature `nats`) and
//! `RedisSource` (feature `redis`) speak to brokers.
//!
//! **At least once.** A broker that crashes can forget acks it had confirmed, and an instance that is
//! killed leaves what it held to be redelivered to the others: handlers must be idempotent. Redeliveries
//! are counted (`Stats::redeliveries`).

mod memory;

pub use memory::{MemoryAcker, MemorySettlements, MemorySource};

use std::future::Future;
use std::time::Duration;

pub use crate::dead_letter::Origin;
use crate::{Error, Event};

/// How one delivery is settled on its broker. Each call speaks to the broker; the pump calls exactly one
/// of `ack`, `nak` and `term` per delivery, and `progress` any number of times before it. The futures
/// may borrow the acker (the pump holds it until the broker answered); nothing is boxed.
pub trait Acker: Send + Sync + 'static {
    /// Done: the broker forgets it (where it can, only once the broker confirmed).
    fn ack(&self) -> impl Future<Output = Result<(), Error>> + Send + '_;
    /// Not now: the broker delivers it again after `delay` (at once for `None`), to this instance or
    /// another.
    fn nak(&self, delay: Option<Duration>) -> impl Future<Output = Result<(), Error>> + Send + '_;
    /// Never again: the broker stops delivering it (it failed and its dead letter is stored).
    fn term(&self) -> impl Future<Output = Result<(), Error>> + Send + '_;
    /// Still working on it: the broker restarts its ack-wait clock instead of redelivering it.
    fn progress(&self) -> impl Future<Output = Result<(), Error>> + Send + '_;
}

/// A payload a source could not decode into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The payload as delivered.
    pub raw: Vec<u8>,
    /// Why it does not decode.
    pub error: String,
}

/// One delivery of an event from a broker, settled with its acker `A`.
pub struct Delivery<T, A> {
    /// The event, or the payload that did not decode into one.
    pub payload: Result<Event<T>, Malformed>,
    /// Where it sits on the broker, and how many times it has been delivered (1 the first time).
    pub origin: Origin,
    /// How to settle it.
    pub acker: A,
}

impl<T, A> std::fmt::Debug for Delivery<T, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field(
                "payload",
                &self.payload.as_ref().map(|e| e.id()).map_err(|m| &m.error),
            )
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What a source can do, as far as the settlement contract needs to know; the shared conformance suite
/// parameterises its assertions by it instead of skipping rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The finest delay a nak can ask for: a nak with delay `d` is redelivered no sooner than `d` and no
    /// later than `d` plus this (plus the time to pull it). Zero for a broker with timed redelivery.
    pub nak_granularity: Duration,
}

impl Capabilities {
    /// A source whose naks are redelivered after exactly their delay.
    pub fn exact() -> Self {
        Capabilities {
            nak_granularity: Duration::ZERO,
        }
    }

    /// A source whose naks are redelivered up to `granularity` late.
    pub fn nak_granularity(granularity: Duration) -> Self {
        Capabilities {
            nak_granularity: granularity,
        }
    }
}

/// Where deliveries come from: one consumer of a broker (a JetStream durable consumer, a Redis consumer
/// group member, a [`MemorySource`]).
pub trait Source<T>: Send + 'static {
    /// How its deliveries are settled.
    type Acker: Acker;

    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// Up to `max` deliveries: what is there now, or the first to arrive within the source's own short
    /// wait; an empty batch when nothing came. An error means the broker is out of reach: the pump
    /// retries with backoff, and the source reconnects.
    #[allow(clippy::type_complexity)]
    fn pull(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Delivery<T, Self::Acker>>, Error>> + Send + '_;

    /// How long the broker waits for a settlement before it redelivers; the pump sends progress at half
    /// of it for events still running. `None` when the broker never redelivers on its own.
    fn ack_wait(&self) -> Option<Duration>;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;
}

/// What became of one delivery, as the settlement table reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The event succeeded.
    Succeeded,
    /// It failed (or was malformed, or redelivered too often) and its dead letter is stored.
    DeadLettered,
    /// It failed and its dead letter could not be stored (the sink refused or failed).
    NotStored,
    /// An open breaker rejected it; `retry_after` is the time the breaker had left.
    CircuitOpen {
        /// When the breaker admits a probe, if known.
        retry_after: Option<Duration>,
    },
    /// A concurrency limit rejected it.
    Overloaded,
    /// A stop past its deadline cancelled it.
    Cancelled,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done.
    Ack,
    /// Failed for good, and kept as a dead letter.
    Term,
    /// Deliver again after the delay (at once for `None`).
    Nak(Option<Duration>),
}

/// The nak delays of the settlement table.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::source::SettlementDelays;
///
/// let delays = SettlementDelays { not_stored: Duration::from_secs(30), ..SettlementDelays::default() };
/// assert!(delays.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementDelays {
    /// Before a failed event whose dead letter could not be stored is redelivered. Default 5 s.
    pub not_stored: Duration,
    /// Before an event rejected as overloaded is redelivered. Default 100 ms.
    pub overloaded: Duration,
    /// Before an event rejected by a breaker that gave no time (half-open, forced open) is redelivered.
    /// Default 1 s.
    pub circuit_open: Duration,
}

impl Default for SettlementDelays {
    fn default() -> Self {
        SettlementDelays {
            not_stored: Duration::from_secs(5),
            overloaded: Duration::from_millis(100),
            circuit_open: Duration::from_secs(1),
        }
    }
}

impl SettlementDelays {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        crate::error::check_duration("delays.not_stored", self.not_stored)?;
        crate::error::check_duration("delays.overloaded", self.overloaded)?;
        crate::error::check_duration("delays.circuit_open", self.circuit_open)
    }
}

/// The settlement table: how a delivery with `outcome` is settled.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::source::{settlement, Outcome, Settlement, SettlementDelays};
///
/// let delays = SettlementDelays::default();
/// assert_eq!(settlement(Outcome::Succeeded, &delays), Settlement::Ack);
/// assert_eq!(settlement(Outcome::DeadLettered, &delays), Settlement::Term);
/// let open = Outcome::CircuitOpen { retry_after: Some(Duration::from_secs(12)) };
/// assert_eq!(settlement(open, &delays), Settlement::Nak(Some(Duration::from_secs(12))));
/// assert_eq!(settlement(Outcome::Cancelled, &delays), Settlement::Nak(None));
/// ```
pub fn settlement(outcome: Outcome, delays: &SettlementDelays) -> Settlement {
    match outcome {
        Outcome::Succeeded => Settlement::Ack,
        Outcome::DeadLettered => Settlement::Term,
        Outcome::NotStored => Settlement::Nak(Some(delays.not_stored)),
        Outcome::CircuitOpen {
            retry_after: Some(after),
        } => Settlement::Nak(Some(after)),
        Outcome::CircuitOpen { retry_after: None } => Settlement::Nak(Some(delays.circuit_open)),
        Outcome::Overloaded => Settlement::Nak(Some(delays.overloaded)),
        Outcome::Cancelled => Settlement::Nak(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_settlement_table() {
        let delays = SettlementDelays {
            not_stored: Duration::from_secs(7),
            overloaded: Duration::from_millis(30),
            circuit_open: Duration::from_secs(2),
        };
        let rows = [
            (Outcome::Succeeded, Settlement::Ack),
            (Outcome::DeadLettered, Settlement::Term),
            (
                Outcome::NotStored,
                Settlement::Nak(Some(Duration::from_secs(7))),
            ),
            (
                Outcome::CircuitOpen {
                    retry_after: Some(Duration::from_millis(1500)),
                },
                Settlement::Nak(Some(Duration::from_millis(1500))),
            ),
            (
                Outcome::CircuitOpen { retry_after: None },
                Settlement::Nak(Some(Duration::from_secs(2))),
            ),
            (
                Outcome::Overloaded,
                Settlement::Nak(Some(Duration::from_millis(30))),
            ),
            (Outcome::Cancelled, Settlement::Nak(None)),
        ];
        for (outcome, expected) in rows {
            assert_eq!(settlement(outcome, &delays), expected, "{outcome:?}");
        }
    }

    #[test]
    fn a_delivery_shows_its_event_id_or_why_it_did_not_decode_and_where_it_came_from() {
        let origin = Origin::new("memory", "orders", "17");
        let delivery = Delivery {
            payload: Ok(Event::new("o-1", "order.created", serde_json::json!({}))),
            origin: origin.clone(),
            acker: (),
        };
        let shown = format!("{delivery:?}");
        assert!(shown.starts_with("Delivery {"), "{shown}");
        assert!(shown.contains("Ok(\"o-1\")"), "{shown}");
        assert!(
            shown.contains("\"orders\"") && shown.contains("\"17\""),
            "{shown}"
        );
        let malformed: Delivery<serde_json::Value, ()> = Delivery {
            payload: Err(Malformed {
                raw: b"{".to_vec(),
                error: "EOF while parsing".into(),
            }),
            origin,
            acker: (),
        };
        assert!(format!("{malformed:?}").contains("Err(\"EOF while parsing\")"));
    }

    #[test]
    fn capabilities_name_their_nak_granularity() {
        assert_eq!(Capabilities::exact().nak_granularity, Duration::ZERO);
        assert_eq!(
            Capabilities::nak_granularity(Duration::from_millis(250)).nak_granularity,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn delays_are_validated_by_name() {
        let bad = SettlementDelays {
            overloaded: Duration::ZERO,
            ..SettlementDelays::default()
        };
        match bad.validate() {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "delays.overloaded"),
            other => panic!("{other:?}"),
        }
    }
}
