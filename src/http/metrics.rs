//! `GET /metrics` (features `axum` and `prometheus`): a Prometheus registry as OpenMetrics text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// The content type of an OpenMetrics text exposition, as Prometheus asks for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` over `registry`: your own registry, holding a
/// [`ManagerCollector`](crate::prometheus::ManagerCollector) (with its dead-letter stores) next to your
/// other metrics. Serve it on an admin port of its own, or merge it into a router that has no `/metrics`
/// yet ([`router`](super::router) has one; [`router_with_registry`](super::router_with_registry) serves
/// your registry there instead).
///
/// ```
/// use std::sync::Arc;
/// use prometheus_client::registry::Registry;
/// use tower_listener::prometheus::ManagerCollector;
///
/// let manager = tower_listener::ListenerManager::new(Default::default()).unwrap();
/// let mut registry = Registry::default();
/// ManagerCollector::register(&mut registry, manager);
/// let admin: axum::Router = tower_listener::http::metrics_router(Arc::new(registry));
/// # let _ = admin;
/// ```
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            )],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(target: "tower_listener::http", %error, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics",
            )
                .into_response()
        }
    }
}
