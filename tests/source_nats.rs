//! The source conformance suite against NATS JetStream, and the JetStream dead-letter store's contract.
#![cfg(feature = "nats")]

mod support;

use std::time::Duration;

use async_nats::jetstream::Context;
use serde_json::Value;
use support::conformance::{self, Broker};
use support::nats;
use tower_listener::backends::nats::{NatsSource, NatsSourceConfig, NatsStore, NatsStoreConfig};
use tower_listener::source::Capabilities;
use tower_listener::Event;

struct Nats {
    client: async_nats::Client,
    context: Context,
    stream: String,
    subject: String,
    ack_wait: Duration,
}

impl Drop for Nats {
    fn drop(&mut self) {
        nats::delete_later(self.context.clone(), self.stream.clone());
    }
}

impl Nats {
    async fn consumer(&self) -> Option<async_nats::jetstream::consumer::Info> {
        let stream = self.context.get_stream(&self.stream).await.ok()?;
        stream.consumer_info("conformance").await.ok()
    }
}

impl Broker for Nats {
    type Source = NatsSource<Value>;

    async fn source(&self) -> NatsSource<Value> {
        let config = NatsSourceConfig {
            ack_wait: self.ack_wait,
            wait: Duration::from_millis(200),
            ..NatsSourceConfig::new(&self.stream, "conformance")
        };
        NatsSource::new(self.client.clone(), config).await.unwrap()
    }

    async fn publish(&self, event: &Event) {
        let payload = serde_json::to_vec(event).unwrap();
        self.context
            .publish(self.subject.clone(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn publish_raw(&self, payload: &[u8]) {
        self.context
            .publish(self.subject.clone(), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn deliveries(&self) -> u64 {
        self.consumer()
            .await
            .map_or(0, |info| info.delivered.consumer_sequence)
    }

    async fn unsettled(&self) -> u64 {
        match self.consumer().await {
            Some(info) => info.num_pending + info.num_ack_pending as u64,
            None => u64::MAX,
        }
    }

    fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::nak_granularity(Duration::from_secs(1))
    }
}

async fn fresh(test: &str, ack_wait_secs: u64) -> Option<Nats> {
    let client = nats::client().await?;
    let context = async_nats::jetstream::new(client.clone());
    nats::sweep(&context).await;
    let stream = nats::unique(test);
    let subject = format!("tl.{}.events", stream.to_lowercase());
    nats::stream(&context, &stream, &subject).await;
    Some(Nats {
        client,
        context,
        stream,
        subject,
        ack_wait: Duration::from_secs(ack_wait_secs),
    })
}

conformance_tests!(fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_store_keeps_the_store_contract() {
    let Some(client) = nats::client().await else {
        return;
    };
    let name = nats::unique("store");
    let store = NatsStore::open(
        client.clone(),
        NatsStoreConfig {
            stream: name.clone(),
            subject_prefix: format!("tl.{}", name.to_lowercase()),
            ..NatsStoreConfig::default()
        },
    )
    .await
    .unwrap();
    let _cleanup = StreamGuard(async_nats::jetstream::new(client), name);
    support::stores::store_contract(&store).await;
}

struct StreamGuard(Context, String);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        nats::delete_later(self.0.clone(), self.1.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_or_a_bad_config_is_a_clear_error() {
    let Some(client) = nats::client().await else {
        return;
    };
    let missing = NatsSource::<Value>::new(
        client.clone(),
        NatsSourceConfig::new("TL_NO_SUCH_STREAM_ANYWHERE", "c"),
    )
    .await
    .unwrap_err();
    assert!(
        missing.to_string().contains("TL_NO_SUCH_STREAM_ANYWHERE"),
        "{missing}"
    );
    let bad = NatsSource::<Value>::new(client, NatsSourceConfig::new("ORDERS", "a.b"))
        .await
        .unwrap_err();
    assert!(matches!(
        bad,
        tower_listener::Error::InvalidConfig {
            field: "consumer",
            ..
        }
    ));
}
