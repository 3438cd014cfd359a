//! The pump: drives a [`Source`] through a listener and settles every delivery on its broker.
//!
//! One task per consumer pulls, and one task per delivery runs the event and settles it. The pump pulls
//! only what the listener can run now (free concurrency; one probe at a time while its breaker is
//! half-open) and nothing while the breaker rejects calls, so an outage of a dependency leaves the events
//! on the broker instead of failing them. The settlement rules are the table of [`crate::source`]; this
//! module only decides which row each delivery is on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::listener::ManagedListener;
use super::stack::Lease;
use super::StopReport;
use crate::attempts::WithAttempts;
use crate::circuit::CircuitState;
use crate::dead_letter::{
    captures, reason_for, sink_failed, DeadLetter, DeadLetterReason, MalformedLetter,
};
use crate::source::{
    settlement, Acker, Delivery, Malformed, Origin, Outcome, Settlement, SettlementDelays, Source,
};
use crate::{clock, Error, ErrorRecord, Event};

/// Settings of a consumer ([`ListenerManager::consume`](super::ListenerManager::consume)).
///
/// ```
/// use std::time::Duration;
/// use tower_listener::ConsumeConfig;
///
/// let config = ConsumeConfig { batch: 32, max_deliveries: 10, ..ConsumeConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeConfig {
    /// Deliveries being processed at once, at most. Default `None`: the listener's `concurrency`.
    pub max_in_flight: Option<usize>,
    /// The most deliveries one pull asks for. Default 64.
    pub batch: usize,
    /// A delivery past this count is dead-lettered with reason
    /// [`Redelivered`](crate::DeadLetterReason::Redelivered) without running: an event that keeps coming
    /// back (its handler crashes the process, its settlement never reaches the broker) stops there.
    /// Default 5.
    pub max_deliveries: u32,
    /// The nak delays of the settlement table.
    pub delays: SettlementDelays,
    /// The longest a pull or a settlement may take. A broker that went away mid-request may never
    /// answer it; past this the request counts as failed (a pull is retried with backoff, an unsettled
    /// delivery is redelivered by the broker after its ack wait). Default 10 s.
    pub broker_timeout: Duration,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        ConsumeConfig {
            max_in_flight: None,
            batch: 64,
            max_deliveries: 5,
            delays: SettlementDelays::default(),
            broker_timeout: Duration::from_secs(10),
        }
    }
}

impl ConsumeConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_in_flight == Some(0) {
            return Err(Error::invalid_config("max_in_flight", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::invalid_config("batch", "must be at least 1"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::invalid_config(
                "max_deliveries",
                "must be at least 1",
            ));
        }
        crate::error::check_duration("broker_timeout", self.broker_timeout)?;
        self.delays.validate()
    }
}

/// A running consumer: a source pumped through one listener. Made by
/// [`ListenerManager::consume`](super::ListenerManager::consume); the manager's `stop` (and `unregister`
/// of its listener) stops it too. Clones are handles to the same consumer.
#[derive(Clone)]
pub struct Consumer {
    shared: Arc<ConsumerShared>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("listener", &self.shared.listener)
            .field("source", &self.shared.source)
            .field("stopping", &self.shared.stopping.load(Ordering::SeqCst))
            .finish()
    }
}

struct ConsumerShared {
    listener: String,
    source: String,
    /// Set once: stop pulling.
    stopping: AtomicBool,
    /// Set once the deadline passed: cancel what runs.
    cancelled: AtomicBool,
    wake: Notify,
    /// Until when running deliveries may finish, once stopping.
    deadline: Mutex<Option<Instant>>,
    pump: tokio::sync::Mutex<Option<JoinHandle<StopReport>>>,
    /// What the pump's stop reported, for every later `stop`.
    report: Mutex<Option<StopReport>>,
}

impl ConsumerShared {
    /// Resolves once `flag` is set (re-checked after every wake-up, so no wake-up is lost).
    async fn until(&self, flag: &AtomicBool) {
        loop {
            let woken = self.wake.notified();
            if flag.load(Ordering::SeqCst) {
                return;
            }
            woken.await;
        }
    }
}

impl Consumer {
    /// The listener it feeds.
    pub fn listener(&self) -> &str {
        &self.shared.listener
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.shared.source
    }

    /// Stops pulling; deliveries being processed get until `deadline` to end (and are settled as they
    /// end); those still running then are cancelled and handed back to the broker (nak without delay),
    /// not dead-lettered, so that another instance takes them. Stopping a stopped consumer is `Ok`.
    pub async fn stop(&self, deadline: Duration) -> StopReport {
        self.stop_at(Instant::now() + deadline).await
    }

