//! Counters, windowed attempt outcomes and latency percentiles of one listener, and the
//! [`MetricsLayer`] that records them.
//!
//! One [`ListenerMetrics`] is shared (as an `Arc`) by every layer of a listener's stack: the metrics layers
//! count events and attempts and record their latencies, the other layers report what only they see
//! (retries, rejections, timeouts, breaker trips, dead letters). Give a layer the metrics with its
//! `with_metrics` method. Counters are atomics; latencies go into sharded hdrhistograms
//! (see [`LatencySummary`]), so no lock is shared by all callers.
//!
//! Recording never fails and never panics: a latency past one hour saturates.

mod histogram;
mod in_flight;
mod layer;

pub use histogram::LatencySummary;
pub(crate) use layer::{
    clear_finished_attempt, lent_event_start, record_attempt, take_unrecorded_attempt,
    AttemptTimingLayer, Recording,
};
pub use layer::{MetricsFuture, MetricsLayer, MetricsService};

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::circuit::CircuitState;
use crate::clock;
use crate::window::SlidingWindow;
use histogram::LatencyHistogram;
pub(crate) use histogram::{shard_count, thread_shard};
pub(crate) use in_flight::InFlight;

/// How an attempt ended, as its metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Succeeded,
    Failed,
    /// Not in the health window.
    Permanent,
    TimedOut,
    Panicked,
}

impl AttemptOutcome {
    #[inline]
    pub(crate) fn of(result: Result<(), &crate::Error>) -> Self {
        match result {
            Ok(()) => AttemptOutcome::Succeeded,
            Err(crate::Error::Permanent(_)) => AttemptOutcome::Permanent,
            Err(crate::Error::Timeout { .. }) => AttemptOutcome::TimedOut,
            Err(crate::Error::Panicked { .. }) => AttemptOutcome::Panicked,
            Err(_) => AttemptOutcome::Failed,
        }
    }
}

/// The default length of the health window: 60 s.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(60);

/// The metrics of one listener (or of one stack of layers).
///
/// ```
/// use std::sync::Arc;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{Error, ListenerMetrics, MetricsLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let metrics = Arc::new(ListenerMetrics::new("orders"));
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::per_event(metrics.clone()))
///     .service(service_fn(|n: u32| async move {
///         if n % 2 == 0 { Ok(n) } else { Err(Error::handler(std::fmt::Error)) }
///     }));
/// for n in 0..4 {
///     let _ = svc.clone().oneshot(n).await;
/// }
/// let stats = metrics.snapshot();
/// assert_eq!((stats.events_processed, stats.events_succeeded, stats.events_failed), (4, 2, 2));
/// assert_eq!(stats.event_latency.count, 4);
/// # }
/// ```
pub struct ListenerMetrics {
    name: String,
    /// One block of counters per thread shard: a thread only writes its own cache line, a read sums them.
    counts: Box<[Counts]>,
    circuit_state: AtomicU8,
    health_window: Duration,
    attempt_window: SlidingWindow,
    attempt_latency: LatencyHistogram,
    event_latency: LatencyHistogram,
    /// Events of one attempt, recorded once: their latency is both the event's and the attempt's. The
    /// event and attempt latencies read it with their own histogram.
    solo_latency: LatencyHistogram,
    /// Rare events, not sharded: breaker transitions by (from, to) state, dead letters by reason.
    transitions: [[AtomicU64; 5]; 5],
    dead_letters_by_reason: [AtomicU64; REASONS],
    /// Events in flight (the manager also waits on it when it stops).
    pub(crate) in_flight: InFlight,
}

/// How many dead-letter reasons there are.
const REASONS: usize = crate::DeadLetterReason::ALL.len();

/// The position of `reason` in [`DeadLetterReason::ALL`](crate::DeadLetterReason::ALL).
fn reason_index(reason: crate::DeadLetterReason) -> usize {
    crate::DeadLetterReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

/// What rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    CircuitOpen,
    Overloaded,
}

