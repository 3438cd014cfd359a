//! [`MemorySource`]: a broker in memory with the settlement contract of a real one, for tests.

use std::collections::{BTreeMap, BTreeSet};
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

/// Every message is in exactly one of `ready` (deliverable now, taken in sequence order) and `waiting`
/// (keyed by when it becomes deliverable: a delayed nak, a delivery's ack wait), so a pull visits what it
/// delivers and what has come due, not every message held by a delivery.
struct State<T> {
    next: u64,
    messages: BTreeMap<u64, Message<T>>,
    ready: BTreeSet<u64>,
    waiting: BTreeSet<(Instant, u64)>,
    counts: MemorySettlements,
}

struct Message<T> {
    payload: Result<Event<T>, Malformed>,
    delivered: u32,
    /// Deliverable from then on (when not in flight).
    ready_at: Instant,
    /// Held by a delivery until then (redelivered after it).
    held_until: Option<Instant>,
    /// Its key in `waiting`, or `None` while it is in `ready`.
    waiting_until: Option<Instant>,
}

impl<T> Message<T> {
    /// When it can be delivered (again).
    fn free_at(&self) -> Instant {
        match self.held_until {
            Some(until) => until.max(self.ready_at),
            None => self.ready_at,
        }
    }
}

impl<T> State<T> {
    /// Files message `seq` under its current `free_at`, wherever it was filed before.
    fn schedule(&mut self, seq: u64) {
        let Some(message) = self.messages.get_mut(&seq) else {
            return;
        };
        let filed = message.waiting_until.take();
        let free_at = message.free_at();
        message.waiting_until = Some(free_at);
        self.unfile(seq, filed);
        self.waiting.insert((free_at, seq));
    }

    /// Removes message `seq` for good (acked or termed); whether it was still there.
    fn remove(&mut self, seq: u64) -> bool {
        let Some(message) = self.messages.remove(&seq) else {
            return false;
        };
        self.unfile(seq, message.waiting_until);
        true
    }

    /// Takes message `seq` out of `waiting` (filed under `until`) or, when `until` is `None`, out of `ready`.
    fn unfile(&mut self, seq: u64, until: Option<Instant>) {
        match until {
            Some(until) => self.waiting.remove(&(until, seq)),
            None => self.ready.remove(&seq),
        };
    }

