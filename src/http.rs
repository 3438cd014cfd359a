//! HTTP endpoints for axum (feature `axum`): run events through a manager over HTTP and expose its health.
//!
//! [`router`] serves:
//! - `POST /events/{listener}`: the body is a JSON [`Event`]; it runs through the listener's whole stack
//!   ([`ListenerManager::process`]) and the status is the outcome: 200 ok, 404 unknown listener, 422 bad JSON,
//!   503 circuit open (with `Retry-After`) or not running, 429 overloaded, 504 timeout, 500 handler failure
//!   or panic. Every body is JSON; an error body is `{"error": <kind>, "message": <text>}`.
//! - `GET /health`: 200 when healthy, degraded or circuit-open, 503 when unhealthy (as the Go package's
//!   documentation shows), with the status, the counters and, per listener, its health and latency
//!   percentiles.
//!
//! [`Error`] implements `axum::response::IntoResponse` with the same mapping, so layers on an axum route
//! turn their errors into responses through `HandleErrorLayer` or a handler returning `Result<_, Error>`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::manager::HealthStatus;
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
            Error::AlreadyRegistered(_) | Error::AlreadyRunning => StatusCode::CONFLICT,
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

/// The router: `POST /events/{listener}` and `GET /health` over `manager`. Nest or merge it into your own.
///
/// ```
/// use tower_listener::{ListenerManager, ManagerConfig};
///
/// let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
/// let app: axum::Router = tower_listener::http::router(manager);
/// # let _ = app;
/// ```
pub fn router(manager: ListenerManager) -> Router {
    Router::new()
        .route("/events/{listener}", post(post_event))
        .route("/health", get(health))
        .with_state(manager)
}

async fn post_event(
    State(manager): State<ListenerManager>,
    Path(listener): Path<String>,
    body: Result<Json<Event>, JsonRejection>,
) -> Response {
    let event = match body {
        Ok(Json(event)) => event,
        Err(rejection) => {
            let body = Json(json!({ "error": "invalid_event", "message": rejection.body_text() }));
            return (StatusCode::UNPROCESSABLE_ENTITY, body).into_response();
        }
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

/// The health document of `manager`, as `GET /health` serves it.
pub fn health_report(manager: &ListenerManager) -> (HealthStatus, Value) {
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
        "retried": stats.events_retried,
        "dead_letters": stats.dead_letter_events,
        "listener_health": listeners,
    });
    (status, body)
}

async fn health(State(manager): State<ListenerManager>) -> Response {
    let (status, body) = health_report(&manager);
    let code = match status {
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Healthy | HealthStatus::Degraded | HealthStatus::CircuitOpen => {
            StatusCode::OK
        }
    };
    (code, Json(body)).into_response()
}
