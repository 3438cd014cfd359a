//! The crate's one clock: tokio's, so that a test under paused time (`start_paused = true`) drives every
//! timer, window and latency of the crate, and a 30 s breaker timeout is tested in microseconds.

use std::time::Instant;

/// Now, on tokio's clock (the real clock outside a paused runtime).
#[inline]
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
