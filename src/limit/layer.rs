//! [`ConcurrencyLimitLayer`] and its [`ConcurrencyConfig`].

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::permits::Permits;
use super::service::ConcurrencyLimit;
use crate::error::check_duration;
use crate::metrics::ListenerMetrics;
use crate::shared::Shared;
use crate::Error;

/// The largest limit accepted: far above any real need, and far from overflowing the permit count.
pub const MAX_LIMIT: usize = 1 << 30;

/// What a call does when every permit is taken.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::{ConcurrencyConfig, ConcurrencyLimitLayer, LimitMode};
///
/// // At most 8 at once; a ninth waits up to 50 ms for a slot, then fails with `Error::Overloaded`.
/// let limit = ConcurrencyLimitLayer::new(ConcurrencyConfig::new(8, LimitMode::WaitFor(Duration::from_millis(50))))?;
/// # let _ = limit;
/// # Ok::<_, tower_listener::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LimitMode {
    /// Wait for a permit as long as it takes (backpressure). The default.
    #[default]
    Wait,
    /// Wait at most this long, then fail with [`Error::Overloaded`].
    WaitFor(Duration),
    /// Fail at once with [`Error::Overloaded`].
    Reject,
}

/// Settings of a [`ConcurrencyLimitLayer`]. A plain number converts into one with the default mode.
///
/// ```
/// use tower_listener::{ConcurrencyConfig, ConcurrencyLimitLayer, LimitMode};
///
/// let waits = ConcurrencyLimitLayer::new(10)?; // LimitMode::Wait, the default
/// let sheds = ConcurrencyLimitLayer::new(ConcurrencyConfig::new(10, LimitMode::Reject))?;
/// assert!(ConcurrencyConfig::new(0, LimitMode::Wait).validate().is_err());
/// # let _ = (waits, sheds);
/// # Ok::<_, tower_listener::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// Calls allowed in flight at once. Default 10.
    pub limit: usize,
    /// What a call does when none is free. Default [`LimitMode::Wait`].
    pub mode: LimitMode,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            limit: 10,
            mode: LimitMode::Wait,
        }
    }
}

impl ConcurrencyConfig {
    /// `limit` calls in flight, in `mode`.
    pub fn new(limit: usize, mode: LimitMode) -> Self {
        ConcurrencyConfig { limit, mode }
    }

    /// Checks the fields; the error names `"concurrency"` or `"concurrency.mode"`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.limit == 0 {
            return Err(Error::invalid_config("concurrency", "must be at least 1"));
        }
        if self.limit > MAX_LIMIT {
            return Err(Error::invalid_config(
                "concurrency",
                format!("must be at most {MAX_LIMIT}"),
            ));
        }
        if let LimitMode::WaitFor(wait) = self.mode {
            check_duration("concurrency.mode", wait)?;
        }
        Ok(())
    }
}

impl From<usize> for ConcurrencyConfig {
    fn from(limit: usize) -> Self {
        ConcurrencyConfig {
            limit,
            ..Default::default()
        }
    }
}

/// Limits the calls in flight through all services made by this layer to one shared limit.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{ConcurrencyConfig, ConcurrencyLimitLayer, Error, LimitMode};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = ConcurrencyLimitLayer::new(ConcurrencyConfig::new(2, LimitMode::Reject)).unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_: ()| async { Ok::<_, Error>("done") }));
/// assert_eq!(svc.oneshot(()).await.unwrap(), "done");
///
/// // Or just a number, in the default (waiting) mode:
/// let _ = ConcurrencyLimitLayer::new(10).unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Shared<Permits>,
    config: ConcurrencyConfig,
    metrics: Option<Arc<ListenerMetrics>>,
}

impl ConcurrencyLimitLayer {
    /// A limit from a config or a plain number.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the limit is 0 or the bounded wait is zero.
    pub fn new(config: impl Into<ConcurrencyConfig>) -> Result<Self, Error> {
        let config = config.into();
        config.validate()?;
        Ok(ConcurrencyLimitLayer {
            permits: Permits::shared(config.limit),
            config,
            metrics: None,
        })
    }

    /// Reports each `Overloaded` rejection to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ListenerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Permits free now.
    pub fn available_permits(&self) -> usize {
        self.permits.available()
    }

    /// The configuration.
    pub fn config(&self) -> ConcurrencyConfig {
        self.config
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::new(
            inner,
            self.permits.clone(),
            self.config.mode,
            self.metrics.clone(),
        )
    }
}

impl std::fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("config", &self.config)
            .field("available_permits", &self.available_permits())
            .finish()
    }
}
