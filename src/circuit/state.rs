//! The breaker's state machine, as a plain struct: no tokio, no tower, no atomics. Time comes in as
//! [`Instant`] arguments, so it is tested (and model-checked) without a runtime. The service keeps it
//! behind a mutex and mirrors its state into an atomic for the lock-free fast path.

use std::fmt;
use std::time::{Duration, Instant};

/// The state of a circuit breaker.
///
/// ```
/// use tower_listener::{CircuitBreakerLayer, CircuitConfig, CircuitState};
///
/// let breaker = CircuitBreakerLayer::new(CircuitConfig::default())?;
/// let handle = breaker.handle();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// handle.force_open();
/// assert!(handle.state().is_open());
/// assert_eq!(handle.state().to_string(), "forced-open");
/// # Ok::<_, tower_listener::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls pass; failures are counted in the sliding window.
    Closed = 0,
    /// Calls are rejected until the open timeout has passed.
    Open = 1,
    /// A limited number of probe calls pass; their outcome closes or reopens the breaker.
    HalfOpen = 2,
    /// Forced open by hand: every call is rejected until `force_closed` or `reset`.
    ForcedOpen = 3,
    /// Disabled (configured off, or forced closed by hand): every call passes and nothing is counted.
    Disabled = 4,
}

impl CircuitState {
    /// True for [`Open`](CircuitState::Open) and [`ForcedOpen`](CircuitState::ForcedOpen).
    pub fn is_open(self) -> bool {
        matches!(self, CircuitState::Open | CircuitState::ForcedOpen)
    }

    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            3 => CircuitState::ForcedOpen,
            4 => CircuitState::Disabled,
            _ => CircuitState::Closed,
        }
    }

    /// The name used in logs: "closed", "open", "half-open", "forced-open", "disabled".
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
            CircuitState::ForcedOpen => "forced-open",
            CircuitState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the machine decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Run it as a normal call of generation `generation`.
    Call { generation: u64 },
    /// Run it as a half-open probe of generation `generation`; it holds a probe slot until it finishes.
    Probe { generation: u64 },
    /// Reject it.
    Reject { retry_after: Option<Duration> },
}

/// How a finished call counts, as a [classifier](crate::CircuitConfig::classifier) decides.
///
/// ```
/// use tower_listener::{CallOutcome, CircuitConfig, Error};
///
/// // A timeout says the dependency is slow, but we retry it elsewhere: do not count it against it.
/// let config = CircuitConfig::default().with_classifier(|error: &Error| match error {
///     Error::Timeout { .. } => CallOutcome::Ignored,
///     other => CircuitConfig::default_classifier(other),
/// });
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallOutcome {
    /// A success.
    Success,
    /// A failure: counted in the window, reopens a half-open breaker.
    Failure,
    /// Neither (a rejection by an inner layer, a shutdown): a probe gives its slot back.
    Ignored,
}

/// A state change the machine made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
}

