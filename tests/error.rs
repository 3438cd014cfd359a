//! The one error type and its conversion from `tower::BoxError`.

use std::time::Duration;

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_listener::{Error, Event, RetryLayer, RetryPolicy};

#[derive(Debug, thiserror::Error)]
#[error("payment declined")]
struct Declined;

#[test]
fn conversion_unwraps_our_errors_and_maps_towers_without_nesting() {
    let boxed: BoxError = Box::new(Error::Timeout {
        limit: Some(Duration::from_secs(1)),
    });
    assert!(matches!(
        Error::from_boxed(boxed),
        Error::Timeout { limit: Some(_) }
    ));
    let boxed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
    assert!(matches!(
        Error::from_boxed(boxed),
        Error::Timeout { limit: None }
    ));
    let boxed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
    assert!(matches!(Error::from_boxed(boxed), Error::Overloaded));
    let boxed: BoxError = Box::new(Declined);
    let err = Error::from_boxed(boxed);
    let source = std::error::Error::source(&err).unwrap();
    assert!(
        source.downcast_ref::<Declined>().is_some(),
        "the user's type is the source"
    );
}

#[test]
fn rejections_are_circuit_open_and_overloaded_only() {
    assert!(Error::CircuitOpen { retry_after: None }.is_rejection());
    assert!(Error::Overloaded.is_rejection());
    assert!(!Error::handler(Declined).is_rejection());
    assert!(!Error::Timeout { limit: None }.is_rejection());
    assert!(!Error::Panicked {
        message: "x".into()
    }
    .is_rejection());
}

#[tokio::test(start_paused = true)]
async fn a_handler_error_crosses_layers_unnested_and_downcastable() {
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::never()).unwrap())
        .layer(tower_listener::TimeoutLayer::new(Duration::from_secs(1)).unwrap())
        .service(tower::service_fn(|_: ()| async {
            Err::<(), BoxError>(Box::new(Declined))
        }));
    let err = svc.oneshot(()).await.unwrap_err();
    let Error::Handler(inner) = &err else {
        panic!("{err:?}")
    };
    assert!(inner.downcast_ref::<Declined>().is_some());
    assert_eq!(err.to_string(), "handler failed: payment declined");
}

#[test]
fn events_clone_in_constant_time_and_keep_their_fields() {
    let big = serde_json::json!({ "items": vec![0u8; 100_000] });
    let event = Event::new("ord-1", "order.created", big).with_metadata("tenant", "acme");
    let copy = event.clone();
    assert!(
        std::ptr::eq(event.data(), copy.data()),
        "the payload is shared, not copied"
    );
    assert_eq!(copy.id(), "ord-1");
    assert_eq!(copy.event_type(), "order.created");
    assert_eq!(copy.metadata()["tenant"], "acme");
    // Copy on write: a clone with new metadata leaves the original alone.
    let tagged = copy.with_metadata("retry", "1");
    assert!(!event.metadata().contains_key("retry"));
    assert!(tagged.metadata().contains_key("retry"));
}

#[cfg(feature = "serde")]
#[test]
fn events_round_trip_through_serde() {
    let event = Event::new("e-7", "payment.captured", serde_json::json!({"amount": 12}))
        .with_metadata("k", "v");
    let json = serde_json::to_string(&event).unwrap();
    let back: Event = serde_json::from_str(&json).unwrap();
    assert_eq!(back, event);
}
