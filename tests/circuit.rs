//! The circuit breaker, behaviour by behaviour, under paused time.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{handler, settle, BoxFut, Call, Probe};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_listener::circuit::CircuitBreaker;
use tower_listener::{
    CallOutcome, CircuitBreakerHandle, CircuitBreakerLayer, CircuitConfig, CircuitState,
    ConcurrencyConfig, ConcurrencyLimitLayer, Error, LimitMode,
};

fn config(failures: u32) -> CircuitConfig {
    CircuitConfig {
        failure_threshold: failures,
        success_threshold: 2,
        timeout: Duration::from_secs(30),
        sliding_window: Duration::from_secs(10),
        ..CircuitConfig::default()
    }
}

/// A breaker with `config` around a fresh scripted handler: the breaker's handle, the guarded service, and
/// the handler's probe.
fn guarded(
    config: CircuitConfig,
) -> (
    CircuitBreakerHandle,
    CircuitBreaker<
        impl Service<Call, Response = &'static str, Error = Error, Future = BoxFut> + Clone + Send,
    >,
    Probe,
) {
    let layer = CircuitBreakerLayer::new(config).unwrap();
    let (inner, probe) = handler();
    (layer.handle(), layer.layer_service(inner), probe)
}

async fn send<S>(svc: &mut S, call: Call) -> Result<&'static str, Error>
where
    S: Service<Call, Response = &'static str, Error = Error>,
{
    svc.ready().await?.call(call).await
}

