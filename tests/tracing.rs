//! Tracing: one span per event (at DEBUG) with `listener`, `event.id` and `event.type`; attempts, retries
//! and dead letters as events inside it, and the handler's own events too; breaker transitions as events;
//! all with stable field names. Checked with a capturing subscriber.

mod support;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::events::{event, scripted};
use tower_listener::{
    listener_fn, CircuitConfig, DeadLetterConfig, Event, ListenerConfig, ListenerManager,
    ManagerConfig, RetryPolicy,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

#[derive(Debug, Clone)]
struct Captured {
    target: String,
    fields: HashMap<String, String>,
    /// The fields of the span the event was recorded in, if any.
    span: Option<HashMap<String, String>>,
}

/// A span's name and fields, by span id.
type Spans = HashMap<u64, (String, HashMap<String, String>)>;

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Spans>>,
    events: Arc<Mutex<Vec<Captured>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.spans.lock().unwrap().insert(
            id.into_u64(),
            (attrs.metadata().name().to_owned(), fields.0),
        );
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event).and_then(|s| {
            self.spans
                .lock()
                .unwrap()
                .get(&s.id().into_u64())
                .map(|(_, f)| f.clone())
        });
        self.events.lock().unwrap().push(Captured {
            target: event.metadata().target().to_owned(),
            fields: fields.0,
            span,
        });
    }
}

/// Runs `body` on a paused current-thread runtime with a capturing subscriber; returns what it captured.
fn captured(body: impl std::future::Future<Output = ()>) -> Capture {
    captured_at(LevelFilter::TRACE, body)
}

/// [`captured`], with the subscriber capturing at `level` and above.
fn captured_at(level: LevelFilter, body: impl std::future::Future<Output = ()>) -> Capture {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone().with_filter(level));
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(body)
    });
    capture
}

#[test]
fn an_event_has_its_span_and_the_layers_report_inside_it_with_stable_fields() {
    let capture = captured(async {
        let m = ListenerManager::new(ManagerConfig::default()).unwrap();
        let (orders, _) = scripted("orders");
        m.register(
            orders,
            ListenerConfig {
                retry_policy: RetryPolicy {
                    max_retries: 2,
                    initial_delay: Duration::from_millis(10),
                    ..Default::default()
                },
                circuit: CircuitConfig {
                    failure_threshold: 3,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
        m.start().await.unwrap();
        let _ = m.process("orders", event("e1", "fail", 0)).await;
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    let spans = capture.spans.lock().unwrap();
    let (name, fields) = spans
        .values()
        .find(|(name, _)| name == "event")
        .expect("an event span");
    assert_eq!(name, "event");
    assert_eq!(fields.get("listener").map(String::as_str), Some("orders"));
    assert_eq!(fields.get("event.id").map(String::as_str), Some("e1"));
    assert_eq!(fields.get("event.type").map(String::as_str), Some("fail"));

    let events = capture.events.lock().unwrap();
    let in_event_span = |e: &Captured| {
        e.span
            .as_ref()
            .and_then(|s| s.get("event.id"))
            .map(String::as_str)
            == Some("e1")
    };
    let of = |target: &str| {
        events
            .iter()
            .filter(|e| e.target == target)
            .cloned()
            .collect::<Vec<_>>()
    };

    let attempts = of("tower_listener::attempt");
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|e| in_event_span(e)
        && e.fields["outcome"] == "handler"
        && e.fields.contains_key("latency_us")));

    let retries = of("tower_listener::retry");
    assert_eq!(retries.len(), 2);
    assert!(retries.iter().all(|e| in_event_span(e)
        && e.fields.contains_key("attempt")
        && e.fields.contains_key("delay_ms")));

    let dead = of("tower_listener::dead_letter");
    assert_eq!(dead.len(), 1);
    assert!(in_event_span(&dead[0]));
    assert_eq!(dead[0].fields["reason"], "exhausted");
    assert_eq!(dead[0].fields["attempts"], "3");
    assert_eq!(dead[0].fields["error"], "handler");
    assert_eq!(dead[0].fields["event.id"], "e1");

    let transitions = of("tower_listener::circuit");
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert_eq!(transitions[0].fields["breaker"], "orders");
    assert_eq!(
        (
            transitions[0].fields["from"].as_str(),
            transitions[0].fields["to"].as_str()
        ),
        ("closed", "open")
    );
}

#[test]
fn at_info_there_is_no_event_span_and_a_dead_letter_still_names_its_event() {
    let capture = captured_at(LevelFilter::INFO, async {
        let m = ListenerManager::new(ManagerConfig::default()).unwrap();
        let (orders, _) = scripted("orders");
        m.register(
            orders,
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                ..Default::default()
            },
        )
        .unwrap();
        m.start().await.unwrap();
        m.process("orders", event("e2", "ok", 0)).await.unwrap();
        let _ = m.process("orders", event("e3", "fail", 0)).await;
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    // The per-event span is at DEBUG: a service logging at INFO pays nothing for it.
    assert!(capture
        .spans
        .lock()
        .unwrap()
        .values()
        .all(|(name, _)| name != "event"));
    let events = capture.events.lock().unwrap();
    let dead: Vec<_> = events
        .iter()
        .filter(|e| e.target == "tower_listener::dead_letter")
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].fields["event.id"], "e3");
    assert_eq!(dead[0].fields["listener"], "orders");
}

#[test]
fn at_info_a_failure_without_dead_letters_is_warned_with_its_event_id() {
    let capture = captured_at(LevelFilter::INFO, async {
        let m = ListenerManager::new(ManagerConfig::default()).unwrap();
        let (orders, _) = scripted("orders");
        m.register(
            orders,
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                dead_letter: DeadLetterConfig::disabled(),
                ..Default::default()
            },
        )
        .unwrap();
        m.start().await.unwrap();
        let _ = m.process("orders", event("e4", "fail", 0)).await;
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    let events = capture.events.lock().unwrap();
    let warned: Vec<_> = events
        .iter()
        .filter(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m.contains("dead letters are disabled"))
        })
        .collect();
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0].target, "tower_listener::manager");
    assert_eq!(warned[0].fields["event.id"], "e4");
    assert_eq!(warned[0].fields["listener"], "orders");
}

