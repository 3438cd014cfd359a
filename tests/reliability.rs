//! Reliability under faults, load, cancellation and bad input: panic isolation, shutdown under
//! load, cancellation at every await point of the stack, a concurrent stress of one breaker, and random
//! configurations that must be refused cleanly or work.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use support::events::{event, scripted};
use support::faults::{faulty, FaultPlan};
use support::{handler, settle, Call};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_listener::{
    dead_letter_fn, Backoff, CircuitBreakerLayer, CircuitConfig, CircuitState, ConcurrencyConfig,
    ConcurrencyLimitLayer, DeadLetter, DeadLetterConfig, DeadLetterReason, Error, Event, LimitMode,
    ListenerConfig, ListenerManager, ManagerConfig, RetryLayer, RetryPolicy, TimeoutLayer,
};

// ---- Panic isolation ----

#[tokio::test(start_paused = true)]
async fn panics_in_user_code_are_contained_counted_and_reported() {
    support::quiet_injected_panics();
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (a, _) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: RetryPolicy {
                initial_delay: Duration::from_millis(1),
                ..RetryPolicy::default()
            }
            .with_condition(|e| match e {
                Error::Handler(_) => panic!("the condition panics"),
                _ => true,
            }),
            circuit: CircuitConfig {
                failure_threshold: 100,
                ..Default::default()
            }
            .on_state_change(|_| panic!("hook panics")),
            dead_letter: DeadLetterConfig::to_sink(dead_letter_fn(|_: DeadLetter<Event>| {
                panic!("sink panics")
            }))
            .capture_only(|r| {
                if r == DeadLetterReason::Exhausted {
                    panic!("filter panics")
                } else {
                    true
                }
            }),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();

    // A handler panic: four attempts (the condition retries panics), each counted; then the capture filter
    // panics (reason Exhausted) and the sink panics.
    assert!(matches!(
        m.process("a", event("p", "panic", 0)).await,
        Err(Error::Panicked { .. })
    ));
    // A handler error: the retry condition panics (so no retry), then the sink panics.
    assert!(matches!(
        m.process("a", event("f", "fail", 0)).await,
        Err(Error::Handler(_))
    ));
    // The hook panics on every transition.
    m.circuit_breaker("a").unwrap().force_open();
    m.circuit_breaker("a").unwrap().reset();

    let s = m.listener_stats("a").unwrap();
    assert_eq!(s.panics, 4 + 1 + 1 + 1 + 1 + 2, "{s:?}");
    assert_eq!((s.dead_letter_failures, s.events_failed), (2, 2));
    // Nothing is poisoned: the listener still works.
    m.process("a", event("ok", "ok", 0)).await.unwrap();
    m.stop(Duration::from_secs(1)).await.unwrap();
}

// ---- Shutdown under load ----

