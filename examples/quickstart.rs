//! The main job: a realistic event flow through a `ListenerManager`.
//!
//! Three listeners, each with the protection its dependency needs:
//! - `orders`: a database that fails now and then (transient errors): retried with backoff; the odd
//!   invalid order (total 0) is a permanent failure, dead-lettered at once.
//! - `payments`: a payment provider that goes down for 1.5 s and comes back: its circuit breaker opens,
//!   rejects fast while it is down, probes, and closes again.
//! - `notifications`: an email API that is sometimes slow: attempts past 40 ms time out.
//!
//! 3,000 events are dispatched over about four seconds through the bounded worker pool, with a live progress
//! line; then the manager stops gracefully and prints a report: health, stats, latency percentiles, breaker
//! transitions and the dead letters with their reasons.
//!
//! The dead letters go to the embedded durable store (one redb file, here in a temporary directory): the
//! example then "restarts", a new manager over the same file, shows that every letter is still there, and
//! redrives the ones worth another try now that the payment provider is back.
//!
//! Run it with `cargo run --example quickstart`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
use tower_listener::{
    listener_fn, CircuitConfig, DeadLetterConfig, DeadLetterReason, Error, Event, Jitter,
    ListenerConfig, ListenerManager, ManagerConfig, RedbStore, RetryPolicy,
};

#[derive(Debug, thiserror::Error)]
enum DependencyError {
    #[error("database deadlock, try again")]
    Deadlock,
    #[error("payment provider unavailable (HTTP 503)")]
    ProviderDown,
    #[error("order total must be positive")]
    InvalidOrder,
}

const EVENTS_PER_LISTENER: u64 = 1_000;

