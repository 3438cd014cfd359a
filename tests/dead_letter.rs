//! The dead-letter layer and its sinks, under paused time.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{handler, Call};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_listener::{
    dead_letter_fn, CircuitBreakerLayer, CircuitConfig, DeadLetter, DeadLetterConfig,
    DeadLetterLayer, DeadLetterQueue, DeadLetterReason, Error, Event, ListenerMetrics, RetryLayer,
    RetryPolicy,
};

fn retry(max_retries: u32) -> RetryLayer {
    RetryLayer::new(RetryPolicy {
        max_retries,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failed_event_is_dead_lettered_exactly_once_with_event_error_attempts_and_reason() {
    let queue = DeadLetterQueue::new(10);
    let metrics = Arc::new(ListenerMetrics::new("orders"));
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            DeadLetterLayer::with_metrics(
                DeadLetterConfig::to_sink(queue.clone()),
                metrics.clone(),
            )
            .unwrap(),
        )
        .layer(retry(2))
        .service(inner);
    let started = std::time::SystemTime::now();
    assert!(matches!(
        svc.clone().oneshot(Call::Fail).await,
        Err(Error::Handler(_))
    ));
    assert_eq!(probe.calls(), 3);
    let letters = queue.drain();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.request, Call::Fail);
    assert_eq!(letter.error.kind, "handler");
    assert_eq!(letter.error.chain, ["scripted failure"]);
    // While in this process the record keeps the error itself, downcastable to the handler's type.
    assert!(letter
        .error
        .error()
        .and_then(|e| e.downcast_ref::<support::ScriptedFailure>())
        .is_some());
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.reason, DeadLetterReason::Exhausted);
    assert_eq!(&*letter.listener, "orders");
    assert!(
        letter.first_failure_at >= started && letter.dead_lettered_at >= letter.first_failure_at
    );
    assert_eq!(metrics.snapshot().dead_letter_events, 1);

    // A success is not dead-lettered.
    svc.oneshot(Call::Ok).await.unwrap();
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_reason_says_why_retrying_stopped() {
    support::quiet_injected_panics();
    let queue = DeadLetterQueue::new(10);
    let (inner, _) = handler();
    let policy = RetryPolicy::default().with_condition(|e| !matches!(e, Error::Panicked { .. }));
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .layer(RetryLayer::new(policy).unwrap())
        .layer(tower_listener::CatchPanicLayer)
        .service(inner);
    let _ = svc.clone().oneshot(Call::Panic).await;
    let letter = queue.drain().pop().unwrap();
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::NotRetryable, 1)
    );

    // Without a retry layer: one attempt, reason Failed.
    let (inner, _) = handler();
    let bare = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .service(inner);
    let _ = bare.oneshot(Call::Fail).await;
    let letter = queue.drain().pop().unwrap();
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::Failed, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn rejections_are_captured() {
    let queue = DeadLetterQueue::new(10);
    let breaker = CircuitBreakerLayer::new(CircuitConfig::default()).unwrap();
    breaker.handle().force_open();
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .layer(retry(3))
        .layer(breaker)
        .service(inner);
    assert!(matches!(
        svc.clone().oneshot(Call::Ok).await,
        Err(Error::CircuitOpen { .. })
    ));
    let letter = queue.drain().pop().unwrap();
    assert_eq!(letter.reason, DeadLetterReason::CircuitOpen);
    assert_eq!(letter.attempts, 1);
    assert_eq!(probe.calls(), 0);

    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .service(inner);
    let _ = svc.oneshot(Call::Overloaded).await;
    assert_eq!(
        queue.drain().pop().unwrap().reason,
        DeadLetterReason::Overloaded
    );
}

