//! The metrics layer and what every layer reports to it, under paused time.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{handler, Call};
use tower::{ServiceBuilder, ServiceExt};
use tower_listener::{
    CatchPanicLayer, CircuitBreakerLayer, CircuitConfig, ConcurrencyLimitLayer, DeadLetterConfig,
    DeadLetterLayer, DeadLetterQueue, ListenerMetrics, MetricsLayer, RetryLayer, RetryPolicy,
    TimeoutLayer,
};

fn within_1pct(d: Duration, want: Duration) -> bool {
    let (d, want) = (d.as_secs_f64(), want.as_secs_f64());
    (d - want).abs() <= want * 0.01
}

#[tokio::test(start_paused = true)]
async fn counts_match_a_scripted_sequence_exactly() {
    let metrics = Arc::new(ListenerMetrics::new("scripted"));
    let queue = DeadLetterQueue::new(100);
    let breaker = CircuitBreakerLayer::with_metrics(
        CircuitConfig {
            failure_threshold: 100,
            ..Default::default()
        },
        metrics.clone(),
    )
    .unwrap();
    let handle = breaker.handle();
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_event(metrics.clone()))
        .layer(
            DeadLetterLayer::with_metrics(
                DeadLetterConfig::to_sink(queue.clone()),
                metrics.clone(),
            )
            .unwrap(),
        )
        .layer(
            RetryLayer::with_metrics(
                RetryPolicy {
                    max_retries: 2,
                    ..Default::default()
                },
                metrics.clone(),
            )
            .unwrap(),
        )
        .layer(breaker)
        .layer(
            ConcurrencyLimitLayer::new(4)
                .unwrap()
                .with_metrics(metrics.clone()),
        )
        .layer(MetricsLayer::per_attempt(metrics.clone()))
        .layer(TimeoutLayer::new(Duration::from_millis(50)).unwrap())
        .layer(CatchPanicLayer)
        .service(inner);

    for _ in 0..3 {
        svc.clone().oneshot(Call::Ok).await.unwrap();
    }
    for call in [Call::Fail, Call::Hang, Call::Panic] {
        assert!(svc.clone().oneshot(call).await.is_err());
    }
    handle.force_open();
    assert!(svc.clone().oneshot(Call::Ok).await.is_err());

    let s = metrics.snapshot();
    assert_eq!(s.events_processed, 7);
    assert_eq!(s.events_succeeded, 3);
    assert_eq!(s.events_failed, 4);
    assert_eq!(s.events_processed, s.events_succeeded + s.events_failed);
    assert_eq!(s.events_retried, 6);
    assert_eq!(s.attempts, 12);
    assert_eq!(s.attempt_failures, 9);
    assert_eq!(s.timeouts, 3);
    assert_eq!(s.dead_letter_events, 4);
    assert_eq!(s.dead_letter_failures, 0);
    assert_eq!(s.rejected, 1);
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.circuit_breakers, 1);
    assert_eq!(s.circuit_trips, 1);
    assert_eq!(s.event_latency.count, 7);
    assert_eq!(s.attempt_latency.count, 12);
    // The hanging event: three 50 ms timeouts and backoffs of 100 and 200 ms.
    assert!(
        within_1pct(s.event_latency.max, Duration::from_millis(450)),
        "{:?}",
        s.event_latency
    );
    assert_eq!(queue.len(), 4);
    let w = metrics.windowed_attempts();
    assert_eq!((w.succeeded, w.failed), (3, 9));
}

#[tokio::test(start_paused = true)]
async fn percentiles_come_from_recorded_latencies() {
    let metrics = Arc::new(ListenerMetrics::new("latency"));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_attempt(metrics.clone()))
        .service(inner);
    for i in 0..100u64 {
        let d = if i < 60 {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        svc.clone().oneshot(Call::Slow(d)).await.unwrap();
    }
    let l = metrics.snapshot().attempt_latency;
    assert_eq!(l.count, 100);
    assert!(within_1pct(l.p50, Duration::from_millis(10)), "{l:?}");
    assert!(within_1pct(l.p90, Duration::from_millis(100)), "{l:?}");
    assert!(within_1pct(l.p99, Duration::from_millis(100)), "{l:?}");
    assert!(within_1pct(l.max, Duration::from_millis(100)), "{l:?}");
}

#[tokio::test(start_paused = true)]
async fn a_latency_above_the_range_saturates_without_error() {
    let metrics = Arc::new(ListenerMetrics::new("slow"));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_event(metrics.clone()))
        .service(inner);
    svc.oneshot(Call::Slow(Duration::from_secs(5 * 3600)))
        .await
        .unwrap();
    let l = metrics.snapshot().event_latency;
    assert_eq!(l.count, 1);
    assert!(within_1pct(l.max, Duration::from_secs(3600)), "{l:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_event_leaves_in_flight_without_counting_an_outcome() {
    let metrics = Arc::new(ListenerMetrics::new("drop"));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_event(metrics.clone()))
        .service(inner);
    let task = tokio::spawn(svc.oneshot(Call::Hang));
    support::settle().await;
    assert_eq!(metrics.snapshot().in_flight, 1);
    task.abort();
    let _ = task.await;
    let s = metrics.snapshot();
    assert_eq!((s.in_flight, s.events_processed), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_health_window_forgets_old_attempts() {
    let metrics = Arc::new(ListenerMetrics::with_health_window(
        "w",
        Duration::from_secs(10),
    ));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_attempt(metrics.clone()))
        .service(inner);
    let _ = svc.clone().oneshot(Call::Fail).await;
    assert_eq!(metrics.windowed_attempts().failed, 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(metrics.windowed_attempts().failed, 0);
    assert_eq!(metrics.snapshot().attempt_failures, 1, "totals are kept");
}