    /// Moves what has come due by `now` from `waiting` to `ready`.
    fn promote(&mut self, now: Instant) {
        while let Some(&(until, seq)) = self.waiting.first() {
            if until > now {
                return;
            }
            self.waiting.pop_first();
            if let Some(message) = self.messages.get_mut(&seq) {
                message.waiting_until = None;
                self.ready.insert(seq);
            }
        }
    }
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
                    ready: BTreeSet::new(),
                    waiting: BTreeSet::new(),
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
                    waiting_until: None,
                },
            );
            state.ready.insert(seq);
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
        state.promote(now);
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(seq) = state.ready.pop_first() else {
                break;
            };
            let State {
                messages, counts, ..
            } = &mut *state;
            let Some(message) = messages.get_mut(&seq) else {
                continue;
            };
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
            let delivered = message.delivered;
            batch.push(Delivery {
                payload,
                origin: Origin::new("memory", self.shared.name.as_str(), seq.to_string())
                    .delivered(delivered),
                acker: MemoryAcker {
                    shared: self.shared.clone(),
                    seq,
                    delivery: delivered,
                },
            });
            // Held now: it waits for its ack wait.
            state.schedule(seq);
        }
        let next_ready = state.waiting.first().map(|&(until, _)| until);
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
            if state.remove(seq) {
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
                    state.schedule(seq);
                }
            }
        })
    }

    async fn term(&self) -> Result<(), Error> {
        self.settle(|state, seq, _| {
            if state.remove(seq) {
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
                    state.schedule(seq);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Batch = Vec<Delivery<u32, MemoryAcker<u32>>>;

    fn ids(batch: &Batch) -> Vec<String> {
        batch
            .iter()
            .map(|d| d.payload.as_ref().map_or("?", |e| e.id()).to_owned())
            .collect()
    }

    fn publish(source: &MemorySource<u32>, n: u32) {
        for i in 0..n {
            source.publish(Event::new(format!("e{i}"), "t", i));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_messages_go_out_in_sequence_order_and_a_nak_keeps_its_place() {
        let mut source = MemorySource::<u32>::with_ack_wait("order", Duration::from_secs(30));
        publish(&source, 5);
        let first = source.pull(2).await.unwrap();
        assert_eq!(ids(&first), ["e0", "e1"]);
        // e1 comes back at once; it is older than e2..e4, so it goes out before them.
        first[1].acker.nak(None).await.unwrap();
        let second = source.pull(10).await.unwrap();
        assert_eq!(ids(&second), ["e1", "e2", "e3", "e4"]);
        assert_eq!(second[0].origin.delivered, 2);
        // Everything is held now: nothing to pull until the ack wait runs out.
        assert!(source.pull(10).await.unwrap().is_empty());
        assert_eq!(source.in_flight(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_message_comes_back_after_its_ack_wait_and_progress_extends_it() {
        let mut source = MemorySource::<u32>::with_ack_wait("held", Duration::from_secs(30));
        publish(&source, 2);
        let batch = source.pull(10).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        batch[1].acker.progress().await.unwrap(); // e1 held until 50 s
        tokio::time::advance(Duration::from_secs(11)).await; // 31 s
        let again = source.pull(10).await.unwrap();
        assert_eq!(ids(&again), ["e0"]);
        tokio::time::advance(Duration::from_secs(20)).await; // 51 s
        let last = source.pull(10).await.unwrap();
        assert_eq!(ids(&last), ["e1"]);
        assert_eq!(source.settlements().redelivered, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_nak_waits_its_delay_and_settled_messages_never_return() {
        let mut source = MemorySource::<u32>::with_ack_wait("delay", Duration::from_secs(30));
        publish(&source, 3);
        let batch = source.pull(10).await.unwrap();
        batch[0]
            .acker
            .nak(Some(Duration::from_secs(5)))
            .await
            .unwrap();
        batch[1].acker.ack().await.unwrap();
        batch[2].acker.term().await.unwrap();
        // A stale settlement of a settled message changes nothing.
        batch[1].acker.nak(None).await.unwrap();
        assert_eq!(source.pending(), 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(source.pull(10).await.unwrap().is_empty()); // waited out the pull's 100 ms only
        tokio::time::advance(Duration::from_secs(1)).await;
        let again = source.pull(10).await.unwrap();
        assert_eq!(ids(&again), ["e0"]);
        again[0].acker.ack().await.unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(source.pull(10).await.unwrap().is_empty());
        assert_eq!(source.pending(), 0);
        let State { ready, waiting, .. } = &*source.lock();
        assert!(ready.is_empty() && waiting.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pull_that_waits_wakes_when_a_held_message_comes_due() {
        let mut source = MemorySource::<u32>::with_ack_wait("wake", Duration::from_millis(50));
        publish(&source, 1);
        let first = source.pull(1).await.unwrap();
        assert_eq!(first.len(), 1);
        // Within the pull's own wait (100 ms), the message's ack wait (50 ms) runs out.
        let again = source.pull(1).await.unwrap();
        assert_eq!(ids(&again), ["e0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn many_held_messages_leave_the_rest_deliverable_in_order() {
        let mut source = MemorySource::<u32>::with_ack_wait("many", Duration::from_secs(30));
        publish(&source, 10_000);
        let mut seen = 0;
        loop {
            let batch = source.pull(64).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for delivery in &batch {
                assert_eq!(delivery.payload.as_ref().unwrap().id(), format!("e{seen}"));
                seen += 1;
            }
        }
        assert_eq!(seen, 10_000);
        assert_eq!(source.in_flight(), 10_000);
        let State { ready, waiting, .. } = &*source.lock();
        assert_eq!((ready.len(), waiting.len()), (0, 10_000));
    }
}
