//! Redrive from a dead-letter store through the listener's stack: success deletes, failure keeps (attempts
//! and error updated), an open breaker stops the run with the rest kept, and two redrives at once never
//! run one letter twice. The same tests over the in-memory queue and the redb file.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
use tower_listener::{
    CircuitConfig, CircuitState, DeadLetter, DeadLetterQueue, DeadLetterReason, Error, Event,
    ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy,
};

/// A listener whose dependency is down until `up` is set; it counts its runs per event id and each run
/// takes `delay`.
struct Dependency {
    up: Arc<AtomicBool>,
    runs: Arc<Mutex<HashMap<String, usize>>>,
}

impl Dependency {
    fn runs(&self, id: &str) -> usize {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }
    fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }
}

async fn manager_with(config: ListenerConfig, delay: Duration) -> (ListenerManager, Dependency) {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let dependency = Dependency {
        up: Arc::default(),
        runs: Arc::default(),
    };
    let (up, runs) = (dependency.up.clone(), dependency.runs.clone());
    manager
        .register(
            tower_listener::listener_fn("orders", move |event: Event| {
                *runs
                    .lock()
                    .unwrap()
                    .entry(event.id().to_owned())
                    .or_insert(0) += 1;
                let up = up.load(Ordering::SeqCst);
                async move {
                    tokio::time::sleep(delay).await;
                    if up {
                        Ok(())
                    } else {
                        Err(Error::handler(std::io::Error::other("database down")))
                    }
                }
            }),
            config,
        )
        .unwrap();
    manager.start().await.unwrap();
    (manager, dependency)
}

fn no_retry() -> ListenerConfig {
    ListenerConfig {
        retry_policy: RetryPolicy::never(),
        circuit: CircuitConfig::disabled(),
        ..Default::default()
    }
}

/// `n` letters of listener "orders", and one of another listener.
async fn fill<S: DeadLetterStore<Value>>(store: &S, n: usize) {
    for i in 0..n {
        let event = Event::new(format!("o-{i}"), "order.created", json!({"n": i}));
        let letter = DeadLetter::new(
            event,
            Error::handler(std::io::Error::other("database down")),
            "orders",
            2,
            DeadLetterReason::Exhausted,
        );
        store.append(letter).await.unwrap();
    }
    let other = Event::new("p-0", "payment.requested", json!({}));
    store
        .append(DeadLetter::new(
            other,
            Error::Overloaded,
            "payments",
            1,
            DeadLetterReason::Overloaded,
        ))
        .await
        .unwrap();
}

async fn ids<S: DeadLetterStore<Value>>(store: &S, listener: &str) -> Vec<String> {
    let page = store
        .list(LetterFilter::all().listener(listener), None, 1000)
        .await
        .unwrap();
    page.letters
        .iter()
        .map(|l| l.decoded().unwrap().request.id().to_owned())
        .collect()
}

async fn success_deletes_and_failure_keeps<S: DeadLetterStore<Value>>(store: S) {
    let (manager, dependency) = manager_with(no_retry(), Duration::ZERO).await;
    fill(&store, 4).await;

    // Still down: every letter fails again and is kept, one attempt more, error updated.
    let report = manager
        .redrive("orders", &store, LetterFilter::all(), 100)
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed, report.not_run), (0, 4, 0));
    let page = store
        .list(LetterFilter::all().listener("orders"), None, 100)
        .await
        .unwrap();
    assert_eq!(page.letters.len(), 4);
    for stored in &page.letters {
        let letter = stored.decoded().unwrap();
        assert_eq!(letter.attempts, 3, "2 before, 1 now");
        assert_eq!(letter.error.message, "handler failed: database down");
    }

    // Up again: a limited redrive takes the oldest two, deletes them, leaves the rest.
    dependency.up.store(true, Ordering::SeqCst);
    let report = manager
        .redrive("orders", &store, LetterFilter::all(), 2)
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (2, 0));
    assert_eq!(ids(&store, "orders").await, ["o-2", "o-3"]);
    let report = manager
        .redrive("orders", &store, LetterFilter::all(), 100)
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (2, 0));
    assert!(ids(&store, "orders").await.is_empty());
    // The other listener's letter was never touched.
    assert_eq!(ids(&store, "payments").await, ["p-0"]);
    assert_eq!(dependency.runs("p-0"), 0);
    let stats = manager.listener_stats("orders").unwrap();
    assert_eq!((stats.redriven_succeeded, stats.redriven_failed), (4, 4));
}

