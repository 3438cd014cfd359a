//! The clock the crate measures with: latencies, the health windows, the breaker's open time and slow
//! calls, the retry budget's window.
//!
//! By default it is tokio's, so that a test under paused time (`start_paused = true`) drives every timer,
//! window and latency of the crate, and a 30 s breaker timeout is tested in microseconds.
//!
//! With the `tsc-clock` feature, [`use_tsc`] switches these measurements to the CPU's time-stamp
//! counter, read through `quanta`. An event takes two readings; where the OS clock is slow to read (a
//! virtual machine, where one `Instant::now` can cost 25–35 ns against some 10 ns for the counter) that
//! is a good part of an event's overhead. `quanta` is used rather than our own reading of the counter
//! because the hard parts are its own: it checks that the counter is invariant (else it falls back to
//! the OS monotonic clock), calibrates it against that clock, and scales readings with a multiply and a
//! shift. Readings are converted to `std::time::Instant`s anchored at the calibration, so they are on the
//! scale of the OS clock and the switch can be made at any time. Timers (timeouts, backoff sleeps,
//! shutdown deadlines) stay on tokio's clock either way.

use std::time::Instant;

/// Now, on the crate's clock: tokio's (the real clock outside a paused runtime), or the time-stamp
/// counter while [`use_tsc`] is on.
#[inline]
pub(crate) fn now() -> Instant {
    #[cfg(feature = "tsc-clock")]
    if let Some(counter) = tsc::reading() {
        return counter.now();
    }
    tokio::time::Instant::now().into_std()
}

/// Switches the crate's measurements to the CPU's time-stamp counter (`true`), or back to tokio's clock
/// (`false`, the default). Process-wide, and it can be flipped at any time: readings of both clocks are on
/// the OS clock's scale. The first switch on calibrates the counter (a few milliseconds, once).
///
/// Leave it off in tests under tokio's paused time: with it on, the crate measures real time while the
/// timers follow the paused clock, so a breaker would not see its open time pass.
///
/// ```
/// tower_listener::clock::use_tsc(true);
/// assert!(tower_listener::clock::uses_tsc());
/// # tower_listener::clock::use_tsc(false);
/// ```
#[cfg(feature = "tsc-clock")]
pub fn use_tsc(on: bool) {
    tsc::switch(on);
}

/// Whether the crate's measurements read the time-stamp counter (see [`use_tsc`]).
#[cfg(feature = "tsc-clock")]
pub fn uses_tsc() -> bool {
    tsc::reading().is_some()
}

#[cfg(feature = "tsc-clock")]
mod tsc {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// On while the counter is read; the calibrated counter is made once, before the first switch on.
    static ON: AtomicBool = AtomicBool::new(false);
    static COUNTER: OnceLock<Counter> = OnceLock::new();

    /// The calibrated counter, anchored at an OS clock reading taken with one of its own.
    pub(super) struct Counter {
        clock: quanta::Clock,
        anchor: Instant,
        anchor_raw: u64,
    }

    impl Counter {
        fn calibrated() -> Self {
            let clock = quanta::Clock::new();
            let anchor_raw = clock.raw();
            Counter {
                anchor: Instant::now(),
                anchor_raw,
                clock,
            }
        }

        #[inline]
        pub(super) fn now(&self) -> Instant {
            let since = self.clock.delta_as_nanos(self.anchor_raw, self.clock.raw());
            self.anchor + Duration::from_nanos(since)
        }
    }

    /// The counter, while it is switched on.
    #[inline]
    pub(super) fn reading() -> Option<&'static Counter> {
        // Relaxed: `COUNTER.get` synchronizes by itself; a reader that sees the switch before the counter
        // reads tokio's clock once more.
        if ON.load(Ordering::Relaxed) {
            COUNTER.get()
        } else {
            None
        }
    }

    pub(super) fn switch(on: bool) {
        if on {
            COUNTER.get_or_init(Counter::calibrated);
        }
        ON.store(on, Ordering::Relaxed);
    }
}