#[test]
fn a_handlers_own_events_are_inside_its_event_span_before_and_after_it_waits() {
    let capture = captured(async {
        let m = ListenerManager::new(ManagerConfig::default()).unwrap();
        m.register(
            listener_fn("audit", |_: Event| async {
                tracing::info!(target: "handler", step = "before", "handling");
                tokio::time::sleep(Duration::from_millis(5)).await;
                tracing::info!(target: "handler", step = "after", "handled");
                Ok::<_, std::io::Error>(())
            }),
            ListenerConfig::default(),
        )
        .unwrap();
        m.start().await.unwrap();
        m.process("audit", event("e7", "audit", 0)).await.unwrap();
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    let steps = handler_steps(&capture);
    let in_e7 = Some("e7".to_owned());
    assert_eq!(
        steps,
        vec![
            ("before".to_owned(), in_e7.clone()),
            ("after".to_owned(), in_e7)
        ]
    );
}

#[test]
fn a_cancelled_handler_is_dropped_inside_its_event_span() {
    struct LogsWhenDropped;
    impl Drop for LogsWhenDropped {
        fn drop(&mut self) {
            tracing::info!(target: "handler", step = "dropped", "handler dropped");
        }
    }
    let capture = captured(async {
        let m = ListenerManager::new(ManagerConfig::default()).unwrap();
        m.register(
            listener_fn("audit", |_: Event| async {
                let _guard = LogsWhenDropped;
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, std::io::Error>(())
            }),
            ListenerConfig::default(),
        )
        .unwrap();
        m.start().await.unwrap();
        // The caller gives up after a second: dropping `process` cancels the event.
        let processing = m.process("audit", event("e8", "audit", 0));
        assert!(tokio::time::timeout(Duration::from_secs(1), processing)
            .await
            .is_err());
        m.stop(Duration::from_secs(1)).await.unwrap();
    });

    assert_eq!(
        handler_steps(&capture),
        vec![("dropped".to_owned(), Some("e8".to_owned()))]
    );
}

/// The `step` of each event the test handlers logged (target `handler`), with the `event.id` of the span
/// it was logged in.
fn handler_steps(capture: &Capture) -> Vec<(String, Option<String>)> {
    capture
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.target == "handler")
        .map(|e| {
            let span_event = e.span.as_ref().and_then(|s| s.get("event.id")).cloned();
            (e.fields["step"].clone(), span_event)
        })
        .collect()
}
