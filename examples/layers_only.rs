//! The six layers on a plain `service_fn`, without the manager.
//!
//! A flaky "inventory" handler (every fifth call fails, one in 25 hangs past the timeout) is wrapped with metrics,
//! dead letters, retry, a circuit breaker, a concurrency limit and a timeout through `ServiceBuilder`.
//! 200 events go through it; the outcomes, the metrics and the dead letters are printed.
//!
//! Run it with `cargo run --example layers_only`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_listener::{
    CatchPanicLayer, CircuitBreakerLayer, CircuitConfig, ConcurrencyLimitLayer, DeadLetterConfig,
    DeadLetterLayer, DeadLetterQueue, Error, Event, ListenerMetrics, MetricsLayer, RetryLayer,
    RetryPolicy, TimeoutLayer,
};

#[derive(Debug, thiserror::Error)]
#[error("inventory service unavailable")]
struct Unavailable;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let inventory = service_fn(move |event: Event| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        async move {
            if n % 25 == 24 {
                tokio::time::sleep(Duration::from_millis(80)).await; // past the 50 ms timeout
            }
            if n % 5 == 4 {
                return Err(Error::handler(Unavailable));
            }
            Ok(format!("reserved stock for {}", event.id()))
        }
    });

    let metrics = Arc::new(ListenerMetrics::new("inventory"));
    let dead_letters = DeadLetterQueue::new(1_000);
    let breaker = CircuitBreakerLayer::with_metrics(
        CircuitConfig {
            failure_threshold: 30,
            sliding_window: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            ..Default::default()
        },
        metrics.clone(),
    )?;
    let breaker_handle = breaker.handle();

    let service = ServiceBuilder::new()
        .layer(MetricsLayer::per_event(metrics.clone()))
        .layer(DeadLetterLayer::with_metrics(
            DeadLetterConfig::to_sink(dead_letters.clone()),
            metrics.clone(),
        )?)
        .layer(RetryLayer::with_metrics(
            RetryPolicy {
                max_retries: 2,
                initial_delay: Duration::from_millis(5),
                ..Default::default()
            },
            metrics.clone(),
        )?)
        .layer(breaker)
        .layer(ConcurrencyLimitLayer::new(8)?.with_metrics(metrics.clone()))
        .layer(MetricsLayer::per_attempt(metrics.clone())) // counts the timeouts too
        .layer(TimeoutLayer::new(Duration::from_millis(50))?)
        .layer(CatchPanicLayer)
        .service(inventory);

    // Ten waves of 20 concurrent events, 20 ms apart.
    let mut tasks = Vec::new();
    for i in 0..200 {
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let event = Event::new(
            format!("sku-{i}"),
            "stock.reserve",
            serde_json::json!({ "qty": 1 }),
        );
        tasks.push(tokio::spawn(service.clone().oneshot(event)));
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        match task.await {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => failed += 1,
            Err(join) => eprintln!("task failed: {join}"),
        }
    }

    let stats = metrics.snapshot();
    println!("200 events through six layers: {ok} succeeded, {failed} failed");
    println!(
        "handler calls {} | attempts {} ({} failed, {} timed out) | retries {} | rejected {}",
        calls.load(Ordering::Relaxed),
        stats.attempts,
        stats.attempt_failures,
        stats.timeouts,
        stats.events_retried,
        stats.rejected
    );
    println!(
        "breaker: {} (tripped {} times) | dead letters: {}",
        breaker_handle.state(),
        stats.circuit_trips,
        dead_letters.len()
    );
    println!(
        "event latency p50 {:?} p99 {:?} max {:?}",
        stats.event_latency.p50, stats.event_latency.p99, stats.event_latency.max
    );
    for letter in dead_letters.list().iter().take(3) {
        println!(
            "  dead letter {} after {} attempts: {} ({})",
            letter.request.id(),
            letter.attempts,
            letter.error,
            letter.reason
        );
    }
    assert_eq!(
        stats.events_processed,
        stats.events_succeeded + stats.events_failed
    );
    assert_eq!(stats.events_failed as usize, dead_letters.len());
    Ok(())
}
