//! The timeout layer, under paused time.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{handler, Call};
use tower::{ServiceBuilder, ServiceExt};
use tower_listener::{Error, ListenerMetrics, MetricsLayer, TimeoutLayer};

#[tokio::test(start_paused = true)]
async fn an_attempt_past_the_limit_fails_with_timeout_and_its_future_is_dropped() {
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(250)).unwrap())
        .service(inner);
    let started = tokio::time::Instant::now();
    match svc.oneshot(Call::Hang).await {
        Err(Error::Timeout { limit }) => assert_eq!(limit, Some(Duration::from_millis(250))),
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(
        probe.dropped(),
        1,
        "the inner future was dropped (its drop guard ran)"
    );
    assert_eq!(probe.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_inside_the_limit_is_untouched() {
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(250)).unwrap())
        .service(inner);
    assert_eq!(
        svc.clone()
            .oneshot(Call::Slow(Duration::from_millis(249)))
            .await
            .unwrap(),
        "slow"
    );
    assert!(matches!(
        svc.oneshot(Call::Fail).await,
        Err(Error::Handler(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_per_attempt_metrics_layer_counts_the_timeouts_inside_it() {
    let metrics = Arc::new(ListenerMetrics::new("t"));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_attempt(metrics.clone()))
        .layer(TimeoutLayer::new(Duration::from_millis(10)).unwrap())
        .service(inner);
    let _ = svc.oneshot(Call::Hang).await;
    let stats = metrics.snapshot();
    assert_eq!(
        (stats.timeouts, stats.attempts, stats.attempt_failures),
        (1, 1, 1)
    );
    assert_eq!(metrics.windowed_attempts().failed, 1);
    // The timed-out attempt's latency is the time it ran: its limit.
    assert!(stats.attempt_latency.max >= Duration::from_millis(10));
}

#[test]
fn bad_timeout_names_the_field() {
    for limit in [Duration::ZERO, Duration::MAX] {
        assert!(matches!(
            TimeoutLayer::new(limit),
            Err(Error::InvalidConfig {
                field: "timeout",
                ..
            })
        ));
    }
}
