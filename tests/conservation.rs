//! Event conservation (SPEC.md "Invariant"): every event accepted by `dispatch` ends exactly once as
//! succeeded or dead-lettered, including when `stop` lands mid-flight. Seeded, under paused time; a failure
//! prints its seed.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_listener::{
    dead_letter_fn, CircuitConfig, DeadLetter, DeadLetterConfig, Error, Event, ListenerConfig,
    ListenerManager, ManagerConfig, RetryPolicy,
};

type Tally = Arc<Mutex<HashMap<String, u32>>>;

fn bump(tally: &Tally, id: &str) {
    *tally.lock().unwrap().entry(id.to_owned()).or_insert(0) += 1;
}

/// Runs one seeded scenario; returns whether `stop` drained everything before its deadline.
async fn run_seed(seed: u64) -> bool {
    let mut rng = fastrand::Rng::with_seed(seed);
    let succeeded: Tally = Arc::default();
    let dead: Tally = Arc::default();
    let m = ListenerManager::new(ManagerConfig {
        workers: rng.usize(1..6),
        queue: rng.usize(1..64),
        ..Default::default()
    })
    .unwrap();
    let fail_percent = rng.u64(0..80);
    let listeners = ["orders", "payments", "emails"];
    for id in listeners {
        let ok = succeeded.clone();
        let attempts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let handler = tower_listener::listener_fn(id, move |event: Event| {
            let ok = ok.clone();
            let attempts = attempts.clone();
            async move {
                // The event's payload seeds its behaviour; each attempt draws anew from the attempt count.
                let attempt = attempts
                    .lock()
                    .unwrap()
                    .entry(event.id().to_owned())
                    .and_modify(|n| *n += 1)
                    .or_insert(0u64)
                    .to_owned();
                let r = fastrand::Rng::with_seed(event.data().as_u64().unwrap() ^ attempt)
                    .u64(0..1_000);
                tokio::time::sleep(Duration::from_millis(r % 300)).await;
                if r % 100 < fail_percent {
                    return Err(Error::handler(support::ScriptedFailure));
                }
                bump(&ok, event.id());
                Ok::<_, Error>(())
            }
        });
        let sink_tally = dead.clone();
        let config = ListenerConfig {
            concurrency: rng.usize(1..8),
            timeout: Duration::from_millis(rng.u64(100..400)),
            retry_policy: RetryPolicy {
                max_retries: rng.u32(0..4),
                initial_delay: Duration::from_millis(rng.u64(1..200)),
                ..Default::default()
            },
            circuit: CircuitConfig {
                failure_threshold: rng.u32(1..10),
                timeout: Duration::from_millis(rng.u64(50..500)),
                ..Default::default()
            },
            dead_letter: DeadLetterConfig::to_sink(dead_letter_fn(move |l: DeadLetter<Event>| {
                bump(&sink_tally, l.request.id())
            })),
            ..Default::default()
        };
        m.register(handler, config).unwrap();
    }
    m.start().await.unwrap();

    let mut accepted = Vec::new();
    let stop_after = rng.usize(0..300);
    for n in 0..300usize {
        if n == stop_after {
            break;
        }
        let id = format!("e{n}");
        let listener = listeners[rng.usize(0..listeners.len())];
        match m.dispatch(
            listener,
            Event::new(id.clone(), "t", serde_json::json!(rng.u64(..))),
        ) {
            Ok(()) => accepted.push(id),
            Err(refused) => assert!(matches!(refused.error, Error::Overloaded), "seed {seed}"),
        }
        if rng.bool() {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        }
    }
    let report = m
        .stop(Duration::from_millis(rng.u64(0..2_000)))
        .await
        .unwrap();

    let succeeded = succeeded.lock().unwrap();
    let dead = dead.lock().unwrap();
    for id in &accepted {
        let s = succeeded.get(id).copied().unwrap_or(0);
        let d = dead.get(id).copied().unwrap_or(0);
        assert_eq!(
            s + d,
            1,
            "seed {seed}: event {id} succeeded {s} times, dead-lettered {d} times"
        );
    }
    assert_eq!(
        succeeded.len() + dead.len(),
        accepted.len(),
        "seed {seed}: an unknown event ended"
    );
    let stats = m.stats();
    assert_eq!(stats.events_processed, accepted.len() as u64, "seed {seed}");
    assert_eq!(
        stats.events_processed,
        stats.events_succeeded + stats.events_failed,
        "seed {seed}"
    );
    assert_eq!(
        stats.events_failed,
        dead.values().sum::<u32>() as u64,
        "seed {seed}"
    );
    assert_eq!(stats.in_flight, 0, "seed {seed}");
    report.drained
}

#[tokio::test(start_paused = true)]
async fn every_dispatched_event_ends_exactly_once_even_when_stop_lands_mid_flight() {
    let base: u64 = std::env::var("CONSERVATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut cut_short = 0;
    for seed in base..base + 64 {
        if !run_seed(seed).await {
            cut_short += 1;
        }
    }
    // The scenarios must exercise both endings of stop.
    assert!(
        cut_short > 5 && cut_short < 60,
        "{cut_short} of 64 stops ran past their deadline"
    );
}
