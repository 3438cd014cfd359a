//! The source conformance suite against `MemorySource`, the broker in memory.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::conformance::{self, Broker};
use tower_listener::source::{Capabilities, MemorySource};
use tower_listener::Event;

struct Memory(MemorySource<Value>);

impl Broker for Memory {
    type Source = MemorySource<Value>;

    async fn source(&self) -> MemorySource<Value> {
        self.0.clone()
    }

    async fn publish(&self, event: &Event) {
        self.0.publish(event.clone());
    }

    async fn publish_raw(&self, payload: &[u8]) {
        self.0
            .publish_malformed(payload.to_vec(), "expected value at line 1 column 9");
    }

    async fn deliveries(&self) -> u64 {
        self.0.settlements().delivered
    }

    async fn unsettled(&self) -> u64 {
        self.0.pending() as u64
    }

    fn ack_wait(&self) -> Duration {
        tower_listener::source::Source::<Value>::ack_wait(&self.0).unwrap()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::exact()
    }
}

async fn fresh(name: &str, ack_wait_secs: u64) -> Option<Memory> {
    Some(Memory(MemorySource::with_ack_wait(
        name,
        Duration::from_secs(ack_wait_secs),
    )))
}

conformance_tests!(fresh);

#[tokio::test]
async fn consume_refuses_what_cannot_keep_the_contract() {
    use tower_listener::{
        ConsumeConfig, DeadLetterConfig, Error, ListenerConfig, ListenerManager, ManagerConfig,
    };
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let handler = conformance::Handler::default();
    manager
        .register(handler.listener("orders"), ListenerConfig::default())
        .unwrap();
    manager
        .register(
            handler.listener("lossy"),
            ListenerConfig {
                dead_letter: DeadLetterConfig::disabled(),
                ..Default::default()
            },
        )
        .unwrap();
    let source = || MemorySource::<Value>::new("s");
    assert!(matches!(
        manager.consume("orders", source(), ConsumeConfig::default()),
        Err(Error::NotRunning)
    ));
    manager.start().await.unwrap();
    assert!(matches!(
        manager.consume("ghost", source(), ConsumeConfig::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        manager.consume("lossy", source(), ConsumeConfig::default()),
        Err(Error::InvalidConfig {
            field: "dead_letter.enabled",
            ..
        })
    ));
    for (config, field) in [
        (
            ConsumeConfig {
                batch: 0,
                ..Default::default()
            },
            "batch",
        ),
        (
            ConsumeConfig {
                max_in_flight: Some(0),
                ..Default::default()
            },
            "max_in_flight",
        ),
        (
            ConsumeConfig {
                max_deliveries: 0,
                ..Default::default()
            },
            "max_deliveries",
        ),
    ] {
        match manager.consume("orders", source(), config) {
            Err(Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let consumer = manager
        .consume("orders", source(), ConsumeConfig::default())
        .unwrap();
    assert_eq!(manager.consumers().len(), 1);
    // Unregistering the listener stops its consumer.
    manager.unregister("orders").await.unwrap();
    assert!(consumer.is_stopped());
    assert!(manager.consumers().is_empty());
}
