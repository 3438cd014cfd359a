//! HTTP endpoints for axum (feature `axum`): run events through a manager over HTTP and expose its health.
//!
//! [`router`] serves:
//! - `POST /events/{listener}`: the body is an [`Event`] as CloudEvents structured JSON
//!   (`Content-Type: application/json`); it runs through the listener's whole stack
//!   ([`ListenerManager::process`]) and the status is the outcome: 200 ok, 404 unknown listener, 422 a
//!   permanent failure, 503 circuit open (with `Retry-After`) or not running, 429 overloaded, 504 timeout,
//!   500 handler failure or panic. What is not an event at all keeps axum's statuses: 415 without a JSON
//!   `Content-Type`, 413 past the body limit (axum's default, 2 MB; set another with
//!   `axum::extract::DefaultBodyLimit`), 400 for broken JSON, and 422 for JSON that is not an event (the
//!   message names the field). Every body is JSON; an error body is `{"error": <kind>, "message": <text>}`.
//! - `GET /health`: 200 when healthy, degraded or circuit-open, 503 when unhealthy (as the Go package's
//!   documentation shows), with the status, the counters and, per listener, its health and latency
//!   percentiles.
//!
//! - `GET /metrics` (with feature `prometheus`): the manager's metrics as OpenMetrics text (see
//!   [`prometheus`](crate::prometheus) for the names); [`router_with_registry`] serves a registry of
//!   yours there instead, and [`metrics_router`] serves one alone (on an admin port, say).
//!
//! [`dead_letter_router`] serves an operator's view of a dead-letter store (list, inspect, redrive, delete),
//! as a router of its own to mount behind the service's admin access.
//!
//! [`Error`] implements `axum::response::IntoResponse` with the same mapping, so layers on an axum route
//! turn their errors into responses through `HandleErrorLayer` or a handler returning `Result<_, Error>`.

mod dead_letters;
#[cfg(feature = "prometheus")]
mod metrics;

pub use dead_letters::{dead_letter_router, OperatorAuth};
#[cfg(feature = "prometheus")]
pub use metrics::{metrics_router, OPENMETRICS_CONTENT_TYPE};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::manager::{DispatchError, HealthStatus};
use crate::metrics::LatencySummary;
use crate::{Error, Event, ListenerManager};

impl Error {
    /// The HTTP status this error maps to.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::CircuitOpen { .. } | Error::NotRunning | Error::Stopped => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
            Error::Backend { .. } => StatusCode::BAD_GATEWAY,
            Error::AlreadyRegistered(_) | Error::AlreadyRunning => StatusCode::CONFLICT,
            Error::Permanent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Handler(_) | Error::Panicked { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.kind(), "message": self.to_string() }));
        let mut response = (self.status_code(), body).into_response();
        if let Error::CircuitOpen {
            retry_after: Some(after),
        } = self
        {
            // Whole seconds, rounded up, and at least 1: "retry now" is not what an open breaker means.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl crate::CircuitConfig {
    /// Counts axum responses with a 5xx status as failures (for a breaker around an axum route whose
    /// handler turns its errors into responses).
    pub fn http_server_errors_are_failures(self) -> Self {
        self.classify_responses(|response: &axum::response::Response| {
            if response.status().is_server_error() {
                crate::CallOutcome::Failure
            } else {
                crate::CallOutcome::Success
            }
        })
    }
}

/// A refused `dispatch` answers with its error's status (429 for a full queue, 503 when not running, 404
/// for an unknown listener); the event is dropped with the response, so answer only once you no longer
/// need it.
impl<T> IntoResponse for DispatchError<T> {
    fn into_response(self) -> Response {
        self.error.into_response()
    }
}

/// The router: `POST /events/{listener}` and `GET /health` over `manager`, for any payload type `T` that
/// deserializes. Nest or merge it into your own.
///
/// ```
/// use tower_listener::{ListenerManager, ManagerConfig};
///
/// #[derive(serde::Deserialize)]
/// struct Order { total: u64 }
///
/// let manager = ListenerManager::<Order>::typed(ManagerConfig::default()).unwrap();
/// let app: axum::Router = tower_listener::http::router(manager);
/// # let _ = app;
/// ```
///
/// With feature `prometheus` it also serves `GET /metrics`: a registry holding only a
/// [`ManagerCollector`](crate::prometheus::ManagerCollector) of `manager`.
pub fn router<T>(manager: ListenerManager<T>) -> Router
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    #[cfg(feature = "prometheus")]
    {
        let mut registry = prometheus_client::registry::Registry::default();
        crate::prometheus::ManagerCollector::register(&mut registry, manager.clone());
        router_with_registry(manager, std::sync::Arc::new(registry))
    }
    #[cfg(not(feature = "prometheus"))]
    events_and_health(manager)
}

