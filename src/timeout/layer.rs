//! [`TimeoutLayer`].

use std::time::Duration;

use tower::Layer;

use super::service::Timeout;
use crate::error::check_duration;
use crate::Error;

/// Cancels an attempt that runs longer than a limit, with [`Error::Timeout`].
///
/// A per-attempt [`MetricsLayer`](crate::MetricsLayer) around it counts its timeouts (as timeouts and
/// failed attempts).
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{Error, TimeoutLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_millis(50)).unwrap())
///     .service(service_fn(|_: ()| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Ok::<_, Error>(())
///     }));
/// let err = svc.oneshot(()).await.unwrap_err();
/// assert!(matches!(err, Error::Timeout { limit: Some(l) } if l == Duration::from_millis(50)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// A layer with the given limit per attempt.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for field `"timeout"` when `limit` is zero or longer than
    /// [`MAX_CONFIG_DURATION`](crate::MAX_CONFIG_DURATION).
    pub fn new(limit: Duration) -> Result<Self, Error> {
        check_duration("timeout", limit)?;
        Ok(TimeoutLayer { limit })
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.limit)
    }
}
