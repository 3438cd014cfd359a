//! [`RetryLayer`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tower::Layer;

use super::policy::RetryPolicy;
use super::service::Retry;
use crate::metrics::ListenerMetrics;
use crate::Error;

/// What every service of one retry layer shares: the policy, the jitter seed sequence and the metrics.
pub(crate) struct RetryShared {
    pub(crate) policy: RetryPolicy,
    pub(crate) next_seed: AtomicU64,
    pub(crate) metrics: Option<Arc<ListenerMetrics>>,
}

/// Retries failed calls with backoff and jitter, as a [`RetryPolicy`] says.
///
/// Each retry goes through the inner stack again (its readiness, breaker, limit and timeout); no permit is
/// held while sleeping. Requests must be `Clone` (an [`Event`](crate::Event) clones in O(1)).
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{Error, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy { max_retries: 2, ..Default::default() }).unwrap())
///     .service(service_fn(move |_: ()| {
///         let n = seen.fetch_add(1, Ordering::SeqCst);
///         async move { if n < 2 { Err(Error::handler(std::fmt::Error)) } else { Ok("third time lucky") } }
///     }));
/// assert_eq!(svc.oneshot(()).await.unwrap(), "third time lucky");
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<RetryShared>,
}

impl RetryLayer {
    /// A layer retrying as `policy` says.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first invalid field of the policy.
    pub fn new(policy: RetryPolicy) -> Result<Self, Error> {
        Self::build(policy, None)
    }

    /// Like [`new`](Self::new), reporting each retry to `metrics` (`events_retried`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first invalid field of the policy.
    pub fn with_metrics(policy: RetryPolicy, metrics: Arc<ListenerMetrics>) -> Result<Self, Error> {
        Self::build(policy, Some(metrics))
    }

    fn build(policy: RetryPolicy, metrics: Option<Arc<ListenerMetrics>>) -> Result<Self, Error> {
        policy.validate()?;
        Ok(RetryLayer {
            shared: Arc::new(RetryShared {
                next_seed: AtomicU64::new(policy.seed.unwrap_or(0)),
                policy,
                metrics,
            }),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.shared.clone())
    }
}

impl std::fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.shared.policy)
            .finish()
    }
}