/// The counters of one shard. `events_processed` and `attempts` are derived (succeeded + failed), so the
/// sums hold by construction and each outcome costs one atomic add.
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    /// Successes are not counted: every event that ran records its latency, so they are the event
    /// histogram's count less the failures that recorded one (one atomic less per event).
    events_failed: AtomicU64,
    /// Failures without a latency (never ran, or cancelled by a shutdown).
    events_failed_unrecorded: AtomicU64,
    permanent_failures: AtomicU64,
    events_retried: AtomicU64,
    attempt_failures: AtomicU64,
    dead_letter_events: AtomicU64,
    dead_letter_failures: AtomicU64,
    rejected_circuit_open: AtomicU64,
    rejected_overloaded: AtomicU64,
    timeouts: AtomicU64,
    circuit_trips: AtomicU64,
    panics: AtomicU64,
    redriven_succeeded: AtomicU64,
    redriven_failed: AtomicU64,
    source_acks: AtomicU64,
    source_terms: AtomicU64,
    source_naks: AtomicU64,
    source_progress: AtomicU64,
    redeliveries: AtomicU64,
}

/// A point-in-time copy of a [`ListenerMetrics`] (or, from the manager, the sum over listeners).
///
/// The counters are defined once and mean the same at listener and manager level.
/// `events_processed == events_succeeded + events_failed` holds for every snapshot (the first is derived
/// from the other two).
///
/// ```
/// use tower_listener::{Event, ListenerConfig, ListenerManager, ManagerConfig, listener_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(ManagerConfig::default())?;
/// manager.register(listener_fn("audit", |_e: Event| async { Ok::<_, std::io::Error>(()) }), ListenerConfig::default())?;
/// manager.start().await?;
/// manager.process("audit", Event::new("a-1", "audit.logged", serde_json::json!({}))).await?;
/// let stats = manager.stats();
/// assert_eq!((stats.events_processed, stats.events_succeeded, stats.attempts), (1, 1, 1));
/// // With the `serde` feature (on by default) a snapshot is a JSON document, for a status page or a log.
/// let json = serde_json::to_value(&stats).unwrap();
/// assert_eq!(json["events_succeeded"], 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Stats {
    /// Listeners registered (1 for a listener's own stats).
    pub registered_listeners: u64,
    /// Listeners accepting events (running).
    pub active_listeners: u64,
    /// Events whose outcome is final: one per event, whatever the number of attempts.
    pub events_processed: u64,
    /// Events that finally succeeded.
    pub events_succeeded: u64,
    /// Events that finally failed (whether or not they were dead-lettered); permanent failures included.
    pub events_failed: u64,
    /// Events that failed permanently ([`Error::Permanent`](crate::Error::Permanent)): not retried, not
    /// counted by the breaker nor in health. Also counted in `events_failed`.
    pub permanent_failures: u64,
    /// Retry attempts (attempts after the first).
    pub events_retried: u64,
    /// Attempts that reached the handler (first tries and retries).
    pub attempts: u64,
    /// Attempts that failed: handler errors, panics and timeouts.
    pub attempt_failures: u64,
    /// Events handed to a dead-letter sink that took them.
    pub dead_letter_events: u64,
    /// Dead letters a sink failed to take (it returned an error or panicked).
    pub dead_letter_failures: u64,
    /// Calls rejected by an open breaker or an overloaded limit (`rejected_circuit_open` +
    /// `rejected_overloaded`).
    pub rejected: u64,
    /// Calls rejected by an open (or half-open and full) breaker.
    pub rejected_circuit_open: u64,
    /// Calls rejected for lack of capacity (a limit in reject mode, a wait that ran out, a full queue).
    pub rejected_overloaded: u64,
    /// Attempts that ran past their timeout.
    pub timeouts: u64,
    /// Events being processed now.
    pub in_flight: u64,
    /// Breakers open (or forced open) now.
    pub circuit_breakers: u64,
    /// Times a breaker opened.
    pub circuit_trips: u64,
    /// Panics caught in user code: handlers, dead-letter sinks and capture filters, breaker hooks and
    /// classifiers, retry conditions. Each was contained (the process and the manager go on) and logged.
    pub panics: u64,
    /// Dead letters redriven that succeeded (and were removed from their store).
    pub redriven_succeeded: u64,
    /// Dead letters redriven that failed again (and were kept). A letter a redrive did not run because
    /// of a rejection is in neither count.
    pub redriven_failed: u64,
    /// Deliveries from a source acknowledged (succeeded).
    pub source_acks: u64,
    /// Deliveries from a source terminated (failed, and their dead letter stored).
    pub source_terms: u64,
    /// Deliveries from a source handed back for redelivery (rejected, cancelled by a stop, or failed
    /// without a stored dead letter).
    pub source_naks: u64,
    /// Progress signals sent for deliveries still running at half the broker's ack wait.
    pub source_progress: u64,
    /// Deliveries that were redeliveries (delivered before): at least once means some events are seen
    /// more than once.
    pub redeliveries: u64,
    /// Latency of whole events, retries and backoff included.
    pub event_latency: LatencySummary,
    /// Latency of single attempts.
    pub attempt_latency: LatencySummary,
}

