//! An axum service with tower-listener: events over HTTP through the manager, a health endpoint,
//! Prometheus metrics, and the layers applied directly to a route that calls a flaky downstream.
//!
//! ```sh
//! cargo run --example axum_service --features axum,prometheus
//! curl -s localhost:3000/health
//! curl -s localhost:3000/metrics
//! curl -s -XPOST localhost:3000/events/orders -H 'content-type: application/json' \
//!      -d '{"specversion":"1.0","id":"o-1","type":"order.created","time":"2026-12-01T10:00:00Z","data":{"total":42}}'
//! curl -s -XPOST localhost:3000/events/orders -H 'content-type: application/json' \
//!      -d '{"specversion":"1.0","id":"o-2","type":"order.created","data":{"total":-1}}'   # 422, permanent
//! curl -s localhost:3000/inventory/sku-7
//! ```
//! An invalid order is a permanent failure: answered 422 at once, dead-lettered, never retried, and it
//! never opens the `orders` breaker, so valid orders keep flowing.
//!
//! `/metrics` serves the manager's metrics and the dead-letter queue's size as OpenMetrics text, for
//! Prometheus to scrape (see `examples/grafana/tower-listener.json` for a dashboard over them).
//!
//! `PORT` sets the port (default 3000). Ctrl-C or SIGTERM stops the server, then the manager, gracefully.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tower::ServiceBuilder;
use tower_listener::prometheus::ManagerCollector;
use tower_listener::{
    listener_fn, shutdown_signal, CircuitBreakerLayer, CircuitConfig, ConcurrencyConfig,
    ConcurrencyLimitLayer, Error, Event, LimitMode, ListenerConfig, ListenerManager, ManagerConfig,
    TimeoutLayer,
};

#[derive(Debug, thiserror::Error)]
#[error("order total must be positive")]
struct InvalidOrder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = ListenerManager::new(ManagerConfig::named("axum-example"))?;
    manager.register(
        listener_fn("orders", |event: Event| async move {
            match event.data()["total"].as_i64() {
                Some(total) if total > 0 => Ok(()),
                // Retrying an invalid order cannot help, and it says nothing about our dependencies.
                _ => Err(Error::permanent(InvalidOrder)),
            }
        }),
        ListenerConfig::default(),
    )?;
    manager.start().await?;

    // A flaky downstream: every third call fails, every fifth is slow.
    let calls = Arc::new(AtomicU64::new(0));
    let inventory = get(move |Path(sku): Path<String>| {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if n % 5 == 4 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if n % 3 == 2 {
                return Err(Error::handler(std::io::Error::other(
                    "inventory service down",
                )));
            }
            Ok(format!("{sku}: 12 in stock\n"))
        }
    })
    .layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|error: Error| async move { error }))
            .layer(CircuitBreakerLayer::new(
                CircuitConfig {
                    failure_threshold: 3,
                    timeout: Duration::from_secs(10),
                    ..Default::default()
                }
                // the handler turns its errors into 500 responses: count those as failures
                .http_server_errors_are_failures(),
            )?)
            .layer(ConcurrencyLimitLayer::new(ConcurrencyConfig::new(
                8,
                LimitMode::Reject,
            ))?)
            .layer(TimeoutLayer::new(Duration::from_millis(500))?),
    );

    // Metrics: the manager's, and how many dead letters wait in `orders`' queue (read every 5 s).
    let mut registry = Registry::default();
    let dead_letters = manager
        .dead_letters("orders")?
        .ok_or("orders keeps no dead letters")?;
    registry.register_collector(Box::new(
        ManagerCollector::new(manager.clone()).with_store(
            "orders-memory",
            dead_letters,
            Duration::from_secs(5),
        )?,
    ));

    let app = Router::new().route("/inventory/{sku}", inventory).merge(
        tower_listener::http::router_with_registry(manager.clone(), Arc::new(registry)),
    );
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000u16);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // The server has stopped taking requests: give the events still running 10 s, then dead-letter them.
    let report = manager.stop(Duration::from_secs(10)).await?;
    println!(
        "stopped: drained = {}, cancelled = {}",
        report.drained, report.cancelled
    );
    Ok(())
}
