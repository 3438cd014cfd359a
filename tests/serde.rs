//! Records that serialize: every record a store, a broker or a status page keeps reads back as it was
//! written, and events are CloudEvents 1.0 structured JSON.
#![cfg(feature = "serde")]

mod support;

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use support::events::{event, scripted};
use tower_listener::{
    DeadLetter, DeadLetterReason, Error, ErrorRecord, Event, LatencySummary, ListenerConfig,
    ListenerManager, ManagerConfig, RedriveReport, RetryPolicy, Stats,
};

fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let json = serde_json::to_string(value).unwrap();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[derive(Debug, thiserror::Error)]
#[error("payment declined")]
struct Declined(#[source] std::io::Error);

#[test]
fn an_error_record_keeps_kind_message_chain_and_permanence() {
    let error = Error::handler(Declined(std::io::Error::other("card expired")));
    let record = ErrorRecord::from(&error);
    assert_eq!(record.kind, "handler");
    assert_eq!(record.message, "handler failed: payment declined");
    assert_eq!(record.chain, ["payment declined", "card expired"]);
    assert!(!record.permanent);
    let back = round_trip(&record);
    assert_eq!(back, record);
    assert!(
        back.error().is_none(),
        "a record read back has only its text"
    );

    let permanent = ErrorRecord::from(Error::permanent(std::fmt::Error));
    assert_eq!(
        (permanent.kind.as_str(), permanent.permanent),
        ("permanent", true)
    );
    assert_eq!(round_trip(&permanent), permanent);

    let timeout = ErrorRecord::from(Error::Timeout {
        limit: Some(Duration::from_secs(5)),
    });
    assert_eq!(timeout.message, "attempt timed out after 5s");
    assert_eq!(round_trip(&timeout), timeout);
}

#[test]
fn a_dead_letter_round_trips_with_its_event_error_and_times() {
    let event = Event::new(
        "o-7",
        "order.created",
        json!({"total": 42, "items": ["a", "b"]}),
    )
    .with_source("/shop")
    .with_metadata("tenant", "acme")
    .with_timestamp(UNIX_EPOCH + Duration::new(1_764_624_607, 5));
    let mut letter = DeadLetter::new(
        event,
        Error::handler(Declined(std::io::Error::other("card expired"))),
        "payments",
        4,
        DeadLetterReason::Exhausted,
    );
    letter.first_failure_at = UNIX_EPOCH + Duration::new(1_764_624_608, 123_456_789);
    letter.dead_lettered_at = UNIX_EPOCH + Duration::new(1_764_624_610, 0);

    let json = serde_json::to_value(&letter).unwrap();
    assert_eq!(json["error"]["kind"], "handler");
    assert_eq!(json["error"]["chain"][1], "card expired");
    assert_eq!(json["reason"], "exhausted");
    assert_eq!(json["first_failure_at"], "2025-12-01T21:30:08.123456789Z");
    assert_eq!(json["request"]["type"], "order.created");

    let back: DeadLetter<Event> = round_trip(&letter);
    assert_eq!(back, letter);
    assert_eq!(back.request.timestamp(), letter.request.timestamp());
    assert_eq!(back.request.source(), Some("/shop"));
    assert_eq!(back.error.message, "handler failed: payment declined");

    // Every reason survives, under its stable name.
    for reason in DeadLetterReason::ALL {
        let json = serde_json::to_value(reason).unwrap();
        assert_eq!(json, reason.as_str());
        assert_eq!(
            serde_json::from_value::<DeadLetterReason>(json).unwrap(),
            reason
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stats_latency_and_redrive_reports_round_trip() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (listener, _) = scripted("orders");
    manager
        .register(
            listener,
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                ..Default::default()
            },
        )
        .unwrap();
    manager.start().await.unwrap();
    manager
        .process("orders", event("a", "slow", 3))
        .await
        .unwrap();
    let _ = manager.process("orders", event("b", "fail", 0)).await;
    let _ = manager.process("orders", event("c", "permanent", 0)).await;
    let report = support::events::redrive_all(&manager, "orders").await;

    let stats = manager.stats();
    assert_eq!((stats.events_failed, stats.permanent_failures), (2, 1));
    assert!(stats.event_latency.max >= Duration::from_millis(3));
    let back: Stats = round_trip(&stats);
    assert_eq!(back, stats);

    let json = serde_json::to_value(stats.event_latency).unwrap();
    assert_eq!(json["count"], 3);
    assert!(json["max_ns"].as_u64().unwrap() >= 3_000_000);
    let latency: LatencySummary = round_trip(&stats.event_latency);
    assert_eq!(latency, stats.event_latency);

    assert_eq!((report.succeeded, report.failed), (0, 2));
    assert_eq!(round_trip(&report), report);
    let mut stopped = RedriveReport::default();
    stopped.not_run = 3;
    stopped.stopped_by = Some(ErrorRecord::from(Error::Overloaded));
    assert_eq!(round_trip(&stopped), stopped);
}

#[test]
fn an_event_is_cloudevents_structured_json() {
    let event = Event::new("A234", "com.example.created", json!({"total": 1}))
        .with_source("/shop")
        .with_metadata("tenant", "acme")
        .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_764_624_607_250));
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(
        json,
        json!({
            "specversion": "1.0", "id": "A234", "type": "com.example.created", "source": "/shop",
            "time": "2025-12-01T21:30:07.25Z", "data": {"total": 1}, "tenant": "acme"
        })
    );
    assert_eq!(round_trip(&event), event);

    // What may be left out: source, time (now), specversion; data when the payload accepts nothing.
    let minimal: Event = serde_json::from_value(json!({"id": "m", "type": "ping"})).unwrap();
    assert_eq!(minimal.data(), &serde_json::Value::Null);
    assert_eq!(minimal.source(), None);
    assert!(minimal.timestamp().elapsed().unwrap() < Duration::from_secs(60));
    let typed: Result<Event<u64>, _> = serde_json::from_value(json!({"id": "m", "type": "ping"}));
    assert!(typed.unwrap_err().to_string().contains("`data`"));
}

#[test]
fn bad_event_json_names_what_is_wrong() {
    let cases = [
        (json!({"type": "t", "data": 1}), "`id`"),
        (json!({"id": "i", "data": 1}), "`type`"),
        (
            json!({"id": "i", "type": "t", "data": 1, "time": "monday"}),
            "`time`",
        ),
        (
            json!({"id": "i", "type": "t", "data": 1, "specversion": "0.3"}),
            "`specversion`",
        ),
        (
            json!({"id": "i", "type": "t", "data": 1, "tenant": {"a": 1}}),
            "`tenant`",
        ),
        (
            json!({"id": "i", "type": "t", "data_base64": "AA=="}),
            "`data_base64`",
        ),
    ];
    for (json, named) in cases {
        let error = serde_json::from_value::<Event>(json.clone()).unwrap_err();
        assert!(error.to_string().contains(named), "{json}: {error}");
    }
    // Metadata that would collide with an attribute cannot be written.
    let clash = Event::new("i", "t", json!(1)).with_metadata("id", "other");
    let error = serde_json::to_string(&clash).unwrap_err();
    assert!(error.to_string().contains("\"id\""), "{error}");
    // A null extension is absent, as CloudEvents says.
    let event: Event =
        serde_json::from_value(json!({"id": "i", "type": "t", "data": 1, "tenant": null})).unwrap();
    assert!(event.metadata().is_empty());
}
