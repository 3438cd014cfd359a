//! Event conservation under faults, shutdowns and cancellation.
//!
//! Each case draws, from its seed, a manager and 1 to 3 listeners with random configurations and fault
//! plans, sends up to 300 events through `dispatch` and `process`, stops the manager at a random moment
//! with a random deadline while cancelling some `process` calls midway, and checks:
//! - every event accepted by `dispatch` ended exactly once: succeeded or dead-lettered;
//! - every `process` call that ran to its end returned one outcome matching that record; a cancelled one
//!   ended at most once;
//! - the stats add up, with nothing left in flight;
//! - afterwards every concurrency permit and half-open slot is free again: each breaker closes and a fresh
//!   burst runs at the full limit.
//!
//! Under paused time, seeded; a failing case prints its seed (`CONSERVATION_CASES` sets the case count).

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use support::faults::{faulty, FaultPlan, Record};
use tower_listener::{
    dead_letter_fn, Backoff, CircuitConfig, CircuitState, DeadLetter, DeadLetterConfig, Error,
    Event, Jitter, LimitMode, ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy,
    StopReport,
};

type Tally = Arc<Mutex<HashMap<String, u32>>>;

struct Listener {
    id: String,
    record: Arc<Record>,
    config: ListenerConfig,
}

fn random_config(rng: &mut fastrand::Rng, dead: &Tally) -> ListenerConfig {
    let tally = dead.clone();
    ListenerConfig {
        concurrency: rng.usize(1..8),
        concurrency_mode: match rng.u8(0..3) {
            0 => LimitMode::Wait,
            1 => LimitMode::WaitFor(Duration::from_millis(rng.u64(1..200))),
            _ => LimitMode::Reject,
        },
        timeout: Duration::from_millis(rng.u64(50..400)),
        retry_policy: RetryPolicy {
            max_retries: rng.u32(0..4),
            initial_delay: Duration::from_millis(rng.u64(1..100)),
            max_delay: Some(Duration::from_millis(rng.u64(100..1_000))),
            backoff: [
                Backoff::Fixed,
                Backoff::Linear,
                Backoff::exponential(),
                Backoff::Quadratic,
            ][rng.usize(0..4)],
            jitter: [
                Jitter::None,
                Jitter::Full,
                Jitter::Equal,
                Jitter::Decorrelated,
            ][rng.usize(0..4)],
            seed: Some(rng.u64(..)),
            ..Default::default()
        },
        circuit: CircuitConfig {
            failure_threshold: rng.u32(1..10),
            success_threshold: rng.u32(1..4),
            half_open_max_calls: rng.u32(1..4),
            timeout: Duration::from_millis(rng.u64(50..500)),
            sliding_window: Duration::from_secs(rng.u64(1..60)),
            failure_rate_threshold: rng.bool().then(|| rng.f64().clamp(0.1, 1.0)),
            minimum_calls: rng.u32(1..20),
            ..Default::default()
        },
        dead_letter: DeadLetterConfig::to_sink(dead_letter_fn(move |letter: DeadLetter<Event>| {
            *tally
                .lock()
                .unwrap()
                .entry(letter.request.id().to_owned())
                .or_insert(0) += 1;
        })),
        ..Default::default()
    }
}

fn count(tally: &Tally, id: &str) -> u32 {
    tally.lock().unwrap().get(id).copied().unwrap_or(0)
}