/// [`router`], with `GET /metrics` serving `registry`: yours, holding a
/// [`ManagerCollector`](crate::prometheus::ManagerCollector) (with the dead-letter stores you watch) next
/// to your own metrics.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use prometheus_client::registry::Registry;
/// use tower_listener::prometheus::ManagerCollector;
/// use tower_listener::{DeadLetterQueue, ListenerManager};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_listener::Error> {
/// let manager = ListenerManager::new(Default::default())?;
/// let dead_letters = DeadLetterQueue::new(1_000);
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(
///     ManagerCollector::new(manager.clone()).with_store("memory", dead_letters, Duration::from_secs(5))?,
/// ));
/// let app: axum::Router = tower_listener::http::router_with_registry(manager, Arc::new(registry));
/// # let _ = app;
/// # Ok(()) }
/// ```
#[cfg(feature = "prometheus")]
pub fn router_with_registry<T>(
    manager: ListenerManager<T>,
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
) -> Router
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    events_and_health(manager).merge(metrics_router(registry))
}

fn events_and_health<T>(manager: ListenerManager<T>) -> Router
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    Router::new()
        .route("/events/{listener}", post(post_event::<T>))
        .route("/health", get(health::<T>))
        .with_state(manager)
}

/// The response to a body that is not an event: axum's own status, with a JSON body.
fn not_an_event(rejection: JsonRejection) -> Response {
    let status = rejection.status();
    let kind = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::BAD_REQUEST => "invalid_json",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_event",
        _ => "invalid_body",
    };
    let body = Json(json!({ "error": kind, "message": rejection.body_text() }));
    (status, body).into_response()
}

async fn post_event<T>(
    State(manager): State<ListenerManager<T>>,
    Path(listener): Path<String>,
    body: Result<Json<Event<T>>, JsonRejection>,
) -> Response
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let event = match body {
        Ok(Json(event)) => event,
        Err(rejection) => return not_an_event(rejection),
    };
    let id = event.id().to_owned();
    match manager.process(&listener, event).await {
        Ok(()) => {
            Json(json!({ "status": "ok", "listener": listener, "event_id": id })).into_response()
        }
        Err(error) => error.into_response(),
    }
}

fn latency(summary: LatencySummary) -> Value {
    let us = |d: std::time::Duration| d.as_micros() as u64;
    json!({
        "count": summary.count,
        "p50_us": us(summary.p50),
        "p90_us": us(summary.p90),
        "p99_us": us(summary.p99),
        "p999_us": us(summary.p999),
        "max_us": us(summary.max),
    })
}

/// The health document of `manager`, as `GET /health` serves it: for a status page of your own, or a log
/// line.
///
/// ```
/// use tower_listener::{HealthStatus, ListenerManager, ManagerConfig};
///
/// let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
/// let (status, body) = tower_listener::http::health_report(&manager);
/// assert_eq!(status, HealthStatus::Healthy);
/// assert_eq!(body["status"], "healthy");
/// assert_eq!(body["listeners"], 0);
/// ```
pub fn health_report<T>(manager: &ListenerManager<T>) -> (HealthStatus, Value) {
    let status = manager.health();
    let stats = manager.stats();
    let mut listeners = serde_json::Map::new();
    for (id, health) in manager.listener_healths() {
        if let Ok(s) = manager.listener_stats(&id) {
            listeners.insert(
                id,
                json!({
                    "status": health.as_str(),
                    "processed": s.events_processed,
                    "failed": s.events_failed,
                    "permanent": s.permanent_failures,
                    "retried": s.events_retried,
                    "latency": latency(s.event_latency),
                }),
            );
        }
    }
    let body = json!({
        "status": status.as_str(),
        "listeners": stats.registered_listeners,
        "processed": stats.events_processed,
        "failed": stats.events_failed,
        "permanent": stats.permanent_failures,
        "retried": stats.events_retried,
        "dead_letters": stats.dead_letter_events,
        "listener_health": listeners,
    });
    (status, body)
}

async fn health<T>(State(manager): State<ListenerManager<T>>) -> Response {
    let (status, body) = health_report(&manager);
    let code = match status {
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Healthy | HealthStatus::Degraded | HealthStatus::CircuitOpen => {
            StatusCode::OK
        }
    };
    (code, Json(body)).into_response()
}