#[tokio::test(start_paused = true)]
async fn opens_at_exactly_failure_threshold_failures_inside_the_window() {
    let (handle, mut svc, probe) = guarded(config(5));
    for i in 0..4 {
        assert!(matches!(
            send(&mut svc, Call::Fail).await,
            Err(Error::Handler(_))
        ));
        assert_eq!(
            handle.state(),
            CircuitState::Closed,
            "after {} failures",
            i + 1
        );
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(send(&mut svc, Call::Fail).await.is_err());
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(probe.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn does_not_open_when_failures_are_spread_wider_than_the_window() {
    let (handle, mut svc, _) = guarded(config(5));
    // One failure every 3 s against a 10 s window: at most 4 are ever inside it.
    for _ in 0..20 {
        let _ = send(&mut svc, Call::Fail).await;
        assert_eq!(handle.state(), CircuitState::Closed);
        tokio::time::advance(Duration::from_secs(3)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn w_failures_in_a_row_after_1000_successes_open_the_breaker() {
    let (handle, mut svc, _) = guarded(config(5));
    for _ in 0..1_000 {
        send(&mut svc, Call::Ok).await.unwrap();
    }
    for _ in 0..5 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn rejects_while_open_without_calling_the_inner_service() {
    let layer = CircuitBreakerLayer::new(config(1)).unwrap();
    let (inner, probe) = handler();
    let mut svc = layer.layer_service(inner);
    let _ = send(&mut svc, Call::Fail).await;
    for _ in 0..100 {
        match send(&mut svc, Call::Ok).await {
            Err(Error::CircuitOpen { retry_after }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_reports_the_time_left_and_it_falls_as_time_advances() {
    let (handle, mut svc, _probe) = guarded(config(1));
    assert_eq!(handle.retry_after(), None);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(20)));
    // A rejection carries the same figure (a source naks with it).
    match send(&mut svc, Call::Ok).await {
        Err(Error::CircuitOpen { retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(20)))
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    tokio::time::advance(Duration::from_millis(19_500)).await;
    assert_eq!(handle.retry_after(), Some(Duration::from_millis(500)));
    // Due: the next call is a probe, so nothing is left to wait for.
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(handle.retry_after(), None);
    assert_eq!(handle.state(), CircuitState::Open);
    // A failed probe reopens it for the full timeout again.
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn the_first_call_after_the_timeout_is_admitted_as_a_probe() {
    let (handle, mut svc, probe) = guarded(config(1));
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert!(
        matches!(send(&mut svc, Call::Ok).await, Err(Error::CircuitOpen { retry_after: Some(d) }) if d == Duration::from_millis(1))
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(probe.calls(), 2);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn only_half_open_max_calls_probes_run_at_once() {
    let layer = CircuitBreakerLayer::new(CircuitConfig {
        half_open_max_calls: 2,
        ..config(1)
    })
    .unwrap();
    let (inner, probe) = handler();
    let svc = layer.layer_service(inner);
    let _ = svc.clone().oneshot(Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let p1 = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(1))));
    let p2 = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(1))));
    settle().await;
    assert_eq!(probe.running(), 2);
    let third = svc.clone().oneshot(Call::Ok).await;
    assert!(
        matches!(third, Err(Error::CircuitOpen { retry_after: None })),
        "{third:?}"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(p1.await.unwrap().is_ok());
    assert!(p2.await.unwrap().is_ok());
    assert_eq!(probe.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn closes_after_success_threshold_consecutive_probe_successes() {
    let (handle, mut svc, _) = guarded(CircuitConfig {
        success_threshold: 3,
        ..config(1)
    });
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    for _ in 0..2 {
        send(&mut svc, Call::Ok).await.unwrap();
        assert_eq!(handle.state(), CircuitState::HalfOpen);
    }
    send(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    // The window was cleared on closing: one more failure (threshold 1) opens it again, but nothing old
    // is counted. Check with threshold semantics: a success leaves it closed.
    send(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_window_is_cleared_when_the_breaker_closes() {
    let (handle, mut svc, _) = guarded(CircuitConfig {
        success_threshold: 1,
        sliding_window: Duration::from_secs(600),
        ..config(3)
    });
    for _ in 0..3 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    send(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    // Three old failures are still inside the 600 s window by time, but the window was cleared.
    for _ in 0..2 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens_with_a_fresh_timeout() {
    let (handle, mut svc, probe) = guarded(config(1));
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    send(&mut svc, Call::Ok).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
    match send(&mut svc, Call::Ok).await {
        Err(Error::CircuitOpen { retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)))
        }
        other => panic!("{other:?}"),
    }
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(send(&mut svc, Call::Ok).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(probe.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot() {
    let (handle, svc, probe) = guarded(config(1));
    let _ = svc.clone().oneshot(Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe_task = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    assert!(matches!(
        svc.clone().oneshot(Call::Ok).await,
        Err(Error::CircuitOpen { .. })
    ));
    probe_task.abort();
    let _ = probe_task.await;
    assert_eq!(probe.dropped(), 1);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // The slot is free again, and the cancelled probe counted as neither success nor failure.
    svc.clone().oneshot(Call::Ok).await.unwrap();
    svc.clone().oneshot(Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_result_from_before_a_transition_is_ignored() {
    let (handle, svc, _) = guarded(config(2));
    // A slow failing call starts while closed...
    let slow = tokio::spawn(svc.clone().oneshot(Call::SlowFail(Duration::from_secs(5))));
    settle().await;
    // ...the breaker is reset (a new generation) before it finishes...
    let _ = svc.clone().oneshot(Call::Fail).await;
    handle.reset();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(slow.await.unwrap().is_err());
    // ...so its failure is not counted: one new failure does not reach the threshold of 2.
    let _ = svc.clone().oneshot(Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Closed);
    let _ = svc.clone().oneshot(Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_stale_probe_result_does_not_close_a_reopened_breaker() {
    let (handle, svc, _) = guarded(CircuitConfig {
        success_threshold: 1,
        half_open_max_calls: 2,
        ..config(1)
    });
    let _ = svc.clone().oneshot(Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let slow_probe = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(2))));
    settle().await;
    let _ = svc.clone().oneshot(Call::Fail).await; // second probe fails: reopen
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(2)).await;
    slow_probe.await.unwrap().unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn reading_the_state_never_changes_it() {
    let (handle, mut svc, _) = guarded(config(1));
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..10 {
        assert_eq!(handle.state(), CircuitState::Open);
    }
    send(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn force_open_force_closed_and_reset_work() {
    let (handle, mut svc, probe) = guarded(config(1));
    handle.force_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(matches!(
        send(&mut svc, Call::Ok).await,
        Err(Error::CircuitOpen { retry_after: None })
    ));
    assert_eq!(probe.calls(), 0);
    handle.force_closed();
    for _ in 0..10 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Disabled);
    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(probe.calls(), 11);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_mode_honours_minimum_calls() {
    let (handle, mut svc, _) = guarded(CircuitConfig {
        failure_rate_threshold: Some(0.5),
        minimum_calls: 10,
        ..config(1)
    });
    // 9 calls, all failures: 100 % but under minimum_calls.
    for _ in 0..9 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);

    // A ratio under the threshold never opens.
    let (handle, mut svc, _) = guarded(CircuitConfig {
        failure_rate_threshold: Some(0.5),
        minimum_calls: 10,
        ..config(1)
    });
    for i in 0..100 {
        let call = if i % 3 == 0 { Call::Fail } else { Call::Ok };
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn overloaded_from_an_inner_limit_is_not_a_failure() {
    let (handle, mut svc, _) = guarded(config(1));
    for _ in 0..10 {
        assert!(matches!(
            send(&mut svc, Call::Overloaded).await,
            Err(Error::Overloaded)
        ));
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_returns_at_once_while_the_inner_limit_is_saturated() {
    let breaker = CircuitBreakerLayer::new(config(1)).unwrap();
    let handle = breaker.handle();
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .layer(ConcurrencyLimitLayer::new(ConcurrencyConfig::new(1, LimitMode::Wait)).unwrap())
        .service(inner);
    let hog = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    handle.force_open();
    // With the only permit held forever, a rejected call must still answer without waiting.
    let rejected =
        tokio::time::timeout(Duration::from_millis(1), svc.clone().oneshot(Call::Ok)).await;
    assert!(
        matches!(rejected, Ok(Err(Error::CircuitOpen { .. }))),
        "{rejected:?}"
    );
    hog.abort();
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_as_failures() {
    let (handle, mut svc, _) = guarded(CircuitConfig {
        slow_call_threshold: Some(Duration::from_millis(100)),
        ..config(2)
    });
    send(&mut svc, Call::Slow(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    send(&mut svc, Call::Slow(Duration::from_millis(150)))
        .await
        .unwrap();
    send(&mut svc, Call::Slow(Duration::from_millis(150)))
        .await
        .unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_classifier_decides_what_counts() {
    let layer =
        CircuitBreakerLayer::new(config(1).with_classifier(|_| CallOutcome::Ignored)).unwrap();
    let handle = layer.handle();
    let (inner, _) = handler();
    let mut svc = layer.layer_service(inner);
    for _ in 0..5 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_state_change_hook_sees_every_transition_even_when_it_panics() {
    support::quiet_injected_panics();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = CircuitBreakerLayer::new(config(1).on_state_change(move |change| {
        log.lock().unwrap().push((change.from, change.to));
        panic!("a hook that panics must not break the breaker");
    }))
    .unwrap();
    let (inner, _) = handler();
    let mut svc = layer.layer_service(inner);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    send(&mut svc, Call::Ok).await.unwrap();
    send(&mut svc, Call::Ok).await.unwrap();
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn open_jitter_spreads_the_open_time_within_its_bound() {
    for _ in 0..20 {
        let layer = CircuitBreakerLayer::new(CircuitConfig {
            open_jitter: Some(Duration::from_secs(10)),
            ..config(1)
        })
        .unwrap();
        let (inner, _) = handler();
        let mut svc = layer.layer_service(inner);
        let _ = send(&mut svc, Call::Fail).await;
        match send(&mut svc, Call::Ok).await {
            Err(Error::CircuitOpen {
                retry_after: Some(d),
            }) => assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(40),
                "{d:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_disabled_breaker_lets_everything_through() {
    let (handle, mut svc, probe) = guarded(CircuitConfig::disabled());
    for _ in 0..20 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), CircuitState::Disabled);
    assert_eq!(probe.calls(), 20);
}

#[test]
fn bad_breaker_config_names_the_field() {
    let cases: Vec<(CircuitConfig, &str)> = vec![
        (
            CircuitConfig {
                failure_threshold: 0,
                ..Default::default()
            },
            "circuit.failure_threshold",
        ),
        (
            CircuitConfig {
                success_threshold: 0,
                ..Default::default()
            },
            "circuit.success_threshold",
        ),
        (
            CircuitConfig {
                half_open_max_calls: 0,
                ..Default::default()
            },
            "circuit.half_open_max_calls",
        ),
        (
            CircuitConfig {
                timeout: Duration::ZERO,
                ..Default::default()
            },
            "circuit.timeout",
        ),
        (
            CircuitConfig {
                timeout: Duration::MAX,
                ..Default::default()
            },
            "circuit.timeout",
        ),
        (
            CircuitConfig {
                sliding_window: Duration::ZERO,
                ..Default::default()
            },
            "circuit.sliding_window",
        ),
        (
            CircuitConfig {
                failure_rate_threshold: Some(0.0),
                ..Default::default()
            },
            "circuit.failure_rate_threshold",
        ),
        (
            CircuitConfig {
                failure_rate_threshold: Some(f64::NAN),
                ..Default::default()
            },
            "circuit.failure_rate_threshold",
        ),
        (
            CircuitConfig {
                failure_rate_threshold: Some(0.5),
                minimum_calls: 0,
                ..Default::default()
            },
            "circuit.minimum_calls",
        ),
        (
            CircuitConfig {
                slow_call_threshold: Some(Duration::ZERO),
                ..Default::default()
            },
            "circuit.slow_call_threshold",
        ),
        (
            CircuitConfig {
                open_jitter: Some(Duration::MAX),
                ..Default::default()
            },
            "circuit.open_jitter",
        ),
    ];
    for (config, want) in cases {
        match CircuitBreakerLayer::new(config) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("expected InvalidConfig for {want}, got {other:?}"),
        }
    }
}

trait LayerService {
    fn layer_service<S>(&self, inner: S) -> tower_listener::circuit::CircuitBreaker<S>;
}

impl LayerService for CircuitBreakerLayer {
    fn layer_service<S>(&self, inner: S) -> tower_listener::circuit::CircuitBreaker<S> {
        tower::Layer::layer(self, inner)
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_classifier_counts_failed_responses() {
    let layer = CircuitBreakerLayer::new(config(2).classify_responses(|status: &u16| {
        if *status >= 500 {
            CallOutcome::Failure
        } else {
            CallOutcome::Success
        }
    }))
    .unwrap();
    let handle = layer.handle();
    let svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|status: u16| async move { Ok::<u16, Error>(status) }),
    );
    assert_eq!(svc.clone().oneshot(200).await.unwrap(), 200);
    assert_eq!(svc.clone().oneshot(503).await.unwrap(), 503);
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(svc.clone().oneshot(500).await.unwrap(), 500);
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(matches!(
        svc.oneshot(200).await,
        Err(Error::CircuitOpen { .. })
    ));
}
