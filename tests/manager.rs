//! The ListenerManager: the Go package's own tests ported, lifecycle, dispatch,
//! stats and bad input, under paused time.

mod support;

use std::time::Duration;

use support::events::{event, opens_after, scripted};
use support::settle;
use tower_listener::{
    Backoff, CircuitConfig, DeadLetterConfig, DeadLetterReason, Error, Event, HealthStatus,
    Listener, ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy,
};

fn manager() -> ListenerManager {
    ListenerManager::new(ManagerConfig {
        workers: 4,
        queue: 64,
        ..ManagerConfig::named("test-manager")
    })
    .unwrap()
}

fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_delay: Duration::from_millis(10),
        ..Default::default()
    }
}

// ---- The Go package's own tests, ported ----

#[tokio::test(start_paused = true)]
async fn an_empty_manager_is_healthy() {
    let m = manager();
    assert_eq!(m.health(), HealthStatus::Healthy);
    assert_eq!(m.stats().registered_listeners, 0);
}

#[tokio::test(start_paused = true)]
async fn register_and_unregister_update_the_counts() {
    let m = manager();
    let (a, _) = scripted("a");
    let (b, _) = scripted("b");
    m.register(a, ListenerConfig::default()).unwrap();
    m.register(b, ListenerConfig::default()).unwrap();
    assert_eq!(m.stats().registered_listeners, 2);
    assert_eq!(m.listeners(), ["a", "b"]);
    let (dup, _) = scripted("a");
    assert!(
        matches!(m.register(dup, ListenerConfig::default()), Err(Error::AlreadyRegistered(id)) if id == "a")
    );
    m.unregister("a").await.unwrap();
    assert_eq!(m.stats().registered_listeners, 1);
    assert!(matches!(m.unregister("a").await, Err(Error::NotFound(id)) if id == "a"));
}

#[tokio::test(start_paused = true)]
async fn start_and_stop_set_active_listeners_and_a_second_start_fails() {
    let m = manager();
    let (a, _) = scripted("a");
    m.register(a, ListenerConfig::default()).unwrap();
    assert_eq!(m.stats().active_listeners, 0);
    m.start().await.unwrap();
    assert_eq!(m.stats().active_listeners, 1);
    assert!(matches!(m.start().await, Err(Error::AlreadyRunning)));
    m.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(m.stats().active_listeners, 0);
    // Stopping a stopped manager is fine.
    assert!(m.stop(Duration::from_secs(1)).await.unwrap().drained);
}

#[tokio::test(start_paused = true)]
async fn a_failing_listener_is_retried() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: fast_retries(3),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    m.process("a", event("e1", "flaky", 2)).await.unwrap();
    assert_eq!(calls.get(), 3);
    let stats = m.listener_stats("a").unwrap();
    assert_eq!((stats.events_retried, stats.events_succeeded), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opens_after_its_threshold_and_health_reports_circuit_open() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(a, opens_after(3)).unwrap();
    m.start().await.unwrap();
    for i in 0..3 {
        assert!(m
            .process("a", event(format!("e{i}"), "fail", 0))
            .await
            .is_err());
    }
    assert_eq!(m.listener_health("a").unwrap(), HealthStatus::CircuitOpen);
    assert_eq!(m.health(), HealthStatus::CircuitOpen);
    assert!(matches!(
        m.process("a", event("e4", "ok", 0)).await,
        Err(Error::CircuitOpen { .. })
    ));
    assert_eq!(calls.get(), 3);
    assert_eq!(m.stats().circuit_breakers, 1);
}

#[tokio::test(start_paused = true)]
async fn the_health_of_an_unknown_listener_is_an_error() {
    let m = manager();
    assert!(matches!(m.listener_health("ghost"), Err(Error::NotFound(id)) if id == "ghost"));
    assert!(matches!(m.listener_stats("ghost"), Err(Error::NotFound(_))));
}

#[test]
fn health_and_backoff_names_print_as_documented() {
    assert_eq!(HealthStatus::Healthy.to_string(), "healthy");
    assert_eq!(HealthStatus::Degraded.to_string(), "degraded");
    assert_eq!(HealthStatus::Unhealthy.to_string(), "unhealthy");
    assert_eq!(HealthStatus::CircuitOpen.to_string(), "circuit-open");
    assert_eq!(Backoff::Fixed.to_string(), "fixed");
    assert_eq!(Backoff::Linear.to_string(), "linear");
    assert_eq!(Backoff::exponential().to_string(), "exponential");
    assert_eq!(Backoff::Quadratic.to_string(), "quadratic");
}

