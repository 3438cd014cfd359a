//! [`MemorySource`]: a broker in memory with the settlement contract of a real one, for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Acker, Capabilities, Delivery, Malformed, Origin, Source};
use crate::{Error, Event};

/// A broker in memory that keeps the contract of a real one: each message is delivered to one consumer at
/// a time; ack and term remove it; a nak redelivers it after its delay; one not settled within the ack
/// wait is redelivered (progress restarts that clock); the delivery count grows with each delivery.
/// Clones are further consumers of the same messages, as instances of a service sharing one durable
/// consumer are. Time is tokio's, so tests under paused time drive it.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::source::MemorySource;
/// use tower_listener::{Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), tower_listener::Error> {
/// let broker = MemorySource::new("orders");
/// for n in 0..3 {
///     broker.publish(Event::new(format!("o-{n}"), "order.created", serde_json::json!({"n": n})));
/// }
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(listener_fn("orders", |_e: Event| async { Ok::<_, std::io::Error>(()) }), ListenerConfig::default())?;
/// manager.start().await?;
/// manager.consume("orders", broker.clone(), Default::default())?;
/// while broker.pending() > 0 {
///     tokio::time::sleep(Duration::from_millis(10)).await;
/// }
/// assert_eq!(broker.settlements().acked, 3);
/// manager.stop(Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub struct MemorySource<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for MemorySource<T> {
    fn clone(&self) -> Self {
        MemorySource {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for MemorySource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySource")
            .field("name", &self.shared.name)
            .field("pending", &self.pending())
            .finish()
    }
}

struct Shared<T> {
    name: String,
    ack_wait: Duration,
    /// How long a pull waits for a first message.
    wait: Duration,
    state: Mutex<State<T>>,
    arrived: Notify,
}

struct State<T> {
    next: u64,
    messages: BTreeMap<u64, Message<T>>,
    counts: MemorySettlements,
}

struct Message<T> {
    payload: Result<Event<T>, Malformed>,
    delivered: u32,
    /// Deliverable from then on (when not in flight).
    ready_at: Instant,
    /// Held by a delivery until then (redelivered after it).
    held_until: Option<Instant>,
}

/// What a [`MemorySource`] has seen settled, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemorySettlements {
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages terminated.
    pub termed: u64,
    /// Naks.
    pub naked: u64,
    /// Progress signals.
    pub progressed: u64,
    /// Deliveries made (redeliveries included).
    pub delivered: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
}

