//! The retry layer, under paused time.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{handler, settle, Call, ScriptedFailure};
use tokio::time::Instant;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_listener::{
    Backoff, CircuitBreakerLayer, CircuitConfig, ConcurrencyLimitLayer, Error, Jitter, RetryBudget,
    RetryLayer, RetryPolicy, TimeoutLayer,
};

/// A handler that fails every call and records when each one happened.
fn failing_clock() -> (
    impl tower::Service<(), Response = (), Error = Error, Future = impl Send> + Clone + Send,
    Arc<Mutex<Vec<Instant>>>,
) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let log = times.clone();
    let svc = service_fn(move |()| {
        log.lock().unwrap().push(Instant::now());
        async { Err::<(), _>(Error::handler(ScriptedFailure)) }
    });
    (svc, times)
}

fn gaps(times: &[Instant]) -> Vec<u128> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect()
}

async fn delays_of(policy: RetryPolicy) -> Vec<u128> {
    let (svc, times) = failing_clock();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .service(svc);
    assert!(svc.oneshot(()).await.is_err());
    let times = times.lock().unwrap();
    gaps(&times)
}

fn policy(backoff: Backoff, retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: retries,
        initial_delay: Duration::from_millis(100),
        max_delay: None,
        backoff,
        ..RetryPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn an_always_failing_handler_runs_one_plus_max_retries_times() {
    for retries in [0, 1, 3, 7] {
        let (inner, probe) = handler();
        let svc = ServiceBuilder::new()
            .layer(
                RetryLayer::new(RetryPolicy {
                    max_retries: retries,
                    ..Default::default()
                })
                .unwrap(),
            )
            .service(inner);
        assert!(matches!(
            svc.oneshot(Call::Fail).await,
            Err(Error::Handler(_))
        ));
        assert_eq!(probe.calls(), 1 + retries as usize);
    }
}

#[tokio::test(start_paused = true)]
async fn the_delay_table_matches_each_backoff_formula() {
    assert_eq!(
        delays_of(policy(Backoff::Fixed, 5)).await,
        [100, 100, 100, 100, 100]
    );
    assert_eq!(
        delays_of(policy(Backoff::Linear, 5)).await,
        [100, 200, 300, 400, 500]
    );
    assert_eq!(
        delays_of(policy(Backoff::exponential(), 5)).await,
        [100, 200, 400, 800, 1600]
    );
    assert_eq!(
        delays_of(policy(Backoff::Exponential { factor: 3.0 }, 4)).await,
        [100, 300, 900, 2700]
    );
    // The Go package's documented table, under its true name.
    assert_eq!(
        delays_of(policy(Backoff::Quadratic, 5)).await,
        [100, 400, 900, 1600, 2500]
    );
}

#[tokio::test(start_paused = true)]
async fn max_delay_caps_every_delay() {
    let capped = RetryPolicy {
        max_delay: Some(Duration::from_millis(500)),
        ..policy(Backoff::exponential(), 6)
    };
    assert_eq!(delays_of(capped).await, [100, 200, 400, 500, 500, 500]);
}

#[tokio::test(start_paused = true)]
async fn no_max_delay_means_no_cap() {
    let uncapped = policy(Backoff::exponential(), 11);
    let delays = delays_of(uncapped).await;
    assert_eq!(delays.last(), Some(&102_400)); // 100 ms · 2^10, far past the default 30 s cap
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_inside_their_bounds_and_repeat_with_a_seed() {
    let jittered = |jitter, seed| RetryPolicy {
        jitter,
        seed: Some(seed),
        max_delay: Some(Duration::from_millis(1_000)),
        ..policy(Backoff::exponential(), 8)
    };
    let base = delays_of(jittered(Jitter::None, 1)).await;
    for seed in 0..10 {
        let full = delays_of(jittered(Jitter::Full, seed)).await;
        let equal = delays_of(jittered(Jitter::Equal, seed)).await;
        let dec = delays_of(jittered(Jitter::Decorrelated, seed)).await;
        for i in 0..base.len() {
            assert!(full[i] <= base[i], "full {full:?} vs {base:?}");
            assert!(
                equal[i] >= base[i] / 2 && equal[i] <= base[i],
                "equal {equal:?}"
            );
            assert!(dec[i] >= 100 && dec[i] <= 1_000, "decorrelated {dec:?}");
        }
        assert_eq!(
            full,
            delays_of(jittered(Jitter::Full, seed)).await,
            "same seed, same delays"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_condition_stops_retries_of_non_retryable_errors() {
    let (inner, probe) = handler();
    let policy = RetryPolicy::default().with_condition(|e| !matches!(e, Error::Handler(_)));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .service(inner);
    assert!(svc.oneshot(Call::Fail).await.is_err());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_condition_means_no_retry() {
    support::quiet_injected_panics();
    let (inner, probe) = handler();
    let policy = RetryPolicy::default().with_condition(|_| panic!("bad condition: injected panic"));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .service(inner);
    assert!(matches!(
        svc.oneshot(Call::Fail).await,
        Err(Error::Handler(_))
    ));
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_are_never_retried_by_default() {
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()).unwrap())
        .service(inner);
    assert!(matches!(
        svc.oneshot(Call::Overloaded).await,
        Err(Error::Overloaded)
    ));
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_panics_are_retried_by_default() {
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy {
                max_retries: 2,
                ..Default::default()
            })
            .unwrap(),
        )
        .layer(TimeoutLayer::new(Duration::from_millis(10)).unwrap())
        .service(inner);
    assert!(matches!(
        svc.oneshot(Call::Hang).await,
        Err(Error::Timeout { .. })
    ));
    assert_eq!(probe.calls(), 3);
    assert_eq!(probe.dropped(), 3);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_cancels_the_backoff_sleep() {
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()).unwrap())
        .service(inner);
    let task = tokio::spawn(svc.oneshot(Call::Fail));
    settle().await;
    assert_eq!(probe.calls(), 1); // now sleeping 100 ms before the first retry
    task.abort();
    let _ = task.await;
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(probe.calls(), 1);
}

/// A handler behind a retry layer that would retry 10 times but for `budget`.
fn retried_within(
    budget: RetryBudget,
) -> (
    impl tower::Service<Call, Response = &'static str, Error = Error> + Clone,
    support::Probe,
) {
    let (inner, probe) = handler();
    let layer = RetryLayer::new(RetryPolicy {
        max_retries: 10,
        budget: Some(budget),
        ..Default::default()
    })
    .unwrap();
    (ServiceBuilder::new().layer(layer).service(inner), probe)
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_when_spent() {
    // A floor of one retry per second over one second, and no share of traffic: one retry in all.
    let (svc, probe) = retried_within(RetryBudget::new(Duration::from_secs(1), 1, 0.0).unwrap());
    assert!(svc.clone().oneshot(Call::Fail).await.is_err());
    assert_eq!(
        probe.calls(),
        2,
        "one first attempt plus the single budgeted retry"
    );
    assert!(svc.clone().oneshot(Call::Fail).await.is_err());
    assert_eq!(probe.calls(), 3, "budget spent: no retry");
}

#[tokio::test(start_paused = true)]
async fn each_retry_passes_the_breaker_again() {
    let breaker = CircuitBreakerLayer::new(CircuitConfig {
        failure_threshold: 2,
        ..Default::default()
    })
    .unwrap();
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy {
                max_retries: 5,
                ..Default::default()
            })
            .unwrap(),
        )
        .layer(breaker)
        .service(inner);
    // Two failures open the breaker; the third attempt is rejected and, being a rejection, not retried.
    assert!(matches!(
        svc.oneshot(Call::Fail).await,
        Err(Error::CircuitOpen { .. })
    ));
    assert_eq!(probe.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_permit_is_held_while_sleeping_between_retries() {
    let limit = ConcurrencyLimitLayer::new(1).unwrap();
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy {
                initial_delay: Duration::from_secs(10),
                ..Default::default()
            })
            .unwrap(),
        )
        .layer(limit.clone())
        .service(inner);
    let failing = tokio::spawn(svc.clone().oneshot(Call::Fail));
    settle().await;
    assert_eq!(
        limit.available_permits(),
        1,
        "the permit is free during the backoff"
    );
    // Another event runs on the single permit while the first one sleeps.
    let other = tokio::time::timeout(Duration::from_millis(1), svc.clone().oneshot(Call::Ok)).await;
    assert_eq!(other.unwrap().unwrap(), "ok");
    failing.abort();
    assert_eq!(probe.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retries_replay_the_same_request() {
    let seen = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy {
                max_retries: 2,
                ..Default::default()
            })
            .unwrap(),
        )
        .service(service_fn(move |n: u32| {
            s.fetch_add(n, Ordering::SeqCst);
            async { Err::<(), _>(Error::handler(ScriptedFailure)) }
        }));
    let _ = svc.oneshot(7).await;
    assert_eq!(seen.load(Ordering::SeqCst), 21);
}

#[test]
fn bad_retry_policy_names_the_field() {
    let cases: Vec<(RetryPolicy, &str)> = vec![
        (
            RetryPolicy {
                initial_delay: Duration::ZERO,
                ..Default::default()
            },
            "retry_policy.initial_delay",
        ),
        (
            RetryPolicy {
                initial_delay: Duration::MAX,
                max_delay: None,
                ..Default::default()
            },
            "retry_policy.initial_delay",
        ),
        (
            RetryPolicy {
                max_delay: Some(Duration::from_millis(50)),
                ..Default::default()
            },
            "retry_policy.max_delay",
        ),
        (
            RetryPolicy {
                max_delay: Some(Duration::ZERO),
                ..Default::default()
            },
            "retry_policy.max_delay",
        ),
        (
            RetryPolicy {
                backoff: Backoff::Exponential { factor: 0.5 },
                ..Default::default()
            },
            "retry_policy.backoff",
        ),
        (
            RetryPolicy {
                backoff: Backoff::Exponential {
                    factor: f64::INFINITY,
                },
                ..Default::default()
            },
            "retry_policy.backoff",
        ),
    ];
    for (policy, want) in cases {
        match RetryLayer::new(policy) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("expected InvalidConfig for {want}, got {other:?}"),
        }
    }
    for (ttl, min, pct) in [
        (0, 1, 0.2),
        (61, 1, 0.2),
        (10, 1, -1.0),
        (10, 1, 1e9),
        (10, u32::MAX, 0.2),
    ] {
        assert!(matches!(
            RetryBudget::new(Duration::from_secs(ttl), min, pct),
            Err(Error::InvalidConfig {
                field: "retry_policy.budget",
                ..
            })
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn first_attempts_earn_retries_in_the_budget() {
    // No floor, one retry earned per two first attempts (50 %): four events that succeed earn two retries.
    let (svc, probe) = retried_within(RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap());
    assert!(
        svc.clone().oneshot(Call::Fail).await.is_err(),
        "nothing earned yet"
    );
    assert_eq!(probe.calls(), 1, "no budget: no retry");
    for _ in 0..3 {
        svc.clone().oneshot(Call::Ok).await.unwrap();
    }
    // Four first attempts so far (the failed one included) earned two retries.
    assert!(svc.clone().oneshot(Call::Fail).await.is_err());
    assert_eq!(probe.calls(), 1 + 3 + 1 + 2, "two budgeted retries");
}

#[test]
fn a_budget_shows_its_settings() {
    let budget = RetryBudget::new(Duration::from_secs(10), 2, 0.5).unwrap();
    assert_eq!(
        format!("{budget:?}"),
        "RetryBudget { ttl: 10s, min_per_sec: 2, retry_percent: 0.5 }"
    );
}