async fn an_open_breaker_stops_the_run<S: DeadLetterStore<Value>>(store: S) {
    let config = ListenerConfig {
        retry_policy: RetryPolicy::never(),
        circuit: CircuitConfig {
            failure_threshold: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let (manager, dependency) = manager_with(config, Duration::ZERO).await;
    fill(&store, 7).await;
    let report = manager
        .redrive("orders", &store, LetterFilter::all(), 100)
        .await
        .unwrap();
    // Two failures open the breaker; the third letter is rejected and the run stops there.
    assert_eq!((report.succeeded, report.failed, report.not_run), (0, 2, 5));
    assert_eq!(
        report.stopped_by.as_ref().map(|e| e.kind.as_str()),
        Some("circuit_open")
    );
    assert_eq!(dependency.total_runs(), 2);
    assert_eq!(
        manager.circuit_breaker("orders").unwrap().state(),
        CircuitState::Open
    );
    let page = store
        .list(LetterFilter::all().listener("orders"), None, 100)
        .await
        .unwrap();
    assert_eq!(page.letters.len(), 7, "every letter kept");
    let untouched = page
        .letters
        .iter()
        .filter(|l| l.decoded().unwrap().attempts == 2)
        .count();
    assert_eq!(untouched, 5, "the letters not run are as they were");
}

async fn two_redrives_at_once_never_run_a_letter_twice<S>(store: S)
where
    S: DeadLetterStore<Value> + Clone,
{
    let (manager, dependency) = manager_with(no_retry(), Duration::from_millis(5)).await;
    dependency.up.store(true, Ordering::SeqCst);
    fill(&store, 20).await;
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (manager, store) = (manager.clone(), store.clone());
            tokio::spawn(async move {
                manager
                    .redrive("orders", &store, LetterFilter::all(), 100)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut succeeded = 0;
    for run in runs {
        let report = run.await.unwrap();
        succeeded += report.succeeded;
    }
    assert_eq!(succeeded, 20, "each letter succeeded once");
    for i in 0..20 {
        assert_eq!(dependency.runs(&format!("o-{i}")), 1, "o-{i}");
    }
    assert!(ids(&store, "orders").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_queue_success_deletes_and_failure_keeps() {
    success_deletes_and_failure_keeps(DeadLetterQueue::<Event>::new(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_queue_an_open_breaker_stops_the_run() {
    an_open_breaker_stops_the_run(DeadLetterQueue::<Event>::new(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_queue_two_redrives_at_once_never_run_a_letter_twice() {
    two_redrives_at_once_never_run_a_letter_twice(DeadLetterQueue::<Event>::new(100)).await;
}

#[cfg(feature = "redb")]
mod redb_store {
    use super::*;
    use tower_listener::RedbStore;

    async fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("letters.redb"))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_redb_success_deletes_and_failure_keeps() {
        let (_dir, store) = store().await;
        success_deletes_and_failure_keeps(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_redb_an_open_breaker_stops_the_run() {
        let (_dir, store) = store().await;
        an_open_breaker_stops_the_run(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_redb_two_redrives_at_once_never_run_a_letter_twice() {
        let (_dir, store) = store().await;
        two_redrives_at_once_never_run_a_letter_twice(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listeners_failures_land_in_redb_and_are_redriven_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("letters.redb");
        {
            let store = RedbStore::open(&path).await.unwrap();
            let config = ListenerConfig {
                dead_letter: tower_listener::DeadLetterConfig::to_sink(store.clone()),
                ..no_retry()
            };
            let (manager, _) = manager_with(config, Duration::ZERO).await;
            for i in 0..5 {
                let event = Event::new(format!("o-{i}"), "order.created", json!({"n": i}));
                assert!(manager.process("orders", event).await.is_err());
            }
            manager.stop(Duration::from_secs(1)).await.unwrap();
            assert_eq!(manager.stats().dead_letter_events, 5);
        }
        // A new process: a new manager over the same file.
        let store = RedbStore::open(&path).await.unwrap();
        assert_eq!(ids(&store, "orders").await.len(), 5);
        let (manager, dependency) = manager_with(no_retry(), Duration::ZERO).await;
        dependency.up.store(true, Ordering::SeqCst);
        let report = manager
            .redrive("orders", &store, LetterFilter::all(), 100)
            .await
            .unwrap();
        assert_eq!((report.succeeded, report.failed), (5, 0));
        assert!(ids(&store, "orders").await.is_empty());
    }
}
