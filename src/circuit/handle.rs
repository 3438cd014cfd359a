//! The shared breaker behind every service of one layer, and [`CircuitBreakerHandle`], its manual control.
//!
//! The state machine ([`super::state`]) lives behind a `std::sync::Mutex` that is taken only on the paths
//! that can change state (a failure, a half-open probe, an open breaker whose timeout passed, manual
//! control). The common paths read an atomic mirror of `(generation, state)` instead:
//! - closed, success, count mode: no lock and no window write;
//! - closed, failure: one window write and read, and the lock only if the threshold is reached;
//! - open, before the timeout: one atomic read and one clock read; no lock, no allocation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{CircuitConfig, StateChange};
use super::state::{Admission, CallOutcome, CircuitState, StateMachine, Transition};
use crate::metrics::ListenerMetrics;
use crate::sync::{AtomicU64, Mutex, MutexGuard};
use crate::window::SlidingWindow;
use crate::{clock, Error};

/// What a caller needs to report the outcome of an admitted call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    pub(crate) generation: u64,
    pub(crate) probe: bool,
}

pub(crate) struct Breaker {
    pub(crate) name: Arc<str>,
    config: CircuitConfig,
    machine: Mutex<StateMachine>,
    /// `generation << 3 | state`, written under the lock, read without it.
    snapshot: AtomicU64,
    /// While open: nanoseconds after `origin` when the breaker admits a probe.
    open_until: AtomicU64,
    origin: Instant,
    window: SlidingWindow,
    metrics: Option<Arc<ListenerMetrics>>,
    /// std's mutex even under loom: nothing inside it is a loom operation.
    rng: std::sync::Mutex<fastrand::Rng>,
}

fn pack(generation: u64, state: CircuitState) -> u64 {
    generation << 3 | state as u64
}

fn unpack(snapshot: u64) -> (u64, CircuitState) {
    (snapshot >> 3, CircuitState::from_u8((snapshot & 7) as u8))
}