/// Runs one scenario; returns the report of the stop that landed mid-run.
async fn scenario(seed: u64) -> StopReport {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dead: Tally = Arc::default();
    let manager = ListenerManager::new(ManagerConfig {
        workers: rng.usize(1..6),
        queue: rng.usize(1..64),
        ..ManagerConfig::named("conservation")
    })
    .unwrap();
    let mut listeners = Vec::new();
    for i in 0..rng.usize(1..4) {
        let id = format!("l{i}");
        let (listener, record) = faulty(&id, FaultPlan::random(rng.u64(..)));
        let config = random_config(&mut rng, &dead);
        manager.register(listener, config.clone()).unwrap();
        listeners.push(Listener { id, record, config });
    }
    manager.start().await.unwrap();

    let mut dispatched = Vec::new();
    let mut processing = Vec::new();
    for n in 0..rng.usize(0..300) {
        let listener = &listeners[rng.usize(0..listeners.len())];
        let id = format!("e{n}");
        let event = Event::new(id.clone(), "work", serde_json::json!(n));
        if rng.bool() {
            match manager.dispatch(&listener.id, event) {
                Ok(()) => dispatched.push((id, listener.record.clone())),
                Err(refused) => {
                    assert!(
                        matches!(refused.error, Error::Overloaded),
                        "seed {seed}: {refused}"
                    );
                    assert_eq!(
                        refused.event.id(),
                        id,
                        "seed {seed}: the event is handed back"
                    );
                }
            }
        } else {
            let m = manager.clone();
            let lid = listener.id.clone();
            let task = tokio::spawn(async move { m.process(&lid, event).await });
            let cancel_after = rng.bool().then(|| Duration::from_millis(rng.u64(0..1_500)));
            processing.push((id, listener.record.clone(), task, cancel_after));
        }
        if rng.u8(0..4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..30))).await;
        }
    }

    // Stop at a random moment, while events are queued, running, or waiting between retries...
    let stopping = {
        let m = manager.clone();
        let after = Duration::from_millis(rng.u64(0..1_000));
        let deadline = Duration::from_millis(rng.u64(0..2_000));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            m.stop(deadline).await.unwrap()
        })
    };
    // ...and meanwhile cancel some process calls midway.
    let started = tokio::time::Instant::now();
    processing.sort_by_key(|p| p.3);
    let mut outcomes = Vec::new();
    for (id, record, task, cancel_after) in processing {
        let outcome = match cancel_after {
            Some(after) => {
                tokio::time::sleep_until(started + after).await;
                task.abort();
                task.await.ok()
            }
            None => Some(task.await.unwrap()),
        };
        outcomes.push((id, record, outcome));
    }
    let report = stopping.await.unwrap();

    for (id, record) in &dispatched {
        let (s, d) = (record.successes(id), count(&dead, id));
        assert_eq!(
            s + d,
            1,
            "seed {seed}: dispatched {id} succeeded {s}x, dead-lettered {d}x"
        );
    }
    for (id, record, outcome) in &outcomes {
        let (s, d) = (record.successes(id), count(&dead, id));
        match outcome {
            Some(Ok(())) => assert_eq!((s, d), (1, 0), "seed {seed}: processed {id}"),
            // Refused before it was accepted (the manager had stopped): it never ran.
            Some(Err(Error::NotRunning)) => assert_eq!((s, d), (0, 0), "seed {seed}: refused {id}"),
            Some(Err(_)) => assert_eq!((s, d), (0, 1), "seed {seed}: processed {id}"),
            None => assert!(
                s + d <= 1,
                "seed {seed}: cancelled {id} ended {s} + {d} times"
            ),
        }
    }
    let stats = manager.stats();
    assert_eq!(stats.in_flight, 0, "seed {seed}");
    assert_eq!(
        stats.events_processed,
        stats.events_succeeded + stats.events_failed,
        "seed {seed}"
    );
    let letters: u32 = dead.lock().unwrap().values().sum();
    assert_eq!(
        stats.events_failed,
        u64::from(letters),
        "seed {seed}: every failure is a dead letter"
    );
    assert_eq!(stats.dead_letter_events, u64::from(letters), "seed {seed}");

    // Afterwards nothing is held: every breaker closes and a burst gets the full limit.
    manager.start().await.unwrap();
    tokio::time::advance(Duration::from_secs(3_600)).await;
    for l in &listeners {
        l.record.healthy.store(true, Ordering::SeqCst);
        for k in 0..=l.config.circuit.success_threshold {
            let event = Event::new(format!("heal{k}"), "work", serde_json::json!(0));
            let result = manager.process(&l.id, event).await;
            assert!(
                result.is_ok(),
                "seed {seed}: {} after the run: {result:?}",
                l.id
            );
        }
        let state = manager.circuit_breaker(&l.id).unwrap().state();
        assert_eq!(
            state,
            CircuitState::Closed,
            "seed {seed}: {} stuck {state}",
            l.id
        );

        l.record.max_running.store(0, Ordering::SeqCst);
        let hold = (l.config.timeout / 2).as_millis() as u64;
        let burst: Vec<_> = (0..l.config.concurrency)
            .map(|k| {
                let m = manager.clone();
                let id = l.id.clone();
                let event = Event::new(format!("burst{k}"), "hold", serde_json::json!(hold));
                tokio::spawn(async move { m.process(&id, event).await })
            })
            .collect();
        for task in burst {
            let result = task.await.unwrap();
            assert!(result.is_ok(), "seed {seed}: burst on {}: {result:?}", l.id);
        }
        assert_eq!(
            l.record.max_running.load(Ordering::SeqCst),
            l.config.concurrency,
            "seed {seed}: {} never ran at its full limit: a permit leaked",
            l.id
        );
    }
    manager.stop(Duration::from_secs(1)).await.unwrap();
    report
}

fn run(seed: u64) -> StopReport {
    support::quiet_injected_panics();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(scenario(seed))
}

fn cases() -> u32 {
    std::env::var("CONSERVATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_event_ends_exactly_once_under_faults_stops_and_cancellation(seed in any::<u64>()) {
        run(seed);
    }
}

/// Seeds that once failed: kept so they stay fixed.
/// - 7441771901569461517: a `process` call cancelled while its shutdown dead letter was being sent left the
///   letter delivered but uncounted.
const REGRESSIONS: [u64; 1] = [7_441_771_901_569_461_517];

#[test]
fn seeds_that_once_failed_pass() {
    for seed in REGRESSIONS {
        run(seed);
    }
}

/// Fixed seeds, so a regression shows the same way every run, and a check that the scenarios exercise
/// both endings of `stop`: drained in time, and cut short with events cancelled.
#[test]
fn fixed_seeds_hold_the_invariants_and_cover_both_endings_of_stop() {
    let reports: Vec<StopReport> = (0..64).map(run).collect();
    let cut_short = reports.iter().filter(|r| !r.drained).count();
    let cancelled: u64 = reports.iter().map(|r| r.cancelled).sum();
    assert!(
        (5..=59).contains(&cut_short),
        "{cut_short} of 64 stops cut short"
    );
    assert!(cancelled > 0);
}