#[test]
fn the_default_configs_match_the_documented_defaults() {
    let l: ListenerConfig = ListenerConfig::default();
    assert_eq!(
        (l.concurrency, l.timeout, l.name.clone()),
        (10, Duration::from_secs(30), None)
    );
    let r = RetryPolicy::default();
    assert_eq!(r.max_retries, 3);
    assert_eq!(r.initial_delay, Duration::from_millis(100));
    assert_eq!(r.max_delay, Some(Duration::from_secs(30)));
    assert_eq!(r.backoff, Backoff::Exponential { factor: 2.0 });
    let c = CircuitConfig::default();
    assert!(c.enabled);
    assert_eq!(
        (
            c.failure_threshold,
            c.success_threshold,
            c.half_open_max_calls
        ),
        (5, 3, 1)
    );
    assert_eq!(
        (c.timeout, c.sliding_window),
        (Duration::from_secs(30), Duration::from_secs(60))
    );
    let d: DeadLetterConfig = DeadLetterConfig::default();
    assert!(d.enabled && d.max_retries.is_none() && d.sink.is_none() && d.capture.is_none());
    let m = ManagerConfig::default();
    assert_eq!(m.queue, 1024);
    assert_eq!(
        m.workers,
        std::thread::available_parallelism().unwrap().get()
    );
    assert_eq!(l.health_window, Duration::from_secs(60));
    assert_eq!((l.health.degraded, l.health.unhealthy), (0.1, 0.5));
}

// ---- Lifecycle ----

#[tokio::test(start_paused = true)]
async fn process_and_dispatch_before_start_are_not_running() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(a, ListenerConfig::default()).unwrap();
    assert!(matches!(
        m.process("a", event("e", "ok", 0)).await,
        Err(Error::NotRunning)
    ));
    let refused = m.dispatch("a", event("e", "ok", 0)).unwrap_err();
    assert!(matches!(refused.error, Error::NotRunning));
    assert_eq!(refused.event.id(), "e", "the event is handed back");
    assert_eq!(calls.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_stop_works() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(a, ListenerConfig::default()).unwrap();
    for round in 0..3 {
        m.start().await.unwrap();
        m.process("a", event(format!("p{round}"), "ok", 0))
            .await
            .unwrap();
        m.dispatch("a", event(format!("d{round}"), "ok", 0))
            .unwrap();
        let report = m.stop(Duration::from_secs(5)).await.unwrap();
        assert!(report.drained);
        assert!(matches!(
            m.process("a", event("late", "ok", 0)).await,
            Err(Error::NotRunning)
        ));
    }
    assert_eq!(calls.get(), 6);
    assert_eq!(m.stats().events_succeeded, 6);
}

#[tokio::test(start_paused = true)]
async fn register_while_running_starts_the_listener_at_once() {
    let m = manager();
    m.start().await.unwrap();
    let (a, calls) = scripted("a");
    m.register(a, ListenerConfig::default()).unwrap();
    m.process("a", event("e", "ok", 0)).await.unwrap();
    assert_eq!(calls.get(), 1);
    assert_eq!(m.stats().active_listeners, 1);
}

#[tokio::test(start_paused = true)]
async fn stop_waits_for_in_flight_events_including_those_between_retries() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: RetryPolicy {
                max_retries: 2,
                initial_delay: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    m.dispatch("a", event("slow", "slow", 3_000)).unwrap();
    m.dispatch("a", event("flaky", "flaky", 2)).unwrap(); // sleeps 2 s, then 4 s between attempts
    let processing = {
        let m = m.clone();
        tokio::spawn(async move { m.process("a", event("direct", "slow", 1_000)).await })
    };
    settle().await;
    let started = tokio::time::Instant::now();
    let report = m.stop(Duration::from_secs(30)).await.unwrap();
    assert!(report.drained);
    assert_eq!(report.cancelled, 0);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(6),
        "stop waited for the flaky event's retries"
    );
    processing.await.unwrap().unwrap();
    let stats = m.stats();
    assert_eq!((stats.events_succeeded, stats.events_failed), (3, 0));
    assert_eq!(calls.get(), 5);
}

/// Spawns `m.process("a", event(id, kind, 0))`.
fn spawn_process(
    m: &ListenerManager,
    id: &'static str,
    kind: &'static str,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let m = m.clone();
    tokio::spawn(async move { m.process("a", event(id, kind, 0)).await })
}