    pub(crate) async fn stop_at(&self, deadline: Instant) -> StopReport {
        {
            let mut at = self
                .shared
                .deadline
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if at.is_none() {
                *at = Some(deadline);
            }
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_waiters();
        let mut pump = self.shared.pump.lock().await;
        if let Some(running) = pump.take() {
            let report = running.await.unwrap_or_else(|e| {
                tracing::error!(target: "tower_listener::source", listener = %self.shared.listener, error = %e, "a consumer's pump ended abnormally");
                StopReport::default()
            });
            *self
                .shared
                .report
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(report);
        }
        self.shared
            .report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or(StopReport {
                drained: true,
                cancelled: 0,
            })
    }

    /// Whether it was stopped (or its pump ended).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

/// Starts a consumer pumping `source` through `listener`.
pub(crate) fn start<T, S>(
    listener: Arc<ManagedListener<T>>,
    source: S,
    config: ConsumeConfig,
) -> Consumer
where
    T: Send + Sync + 'static,
    S: Source<T>,
{
    let shared = Arc::new(ConsumerShared {
        listener: listener.id.clone(),
        source: source.name().to_owned(),
        stopping: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        wake: Notify::new(),
        deadline: Mutex::new(None),
        pump: tokio::sync::Mutex::new(None),
        report: Mutex::new(None),
    });
    let task = tokio::spawn(pump(listener, source, config, shared.clone()));
    // The handle is stored before anyone can call `stop` (nobody has the consumer yet).
    if let Ok(mut pump) = shared.pump.try_lock() {
        *pump = Some(task);
    }
    Consumer { shared }
}

/// Pulls while it may, runs each delivery in a task of its own, and on stop waits for them until the
/// deadline, then cancels the rest.
async fn pump<T, S>(
    listener: Arc<ManagedListener<T>>,
    mut source: S,
    config: ConsumeConfig,
    shared: Arc<ConsumerShared>,
) -> StopReport
where
    T: Send + Sync + 'static,
    S: Source<T>,
{
    let max_in_flight = config.max_in_flight.unwrap_or(listener.concurrency);
    let low_water = (max_in_flight.min(config.batch) / 4).max(1);
    let ack_wait = source.ack_wait();
    let mut running: JoinSet<()> = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    tracing::info!(target: "tower_listener::source", listener = %listener.id, source = source.name(), "consumer started");
    // One wake-up registration for the pump's whole life, not one per turn of the loop.
    let stopped = shared.until(&shared.stopping);
    tokio::pin!(stopped);
    while !shared.stopping.load(Ordering::SeqCst) {
        while running.try_join_next().is_some() {}
        // An open breaker pauses pulling: the events wait on the broker, not in failures.
        if let Some(wait) = listener.breaker.retry_after() {
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                () = &mut stopped => {}
            }
            continue;
        }
        let half_open = listener.breaker.state() == CircuitState::HalfOpen;
        let room = if half_open {
            usize::from(running.is_empty()) // one probe at a time
        } else {
            match max_in_flight.saturating_sub(running.len()) {
                // Wait for a quarter of the slots to free up before pulling again, unless nothing
                // runs: fewer, fuller pulls (one round trip each) for the same limit.
                free if free < low_water && !running.is_empty() => 0,
                free => free,
            }
        };
        if room == 0 {
            // Re-check the breaker now and then while a probe runs.
            let recheck = async {
                match half_open {
                    true => tokio::time::sleep(Duration::from_millis(100)).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = running.join_next() => {}
                () = &mut stopped => {}
                () = recheck => {}
            }
            continue;
        }
        let pulling =
            tokio::time::timeout(config.broker_timeout, source.pull(room.min(config.batch)));
        let pulled = tokio::select! {
            pulled = pulling => pulled.unwrap_or_else(|_| Err(Error::backend(
                "pulling",
                format!("no answer within {:?}", config.broker_timeout),
            ))),
            () = &mut stopped => break,
        };
        match pulled {
            Ok(deliveries) => {
                backoff = Duration::from_millis(100);
                for delivery in deliveries {
                    let (listener, shared) = (listener.clone(), shared.clone());
                    // Boxed here, the delivery's future (about 2 KB) is copied once, not at every
                    // layer of the spawn.
                    running.spawn(Box::pin(settle(
                        listener, delivery, config, ack_wait, shared,
                    )));
                }
            }
            Err(error) => {
                tracing::warn!(target: "tower_listener::source", listener = %listener.id, source = source.name(), error = %error, retry_in_ms = backoff.as_millis() as u64, "pull failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut stopped => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    // Stopping: what runs gets until the deadline, then is cancelled (and handed back to the broker).
    let deadline = shared
        .deadline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or_else(Instant::now);
    let in_flight = running.len();
    let drained = tokio::time::timeout_at(deadline, async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let mut cancelled = 0;
    if !drained {
        cancelled = running.len() as u64;
        tracing::warn!(target: "tower_listener::source", listener = %listener.id, in_flight = cancelled, "stop deadline passed; handing the running deliveries back to the broker");
        shared.cancelled.store(true, Ordering::SeqCst);
        shared.wake.notify_waiters();
        while running.join_next().await.is_some() {}
    }
    tracing::info!(target: "tower_listener::source", listener = %listener.id, in_flight, drained, cancelled, "consumer stopped");
    StopReport { drained, cancelled }
}

/// Runs one delivery to its outcome and settles it.
async fn settle<T: Send + Sync + 'static, A: Acker>(
    listener: Arc<ManagedListener<T>>,
    delivery: Delivery<T, A>,
    config: ConsumeConfig,
    ack_wait: Option<Duration>,
    shared: Arc<ConsumerShared>,
) {
    let Delivery {
        payload,
        origin,
        acker,
    } = delivery;
    if origin.delivered > 1 {
        listener.metrics.redelivered();
    }
    // The rare paths are boxed: the future of every delivery (moved into its task) stays small.
    let outcome = match payload {
        Err(malformed) => Box::pin(listener.store_malformed(malformed, origin)).await,
        Ok(event) if origin.delivered > config.max_deliveries => {
            let error = ErrorRecord::new(
                "redelivered",
                format!(
                    "delivered {} times (max_deliveries {})",
                    origin.delivered, config.max_deliveries
                ),
            );
            Box::pin(listener.store_letter(event, error, 0, DeadLetterReason::Redelivered, origin))
                .await
        }
        Ok(event) => {
            let running = listener.run_delivery(event, origin);
            tokio::pin!(running);
            // Progress at half the ack wait, so the broker does not hand a slow event to someone else.
            let every = ack_wait.map(|wait| (wait / 2).max(Duration::from_millis(1)));
            let mut next_progress = every.map(|every| Instant::now() + every);
            loop {
                let progress_due = async {
                    match next_progress {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                // The event first: one that completes at once never arms a timer or a wake-up.
                tokio::select! {
                    biased;
                    outcome = &mut running => break outcome,
                    () = progress_due => {
                        signal_progress(&listener, &acker, config.broker_timeout).await;
                        next_progress = every.map(|every| Instant::now() + every);
                    }
                    () = shared.until(&shared.cancelled) => break Outcome::Cancelled,
                }
            }
        }
    };
    let settled = settlement(outcome, &config.delays);
    // A broker's settlement future can be large (a confirmed ack waits on a subscription of its own):
    // boxed, it is allocated once it is reached, instead of being copied along with every delivery's
    // future from its start.
    let result = match settled {
        Settlement::Ack => answered(Box::pin(acker.ack()), config.broker_timeout).await,
        Settlement::Term => answered(Box::pin(acker.term()), config.broker_timeout).await,
        Settlement::Nak(delay) => answered(Box::pin(acker.nak(delay)), config.broker_timeout).await,
    };
    match result {
        Ok(()) => listener.metrics.settled(Some(settled)),
        // The broker redelivers what it did not hear settled: at least once, never lost.
        Err(error) => {
            tracing::warn!(target: "tower_listener::source", listener = %listener.id, settlement = ?settled, error = %error, "settlement failed; the broker will redeliver the event")
        }
    }
}

/// `request`'s answer, or an error when it takes longer than `timeout` (a broker that went away may never
/// answer a request it had received).
async fn answered(
    request: impl std::future::Future<Output = Result<(), Error>>,
    timeout: Duration,
) -> Result<(), Error> {
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| {
            Err(Error::backend(
                "settling",
                format!("no answer within {timeout:?}"),
            ))
        })
}

async fn signal_progress<T>(listener: &ManagedListener<T>, acker: &impl Acker, timeout: Duration) {
    match answered(Box::pin(acker.progress()), timeout).await {
        Ok(()) => listener.metrics.settled(None),
        Err(error) => {
            tracing::warn!(target: "tower_listener::source", listener = %listener.id, error = %error, "progress signal failed")
        }
    }
}

/// An event's `in_flight` count, ended when this is dropped (however the event ends).
struct Counted<'a> {
    metrics: &'a crate::metrics::ListenerMetrics,
    shard: usize,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.exit(self.shard);
    }
}

impl<T: Send + Sync + 'static> ManagedListener<T> {
    /// Runs a delivered event through the stack, without the dead-letter step (a failure is stored here,
    /// with its origin, and a rejection is not a failure: it goes back to the broker).
    async fn run_delivery(&self, event: Event<T>, origin: Origin) -> Outcome {
        let span = tracing::debug_span!(
            target: "tower_listener::event",
            "event",
            listener = %self.id,
            event.id = event.id(),
            "event.type" = event.event_type(),
            delivery = origin.delivered,
        );
        let _counted = Counted {
            shard: self.metrics.event_started(),
            metrics: &self.metrics,
        };
        let started = clock::now();
        let (result, record) =
            WithAttempts::new(Lease::new(&*self.stack, event.clone()), &self.metrics)
                .instrument(span.clone())
                .await;
        let latency = clock::now().saturating_duration_since(started);
        let error = match result {
            Ok(()) => {
                self.metrics.event_succeeded(latency);
                return Outcome::Succeeded;
            }
            // Not an outcome of the event: it goes back to the broker (`counted` ends its in-flight count).
            Err(Error::CircuitOpen { retry_after }) => return Outcome::CircuitOpen { retry_after },
            Err(Error::Overloaded) => return Outcome::Overloaded,
            Err(error) => error,
        };
        self.metrics.event_failed(&error, latency);
        let record = record.unwrap_or_default();
        let reason = reason_for(&error, &record);
        let attempts = record.attempts.max(1);
        let mut letter = DeadLetter::new(event, &error, self.metrics.name(), attempts, reason);
        if let Some(first) = record.first_failure {
            letter.first_failure_at = first;
        }
        letter.origin = Some(origin);
        Box::pin(self.store(letter).instrument(span)).await
    }

    /// Dead-letters `event` without running it (it was delivered too many times).
    async fn store_letter(
        &self,
        event: Event<T>,
        error: ErrorRecord,
        attempts: u32,
        reason: DeadLetterReason,
        origin: Origin,
    ) -> Outcome {
        let mut letter = DeadLetter::new(event, error, self.metrics.name(), attempts, reason);
        letter.origin = Some(origin);
        self.metrics.event_failed_unrun(false);
        self.store(letter).await
    }

    /// Hands `letter` to the listener's sink: `DeadLettered` once the sink took it, `NotStored` when it
    /// refused, failed, panicked, or the capture filter declined the reason.
    async fn store(&self, letter: DeadLetter<Event<T>>) -> Outcome {
        let config = &self.dead_letters.config;
        let reason = letter.reason;
        let (Some(sink), true) = (
            &config.sink,
            captures(config.capture.as_ref(), reason, Some(&self.metrics)),
        ) else {
            tracing::warn!(target: "tower_listener::dead_letter", listener = %self.id, event.id = letter.request.id(), reason = reason.as_str(), "not captured by the dead-letter filter; the broker will redeliver the event");
            return Outcome::NotStored;
        };
        let attempts = letter.attempts;
        let error_kind = letter.error.kind.clone();
        let event_id = letter.request.id().to_owned();
        let sending = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.send(letter)));
        self.stored(sending, reason, attempts, &error_kind, Some(&event_id))
            .await
    }

    /// Keeps a payload that did not decode as a malformed letter.
    async fn store_malformed(&self, malformed: Malformed, origin: Origin) -> Outcome {
        let mut letter = MalformedLetter::new(malformed.raw, malformed.error, self.metrics.name());
        letter.origin = Some(origin);
        self.metrics.event_failed_unrun(true);
        let Some(sink) = &self.dead_letters.config.sink else {
            return Outcome::NotStored;
        };
        let sending =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.send_malformed(letter)));
        self.stored(sending, DeadLetterReason::Malformed, 0, "malformed", None)
            .await
    }

    /// Awaits a sink's answer (a panic in it is contained) and counts it.
    async fn stored(
        &self,
        sending: std::thread::Result<crate::dead_letter::SinkFuture>,
        reason: DeadLetterReason,
        attempts: u32,
        error_kind: &str,
        event_id: Option<&str>,
    ) -> Outcome {
        let result = match sending {
            Ok(sending) => match tokio::spawn(sending).await {
                Ok(result) => result.map_err(|e| (false, e.to_string())),
                Err(join) => Err((true, join.to_string())),
            },
            Err(_) => Err((true, "sink panicked".to_owned())),
        };
        match result {
            Ok(()) => {
                self.metrics.dead_lettered(reason);
                tracing::warn!(
                    target: "tower_listener::dead_letter",
                    listener = %self.id,
                    event.id = event_id,
                    reason = reason.as_str(),
                    attempts,
                    error = error_kind,
                    "event dead-lettered"
                );
                Outcome::DeadLettered
            }
            Err((panicked, error)) => {
                sink_failed(Some(&self.metrics), &self.id, panicked, &error);
                Outcome::NotStored
            }
        }
    }
}