impl Breaker {
    pub(crate) fn new(
        config: CircuitConfig,
        name: Arc<str>,
        metrics: Option<Arc<ListenerMetrics>>,
    ) -> Self {
        let origin = clock::now();
        let machine = StateMachine::new(config.enabled);
        let state = machine.state();
        if let Some(metrics) = &metrics {
            metrics.circuit_changed_silently(state);
        }
        Breaker {
            name,
            window: SlidingWindow::new(config.sliding_window, origin),
            config,
            snapshot: AtomicU64::new(pack(0, state)),
            machine: Mutex::new(machine),
            open_until: AtomicU64::new(0),
            origin,
            metrics,
            rng: std::sync::Mutex::new(fastrand::Rng::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StateMachine> {
        // The machine's methods do not panic; a poisoned lock can only come from a panic elsewhere while
        // holding it, and the machine's state is still consistent then.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Now, on the breaker's scale (nanoseconds since it was made).
    pub(crate) fn now(&self) -> u64 {
        self.nanos(clock::now())
    }

    /// The time since `started`, a reading of [`now`](Self::now).
    pub(crate) fn since(&self, started: u64) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(started))
    }

    #[inline]
    pub(crate) fn state(&self) -> CircuitState {
        // Acquire pairs with the Release store in `apply`, so a reader that sees a state also sees the
        // open_until written before it.
        unpack(self.snapshot.load(Ordering::Acquire)).1
    }

    /// True while calls would be rejected without reaching the inner service (open and not yet due for a
    /// probe, or forced open). Reads only atomics and, when open, the clock.
    /// While calls are rejected: how long until a probe is admitted (`Duration::MAX` when forced open).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self.state() {
            CircuitState::ForcedOpen => Some(Duration::MAX),
            CircuitState::Open => {
                let (now, until) = (self.now(), self.open_until.load(Ordering::Acquire));
                (now < until).then(|| Duration::from_nanos(until - now))
            }
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn rejects_now(&self) -> bool {
        match self.state() {
            CircuitState::ForcedOpen => true,
            CircuitState::Open => self.now() < self.open_until.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Decides whether a call runs. The closed breaker's answer is one atomic load, inlined into the
    /// caller; the other states take the out-of-line path.
    #[inline]
    pub(crate) fn admit(&self) -> Result<Ticket, Error> {
        let (generation, state) = unpack(self.snapshot.load(Ordering::Acquire));
        match state {
            CircuitState::Closed | CircuitState::Disabled => Ok(Ticket {
                generation,
                probe: false,
            }),
            state => self.admit_unless_closed(generation, state),
        }
    }

    #[inline(never)]
    fn admit_unless_closed(&self, generation: u64, state: CircuitState) -> Result<Ticket, Error> {
        match state {
            CircuitState::Closed | CircuitState::Disabled => {
                return Ok(Ticket {
                    generation,
                    probe: false,
                })
            }
            CircuitState::ForcedOpen => return Err(self.reject(None)),
            CircuitState::Open => {
                let now = self.now();
                let until = self.open_until.load(Ordering::Acquire);
                if now < until {
                    return Err(self.reject(Some(Duration::from_nanos(until - now))));
                }
            }
            CircuitState::HalfOpen => {}
        }
        let now = clock::now();
        let (admission, transition) = {
            let mut machine = self.lock();
            let (admission, transition) = machine.admit(now, self.config.half_open_max_calls);
            if let Some(t) = transition {
                self.apply(&machine, t);
            }
            (admission, transition)
        };
        if let Some(t) = transition {
            self.notify(t);
        }
        match admission {
            Admission::Call { generation } => Ok(Ticket {
                generation,
                probe: false,
            }),
            Admission::Probe { generation } => Ok(Ticket {
                generation,
                probe: true,
            }),
            Admission::Reject { retry_after } => Err(self.reject(retry_after)),
        }
    }

    fn reject(&self, retry_after: Option<Duration>) -> Error {
        if let Some(metrics) = &self.metrics {
            metrics.rejected(crate::metrics::Rejection::CircuitOpen);
        }
        Error::CircuitOpen { retry_after }
    }

    /// Whether a success that took `elapsed` counts as a failure.
    pub(crate) fn is_slow(&self, elapsed: Duration) -> bool {
        self.config
            .slow_call_threshold
            .is_some_and(|limit| elapsed > limit)
    }

    /// How a successful `response` counts (the response classifier's verdict; a panicking classifier
    /// counts it as a failure).
    #[inline]
    pub(crate) fn classify_response(&self, response: &dyn std::any::Any) -> CallOutcome {
        match &self.config.response_classifier {
            None => CallOutcome::Success,
            Some(classify) => self.classified("response classifier", || classify(response)),
        }
    }

    #[inline]
    pub(crate) fn measures_latency(&self) -> bool {
        self.config.slow_call_threshold.is_some()
    }

    /// How `error` counts: a permanent error is ignored whatever the classifier says.
    pub(crate) fn classify(&self, error: &Error) -> CallOutcome {
        if error.is_permanent() {
            return CallOutcome::Ignored;
        }
        match &self.config.classifier {
            Some(classify) => self.classified("classifier", || classify(error)),
            None => CircuitConfig::default_classifier(error),
        }
    }

    /// Runs a user's classifier; one that panics is counted and logged, and its call counts as a failure.
    fn classified(&self, which: &str, classify: impl FnOnce() -> CallOutcome) -> CallOutcome {
        catch_unwind(AssertUnwindSafe(classify)).unwrap_or_else(|_| {
            self.user_code_panicked();
            tracing::error!(target: "tower_listener::circuit", breaker = %self.name, "circuit breaker {which} panicked; counting a failure");
            CallOutcome::Failure
        })
    }

    /// Reports the outcome of an admitted call. Inlined for its usual answer: a success in count mode
    /// counts nothing.
    #[inline]
    pub(crate) fn record(&self, ticket: Ticket, outcome: CallOutcome) {
        if !ticket.probe
            && outcome == CallOutcome::Success
            && self.config.failure_rate_threshold.is_none()
        {
            return;
        }
        self.record_counted(ticket, outcome);
    }

    #[inline(never)]
    fn record_counted(&self, ticket: Ticket, outcome: CallOutcome) {
        if ticket.probe {
            let now = clock::now();
            let transition = {
                let mut machine = self.lock();
                let open_for = self.open_for();
                let t = machine.probe_finished(
                    ticket.generation,
                    outcome,
                    now,
                    self.config.success_threshold,
                    open_for,
                );
                if let Some(t) = t {
                    self.apply(&machine, t);
                }
                t
            };
            if let Some(t) = transition {
                self.notify(t);
            }
            return;
        }
        let rate_mode = self.config.failure_rate_threshold.is_some();
        let counts_success = rate_mode && outcome == CallOutcome::Success;
        if outcome != CallOutcome::Failure && !counts_success {
            return;
        }
        let (generation, state) = unpack(self.snapshot.load(Ordering::Acquire));
        if generation != ticket.generation || state != CircuitState::Closed {
            return; // started before a state change: its result belongs to another period
        }
        let now = clock::now();
        self.window.record(now, outcome == CallOutcome::Success);
        if outcome != CallOutcome::Failure {
            return;
        }
        let counts = self.window.counts(now);
        let trip = match self.config.failure_rate_threshold {
            Some(rate) => {
                counts.total() >= u64::from(self.config.minimum_calls)
                    && counts.failure_ratio() >= rate
            }
            None => counts.failures >= u64::from(self.config.failure_threshold),
        };
        if !trip {
            return;
        }
        let transition = {
            let mut machine = self.lock();
            let t = machine.trip(ticket.generation, now, self.open_for());
            if let Some(t) = t {
                self.apply(&machine, t);
            }
            t
        };
        if let Some(t) = transition {
            self.notify(t);
        }
    }

    /// The length of the next open period: the timeout plus the optional jitter.
    fn open_for(&self) -> Duration {
        match self.config.open_jitter {
            Some(jitter) if !jitter.is_zero() => {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                let extra = jitter.mul_f64(rng.f64());
                self.config.timeout + extra
            }
            _ => self.config.timeout,
        }
    }

    /// Publishes a transition made on `machine` (called with the lock held).
    fn apply(&self, machine: &StateMachine, t: Transition) {
        if let Some(until) = machine.open_until() {
            self.open_until.store(self.nanos(until), Ordering::Release);
        }
        if t.to == CircuitState::Closed {
            self.window.clear();
        }
        // Release: publishes open_until and the cleared window with the new state.
        self.snapshot
            .store(pack(machine.generation(), t.to), Ordering::Release);
        if let Some(metrics) = &self.metrics {
            metrics.circuit_changed(t.from, t.to);
        }
    }

    /// Logs a transition and calls the hook (without the lock held).
    fn notify(&self, t: Transition) {
        if t.to.is_open() {
            tracing::warn!(target: "tower_listener::circuit", breaker = %self.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker state changed");
        } else {
            tracing::info!(target: "tower_listener::circuit", breaker = %self.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker state changed");
        }
        if let Some(hook) = &self.config.on_state_change {
            let change = StateChange {
                name: self.name.clone(),
                from: t.from,
                to: t.to,
            };
            if catch_unwind(AssertUnwindSafe(|| hook(&change))).is_err() {
                self.user_code_panicked();
                tracing::error!(target: "tower_listener::circuit", breaker = %self.name, "on_state_change hook panicked");
            }
        }
    }

    fn user_code_panicked(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.panicked();
        }
    }

    fn force(&self, to: CircuitState) {
        let transition = {
            let mut machine = self.lock();
            let t = machine.force(to);
            if let Some(t) = t {
                self.apply(&machine, t);
            }
            t
        };
        if let Some(t) = transition {
            self.notify(t);
        }
    }
}

/// Manual control and inspection of one circuit breaker, shared with every service of its layer.
///
/// Get it from [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle) (or from the manager).
/// Reading the state never changes it.
///
/// ```
/// use tower_listener::{CircuitBreakerLayer, CircuitConfig, CircuitState};
///
/// let layer = CircuitBreakerLayer::new(CircuitConfig::default()).unwrap();
/// let handle = layer.handle();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// handle.force_open();
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.force_closed();
/// assert_eq!(handle.state(), CircuitState::Disabled);
/// handle.reset();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    /// The current state. Never changes it: an open breaker whose timeout has passed still reads `Open`
    /// until a call arrives and is admitted as a probe.
    pub fn state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// While the breaker rejects calls: how long until it admits a probe (`Duration::MAX` when forced
    /// open, which only [`reset`](Self::reset) or [`force_closed`](Self::force_closed) ends). `None` while
    /// it admits calls: closed, half-open, disabled, or open with its timeout passed (the next call is a
    /// probe). Reading it never changes the breaker.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_listener::{CircuitBreakerLayer, CircuitConfig};
    ///
    /// let layer = CircuitBreakerLayer::new(CircuitConfig::default())?;
    /// let breaker = layer.handle();
    /// assert_eq!(breaker.retry_after(), None);
    /// breaker.force_open();
    /// assert_eq!(breaker.retry_after(), Some(Duration::MAX));
    /// # Ok::<_, tower_listener::Error>(())
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.breaker.retry_after()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.breaker.name
    }

    /// Opens the breaker until [`force_closed`](Self::force_closed) or [`reset`](Self::reset): every call is
    /// rejected with [`Error::CircuitOpen`].
    pub fn force_open(&self) {
        self.breaker.force(CircuitState::ForcedOpen);
    }

    /// Disables the breaker until [`force_open`](Self::force_open) or [`reset`](Self::reset): every call
    /// passes and nothing is counted.
    pub fn force_closed(&self) {
        self.breaker.force(CircuitState::Disabled);
    }

    /// Closes the breaker and clears its window (also ends a forced state).
    pub fn reset(&self) {
        self.breaker.force(CircuitState::Closed);
    }
}

impl std::fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.breaker.name)
            .field("state", &self.state())
            .finish()
    }
}