impl Stats {
    /// Adds `other` to `self`, counter by counter (latency percentiles: see
    /// [`LatencySummary::merge_upper_bound`]).
    pub fn add(&mut self, other: &Stats) {
        self.registered_listeners += other.registered_listeners;
        self.active_listeners += other.active_listeners;
        self.events_processed += other.events_processed;
        self.events_succeeded += other.events_succeeded;
        self.events_failed += other.events_failed;
        self.permanent_failures += other.permanent_failures;
        self.events_retried += other.events_retried;
        self.attempts += other.attempts;
        self.attempt_failures += other.attempt_failures;
        self.dead_letter_events += other.dead_letter_events;
        self.dead_letter_failures += other.dead_letter_failures;
        self.rejected += other.rejected;
        self.rejected_circuit_open += other.rejected_circuit_open;
        self.rejected_overloaded += other.rejected_overloaded;
        self.timeouts += other.timeouts;
        self.in_flight += other.in_flight;
        self.circuit_breakers += other.circuit_breakers;
        self.circuit_trips += other.circuit_trips;
        self.panics += other.panics;
        self.redriven_succeeded += other.redriven_succeeded;
        self.redriven_failed += other.redriven_failed;
        self.source_acks += other.source_acks;
        self.source_terms += other.source_terms;
        self.source_naks += other.source_naks;
        self.source_progress += other.source_progress;
        self.redeliveries += other.redeliveries;
        self.event_latency = self.event_latency.merge_upper_bound(other.event_latency);
        self.attempt_latency = self
            .attempt_latency
            .merge_upper_bound(other.attempt_latency);
    }
}

/// Attempt outcomes over the health window.
///
/// ```
/// use tower_listener::{CircuitState, HealthStatus, HealthThresholds};
/// use tower_listener::metrics::WindowedAttempts;
///
/// let attempts = WindowedAttempts { succeeded: 85, failed: 15 };
/// assert_eq!(attempts.failure_ratio(), 0.15);
/// let health = HealthThresholds::default().listener_health(CircuitState::Closed, attempts);
/// assert_eq!(health, HealthStatus::Degraded);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowedAttempts {
    /// Attempts that succeeded inside the window.
    pub succeeded: u64,
    /// Attempts that failed inside the window (handler errors, panics, timeouts).
    pub failed: u64,
}

impl WindowedAttempts {
    /// `failed / (succeeded + failed)`, 0 when there were no attempts.
    pub fn failure_ratio(&self) -> f64 {
        match self.succeeded + self.failed {
            0 => 0.0,
            total => self.failed as f64 / total as f64,
        }
    }
}