#[derive(Debug, Clone)]
pub(crate) struct StateMachine {
    state: CircuitState,
    /// Bumped on every transition; a result carrying an older generation is ignored.
    generation: u64,
    open_until: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl StateMachine {
    pub(crate) fn new(enabled: bool) -> Self {
        StateMachine {
            state: if enabled {
                CircuitState::Closed
            } else {
                CircuitState::Disabled
            },
            generation: 0,
            open_until: None,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    #[cfg(test)]
    pub(crate) fn probes_in_flight(&self) -> u32 {
        self.probes_in_flight
    }

    fn go(&mut self, to: CircuitState) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        if to != CircuitState::Open {
            self.open_until = None;
        }
        Transition { from, to }
    }

    /// Decides whether a call at `now` runs. The first call after the open timeout moves the breaker to
    /// half-open and is admitted as its first probe.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        half_open_max_calls: u32,
    ) -> (Admission, Option<Transition>) {
        match self.state {
            CircuitState::Closed | CircuitState::Disabled => (
                Admission::Call {
                    generation: self.generation,
                },
                None,
            ),
            CircuitState::ForcedOpen => (Admission::Reject { retry_after: None }, None),
            CircuitState::Open => match self.open_until {
                Some(until) if now < until => (
                    Admission::Reject {
                        retry_after: Some(until - now),
                    },
                    None,
                ),
                _ => {
                    let t = self.go(CircuitState::HalfOpen);
                    self.probes_in_flight = 1;
                    (
                        Admission::Probe {
                            generation: self.generation,
                        },
                        Some(t),
                    )
                }
            },
            CircuitState::HalfOpen => {
                if self.probes_in_flight < half_open_max_calls {
                    self.probes_in_flight += 1;
                    (
                        Admission::Probe {
                            generation: self.generation,
                        },
                        None,
                    )
                } else {
                    (Admission::Reject { retry_after: None }, None)
                }
            }
        }
    }

    /// Opens a closed breaker whose window crossed its threshold, if `generation` is still current.
    pub(crate) fn trip(
        &mut self,
        generation: u64,
        now: Instant,
        open_for: Duration,
    ) -> Option<Transition> {
        if generation != self.generation || self.state != CircuitState::Closed {
            return None;
        }
        let t = self.go(CircuitState::Open);
        self.open_until = Some(now.checked_add(open_for).unwrap_or(now));
        Some(t)
    }

    /// A half-open probe of `generation` finished with `outcome` (or was cancelled: `Ignored`).
    pub(crate) fn probe_finished(
        &mut self,
        generation: u64,
        outcome: CallOutcome,
        now: Instant,
        success_threshold: u32,
        open_for: Duration,
    ) -> Option<Transition> {
        if generation != self.generation || self.state != CircuitState::HalfOpen {
            return None;
        }
        self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        match outcome {
            CallOutcome::Ignored => None,
            CallOutcome::Success => {
                self.probe_successes += 1;
                if self.probe_successes >= success_threshold {
                    Some(self.go(CircuitState::Closed))
                } else {
                    None
                }
            }
            CallOutcome::Failure => {
                let t = self.go(CircuitState::Open);
                self.open_until = Some(now.checked_add(open_for).unwrap_or(now));
                Some(t)
            }
        }
    }

    /// Moves to `to` by hand (force open, force closed, reset). No transition when already there, except
    /// a reset of a closed breaker, which still starts a new generation (its window is cleared).
    pub(crate) fn force(&mut self, to: CircuitState) -> Option<Transition> {
        if self.state == to && to != CircuitState::Closed {
            return None;
        }
        Some(self.go(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    /// A breaker tripped open at `t0` for [`OPEN_FOR`].
    fn opened_at(t0: Instant) -> StateMachine {
        let mut m = StateMachine::new(true);
        let g = m.generation();
        m.trip(g, t0, OPEN_FOR).unwrap();
        m
    }

    #[test]
    fn the_call_after_the_timeout_is_admitted_as_a_probe() {
        let t0 = Instant::now();
        let mut m = StateMachine::new(true);
        let g = m.generation();
        assert!(m.trip(g, t0, OPEN_FOR).is_some());
        let (a, _) = m.admit(t0 + Duration::from_secs(29), 1);
        assert_eq!(
            a,
            Admission::Reject {
                retry_after: Some(Duration::from_secs(1))
            }
        );
        let (a, t) = m.admit(t0 + OPEN_FOR, 1);
        assert!(matches!(a, Admission::Probe { .. }));
        assert_eq!(t.map(|t| t.to), Some(CircuitState::HalfOpen));
        let (a, _) = m.admit(t0 + OPEN_FOR, 1);
        assert_eq!(a, Admission::Reject { retry_after: None });
    }

    #[test]
    fn a_trip_decided_before_a_reset_is_ignored() {
        let t0 = Instant::now();
        let mut m = StateMachine::new(true);
        let before_reset = m.generation();
        // A reset of a closed breaker starts a new generation: a window crossed before it is void.
        assert!(m.force(CircuitState::Closed).is_some());
        assert_eq!(m.trip(before_reset, t0, OPEN_FOR), None);
        assert_eq!(m.state(), CircuitState::Closed);
        assert_eq!(m.open_until(), None);
        // The current generation still trips.
        let current = m.generation();
        let t = m.trip(current, t0, OPEN_FOR).unwrap();
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Open));
        // An open breaker is not tripped again, not even by its own generation: its timeout stands.
        let open = m.generation();
        assert_eq!(m.trip(open, t0 + Duration::from_secs(5), OPEN_FOR), None);
        assert_eq!(m.generation(), open);
        assert_eq!(m.open_until(), Some(t0 + OPEN_FOR));
    }

    #[test]
    fn retry_after_is_the_time_left_and_falls_as_time_advances() {
        let t0 = Instant::now();
        let mut m = opened_at(t0);
        for (elapsed, left) in [(0, 30_000), (1, 29_999), (10_000, 20_000), (29_500, 500)] {
            let (a, t) = m.admit(t0 + Duration::from_millis(elapsed), 1);
            assert_eq!(
                a,
                Admission::Reject {
                    retry_after: Some(Duration::from_millis(left))
                },
                "{elapsed} ms after opening"
            );
            assert_eq!(t, None);
        }
    }

    #[test]
    fn open_until_is_kept_only_while_open() {
        let t0 = Instant::now();
        let mut m = opened_at(t0);
        assert_eq!(m.open_until(), Some(t0 + OPEN_FOR));
        // On the way to half-open the deadline is gone: a half-open breaker has none.
        let (a, _) = m.admit(t0 + OPEN_FOR, 2);
        let Admission::Probe { generation } = a else {
            panic!("expected a probe, got {a:?}")
        };
        assert_eq!(m.state(), CircuitState::HalfOpen);
        assert_eq!(m.open_until(), None);
        // A failed probe reopens it with a new deadline from the probe's end.
        let t1 = t0 + Duration::from_secs(45);
        let t = m
            .probe_finished(generation, CallOutcome::Failure, t1, 1, OPEN_FOR)
            .unwrap();
        assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
        assert_eq!(m.open_until(), Some(t1 + OPEN_FOR));
        // Forced open has no deadline either.
        m.force(CircuitState::ForcedOpen).unwrap();
        assert_eq!(m.open_until(), None);
    }

    #[test]
    fn a_half_open_breaker_closes_at_exactly_the_success_threshold() {
        let t0 = Instant::now();
        let mut m = opened_at(t0);
        let mut probes = Vec::new();
        for _ in 0..3 {
            if let (Admission::Probe { generation }, _) = m.admit(t0 + OPEN_FOR, 3) {
                probes.push(generation);
            }
        }
        assert_eq!(probes.len(), 3);
        assert_eq!(m.probes_in_flight(), 3);
        let now = t0 + OPEN_FOR;
        assert_eq!(
            m.probe_finished(probes[0], CallOutcome::Success, now, 2, OPEN_FOR),
            None
        );
        assert_eq!(m.probes_in_flight(), 2);
        let t = m
            .probe_finished(probes[1], CallOutcome::Success, now, 2, OPEN_FOR)
            .unwrap();
        assert_eq!(
            (t.from, t.to),
            (CircuitState::HalfOpen, CircuitState::Closed)
        );
        // The third probe belongs to the half-open period that ended: ignored.
        assert_eq!(
            m.probe_finished(probes[2], CallOutcome::Failure, now, 2, OPEN_FOR),
            None
        );
        assert_eq!(m.state(), CircuitState::Closed);
    }

    #[test]
    fn an_ignored_probe_gives_its_slot_back_without_counting() {
        let t0 = Instant::now();
        let mut m = opened_at(t0);
        let (Admission::Probe { generation }, _) = m.admit(t0 + OPEN_FOR, 1) else {
            panic!("expected a probe")
        };
        assert_eq!(
            m.admit(t0 + OPEN_FOR, 1).0,
            Admission::Reject { retry_after: None }
        );
        let now = t0 + OPEN_FOR;
        assert_eq!(
            m.probe_finished(generation, CallOutcome::Ignored, now, 1, OPEN_FOR),
            None
        );
        assert_eq!(m.probes_in_flight(), 0);
        assert_eq!(m.state(), CircuitState::HalfOpen);
        assert!(matches!(m.admit(now, 1).0, Admission::Probe { .. }));
    }

    #[test]
    fn forcing_a_state_it_is_in_is_no_transition_except_a_reset() {
        let mut m = StateMachine::new(true);
        let g = m.generation();
        let t = m.force(CircuitState::Closed).unwrap();
        assert_eq!((t.from, t.to), (CircuitState::Closed, CircuitState::Closed));
        assert_eq!(m.generation(), g + 1);
        m.force(CircuitState::ForcedOpen).unwrap();
        assert_eq!(m.force(CircuitState::ForcedOpen), None);
        m.force(CircuitState::Disabled).unwrap();
        assert_eq!(m.force(CircuitState::Disabled), None);
        assert_eq!(m.state(), CircuitState::Disabled);
        assert!(matches!(
            m.admit(Instant::now(), 1).0,
            Admission::Call { .. }
        ));
    }

    #[test]
    fn states_round_trip_through_u8_and_have_stable_names() {
        let states = [
            (CircuitState::Closed, "closed", false),
            (CircuitState::Open, "open", true),
            (CircuitState::HalfOpen, "half-open", false),
            (CircuitState::ForcedOpen, "forced-open", true),
            (CircuitState::Disabled, "disabled", false),
        ];
        for (state, name, open) in states {
            assert_eq!(CircuitState::from_u8(state as u8), state);
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(state.is_open(), open, "{name}");
        }
        assert_eq!(CircuitState::from_u8(200), CircuitState::Closed);
        assert_eq!(StateMachine::new(false).state(), CircuitState::Disabled);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u64),
        Finish(usize, u8),
        Trip(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..40).prop_map(Op::Admit),
            (0usize..8, 0u8..3).prop_map(|(i, o)| Op::Finish(i, o)),
            (0u64..40).prop_map(Op::Trip),
        ]
    }