impl<T> MemorySource<T> {
    /// An empty broker named `name`, with a 30 s ack wait.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_ack_wait(name, Duration::from_secs(30))
    }

    /// An empty broker whose unsettled deliveries are redelivered after `ack_wait`.
    pub fn with_ack_wait(name: impl Into<String>, ack_wait: Duration) -> Self {
        MemorySource {
            shared: Arc::new(Shared {
                name: name.into(),
                ack_wait,
                wait: Duration::from_millis(100),
                state: Mutex::new(State {
                    next: 1,
                    messages: BTreeMap::new(),
                    counts: MemorySettlements::default(),
                }),
                arrived: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.shared.lock()
    }

    fn add(&self, payload: Result<Event<T>, Malformed>) -> u64 {
        let seq = {
            let mut state = self.lock();
            let seq = state.next;
            state.next += 1;
            state.messages.insert(
                seq,
                Message {
                    payload,
                    delivered: 0,
                    ready_at: Instant::now(),
                    held_until: None,
                },
            );
            seq
        };
        self.shared.arrived.notify_waiters();
        seq
    }

    /// Publishes an event; returns its sequence number.
    pub fn publish(&self, event: Event<T>) -> u64 {
        self.add(Ok(event))
    }

    /// Publishes a payload that does not decode (as a broker would deliver garbage); returns its sequence.
    pub fn publish_malformed(&self, raw: impl Into<Vec<u8>>, error: impl Into<String>) -> u64 {
        self.add(Err(Malformed {
            raw: raw.into(),
            error: error.into(),
        }))
    }

    /// Messages not settled for good yet (waiting, held by a delivery, or nak'd).
    pub fn pending(&self) -> usize {
        self.lock().messages.len()
    }

    /// Messages held by a delivery now.
    pub fn in_flight(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .messages
            .values()
            .filter(|m| m.held_until.is_some_and(|until| until > now))
            .count()
    }

    /// How many times message `seq` has been delivered (`None` once it is settled for good).
    pub fn delivered(&self, seq: u64) -> Option<u32> {
        self.lock().messages.get(&seq).map(|m| m.delivered)
    }

    /// What was settled so far.
    pub fn settlements(&self) -> MemorySettlements {
        self.lock().counts
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while this lock is held; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send + Sync + 'static> Source<T> for MemorySource<T> {
    type Acker = MemoryAcker<T>;

    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn pull(&mut self, max: usize) -> Result<Vec<Delivery<T, MemoryAcker<T>>>, Error> {
        {
            let deadline = Instant::now() + self.shared.wait;
            loop {
                // Created before the check, so a publish after it wakes this pull.
                let arrived = self.shared.arrived.notified();
                let (batch, next_ready) = self.take(max);
                if !batch.is_empty() || max == 0 {
                    return Ok(batch);
                }
                let wake = next_ready.map_or(deadline, |at| at.min(deadline));
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                tokio::select! {
                    () = arrived => {}
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        }
    }

    fn ack_wait(&self) -> Option<Duration> {
        Some(self.shared.ack_wait)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::exact()
    }
}

impl<T: Send + Sync + 'static> MemorySource<T> {
    /// Takes up to `max` deliverable messages; also returns when the next held or delayed one becomes
    /// deliverable.
    #[allow(clippy::type_complexity)]
    fn take(&self, max: usize) -> (Vec<Delivery<T, MemoryAcker<T>>>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut batch = Vec::new();
        let mut next_ready: Option<Instant> = None;
        let mut counts = state.counts;
        for (&seq, message) in state.messages.iter_mut() {
            let free_at = match message.held_until {
                Some(until) => until.max(message.ready_at),
                None => message.ready_at,
            };
            if free_at > now {
                next_ready = Some(next_ready.map_or(free_at, |n| n.min(free_at)));
                continue;
            }
            if batch.len() == max {
                continue;
            }
            message.delivered += 1;
            message.held_until = Some(now + self.shared.ack_wait);
            counts.delivered += 1;
            if message.delivered > 1 {
                counts.redelivered += 1;
            }
            let payload = match &message.payload {
                Ok(event) => Ok(event.clone()),
                Err(malformed) => Err(malformed.clone()),
            };
            batch.push(Delivery {
                payload,
                origin: Origin::new("memory", self.shared.name.as_str(), seq.to_string())
                    .delivered(message.delivered),
                acker: MemoryAcker {
                    shared: self.shared.clone(),
                    seq,
                    delivery: message.delivered,
                },
            });
        }
        state.counts = counts;
        (batch, next_ready)
    }
}

/// Settles one delivery of a [`MemorySource`]. Ack and term remove the message whichever delivery they
/// come from (as brokers accept a late ack); a nak or progress from a delivery that is no longer the
/// current one is ignored.
pub struct MemoryAcker<T> {
    shared: Arc<Shared<T>>,
    seq: u64,
    delivery: u32,
}

impl<T: Send + Sync + 'static> MemoryAcker<T> {
    fn settle(&self, apply: impl FnOnce(&mut State<T>, u64, u32)) -> Result<(), Error> {
        {
            let mut state = self.shared.lock();
            apply(&mut state, self.seq, self.delivery);
        }
        self.shared.arrived.notify_waiters();
        Ok(())
    }
}

impl<T: Send + Sync + 'static> Acker for MemoryAcker<T> {
    async fn ack(&self) -> Result<(), Error> {
        self.settle(|state, seq, _| {
            if state.messages.remove(&seq).is_some() {
                state.counts.acked += 1;
            }
        })
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.settle(|state, seq, delivery| {
            if let Some(message) = state.messages.get_mut(&seq) {
                if message.delivered == delivery {
                    message.held_until = None;
                    message.ready_at = Instant::now() + delay.unwrap_or_default();
                    state.counts.naked += 1;
                }
            }
        })
    }

    async fn term(&self) -> Result<(), Error> {
        self.settle(|state, seq, _| {
            if state.messages.remove(&seq).is_some() {
                state.counts.termed += 1;
            }
        })
    }

    async fn progress(&self) -> Result<(), Error> {
        let ack_wait = self.shared.ack_wait;
        self.settle(|state, seq, delivery| {
            if let Some(message) = state.messages.get_mut(&seq) {
                if message.delivered == delivery && message.held_until.is_some() {
                    message.held_until = Some(Instant::now() + ack_wait);
                    state.counts.progressed += 1;
                }
            }
        })
    }
}