// Relaxed everywhere below: each counter is an independent statistic; no other memory is published
// through it, and a reader only needs each value to be eventually exact.
impl ListenerMetrics {
    /// Metrics named `name` with the default 60 s health window.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_health_window(name, DEFAULT_HEALTH_WINDOW)
    }

    /// Metrics named `name` whose windowed attempt counts cover `health_window`.
    pub fn with_health_window(name: impl Into<String>, health_window: Duration) -> Self {
        ListenerMetrics {
            name: name.into(),
            counts: (0..shard_count()).map(|_| Counts::default()).collect(),
            circuit_state: AtomicU8::new(CircuitState::Closed as u8),
            health_window,
            attempt_window: SlidingWindow::sharded(health_window, clock::now()),
            attempt_latency: LatencyHistogram::new(),
            event_latency: LatencyHistogram::new(),
            solo_latency: LatencyHistogram::new(),
            transitions: Default::default(),
            dead_letters_by_reason: Default::default(),
            in_flight: InFlight::default(),
        }
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length of the health window.
    pub fn health_window(&self) -> Duration {
        self.health_window
    }

    /// The counters and latency percentiles now (`registered_listeners` = 1; `active_listeners` = 0, the
    /// manager fills it in).
    pub fn snapshot(&self) -> Stats {
        let state = self.circuit_state();
        // The histograms first, then the failures: a failure records its latency before it is counted.
        let event_latency =
            LatencyHistogram::summary_of(&[&self.event_latency, &self.solo_latency]);
        let attempt_latency =
            LatencyHistogram::summary_of(&[&self.attempt_latency, &self.solo_latency]);
        let events_failed = self.sum(|c| &c.events_failed);
        let recorded_failures =
            events_failed.saturating_sub(self.sum(|c| &c.events_failed_unrecorded));
        let events_succeeded = event_latency.count.saturating_sub(recorded_failures);
        let attempt_failures = self.sum(|c| &c.attempt_failures);
        let rejected_circuit_open = self.sum(|c| &c.rejected_circuit_open);
        let rejected_overloaded = self.sum(|c| &c.rejected_overloaded);
        Stats {
            registered_listeners: 1,
            active_listeners: 0,
            events_processed: events_succeeded + events_failed,
            events_succeeded,
            events_failed,
            permanent_failures: self.sum(|c| &c.permanent_failures),
            events_retried: self.sum(|c| &c.events_retried),
            attempts: attempt_latency.count.max(attempt_failures),
            attempt_failures,
            dead_letter_events: self.sum(|c| &c.dead_letter_events),
            dead_letter_failures: self.sum(|c| &c.dead_letter_failures),
            rejected: rejected_circuit_open + rejected_overloaded,
            rejected_circuit_open,
            rejected_overloaded,
            timeouts: self.sum(|c| &c.timeouts),
            in_flight: self.in_flight.count() as u64,
            circuit_breakers: u64::from(state.is_open()),
            circuit_trips: self.sum(|c| &c.circuit_trips),
            panics: self.sum(|c| &c.panics),
            redriven_succeeded: self.sum(|c| &c.redriven_succeeded),
            redriven_failed: self.sum(|c| &c.redriven_failed),
            source_acks: self.sum(|c| &c.source_acks),
            source_terms: self.sum(|c| &c.source_terms),
            source_naks: self.sum(|c| &c.source_naks),
            source_progress: self.sum(|c| &c.source_progress),
            redeliveries: self.sum(|c| &c.redeliveries),
            event_latency,
            attempt_latency,
        }
    }

    /// Event latencies in coarse buckets (nanosecond upper bounds), for an exporter.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn event_latency_coarse(&self, bounds: &[u64]) -> histogram::Coarse {
        LatencyHistogram::coarse_of(&[&self.event_latency, &self.solo_latency], bounds)
    }

    /// Attempt latencies in coarse buckets (nanosecond upper bounds), for an exporter.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn attempt_latency_coarse(&self, bounds: &[u64]) -> histogram::Coarse {
        LatencyHistogram::coarse_of(&[&self.attempt_latency, &self.solo_latency], bounds)
    }

    /// Attempt outcomes inside the health window ending now.
    pub fn windowed_attempts(&self) -> WindowedAttempts {
        let counts = self.attempt_window.counts(clock::now());
        WindowedAttempts {
            succeeded: counts.successes,
            failed: counts.failures,
        }
    }

    /// The state of the listener's breaker as last reported by it ([`CircuitState::Closed`] when there is
    /// none).
    pub fn circuit_state(&self) -> CircuitState {
        CircuitState::from_u8(self.circuit_state.load(Ordering::Relaxed))
    }

    /// This thread's counters.
    #[inline]
    fn mine(&self) -> &Counts {
        &self.counts[thread_shard(self.counts.len())]
    }

    /// A counter summed over the shards.
    fn sum(&self, counter: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        self.counts.iter().fold(0u64, |sum, c| {
            sum.wrapping_add(counter(c).load(Ordering::Relaxed))
        })
    }

    /// An event started: counted in flight on this thread's shard, returned for
    /// [`InFlight::exit`].
    #[inline]
    pub(crate) fn event_started(&self) -> usize {
        self.in_flight.enter()
    }

    /// An event succeeded (counted by its latency alone).
    #[inline]
    pub(crate) fn event_succeeded(&self, latency: Duration) {
        self.event_latency.record(latency);
    }

    /// An event failed with `error` (out of line: the success path stays small).
    #[inline(never)]
    pub(crate) fn event_failed(&self, error: &crate::Error, latency: Duration) {
        self.event_latency.record(latency);
        self.event_failure(error);
    }

    /// The failure counts of an event that failed with `error`.
    fn event_failure(&self, error: &crate::Error) {
        let counts = self.mine();
        counts.events_failed.fetch_add(1, Ordering::Relaxed);
        if error.is_permanent() {
            counts.permanent_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An event failed without running (a malformed payload, `permanent`, or one redelivered too often).
    pub(crate) fn event_failed_unrun(&self, permanent: bool) {
        let counts = self.mine();
        counts.events_failed.fetch_add(1, Ordering::Relaxed);
        counts
            .events_failed_unrecorded
            .fetch_add(1, Ordering::Relaxed);
        if permanent {
            counts.permanent_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An event was cancelled by a manager shutdown: its outcome is final (failed, dead-lettered with reason
    /// `Shutdown`).
    pub(crate) fn event_cancelled(&self) {
        let counts = self.mine();
        counts.events_failed.fetch_add(1, Ordering::Relaxed);
        counts
            .events_failed_unrecorded
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt ended at `now`, `latency` after it started, with `outcome`: its latency, and its
    /// outcome in the counters and the health window.
    #[inline]
    pub(crate) fn attempt_ended(&self, outcome: AttemptOutcome, latency: Duration, now: Instant) {
        self.attempt_latency.record(latency);
        self.attempt_outcome(outcome, now);
    }

    /// The only attempt of an event ended with `outcome`, and with it the event, with `result`: one
    /// latency for both, recorded once.
    #[inline]
    pub(crate) fn solo_ended(
        &self,
        outcome: AttemptOutcome,
        result: Result<(), &crate::Error>,
        latency: Duration,
        now: Instant,
    ) {
        self.solo_latency.record(latency);
        self.attempt_outcome(outcome, now);
        if let Err(error) = result {
            self.event_failure(error);
        }
    }

    /// An attempt's outcome at `now`: a success only in the health window (every attempt records its
    /// latency, so attempts are counted by the histograms); a failure counted, and in the window unless
    /// it is permanent (that says nothing about the listener's dependencies); a panic and a timeout
    /// counted as such.
    #[inline]
    fn attempt_outcome(&self, outcome: AttemptOutcome, now: Instant) {
        match outcome {
            AttemptOutcome::Succeeded => self.attempt_window.record(now, true),
            failed => self.attempt_failure(failed, now),
        }
    }

    /// Out of line: the success path stays small.
    #[inline(never)]
    fn attempt_failure(&self, outcome: AttemptOutcome, now: Instant) {
        let counts = self.mine();
        counts.attempt_failures.fetch_add(1, Ordering::Relaxed);
        match outcome {
            AttemptOutcome::Permanent => return,
            AttemptOutcome::Panicked => self.panicked(),
            AttemptOutcome::TimedOut => {
                counts.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            AttemptOutcome::Succeeded | AttemptOutcome::Failed => {}
        }
        self.attempt_window.record(now, false);
    }

    /// A panic in user code was caught.
    pub(crate) fn panicked(&self) {
        self.mine().panics.fetch_add(1, Ordering::Relaxed);
    }

    /// A redriven dead letter ran to an outcome.
    pub(crate) fn redriven(&self, success: bool) {
        let counts = self.mine();
        let counter = if success {
            &counts.redriven_succeeded
        } else {
            &counts.redriven_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery from a source was settled (`Some`), or its progress signalled (`None`).
    pub(crate) fn settled(&self, settlement: Option<crate::source::Settlement>) {
        use crate::source::Settlement;
        let counts = self.mine();
        let counter = match settlement {
            Some(Settlement::Ack) => &counts.source_acks,
            Some(Settlement::Term) => &counts.source_terms,
            Some(Settlement::Nak(_)) => &counts.source_naks,
            None => &counts.source_progress,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery from a source was a redelivery.
    pub(crate) fn redelivered(&self) {
        self.mine().redeliveries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.mine().events_retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, cause: Rejection) {
        let counts = self.mine();
        let counter = match cause {
            Rejection::CircuitOpen => &counts.rejected_circuit_open,
            Rejection::Overloaded => &counts.rejected_overloaded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A sink took a letter (rare: one atomic in the shard, one in the per-reason count).
    pub(crate) fn dead_lettered(&self, reason: crate::DeadLetterReason) {
        self.mine()
            .dead_letter_events
            .fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.dead_letters_by_reason.get(reason_index(reason)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Dead letters taken by a sink, by reason (in the order of [`DeadLetterReason::ALL`](crate::DeadLetterReason::ALL)).
    pub fn dead_letters_by_reason(&self) -> Vec<(crate::DeadLetterReason, u64)> {
        crate::DeadLetterReason::ALL
            .iter()
            .zip(self.dead_letters_by_reason.iter())
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .collect()
    }

    /// Breaker transitions counted so far, by `(from, to)` (only the pairs that happened).
    pub fn circuit_transitions(&self) -> Vec<(CircuitState, CircuitState, u64)> {
        let mut transitions = Vec::new();
        for (from, row) in self.transitions.iter().enumerate() {
            for (to, count) in row.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    transitions.push((
                        CircuitState::from_u8(from as u8),
                        CircuitState::from_u8(to as u8),
                        count,
                    ));
                }
            }
        }
        transitions
    }

    pub(crate) fn dead_letter_failed(&self) {
        self.mine()
            .dead_letter_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records the breaker's initial state (not a trip).
    pub(crate) fn circuit_changed_silently(&self, state: CircuitState) {
        self.circuit_state.store(state as u8, Ordering::Relaxed);
    }

    /// Records a breaker transition; opening counts as a trip.
    pub(crate) fn circuit_changed(&self, from: CircuitState, to: CircuitState) {
        self.circuit_state.store(to as u8, Ordering::Relaxed);
        self.transitions[from as usize][to as usize].fetch_add(1, Ordering::Relaxed);
        if to == CircuitState::Open || to == CircuitState::ForcedOpen {
            self.mine().circuit_trips.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerMetrics")
            .field("name", &self.name)
            .field("health_window", &self.health_window)
            .field("circuit_state", &self.circuit_state())
            .finish_non_exhaustive()
    }
}