#[tokio::test(start_paused = true)]
async fn the_capture_filter_narrows_what_is_dead_lettered() {
    let queue = DeadLetterQueue::new(10);
    let config = DeadLetterConfig::to_sink(queue.clone())
        .capture_only(|r| !matches!(r, DeadLetterReason::Overloaded));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(config).unwrap())
        .service(inner);
    let _ = svc.clone().oneshot(Call::Overloaded).await;
    assert!(queue.is_empty());
    let _ = svc.oneshot(Call::Fail).await;
    assert_eq!(queue.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_sink_is_counted_and_the_caller_gets_the_original_error() {
    support::quiet_injected_panics();
    let metrics = Arc::new(ListenerMetrics::new("l"));
    let sink = dead_letter_fn(|_: DeadLetter<Call>| panic!("sink down: injected panic"));
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            DeadLetterLayer::with_metrics(DeadLetterConfig::to_sink(sink), metrics.clone())
                .unwrap(),
        )
        .service(inner);
    assert!(matches!(
        svc.oneshot(Call::Fail).await,
        Err(Error::Handler(_))
    ));
    let stats = metrics.snapshot();
    assert_eq!(
        (stats.dead_letter_failures, stats.dead_letter_events),
        (1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_is_counted_and_the_caller_gets_the_original_error() {
    let metrics = Arc::new(ListenerMetrics::new("l"));
    let queue = DeadLetterQueue::new(1);
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(
            DeadLetterLayer::with_metrics(
                DeadLetterConfig::to_sink(queue.clone()),
                metrics.clone(),
            )
            .unwrap(),
        )
        .service(inner);
    let _ = svc.clone().oneshot(Call::Fail).await;
    // The queue is full now: the second letter is refused, counted, and the error still returned.
    assert!(matches!(
        svc.oneshot(Call::Fail).await,
        Err(Error::Handler(_))
    ));
    let stats = metrics.snapshot();
    assert_eq!(
        (stats.dead_letter_events, stats.dead_letter_failures),
        (1, 1)
    );
    assert_eq!(queue.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_closure_and_mpsc_sinks_receive_letters() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(dead_letter_fn(
            move |l: DeadLetter<Call>| log.lock().unwrap().push(l.request),
        )))
        .service(inner.clone());
    let _ = svc.oneshot(Call::Fail).await;
    assert_eq!(*seen.lock().unwrap(), vec![Call::Fail]);

    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(tx))
        .service(inner);
    let _ = svc.oneshot(Call::Fail).await;
    assert_eq!(rx.recv().await.unwrap().request, Call::Fail);
}

#[tokio::test(start_paused = true)]
async fn redrive_keeps_only_letters_that_fail_again() {
    // Letters of events that failed, redriven through a handler that now succeeds for even payloads only.
    let queue: DeadLetterQueue<Event> = DeadLetterQueue::new(10);
    let always_fail =
        service_fn(|_: Event| async { Err::<(), _>(Error::handler(support::ScriptedFailure)) });
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .service(always_fail);
    for n in 0..6u64 {
        let _ = svc
            .clone()
            .oneshot(Event::new(format!("e{n}"), "test", serde_json::json!(n)))
            .await;
    }
    assert_eq!(queue.len(), 6);
    let fixed = service_fn(|e: Event| async move {
        if e.data().as_u64().unwrap() % 2 == 0 {
            Ok(())
        } else {
            Err(Error::handler(support::ScriptedFailure))
        }
    });
    let report = queue.redrive(fixed).await;
    assert_eq!((report.succeeded, report.failed), (3, 3));
    let left: Vec<String> = queue
        .list()
        .iter()
        .map(|l| l.request.id().to_owned())
        .collect();
    assert_eq!(left, ["e1", "e3", "e5"]);
    assert!(queue.list().iter().all(|l| l.attempts == 2));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_event_is_not_dead_lettered() {
    let queue = DeadLetterQueue::new(10);
    let (inner, _) = handler();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .service(inner);
    let _ = tokio::time::timeout(Duration::from_millis(5), svc.oneshot(Call::Hang)).await;
    assert!(queue.is_empty());
}

#[test]
fn an_enabled_config_without_a_sink_names_the_field() {
    assert!(matches!(
        DeadLetterLayer::<Event>::new(DeadLetterConfig::default()),
        Err(Error::InvalidConfig {
            field: "dead_letter.sink",
            ..
        })
    ));
    assert!(DeadLetterLayer::<Event>::new(DeadLetterConfig::disabled()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_retry_layer_without_dead_letters_leaves_nothing_for_a_later_dead_letter_layer() {
    // A retry layer on its own gives up on an event (its attempt record goes nowhere); a dead-letter layer
    // without a retry layer inside must then see one attempt, not that stale record.
    let (inner, _probe) = handler();
    let retried_alone = ServiceBuilder::new().layer(retry(2)).service(inner.clone());
    assert!(retried_alone.oneshot(Call::Fail).await.is_err());
    let queue = DeadLetterQueue::new(10);
    let unretried = ServiceBuilder::new()
        .layer(DeadLetterLayer::with_sink(queue.clone()))
        .service(inner);
    assert!(unretried.oneshot(Call::Fail).await.is_err());
    let letters = queue.drain();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Failed);
}
