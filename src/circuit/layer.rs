//! [`CircuitBreakerLayer`].

use std::sync::Arc;

use tower::Layer;

use super::config::CircuitConfig;
use super::handle::{Breaker, CircuitBreakerHandle};
use super::service::CircuitBreaker;
use crate::metrics::ListenerMetrics;
use crate::shared::Shared;
use crate::Error;

/// Wraps a service in a circuit breaker.
///
/// Every service this layer makes shares **one** breaker (and its [`CircuitBreakerHandle`]): build one layer
/// per dependency you want to protect.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{CircuitBreakerLayer, CircuitConfig, CircuitState, Error};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CircuitBreakerLayer::new(CircuitConfig { failure_threshold: 2, ..Default::default() }).unwrap();
/// let handle = layer.handle();
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_: ()| async { Err::<(), _>(Error::handler(std::fmt::Error)) }));
/// for _ in 0..2 {
///     assert!(matches!(svc.clone().oneshot(()).await, Err(Error::Handler(_))));
/// }
/// assert_eq!(handle.state(), CircuitState::Open);
/// assert!(matches!(svc.clone().oneshot(()).await, Err(Error::CircuitOpen { .. })));
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Shared<Breaker>,
}

impl CircuitBreakerLayer {
    /// A breaker with `config`, named "circuit-breaker" in logs.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first invalid field.
    pub fn new(config: CircuitConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(CircuitBreakerLayer {
            breaker: Shared::new(Arc::new(Breaker::new(
                config,
                Arc::from("circuit-breaker"),
                None,
            ))),
        })
    }

    /// A breaker with `config` that reports rejections, trips and its state to `metrics`, and takes its
    /// name from them.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first invalid field.
    pub fn with_metrics(
        config: CircuitConfig,
        metrics: Arc<ListenerMetrics>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let name = Arc::from(metrics.name());
        Ok(CircuitBreakerLayer {
            breaker: Shared::new(Arc::new(Breaker::new(config, name, Some(metrics)))),
        })
    }

    /// The handle to this layer's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            breaker: self.breaker.arc().clone(),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone())
    }
}

impl std::fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.handle())
            .finish()
    }
}
