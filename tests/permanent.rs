//! Permanent errors: an event that can never succeed is run once, never retried, never counted against
//! the breaker or health, and dead-lettered at once with reason `Permanent`.

mod support;

use support::events::{event, scripted};
use support::Unreadable;
use tower_listener::{
    CircuitState, DeadLetterReason, Error, HealthStatus, ListenerConfig, ListenerManager,
    ManagerConfig, RetryPolicy,
};

/// A listener config that would retry 3 times and open its breaker after 5 failures.
fn strict() -> ListenerConfig {
    ListenerConfig {
        retry_policy: RetryPolicy {
            max_retries: 3,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn hundred_permanent_failures(config: ListenerConfig, kind: &str) {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (listener, calls) = scripted("orders");
    manager.register(listener, config).unwrap();
    manager.start().await.unwrap();

    for i in 0..100 {
        let outcome = manager
            .process("orders", event(format!("bad-{i}"), kind, 0))
            .await;
        match outcome {
            Err(Error::Permanent(source)) => assert!(!source.to_string().is_empty()),
            other => panic!("event {i}: {other:?}"),
        }
    }
    // Called once per event: no retry, whatever the retry policy says.
    assert_eq!(calls.get(), 100);
    // The breaker never saw a failure, and health ignores them.
    assert_eq!(
        manager.circuit_breaker("orders").unwrap().state(),
        CircuitState::Closed
    );
    assert_eq!(
        manager.listener_health("orders").unwrap(),
        HealthStatus::Healthy
    );
    assert_eq!(manager.health(), HealthStatus::Healthy);

    let stats = manager.listener_stats("orders").unwrap();
    assert_eq!(
        (
            stats.events_failed,
            stats.permanent_failures,
            stats.events_retried,
            stats.circuit_trips,
            stats.dead_letter_events
        ),
        (100, 100, 0, 0, 100)
    );
    let letters = manager.dead_letters("orders").unwrap().unwrap().list();
    assert_eq!(letters.len(), 100, "each event dead-lettered once");
    assert!(letters
        .iter()
        .all(|l| l.reason == DeadLetterReason::Permanent
            && l.attempts == 1
            && l.error.permanent
            && l.error.kind == "permanent"));

    // A good event still goes through at once: nothing was held against the listener.
    manager
        .process("orders", event("good", "ok", 0))
        .await
        .unwrap();
    manager
        .stop(std::time::Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_run_once_never_opens_the_breaker_and_is_dead_lettered_once() {
    hundred_permanent_failures(strict(), "permanent").await;
}

#[tokio::test(start_paused = true)]
async fn permanent_when_makes_a_handler_error_permanent() {
    let config = strict().permanent_when(|error| error.is::<Unreadable>());
    hundred_permanent_failures(config, "unreadable").await;
}

#[tokio::test(start_paused = true)]
async fn permanent_when_leaves_other_errors_transient() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (listener, calls) = scripted("orders");
    manager
        .register(
            listener,
            strict().permanent_when(|error| error.is::<Unreadable>()),
        )
        .unwrap();
    manager.start().await.unwrap();
    let outcome = manager.process("orders", event("e", "fail", 0)).await;
    assert!(matches!(outcome, Err(Error::Handler(_))), "{outcome:?}");
    assert_eq!(calls.get(), 4, "1 attempt + 3 retries");
    let letter = &manager.dead_letters("orders").unwrap().unwrap().list()[0];
    assert_eq!(letter.reason, DeadLetterReason::Exhausted);
    assert_eq!(
        manager.listener_stats("orders").unwrap().permanent_failures,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_permanent_when_is_contained_and_answers_not_permanent() {
    support::quiet_injected_panics();
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (listener, calls) = scripted("orders");
    manager
        .register(
            listener,
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                ..Default::default()
            }
            .permanent_when(|_| panic!("injected panic")),
        )
        .unwrap();
    manager.start().await.unwrap();
    let outcome = manager.process("orders", event("e", "unreadable", 0)).await;
    assert!(matches!(outcome, Err(Error::Handler(_))), "{outcome:?}");
    assert_eq!(calls.get(), 1);
    let stats = manager.listener_stats("orders").unwrap();
    assert_eq!((stats.panics, stats.permanent_failures), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_probe_neither_closes_nor_reopens_a_half_open_breaker() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (listener, _) = scripted("orders");
    manager
        .register(listener, support::events::opens_after(2))
        .unwrap();
    manager.start().await.unwrap();
    for i in 0..2 {
        let _ = manager
            .process("orders", event(format!("f{i}"), "fail", 0))
            .await;
    }
    let breaker = manager.circuit_breaker("orders").unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);
    tokio::time::advance(std::time::Duration::from_secs(31)).await;
    // The probe fails permanently: the breaker learns nothing and stays half-open, its slot free.
    let outcome = manager.process("orders", event("p", "permanent", 0)).await;
    assert!(matches!(outcome, Err(Error::Permanent(_))));
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    // The next probe is admitted (the slot came back) and its success counts.
    manager
        .process("orders", event("ok", "ok", 0))
        .await
        .unwrap();
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
}
