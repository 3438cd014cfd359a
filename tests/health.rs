//! Health rules: the listener thresholds 0.1 and 0.5 over the health window, the manager's rule (half
//! unhealthy → unhealthy, under 80 % healthy → degraded), and old failures aging out. Under paused time.

mod support;

use std::time::Duration;

use support::events::{event, scripted};
use tower_listener::metrics::WindowedAttempts;
use tower_listener::{
    CircuitConfig, CircuitState, HealthStatus, HealthThresholds, ListenerConfig, ListenerManager,
    ManagerConfig, ManagerHealthThresholds, RetryPolicy,
};

fn config() -> ListenerConfig {
    ListenerConfig {
        retry_policy: RetryPolicy::never(),
        circuit: CircuitConfig::disabled(),
        health_window: Duration::from_secs(60),
        ..Default::default()
    }
}

async fn run(m: &ListenerManager, id: &str, ok: usize, failed: usize) {
    for i in 0..ok {
        m.process(id, event(format!("ok{i}"), "ok", 0))
            .await
            .unwrap();
    }
    for i in 0..failed {
        let _ = m.process(id, event(format!("f{i}"), "fail", 0)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn listener_health_follows_the_failure_ratio_thresholds() {
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    for (id, ok, failed, want) in [
        ("idle", 0, 0, HealthStatus::Healthy),
        ("fine", 91, 9, HealthStatus::Healthy), // 0.09
        ("edge-degraded", 90, 10, HealthStatus::Degraded), // exactly 0.1
        ("half", 50, 50, HealthStatus::Degraded), // exactly 0.5 is not above 0.5
        ("bad", 49, 51, HealthStatus::Unhealthy), // 0.51
    ] {
        let (l, _) = scripted(id);
        m.register(l, config()).unwrap();
        m.start().await.ok();
        run(&m, id, ok, failed).await;
        assert_eq!(m.listener_health(id).unwrap(), want, "{id}");
    }
}

#[tokio::test(start_paused = true)]
async fn old_failures_age_out_of_the_health_window() {
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (l, _) = scripted("a");
    m.register(l, config()).unwrap();
    m.start().await.unwrap();
    run(&m, "a", 0, 10).await;
    assert_eq!(m.listener_health("a").unwrap(), HealthStatus::Unhealthy);
    tokio::time::advance(Duration::from_secs(30)).await;
    run(&m, "a", 10, 0).await;
    assert_eq!(m.listener_health("a").unwrap(), HealthStatus::Degraded);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        m.listener_health("a").unwrap(),
        HealthStatus::Healthy,
        "the failures are 61 s old"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_makes_the_listener_circuit_open() {
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (l, _) = scripted("a");
    m.register(l, config()).unwrap();
    m.start().await.unwrap();
    let breaker = m.circuit_breaker("a").unwrap();
    breaker.reset();
    breaker.force_open();
    assert_eq!(breaker.state(), CircuitState::ForcedOpen);
    assert_eq!(m.listener_health("a").unwrap(), HealthStatus::CircuitOpen);
    breaker.reset();
    assert_eq!(m.listener_health("a").unwrap(), HealthStatus::Healthy);
}

#[test]
fn the_manager_rule_table() {
    use HealthStatus::*;
    let rule = ManagerHealthThresholds::default();
    // The rows a new user met: merely degraded listeners never make the manager unhealthy.
    assert_eq!(rule.manager_health([Healthy, Degraded, Degraded]), Degraded);
    assert_eq!(
        rule.manager_health([Unhealthy, Unhealthy, Healthy]),
        Unhealthy
    );
    assert_eq!(
        rule.manager_health([Healthy, CircuitOpen, Unhealthy]),
        CircuitOpen
    );
    assert_eq!(rule.manager_health([Healthy, Healthy, Healthy]), Healthy);
    assert_eq!(rule.manager_health([]), Healthy);
    assert_eq!(
        rule.manager_health([Degraded, Degraded, Degraded]),
        Degraded
    );
    // Shares at the boundaries: 0.8 healthy is healthy; 0.5 unhealthy is unhealthy.
    assert_eq!(
        rule.manager_health([Healthy, Healthy, Healthy, Healthy, Unhealthy]),
        Healthy
    );
    assert_eq!(
        rule.manager_health([Healthy, Healthy, Healthy, Degraded, Unhealthy]),
        Degraded
    );
    assert_eq!(rule.manager_health([Healthy, Unhealthy]), Unhealthy);
    assert_eq!(
        rule.manager_health([Healthy, Degraded, Unhealthy]),
        Degraded
    ); // 1/3 unhealthy
}

#[tokio::test(start_paused = true)]
async fn the_manager_health_combines_its_listeners() {
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    for id in ["a", "b", "c", "d"] {
        let (l, _) = scripted(id);
        m.register(l, config()).unwrap();
    }
    m.start().await.unwrap();
    run(&m, "a", 1, 0).await;
    assert_eq!(m.health(), HealthStatus::Healthy);
    run(&m, "d", 0, 5).await; // 3 of 4 healthy: 0.75, 1 of 4 unhealthy
    assert_eq!(m.health(), HealthStatus::Degraded);
    run(&m, "c", 0, 5).await; // 2 of 4 unhealthy: 0.5
    assert_eq!(m.health(), HealthStatus::Unhealthy);
    run(&m, "b", 0, 5).await; // 3 of 4
    assert_eq!(m.health(), HealthStatus::Unhealthy);
    assert_eq!(
        m.listener_healths()
            .into_iter()
            .map(|(_, h)| h)
            .collect::<Vec<_>>(),
        [
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Unhealthy,
            HealthStatus::Unhealthy
        ]
    );
}

#[test]
fn thresholds_are_configurable_and_validated() {
    let strict = HealthThresholds {
        degraded: 0.01,
        unhealthy: 0.05,
    };
    let attempts = WindowedAttempts {
        succeeded: 97,
        failed: 3,
    };
    assert_eq!(
        strict.listener_health(CircuitState::Closed, attempts),
        HealthStatus::Degraded
    );
    assert_eq!(
        HealthThresholds::default().listener_health(CircuitState::Closed, attempts),
        HealthStatus::Healthy
    );
    assert!(HealthThresholds {
        degraded: 0.6,
        unhealthy: 0.5
    }
    .validate()
    .is_err());
    // The manager's two shares are independent; equal ones are fine, out-of-range ones are refused.
    assert!(ManagerHealthThresholds {
        healthy_share: 0.5,
        unhealthy_share: 0.5
    }
    .validate()
    .is_ok());
    for (healthy_share, unhealthy_share, field) in [
        (1.5, 0.5, "health.healthy_share"),
        (-0.1, 0.5, "health.healthy_share"),
        (0.8, 0.0, "health.unhealthy_share"),
        (0.8, 1.01, "health.unhealthy_share"),
        (0.8, f64::NAN, "health.unhealthy_share"),
    ] {
        match (ManagerHealthThresholds {
            healthy_share,
            unhealthy_share,
        })
        .validate()
        {
            Err(tower_listener::Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{healthy_share} {unhealthy_share}: {other:?}"),
        }
    }
}
