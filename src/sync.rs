//! The atomics and the mutex of the breaker, the window and the permit count: std's, or loom's under
//! `--cfg tower_listener_loom` so that `tests/loom.rs` can explore their interleavings. (A crate-specific
//! cfg rather than the usual `cfg(loom)`: dependencies such as `event-listener` switch to loom under
//! `cfg(loom)` too, and do not build that way.)

#[cfg(tower_listener_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(tower_listener_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(tower_listener_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(not(tower_listener_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// A pause inside a spin wait (loom's yield under the model, so it can schedule the thread being waited for).
#[cfg(tower_listener_loom)]
pub(crate) fn spin_loop() {
    loom::thread::yield_now();
}

/// A pause inside a spin wait.
#[cfg(not(tower_listener_loom))]
pub(crate) fn spin_loop() {
    std::hint::spin_loop();
}