#[tokio::test(start_paused = true)]
async fn stop_under_load_finishes_by_its_deadline_and_accounts_for_every_event() {
    support::quiet_injected_panics();
    let m = ListenerManager::new(ManagerConfig {
        workers: 64,
        queue: 10_000,
        ..Default::default()
    })
    .unwrap();
    let dead = Arc::new(AtomicUsize::new(0));
    let mut records = Vec::new();
    for i in 0..4 {
        let id = format!("l{i}");
        let (listener, record) = faulty(
            &id,
            FaultPlan {
                seed: i,
                fail: 40,
                panic: 0,
                hang: 20,
                slow: 30,
                slow_for: Duration::from_secs(1),
                outage: None,
            },
        );
        let d = dead.clone();
        m.register(
            listener,
            ListenerConfig {
                concurrency: 32,
                timeout: Duration::from_secs(5),
                retry_policy: RetryPolicy {
                    max_retries: 5,
                    initial_delay: Duration::from_secs(2),
                    ..Default::default()
                },
                circuit: CircuitConfig::disabled(),
                dead_letter: DeadLetterConfig::to_sink(dead_letter_fn(
                    move |_: DeadLetter<Event>| {
                        d.fetch_add(1, Ordering::SeqCst);
                    },
                )),
                ..Default::default()
            },
        )
        .unwrap();
        records.push(record);
    }
    m.start().await.unwrap();
    let mut accepted = 0u64;
    for n in 0..5_000u64 {
        let id = format!("l{}", n % 4);
        if m.dispatch(
            &id,
            Event::new(format!("e{n}"), "work", serde_json::json!(n)),
        )
        .is_ok()
        {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5_000);
    tokio::time::sleep(Duration::from_secs(3)).await; // many are now running or between retries
    let before = tokio::time::Instant::now();
    let report = m.stop(Duration::from_secs(2)).await.unwrap();
    assert!(
        before.elapsed() <= Duration::from_secs(2) + Duration::from_millis(1),
        "{:?}",
        before.elapsed()
    );
    assert!(!report.drained && report.cancelled > 0);
    let succeeded: u64 = records
        .iter()
        .map(|r| {
            r.succeeded
                .lock()
                .unwrap()
                .values()
                .map(|&v| u64::from(v))
                .sum::<u64>()
        })
        .sum();
    assert_eq!(
        succeeded + dead.load(Ordering::SeqCst) as u64,
        accepted,
        "every event is accounted for"
    );
    let s = m.stats();
    assert_eq!((s.events_processed, s.in_flight), (accepted, 0));
}

// ---- Cancellation at every await point ----

#[tokio::test(start_paused = true)]
async fn dropping_the_future_at_any_await_point_leaks_nothing() {
    let limit = ConcurrencyLimitLayer::new(ConcurrencyConfig::new(1, LimitMode::Wait)).unwrap();
    let breaker = CircuitBreakerLayer::new(CircuitConfig {
        failure_threshold: 1,
        success_threshold: 1,
        timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let handle = breaker.handle();
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryPolicy {
                max_retries: 1,
                initial_delay: Duration::from_secs(5),
                ..Default::default()
            })
            .unwrap(),
        )
        .layer(breaker)
        .layer(limit.clone())
        .layer(TimeoutLayer::new(Duration::from_secs(60)).unwrap())
        .service(inner);

    // 1. While holding the permit.
    let running = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    assert_eq!(limit.available_permits(), 0);
    // 2. Before the permit: waiting behind it.
    let waiting = tokio::spawn(svc.clone().oneshot(Call::Ok));
    settle().await;
    waiting.abort();
    let _ = waiting.await;
    running.abort();
    let _ = running.await;
    assert_eq!(
        limit.available_permits(),
        1,
        "both the held and the awaited permit are back"
    );
    assert_eq!(probe.running(), 0);

    // 3. During the backoff sleep (the failure opened the breaker; the retry waits 5 s).
    let backing_off = tokio::spawn(svc.clone().oneshot(Call::Fail));
    settle().await;
    assert_eq!(handle.state(), CircuitState::Open);
    backing_off.abort();
    let _ = backing_off.await;
    assert_eq!(limit.available_permits(), 1);

    // 4. During a half-open probe.
    tokio::time::advance(Duration::from_secs(10)).await;
    let probing = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    probing.abort();
    let _ = probing.await;
    assert_eq!(limit.available_permits(), 1);
    // The probe slot came back: the next call is admitted as a probe and closes the breaker.
    svc.clone().oneshot(Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(probe.running(), 0);
}

// ---- Concurrency: one breaker hammered by many tasks around its transitions ----

#[test]
fn a_hammered_breaker_never_admits_more_probes_than_allowed_nor_closes_early() {
    const MAX_PROBES: usize = 2;
    const SUCCESSES_TO_CLOSE: u32 = 3;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    #[derive(Debug)]
    enum Log {
        Transition(CircuitState, CircuitState),
        ProbeSucceeded,
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let hook_log = log.clone();
    let breaker = CircuitBreakerLayer::new(
        CircuitConfig {
            failure_threshold: 3,
            success_threshold: SUCCESSES_TO_CLOSE,
            half_open_max_calls: MAX_PROBES as u32,
            timeout: Duration::from_millis(20),
            ..Default::default()
        }
        .on_state_change(move |c| hook_log.lock().unwrap().push(Log::Transition(c.from, c.to))),
    )
    .unwrap();
    let handle = breaker.handle();
    let probes = Arc::new(AtomicUsize::new(0));
    let max_probes = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let (handle, probes, max_probes, calls, log) = (
            handle.clone(),
            probes.clone(),
            max_probes.clone(),
            calls.clone(),
            log.clone(),
        );
        breaker.layer(tower::service_fn(move |_: ()| {
            let (handle, probes, max_probes, log) = (
                handle.clone(),
                probes.clone(),
                max_probes.clone(),
                log.clone(),
            );
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                // Admission and this check are synchronous: a call that sees half-open was admitted as a probe.
                let probe = handle.state() == CircuitState::HalfOpen;
                if probe {
                    let now = probes.fetch_add(1, Ordering::SeqCst) + 1;
                    max_probes.fetch_max(now, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
                let fail = fastrand::Rng::with_seed(n as u64).u8(0..100) < 40;
                if probe {
                    if !fail {
                        log.lock().unwrap().push(Log::ProbeSucceeded);
                    }
                    probes.fetch_sub(1, Ordering::SeqCst);
                }
                if fail {
                    Err(Error::handler(support::ScriptedFailure))
                } else {
                    Ok(())
                }
            }
        }))
    };
    rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let end = tokio::time::Instant::now() + Duration::from_millis(300);
                    while tokio::time::Instant::now() < end {
                        let _ = svc.ready().await.unwrap().call(()).await;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert!(
        max_probes.load(Ordering::SeqCst) <= MAX_PROBES,
        "{} probes ran at once",
        max_probes.load(Ordering::SeqCst)
    );
    let log = log.lock().unwrap();
    let mut successes = 0;
    let mut closes = 0;
    for entry in log.iter() {
        match entry {
            Log::Transition(CircuitState::Open, CircuitState::HalfOpen) => successes = 0,
            Log::Transition(CircuitState::HalfOpen, CircuitState::Closed) => {
                assert!(
                    successes >= SUCCESSES_TO_CLOSE,
                    "closed after {successes} probe successes"
                );
                closes += 1;
            }
            Log::ProbeSucceeded => successes += 1,
            Log::Transition(..) => {}
        }
    }
    assert!(closes > 0, "the run must exercise the transitions: {log:?}");
}

// ---- Bad input ----

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (1u64..10_000).prop_map(Duration::from_millis),
        (0u64..u64::MAX).prop_map(Duration::from_secs),
        (0u64..u64::MAX).prop_map(Duration::from_nanos),
    ]
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(0.0),
        Just(1.0),
        Just(2.0),
        0.0f64..1.0
    ]
}

prop_compose! {
    fn listener_config()(
        concurrency in prop_oneof![Just(0usize), Just(usize::MAX), 1usize..64],
        timeout in duration(), initial in duration(), max_delay in proptest::option::of(duration()),
        factor in prop_oneof![Just(f64::NAN), Just(0.0), Just(1.0), Just(2.0), Just(f64::MAX), Just(f64::INFINITY)],
        thresholds in (0u32..4, 0u32..4, 0u32..4, 0u32..4),
        circuit_times in (duration(), duration(), proptest::option::of(duration()), proptest::option::of(duration())),
        failure_rate in proptest::option::of(rate()),
        health in (rate(), rate(), duration()),
        wait_for in duration(),
        mode in 0u8..3,
    ) -> ListenerConfig {
        ListenerConfig {
            concurrency,
            concurrency_mode: [LimitMode::Wait, LimitMode::WaitFor(wait_for), LimitMode::Reject][mode as usize],
            timeout,
            retry_policy: RetryPolicy {
                max_retries: thresholds.3,
                initial_delay: initial,
                max_delay,
                backoff: Backoff::Exponential { factor },
                ..Default::default()
            },
            circuit: CircuitConfig {
                failure_threshold: thresholds.0,
                success_threshold: thresholds.1,
                half_open_max_calls: thresholds.2,
                timeout: circuit_times.0,
                sliding_window: circuit_times.1,
                slow_call_threshold: circuit_times.2,
                open_jitter: circuit_times.3,
                failure_rate_threshold: failure_rate,
                minimum_calls: thresholds.3,
                ..Default::default()
            },
            health_window: health.2,
            health: tower_listener::HealthThresholds { degraded: health.0, unhealthy: health.1 },
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any configuration is either refused with `InvalidConfig` naming a field, or accepted and then works:
    /// it processes an event (which fails, is retried as configured, and times out at worst) without
    /// panicking or overflowing `Instant` arithmetic.
    #[test]
    fn any_config_is_refused_cleanly_or_works(config in listener_config()) {
        support::quiet_injected_panics();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let m = ListenerManager::new(ManagerConfig::default()).unwrap();
            let (listener, _) = scripted("l");
            match m.register(listener, config) {
                Err(Error::InvalidConfig { field, reason }) => {
                    assert!(!field.is_empty() && !reason.is_empty());
                }
                Err(other) => panic!("unexpected error {other:?}"),
                Ok(()) => {
                    m.start().await.unwrap();
                    let _ = m.process("l", event("e", "fail", 0)).await;
                    let _ = m.process("l", event("h", "hang", 0)).await;
                    m.stop(Duration::from_secs(1)).await.unwrap();
                }
            }
        });
    }
}