/// A tiny deterministic pseudo-random number from an event's sequence number and attempt.
fn roll(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 1_000
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    // The dead letters' file: durable, fsynced, in a temporary directory for this example.
    let dir = tempfile::tempdir().map_err(|e| Error::backend("a temporary directory", e))?;
    let path = dir.path().join("dead-letters.redb");
    let store = RedbStore::open(&path).await?;
    // Breaker transitions, as the on_state_change hook reports them.
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let manager = build_manager(&store, started, &transitions)?;

    manager.start().await?;
    println!(
        "tower-listener quickstart: {} events to {:?}\n",
        EVENTS_PER_LISTENER * 3,
        manager.listeners()
    );

    // Dispatch three events every 4 ms for four seconds, printing progress as we go.
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut next_report = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(4));
    for n in 0..EVENTS_PER_LISTENER {
        ticker.tick().await;
        for (listener, kind) in [
            ("orders", "order.created"),
            ("payments", "payment.requested"),
            ("notifications", "email.send"),
        ] {
            let event = Event::new(
                format!("{kind}-{n}"),
                kind,
                serde_json::json!({ "seq": n, "total": n * 7 % 100 }),
            );
            match manager.dispatch(listener, event) {
                Ok(()) => accepted += 1,
                Err(rejected) => {
                    refused += 1;
                    eprintln!("\nrefused {}: {}", rejected.event.id(), rejected.error);
                }
            }
        }
        if Instant::now() >= next_report {
            progress(&manager, started, accepted);
            next_report += Duration::from_millis(250);
        }
    }
    progress(&manager, started, accepted);

    let report = manager.stop(Duration::from_secs(10)).await?;
    progress(&manager, started, accepted);
    println!(
        "\n\nstopped after {:.2?}: drained = {}, cancelled = {}\n",
        started.elapsed(),
        report.drained,
        report.cancelled
    );

    print_report(&manager, &store, &transitions).await?;

    // The guarantees, checked: every accepted event ended exactly once, and the stats add up.
    let stats = manager.stats();
    assert_eq!(refused, 0);
    assert_eq!(
        stats.events_processed, accepted,
        "every accepted event has a final outcome"
    );
    assert_eq!(
        stats.events_processed,
        stats.events_succeeded + stats.events_failed
    );
    let dead_letters = DeadLetterStore::<Value>::count(&store, LetterFilter::all()).await?;
    assert_eq!(
        stats.events_failed, dead_letters,
        "every failed event is a dead letter"
    );
    println!(
        "\nall {accepted} events accounted for: {} succeeded, {} dead-lettered into {}",
        stats.events_succeeded,
        dead_letters,
        path.display()
    );

    // A restart: the manager and the store are gone; a new process would do just this.
    drop(manager);
    drop(store);
    let store = RedbStore::open(&path).await?;
    let manager = build_manager(&store, started, &transitions)?;
    manager.start().await?;
    let kept = DeadLetterStore::<Value>::count(&store, LetterFilter::all()).await?;
    println!("\nafter the restart: {kept} dead letters in the file, none lost");
    assert_eq!(kept, dead_letters);

    // The payment provider is back: redrive what failed for want of it, and what ran out of retries.
    // Permanent failures stay for a person to look at: running them again cannot help.
    println!("\nredrive:");
    for id in manager.listeners() {
        for reason in [DeadLetterReason::CircuitOpen, DeadLetterReason::Exhausted] {
            let filter = LetterFilter::all().reason(reason);
            let report = manager.redrive(&id, &store, filter, 10_000).await?;
            if report.succeeded + report.failed + report.not_run > 0 {
                println!(
                    "  {id:<14} {:<13} {:>4} succeeded, {:>3} failed again (kept){}",
                    reason.as_str(),
                    report.succeeded,
                    report.failed,
                    report
                        .stopped_by
                        .map(|e| format!(", stopped: {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    manager.stop(Duration::from_secs(10)).await?;
    let left = DeadLetterStore::<Value>::count(&store, LetterFilter::all()).await?;
    let permanent = DeadLetterStore::<Value>::count(
        &store,
        LetterFilter::all().reason(DeadLetterReason::Permanent),
    )
    .await?;
    let stats = manager.stats();
    assert_eq!(left, dead_letters - stats.redriven_succeeded);
    println!(
        "\n{left} dead letters left ({permanent} permanent), {} redriven successfully",
        stats.redriven_succeeded
    );
    println!(
        "\nin a service, these figures are scraped from GET /metrics (feature `prometheus`):\n  \
         cargo run --example axum_service --features axum,prometheus  # then curl localhost:3000/metrics"
    );
    Ok(())
}

/// The manager with its three listeners, each dead-lettering into `store`.
fn build_manager(
    store: &RedbStore,
    started: Instant,
    transitions: &Arc<Transitions>,
) -> Result<ListenerManager, Error> {
    let manager = ListenerManager::new(ManagerConfig {
        workers: 64,
        queue: 4_096,
        ..ManagerConfig::named("quickstart")
    })?;
    let attempts = Arc::new(AtomicU64::new(0));

    // orders: ~15 % of attempts hit a transient deadlock.
    let tries = attempts.clone();
    manager.register(
        listener_fn("orders", move |event: Event| {
            let attempt = tries.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(2 + roll(attempt) % 8)).await;
                // An order without a positive total can never succeed: say so, and it is
                // dead-lettered at once instead of retried (and the breaker does not count it).
                if event.data()["total"].as_u64().unwrap_or(0) == 0 {
                    return Err(Error::permanent(DependencyError::InvalidOrder));
                }
                if roll(attempt ^ 0xABCD) < 150 {
                    return Err(Error::handler(DependencyError::Deadlock));
                }
                Ok(())
            }
        }),
        ListenerConfig {
            concurrency: 16,
            timeout: Duration::from_secs(1),
            retry_policy: RetryPolicy {
                max_retries: 3,
                initial_delay: Duration::from_millis(20),
                jitter: Jitter::Equal,
                ..Default::default()
            },
            // Transient errors must not trip the breaker: open only when half the calls fail.
            circuit: rate_breaker(),
            dead_letter: DeadLetterConfig::to_sink(store.clone()),
            ..Default::default()
        },
    )?;

    // payments: the provider is down from 1.0 s to 2.5 s after start.
    let log = transitions.clone();
    manager.register(
        listener_fn("payments", move |_event: Event| async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let t = started.elapsed();
            if t >= Duration::from_millis(1_000) && t < Duration::from_millis(2_500) {
                return Err(DependencyError::ProviderDown);
            }
            Ok(())
        }),
        ListenerConfig {
            concurrency: 8,
            timeout: Duration::from_millis(500),
            retry_policy: RetryPolicy {
                max_retries: 2,
                initial_delay: Duration::from_millis(50),
                ..Default::default()
            },
            circuit: CircuitConfig {
                failure_threshold: 10,
                sliding_window: Duration::from_secs(5),
                timeout: Duration::from_millis(400),
                success_threshold: 3,
                ..Default::default()
            }
            .on_state_change(move |change| {
                log.lock().unwrap_or_else(|p| p.into_inner()).push((
                    started.elapsed(),
                    change.name.to_string(),
                    change.from,
                    change.to,
                ));
            }),
            dead_letter: DeadLetterConfig::to_sink(store.clone()),
            ..Default::default()
        },
    )?;

    // notifications: usually 5-30 ms, one in six takes 45-60 ms: past the 40 ms timeout.
    let tries = attempts.clone();
    manager.register(
        listener_fn("notifications", move |_event: Event| {
            let attempt = tries.fetch_add(1, Ordering::Relaxed);
            async move {
                let r = roll(attempt);
                let ms = if r < 166 { 45 + r % 16 } else { 5 + r % 26 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Error>(())
            }
        }),
        ListenerConfig {
            concurrency: 32,
            timeout: Duration::from_millis(40),
            retry_policy: RetryPolicy {
                max_retries: 1,
                initial_delay: Duration::from_millis(10),
                ..Default::default()
            },
            circuit: rate_breaker(),
            dead_letter: DeadLetterConfig::to_sink(store.clone()),
            ..Default::default()
        },
    )?;

    Ok(manager)
}

/// A breaker that opens when at least half of the last 20+ calls in 10 s failed.
fn rate_breaker() -> CircuitConfig {
    CircuitConfig {
        failure_rate_threshold: Some(0.5),
        minimum_calls: 20,
        sliding_window: Duration::from_secs(10),
        ..Default::default()
    }
}

fn progress(manager: &ListenerManager, started: Instant, accepted: u64) {
    let s = manager.stats();
    let payments = manager
        .circuit_breaker("payments")
        .map(|b| b.state().to_string())
        .unwrap_or_default();
    print!(
        "\r[{:>5.2}s] dispatched {accepted:>4} | done {:>4} (ok {:>4}, failed {:>3}) | in flight {:>3} | retries {:>3} | payments breaker: {payments:<9} | health: {:<12}",
        started.elapsed().as_secs_f64(),
        s.events_processed,
        s.events_succeeded,
        s.events_failed,
        s.in_flight,
        s.events_retried,
        manager.health().to_string(),
    );
    let _ = std::io::stdout().flush();
}

type Transitions = Mutex<
    Vec<(
        Duration,
        String,
        tower_listener::CircuitState,
        tower_listener::CircuitState,
    )>,
>;

async fn print_report(
    manager: &ListenerManager,
    store: &RedbStore,
    transitions: &Transitions,
) -> Result<(), Error> {
    println!("manager health: {}", manager.health());
    println!(
        "\n{:<14} {:<13} {:>6} {:>6} {:>6} {:>7} {:>8} {:>8} {:>6} {:>9} {:>9} {:>9}",
        "listener",
        "health",
        "events",
        "ok",
        "failed",
        "retries",
        "timeouts",
        "rejected",
        "dead",
        "p50",
        "p99",
        "max"
    );
    for id in manager.listeners() {
        let s = manager.listener_stats(&id)?;
        println!(
            "{:<14} {:<13} {:>6} {:>6} {:>6} {:>7} {:>8} {:>8} {:>6} {:>9.1?} {:>9.1?} {:>9.1?}",
            id,
            manager.listener_health(&id)?.to_string(),
            s.events_processed,
            s.events_succeeded,
            s.events_failed,
            s.events_retried,
            s.timeouts,
            s.rejected,
            s.dead_letter_events,
            s.event_latency.p50,
            s.event_latency.p99,
            s.event_latency.max,
        );
    }

    println!("\nbreaker transitions:");
    let transitions = transitions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if transitions.is_empty() {
        println!("  (none)");
    }
    for (at, name, from, to) in &transitions {
        println!("  {:>6.2}s  {name}: {from} -> {to}", at.as_secs_f64());
    }

    println!("\ndead letters by reason (in the store):");
    for id in manager.listeners() {
        let page =
            DeadLetterStore::<Value>::list(store, LetterFilter::all().listener(&id), None, 10_000)
                .await?;
        let letters: Vec<_> = page.letters.iter().filter_map(|l| l.decoded()).collect();
        let mut by_reason: BTreeMap<&'static str, usize> = BTreeMap::new();
        for letter in &letters {
            *by_reason.entry(letter.reason.as_str()).or_default() += 1;
        }
        println!("  {id:<14} {:>4} {by_reason:?}", letters.len());
        if let Some(example) = letters
            .iter()
            .find(|l| l.reason != DeadLetterReason::CircuitOpen)
            .or(letters.first())
        {
            println!(
                "  {:<14}      e.g. {} after {} attempt(s): {}",
                "",
                example.request.id(),
                example.attempts,
                example.error
            );
        }
    }
    Ok(())
}
