//! gRPC health checking for tonic (feature `tonic`): each listener's health published through
//! `tonic-health` (`grpc.health.v1.Health`), so load balancers and orchestrators that speak gRPC health
//! checking see a listener go out of service when its breaker opens, and come back when it closes.
//!
//! Each listener is a service name (its id); the empty name `""` is the whole manager. `Healthy` and
//! `Degraded` publish `SERVING`; `Unhealthy` and `CircuitOpen` publish `NOT_SERVING`. The statuses are
//! refreshed every `every` by a task that ends when the [`HealthPublisher`] is dropped; unregistered
//! listeners are removed. `tonic-health` ships its generated code, so no `protoc` is needed.

use std::collections::HashSet;
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::{health_reporter, HealthReporter};
use tonic_health::ServingStatus;

use crate::manager::HealthStatus;
use crate::ListenerManager;

/// The gRPC status a health maps to.
///
/// ```
/// use tonic_health::ServingStatus;
/// use tower_listener::{grpc::serving_status, HealthStatus};
///
/// assert_eq!(serving_status(HealthStatus::Degraded), ServingStatus::Serving);
/// assert_eq!(serving_status(HealthStatus::CircuitOpen), ServingStatus::NotServing);
/// ```
pub fn serving_status(health: HealthStatus) -> ServingStatus {
    match health {
        HealthStatus::Healthy | HealthStatus::Degraded => ServingStatus::Serving,
        HealthStatus::Unhealthy | HealthStatus::CircuitOpen => ServingStatus::NotServing,
    }
}

/// Keeps a manager's health published; stops when dropped.
#[derive(Debug)]
pub struct HealthPublisher {
    task: JoinHandle<()>,
}

impl Drop for HealthPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn publish<T>(
    reporter: &mut HealthReporter,
    manager: &ListenerManager<T>,
    published: &mut HashSet<String>,
) {
    reporter
        .set_service_status("", serving_status(manager.health()))
        .await;
    let mut current = HashSet::new();
    for (id, health) in manager.listener_healths() {
        reporter
            .set_service_status(&id, serving_status(health))
            .await;
        current.insert(id);
    }
    for gone in published.difference(&current) {
        reporter.clear_service_status(gone).await;
    }
    *published = current;
}

/// The `grpc.health.v1.Health` service for `manager`, with its statuses published now and refreshed every
/// `every` (at least 10 ms) until the returned [`HealthPublisher`] is dropped. Add the service to a tonic
/// server with `add_service`.
///
/// ```no_run
/// # async fn run(manager: tower_listener::ListenerManager) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let (health, _publisher) = tower_listener::grpc::health_service(manager, Duration::from_millis(500)).await;
/// tonic::transport::Server::builder()
///     .add_service(health)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
pub async fn health_service<T: Send + Sync + 'static>(
    manager: ListenerManager<T>,
    every: Duration,
) -> (HealthServer<impl Health>, HealthPublisher) {
    let (mut reporter, server) = health_reporter();
    let mut published = HashSet::new();
    publish(&mut reporter, &manager, &mut published).await;
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            publish(&mut reporter, &manager, &mut published).await;
        }
    });
    (server, HealthPublisher { task })
}
