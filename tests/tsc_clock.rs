//! The time-stamp-counter clock (feature `tsc-clock`): with it on, what the crate measures is real time
//! (latencies, the breaker's open time), even under tokio's paused time; it can be switched off again.
//! One test: the switch is process-wide, and this binary is its only user.
#![cfg(feature = "tsc-clock")]

use std::time::{Duration, Instant};

use tower_listener::clock::{use_tsc, uses_tsc};
use tower_listener::{
    listener_fn, CircuitConfig, Error, Event, ListenerConfig, ListenerManager, ManagerConfig,
    RetryPolicy,
};

fn event(id: &str) -> Event {
    Event::new(id, "test", serde_json::json!({}))
}

fn runtime(paused: bool) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap()
}

/// A manager with `slow` (a 20 ms handler) and `down` (always fails; its breaker opens for 100 ms after
/// two failures).
async fn manager() -> ListenerManager {
    let m = ListenerManager::new(ManagerConfig::default()).unwrap();
    m.register(
        listener_fn("slow", |_: Event| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(())
        }),
        ListenerConfig::default(),
    )
    .unwrap();
    m.register(
        listener_fn("down", |_: Event| async {
            Err::<(), _>(std::io::Error::other("dependency down"))
        }),
        ListenerConfig {
            retry_policy: RetryPolicy::never(),
            circuit: CircuitConfig {
                failure_threshold: 2,
                timeout: Duration::from_millis(100),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    m
}

/// Fails `down` twice, and returns how long its now open breaker says it stays open.
async fn open(m: &ListenerManager) -> Duration {
    for n in 0..2 {
        assert!(m.process("down", event(&format!("d{n}"))).await.is_err());
    }
    match m.process("down", event("d2")).await {
        Err(Error::CircuitOpen {
            retry_after: Some(left),
        }) => left,
        other => panic!("expected an open breaker, got {other:?}"),
    }
}

#[test]
fn with_the_counter_on_the_crate_measures_real_time() {
    assert!(!uses_tsc(), "off by default");
    use_tsc(true);
    assert!(uses_tsc());

    runtime(false).block_on(async {
        let m = manager().await;
        // Latencies: three events of a 20 ms handler.
        for n in 0..3 {
            m.process("slow", event(&format!("s{n}"))).await.unwrap();
        }
        let latency = m.listener_stats("slow").unwrap().event_latency;
        assert_eq!(latency.count, 3);
        assert!(
            latency.p50 >= Duration::from_millis(19) && latency.p50 < Duration::from_secs(2),
            "p50 {:?}",
            latency.p50
        );

        // The breaker's open time, told as the time left; a probe is admitted once it has passed.
        let opened = Instant::now();
        let left = open(&m).await;
        assert!(
            left <= Duration::from_millis(100) && left >= Duration::from_millis(20),
            "{left:?}"
        );
        tokio::time::sleep(Duration::from_millis(120).saturating_sub(opened.elapsed())).await;
        match m.process("down", event("d3")).await {
            Err(Error::CircuitOpen { .. }) => panic!("still open 120 ms after opening for 100 ms"),
            Err(_) => {} // the probe ran (and failed)
            Ok(()) => panic!("the handler always fails"),
        }
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    // Under paused time the counter still measures real time: advancing tokio's clock past the open
    // time does not reopen the breaker (which is why the switch stays off in such tests).
    runtime(true).block_on(async {
        let m = manager().await;
        open(&m).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            m.process("down", event("d3")).await,
            Err(Error::CircuitOpen { .. })
        ));
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    use_tsc(false);
    assert!(!uses_tsc());
    // Back on tokio's clock, paused time drives the breaker again.
    runtime(true).block_on(async {
        let m = manager().await;
        open(&m).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!matches!(
            m.process("down", event("d3")).await,
            Err(Error::CircuitOpen { .. })
        ));
        m.stop(Duration::from_secs(1)).await.unwrap();
    });
}
