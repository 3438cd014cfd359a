//! Stats: exact counters after a scripted run, the sum rule, manager = sum of listeners.

mod support;

use std::time::Duration;

use support::events::{event, opens_after, scripted};
use tower_listener::{
    CircuitConfig, ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy, Stats,
};

#[tokio::test(start_paused = true)]
async fn counters_match_a_scripted_run_and_the_manager_is_the_sum_of_its_listeners() {
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (orders, _) = scripted("orders");
    let (payments, _) = scripted("payments");
    m.register(
        orders,
        ListenerConfig {
            retry_policy: RetryPolicy {
                max_retries: 2,
                initial_delay: Duration::from_millis(10),
                ..Default::default()
            },
            timeout: Duration::from_millis(100),
            circuit: CircuitConfig::disabled(),
            ..Default::default()
        },
    )
    .unwrap();
    m.register(payments, opens_after(2)).unwrap();
    m.start().await.unwrap();

    // orders: 4 ok, 1 flaky (1 retry then ok), 1 always failing (2 retries), 1 hanging (3 timeouts).
    for i in 0..4 {
        m.process("orders", event(format!("o{i}"), "ok", 0))
            .await
            .unwrap();
    }
    m.process("orders", event("flaky", "flaky", 1))
        .await
        .unwrap();
    assert!(m.process("orders", event("bad", "fail", 0)).await.is_err());
    assert!(m
        .process("orders", event("stuck", "hang", 0))
        .await
        .is_err());
    // payments: 1 ok, 2 failures open the breaker, then 3 rejections.
    m.process("payments", event("p0", "ok", 0)).await.unwrap();
    for i in 0..5 {
        let _ = m
            .process("payments", event(format!("p{}", i + 1), "fail", 0))
            .await;
    }

    let o = m.listener_stats("orders").unwrap();
    assert_eq!(
        (
            o.events_processed,
            o.events_succeeded,
            o.events_failed,
            o.events_retried
        ),
        (7, 5, 2, 5)
    );
    assert_eq!((o.attempts, o.attempt_failures, o.timeouts), (12, 7, 3));
    assert_eq!(
        (o.dead_letter_events, o.rejected, o.circuit_trips),
        (2, 0, 0)
    );

    let p = m.listener_stats("payments").unwrap();
    assert_eq!(
        (
            p.events_processed,
            p.events_succeeded,
            p.events_failed,
            p.events_retried
        ),
        (6, 1, 5, 0)
    );
    assert_eq!(
        (p.attempts, p.rejected, p.circuit_trips, p.circuit_breakers),
        (3, 3, 1, 1)
    );
    assert_eq!(
        p.dead_letter_events, 5,
        "rejected events are dead-lettered too"
    );

    for s in [&o, &p] {
        assert_eq!(s.events_processed, s.events_succeeded + s.events_failed);
        assert_eq!(
            (s.registered_listeners, s.active_listeners, s.in_flight),
            (1, 1, 0)
        );
    }
    let total = m.stats();
    let mut sum = Stats::default();
    sum.add(&o);
    sum.add(&p);
    assert_eq!(total, sum);
    assert_eq!(total.registered_listeners, 2);
    assert_eq!(total.events_processed, 13);
    assert_eq!(
        total.event_latency.count,
        o.event_latency.count + p.event_latency.count
    );
}