    proptest! {
        /// Over random sequences: never more probes than allowed, and a half-open breaker only closes after
        /// `success_threshold` consecutive probe successes of its own generation.
        #[test]
        fn state_machine_sequences_keep_the_invariants(ops in proptest::collection::vec(op(), 1..200),
                                                       max in 1u32..4, threshold in 1u32..4) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut m = StateMachine::new(true);
            let mut probes: Vec<u64> = Vec::new();
            let mut streak = 0u32;
            for op in ops {
                match op {
                    Op::Admit(secs) => {
                        now += Duration::from_secs(secs);
                        if let (Admission::Probe { generation }, _) = m.admit(now, max) {
                            probes.push(generation);
                        }
                    }
                    Op::Trip(secs) => {
                        now += Duration::from_secs(secs);
                        let g = m.generation();
                        m.trip(g, now, OPEN_FOR);
                    }
                    Op::Finish(i, o) => {
                        if probes.is_empty() { continue; }
                        let g = probes.remove(i % probes.len());
                        let outcome = [CallOutcome::Success, CallOutcome::Failure, CallOutcome::Ignored][o as usize];
                        let current = g == m.generation() && m.state() == CircuitState::HalfOpen;
                        let before = m.state();
                        let t = m.probe_finished(g, outcome, now, threshold, OPEN_FOR);
                        if current && outcome == CallOutcome::Success { streak += 1; }
                        if let Some(t) = t {
                            prop_assert_eq!(before, CircuitState::HalfOpen);
                            if t.to == CircuitState::Closed {
                                prop_assert!(streak >= threshold);
                            }
                        }
                    }
                }
                if m.state() != CircuitState::HalfOpen { streak = 0; }
                prop_assert!(m.probes_in_flight() <= max);
                let live = probes.iter().filter(|g| **g == m.generation()).count() as u32;
                if m.state() == CircuitState::HalfOpen {
                    prop_assert_eq!(live, m.probes_in_flight());
                }
            }
        }
    }
}