/// Stops `m` with a 1 s deadline it cannot meet, and checks what the shutdown did: one event cancelled per
/// id in `ids`, every call in `calls` ended with `Error::Stopped`, and `letters` got exactly the events
/// `ids`, each dead-lettered with reason `Shutdown`.
async fn stop_past_the_deadline(
    m: &ListenerManager,
    calls: Vec<tokio::task::JoinHandle<Result<(), Error>>>,
    letters: &tower_listener::DeadLetterQueue<Event>,
    ids: &[&str],
) {
    let report = m.stop(Duration::from_secs(1)).await.unwrap();
    assert!(!report.drained);
    assert_eq!(report.cancelled, ids.len() as u64);
    for call in calls {
        assert!(matches!(call.await.unwrap(), Err(Error::Stopped)));
    }
    let letters = letters.drain();
    let mut lettered: Vec<&str> = letters.iter().map(|l| l.request.id()).collect();
    lettered.sort();
    assert_eq!(lettered, ids);
    assert!(letters
        .iter()
        .all(|l| l.reason == DeadLetterReason::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn stop_past_its_deadline_cancels_and_dead_letters_with_reason_shutdown() {
    let m = ListenerManager::new(ManagerConfig {
        workers: 1,
        queue: 16,
        ..Default::default()
    })
    .unwrap();
    let (a, _) = scripted("a");
    m.register(a, ListenerConfig::default()).unwrap();
    m.start().await.unwrap();
    m.dispatch("a", event("stuck", "hang", 0)).unwrap(); // the only worker hangs (until the 30 s timeout)
    m.dispatch("a", event("queued", "ok", 0)).unwrap(); // waits behind it in the queue
    let direct = spawn_process(&m, "direct", "hang");
    settle().await;
    let letters = m.dead_letters("a").unwrap().unwrap();
    stop_past_the_deadline(&m, vec![direct], &letters, &["direct", "queued", "stuck"]).await;
    let stats = m.stats();
    assert_eq!(
        (stats.events_processed, stats.events_failed, stats.in_flight),
        (3, 3, 0)
    );
    assert_eq!(stats.dead_letter_events, 3);
}

#[tokio::test(start_paused = true)]
async fn an_event_cancelled_while_it_waits_for_a_permit_is_dead_lettered_with_reason_shutdown() {
    let m = manager();
    let (a, _) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            concurrency: 1,
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let running = spawn_process(&m, "running", "hang");
    settle().await;
    let waiting = spawn_process(&m, "waiting", "hang"); // the one permit is taken: it waits for it
    settle().await;
    let letters = m.dead_letters("a").unwrap().unwrap();
    stop_past_the_deadline(
        &m,
        vec![running, waiting],
        &letters,
        &["running", "waiting"],
    )
    .await;
}

/// A handler that is never ready: its events wait for its readiness.
#[derive(Clone)]
struct NeverReady;

impl tower::Service<Event> for NeverReady {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: Event) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_cancelled_while_its_handler_is_not_ready_is_dead_lettered_with_reason_shutdown() {
    let m = manager();
    m.register(Listener::new("a", NeverReady), ListenerConfig::default())
        .unwrap();
    m.start().await.unwrap();
    let waiting = spawn_process(&m, "unready", "ok");
    settle().await;
    let letters = m.dead_letters("a").unwrap().unwrap();
    stop_past_the_deadline(&m, vec![waiting], &letters, &["unready"]).await;
}

/// A sink whose first letter never finishes storing; later letters go to a queue.
struct StuckOnce {
    stuck: std::sync::atomic::AtomicBool,
    queue: tower_listener::DeadLetterQueue<Event>,
}

impl tower_listener::DeadLetterSink<Event> for StuckOnce {
    fn send(&self, letter: tower_listener::DeadLetter<Event>) -> tower_listener::SinkFuture {
        if !self.stuck.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.queue.send(letter)
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_cancelled_while_its_letter_is_being_stored_is_dead_lettered_with_reason_shutdown()
{
    let m = manager();
    let sink = std::sync::Arc::new(StuckOnce {
        stuck: std::sync::atomic::AtomicBool::new(false),
        queue: tower_listener::DeadLetterQueue::new(16),
    });
    let (a, _) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: RetryPolicy::never(),
            dead_letter: DeadLetterConfig {
                sink: Some(sink.clone()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let failing = spawn_process(&m, "e1", "fail");
    settle().await; // failed, its letter stuck in the sink
                    // The stack's future had let go of the event by then; the letter being stored still held it.
    stop_past_the_deadline(&m, vec![failing], &sink.queue, &["e1"]).await;
    assert_eq!(m.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn unregister_drains_one_listener_without_blocking_others() {
    let m = ListenerManager::new(ManagerConfig {
        unregister_timeout: Duration::from_secs(5),
        ..ManagerConfig::default()
    })
    .unwrap();
    let (a, _) = scripted("a");
    let (b, b_calls) = scripted("b");
    m.register(a, ListenerConfig::default()).unwrap();
    m.register(b, ListenerConfig::default()).unwrap();
    m.start().await.unwrap();
    m.dispatch("a", event("long", "slow", 60_000)).unwrap();
    settle().await;
    let unregistering = {
        let m = m.clone();
        tokio::spawn(async move { m.unregister("a").await })
    };
    settle().await;
    // While "a" drains, "b" works and "a" is gone.
    m.process("b", event("b1", "ok", 0)).await.unwrap();
    assert_eq!(b_calls.get(), 1);
    assert!(matches!(
        m.process("a", event("x", "ok", 0)).await,
        Err(Error::NotFound(_))
    ));
    let report = unregistering.await.unwrap().unwrap();
    assert_eq!((report.drained, report.cancelled), (false, 1));
}

// ---- What the Go package gets wrong ----

#[tokio::test(start_paused = true)]
async fn retries_pass_the_breaker_and_the_limit() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: fast_retries(10),
            circuit: CircuitConfig {
                failure_threshold: 3,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    // The breaker opens on the third failed attempt; the fourth attempt is rejected by it and not retried.
    assert!(matches!(
        m.process("a", event("e", "fail", 0)).await,
        Err(Error::CircuitOpen { .. })
    ));
    assert_eq!(calls.get(), 3);
    let stats = m.listener_stats("a").unwrap();
    assert_eq!((stats.events_retried, stats.rejected), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn retries_wait_for_the_concurrency_limit() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            concurrency: 1,
            retry_policy: fast_retries(1),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let hog = {
        let m = m.clone();
        tokio::spawn(async move { m.process("a", event("hog", "slow", 1_000)).await })
    };
    settle().await;
    let flaky = {
        let m = m.clone();
        tokio::spawn(async move { m.process("a", event("flaky", "flaky", 1)).await })
    };
    settle().await;
    assert_eq!(calls.get(), 1, "the flaky event waits for the only slot");
    tokio::time::advance(Duration::from_millis(1_000)).await;
    hog.await.unwrap().unwrap();
    flaky.await.unwrap().unwrap();
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_per_event_timeout_applies() {
    let m = manager();
    let (a, _) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            timeout: Duration::from_millis(100),
            retry_policy: RetryPolicy::never(),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let started = tokio::time::Instant::now();
    let result = m.process("a", event("e", "hang", 0)).await;
    assert!(
        matches!(result, Err(Error::Timeout { limit: Some(l) }) if l == Duration::from_millis(100))
    );
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(m.listener_stats("a").unwrap().timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn process_with_every_slot_busy_still_returns_the_handlers_real_outcome() {
    let m = manager();
    let (a, _) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            concurrency: 1,
            retry_policy: RetryPolicy::never(),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let hog = {
        let m = m.clone();
        tokio::spawn(async move { m.process("a", event("hog", "slow", 500)).await })
    };
    settle().await;
    let result = m.process("a", event("e", "fail", 0)).await;
    assert!(matches!(result, Err(Error::Handler(_))), "{result:?}");
    hog.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn reading_health_never_changes_a_breaker() {
    let m = manager();
    let (a, _) = scripted("a");
    m.register(a, opens_after(1)).unwrap();
    m.start().await.unwrap();
    let _ = m.process("a", event("e", "fail", 0)).await;
    tokio::time::advance(Duration::from_secs(120)).await;
    for _ in 0..5 {
        assert_eq!(m.listener_health("a").unwrap(), HealthStatus::CircuitOpen);
        assert_eq!(m.health(), HealthStatus::CircuitOpen);
    }
    // The first call after the open timeout is still admitted as a probe.
    m.process("a", event("probe", "ok", 0)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_or_dead_letter_sink_does_not_take_the_manager_down() {
    support::quiet_injected_panics();
    let m = manager();
    let (a, _) = scripted("a");
    let sink =
        tower_listener::dead_letter_fn(|_: tower_listener::DeadLetter<tower_listener::Event>| {
            panic!("sink down: injected panic")
        });
    m.register(
        a,
        ListenerConfig {
            retry_policy: fast_retries(1),
            dead_letter: DeadLetterConfig::to_sink(sink),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let result = m.process("a", event("p", "panic", 0)).await;
    assert!(
        matches!(result, Err(Error::Panicked { ref message }) if message == "scripted panic"),
        "{result:?}"
    );
    m.dispatch("a", event("p2", "panic", 0)).unwrap();
    m.process("a", event("fine", "ok", 0)).await.unwrap();
    m.stop(Duration::from_secs(5)).await.unwrap();
    let stats = m.listener_stats("a").unwrap();
    assert_eq!(
        (
            stats.events_failed,
            stats.dead_letter_failures,
            stats.events_succeeded
        ),
        (2, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn dead_letter_max_retries_replaces_the_retry_policys() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: fast_retries(1),
            dead_letter: DeadLetterConfig {
                max_retries: Some(4),
                ..Default::default()
            },
            circuit: CircuitConfig::disabled(),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let _ = m.process("a", event("e", "fail", 0)).await;
    assert_eq!(calls.get(), 5);
    let letter = m.dead_letters("a").unwrap().unwrap().drain().pop().unwrap();
    assert_eq!(
        (letter.attempts, letter.reason),
        (5, DeadLetterReason::Exhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_max_delay_is_refused_and_none_means_no_cap() {
    let m = manager();
    let (a, _) = scripted("a");
    let zero = ListenerConfig {
        retry_policy: RetryPolicy {
            max_delay: Some(Duration::ZERO),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        m.register(a.clone(), zero),
        Err(Error::InvalidConfig {
            field: "retry_policy.max_delay",
            ..
        })
    ));
    let none = ListenerConfig {
        retry_policy: RetryPolicy {
            max_delay: None,
            ..Default::default()
        },
        ..Default::default()
    };
    m.register(a, none).unwrap();
}

// ---- Dispatch ----

#[tokio::test(start_paused = true)]
async fn a_full_queue_hands_the_event_back_with_overloaded() {
    let m = ListenerManager::new(ManagerConfig {
        workers: 1,
        queue: 2,
        ..Default::default()
    })
    .unwrap();
    let (a, _) = scripted("a");
    m.register(a, ListenerConfig::default()).unwrap();
    m.start().await.unwrap();
    m.dispatch("a", event("running", "slow", 100)).unwrap();
    settle().await;
    m.dispatch("a", event("q1", "ok", 0)).unwrap();
    m.dispatch("a", event("q2", "ok", 0)).unwrap();
    let refused = m.dispatch("a", event("q3", "ok", 0)).unwrap_err();
    assert!(matches!(refused.error, Error::Overloaded));
    assert_eq!(refused.event.id(), "q3");
    m.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m.stats().events_succeeded, 3);
}

#[tokio::test(start_paused = true)]
async fn redrive_reprocesses_the_listeners_dead_letters() {
    let m = manager();
    let (a, _) = scripted("a");
    m.register(
        a,
        ListenerConfig {
            retry_policy: RetryPolicy::never(),
            ..Default::default()
        },
    )
    .unwrap();
    m.start().await.unwrap();
    let _ = m.process("a", event("e1", "flaky", 1)).await; // fails once, would succeed now
    let _ = m.process("a", event("e2", "fail", 0)).await; // fails for good
    assert_eq!(m.dead_letters("a").unwrap().unwrap().len(), 2);
    let report = support::events::redrive_all(&m, "a").await;
    assert_eq!((report.succeeded, report.failed), (1, 1));
    let left = m.dead_letters("a").unwrap().unwrap().list();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].request.id(), "e2");
}

#[tokio::test(start_paused = true)]
async fn redrive_stops_at_an_open_breaker_and_keeps_the_rest() {
    let m = manager();
    let (a, calls) = scripted("a");
    m.register(a, opens_after(3)).unwrap();
    m.start().await.unwrap();
    // The dependency fails each of the first three events once (which opens the breaker); the other
    // four are rejected by the open breaker and dead-lettered too.
    for i in 0..7 {
        let kind = if i < 3 { "flaky" } else { "ok" };
        let _ = m.process("a", event(format!("f{i}"), kind, 1)).await;
    }
    let queue = m.dead_letters("a").unwrap().unwrap();
    assert_eq!(queue.len(), 7);
    assert_eq!(calls.get(), 3);
    let before = m.listener_stats("a").unwrap();

    let report = support::events::redrive_all(&m, "a").await;
    assert_eq!((report.succeeded, report.failed, report.not_run), (0, 0, 7));
    assert_eq!(
        report.stopped_by.as_ref().map(|e| e.kind.as_str()),
        Some("circuit_open")
    );
    assert_eq!(calls.get(), 3, "nothing ran against the open breaker");
    let kept: Vec<String> = queue
        .list()
        .iter()
        .map(|l| l.request.id().to_owned())
        .collect();
    assert_eq!(
        kept,
        ["f0", "f1", "f2", "f3", "f4", "f5", "f6"],
        "all kept, in order"
    );
    assert!(queue.list().iter().all(|l| l.attempts == 1), "untouched");
    let after = m.listener_stats("a").unwrap();
    assert_eq!(after.events_failed, before.events_failed, "no new failures");
    assert_eq!((after.redriven_succeeded, after.redriven_failed), (0, 0));

    // Once the breaker admits calls again, the redrive runs them and counts what happened.
    m.circuit_breaker("a").unwrap().reset();
    let report = support::events::redrive_all(&m, "a").await;
    assert_eq!((report.succeeded, report.failed), (7, 0));
    assert!(report.completed());
    let after = m.listener_stats("a").unwrap();
    assert_eq!((after.redriven_succeeded, after.redriven_failed), (7, 0));
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_box_clone_service_registers() {
    // `BoxCloneService` is `Send` but not `Sync`: the manager asks for no more.
    let m = manager();
    let service: tower::util::BoxCloneService<Event, (), Error> =
        tower::util::BoxCloneService::new(tower::service_fn(|event: Event| async move {
            match event.event_type() {
                "ok" => Ok(()),
                _ => Err(Error::handler(support::ScriptedFailure)),
            }
        }));
    m.register(Listener::new("boxed", service), ListenerConfig::default())
        .unwrap();
    m.start().await.unwrap();
    m.process("boxed", event("e", "ok", 0)).await.unwrap();
    assert_eq!(m.listener_stats("boxed").unwrap().events_succeeded, 1);
}

// ---- Bad input ----

#[tokio::test(start_paused = true)]
async fn bad_input_gives_a_clear_error() {
    let m = manager();
    assert!(matches!(
        m.process("ghost", event("e", "ok", 0)).await,
        Err(Error::NotFound(_))
    ));
    let (empty, _) = scripted("  ");
    assert!(matches!(
        m.register(empty, ListenerConfig::default()),
        Err(Error::InvalidConfig { field: "id", .. })
    ));
    let cases: Vec<(ListenerConfig, &str)> = vec![
        (
            ListenerConfig {
                concurrency: 0,
                ..Default::default()
            },
            "concurrency",
        ),
        (
            ListenerConfig {
                timeout: Duration::ZERO,
                ..Default::default()
            },
            "timeout",
        ),
        (
            ListenerConfig {
                name: Some(String::new()),
                ..Default::default()
            },
            "name",
        ),
        (
            ListenerConfig {
                health_window: Duration::ZERO,
                ..Default::default()
            },
            "health_window",
        ),
        (
            ListenerConfig {
                retry_policy: RetryPolicy {
                    max_delay: Some(Duration::from_millis(1)),
                    ..Default::default()
                },
                ..Default::default()
            },
            "retry_policy.max_delay",
        ),
        (
            ListenerConfig {
                circuit: CircuitConfig {
                    failure_threshold: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
            "circuit.failure_threshold",
        ),
        (
            ListenerConfig {
                circuit: CircuitConfig {
                    success_threshold: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
            "circuit.success_threshold",
        ),
    ];
    for (config, want) in cases {
        let (l, _) = scripted("l");
        match m.register(l, config) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("expected InvalidConfig for {want}, got {other:?}"),
        }
    }
    for (config, want) in [
        (
            ManagerConfig {
                workers: 0,
                ..Default::default()
            },
            "workers",
        ),
        (
            ManagerConfig {
                queue: 0,
                ..Default::default()
            },
            "queue",
        ),
    ] {
        assert!(
            matches!(ListenerManager::<serde_json::Value>::new(config), Err(Error::InvalidConfig { field, .. }) if field == want)
        );
    }
}
