//! The source conformance suite against Redis Streams, unchanged; and the Redis dead-letter store's
//! contract. Redis has no timed redelivery: the rows that wait for a nak allow for the source's declared
//! granularity (its reclaim interval).
#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::conformance::{self, Broker};
use support::redis as broker;
use tower_listener::backends::redis::{
    RedisAcker, RedisSource, RedisSourceConfig, RedisStore, RedisStoreConfig,
};
use tower_listener::source::{Capabilities, Delivery, Source};
use tower_listener::{Error, Event};

/// A Redis source that counts its deliveries (Redis keeps no count of the deliveries of entries once
/// they are acknowledged).
struct Counting {
    inner: RedisSource<Value>,
    deliveries: Arc<AtomicU64>,
}

impl Source<Value> for Counting {
    type Acker = RedisAcker;

    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn pull(&mut self, max: usize) -> Result<Vec<Delivery<Value, RedisAcker>>, Error> {
        let batch = self.inner.pull(max).await?;
        self.deliveries
            .fetch_add(batch.len() as u64, Ordering::SeqCst);
        Ok(batch)
    }

    fn ack_wait(&self) -> Option<Duration> {
        self.inner.ack_wait()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

struct Redis {
    client: redis::Client,
    stream: String,
    ack_wait: Duration,
    consumers: AtomicU64,
    deliveries: Arc<AtomicU64>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        broker::delete_later(self.client.clone(), vec![self.stream.clone()]);
    }
}

impl Redis {
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn add(&self, field: &str, payload: &[u8]) {
        let _: String = redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg(field)
            .arg(payload)
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
    }
}

impl Broker for Redis {
    type Source = Counting;

    async fn source(&self) -> Counting {
        let n = self.consumers.fetch_add(1, Ordering::SeqCst);
        let config = RedisSourceConfig {
            block: Duration::from_millis(200),
            claim_idle: self.ack_wait,
            reclaim_every: Duration::from_millis(100),
            ..RedisSourceConfig::new(&self.stream, "conformance", format!("consumer-{n}"))
        };
        Counting {
            inner: RedisSource::new(&self.client, config).await.unwrap(),
            deliveries: self.deliveries.clone(),
        }
    }

    async fn publish(&self, event: &Event) {
        self.add("event", &serde_json::to_vec(event).unwrap()).await;
    }

    async fn publish_raw(&self, payload: &[u8]) {
        self.add("event", payload).await;
    }

    async fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::SeqCst)
    }

    async fn unsettled(&self) -> u64 {
        // Entries not yet delivered to the group (lag) and entries delivered but not acknowledged.
        let groups: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
        let field = |name: &str| -> u64 {
            let redis::Value::Array(groups) = &groups else {
                return 0;
            };
            groups
                .iter()
                .filter_map(|group| match group {
                    redis::Value::Array(kv) => kv
                        .chunks(2)
                        .find(|pair| matches!(&pair[0], redis::Value::BulkString(k) if k == name.as_bytes()))
                        .and_then(|pair| match &pair[1] {
                            redis::Value::Int(n) => Some(*n as u64),
                            _ => None,
                        }),
                    redis::Value::Map(map) => map
                        .iter()
                        .find(|(k, _)| matches!(k, redis::Value::BulkString(k) if k == name.as_bytes()))
                        .and_then(|(_, v)| match v {
                            redis::Value::Int(n) => Some(*n as u64),
                            _ => None,
                        }),
                    _ => None,
                })
                .sum()
        };
        field("pending") + field("lag")
    }

    fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::nak_granularity(Duration::from_millis(100))
    }
}

async fn fresh(test: &str, ack_wait_secs: u64) -> Option<Redis> {
    let client = broker::client().await?;
    Some(Redis {
        stream: broker::unique(test),
        client,
        ack_wait: Duration::from_secs(ack_wait_secs),
        consumers: AtomicU64::new(0),
        deliveries: Arc::default(),
    })
}

conformance_tests!(fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_the_store_contract() {
    let Some(client) = broker::client().await else {
        return;
    };
    let key = broker::unique("store");
    let store = RedisStore::open(&client, RedisStoreConfig { key: key.clone() })
        .await
        .unwrap();
    support::stores::store_contract(&store).await;
    broker::delete_later(client, vec![key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_of_a_redis_event_is_stored_and_its_entry_acknowledged_in_one_transaction() {
    use tower_listener::dead_letter::{DeadLetterStore, LetterFilter, Origin};
    let Some(client) = broker::client().await else {
        return;
    };
    let (stream, key) = (broker::unique("source"), broker::unique("letters"));
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut connection)
        .await
        .unwrap();
    let entry: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("data")
        .arg("{}")
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut connection)
        .await
        .unwrap();
    let pending = |connection: &mut redis::aio::MultiplexedConnection| {
        let mut connection = connection.clone();
        let stream = stream.clone();
        async move {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("g")
                .query_async(&mut connection)
                .await
                .unwrap();
            match summary {
                redis::Value::Array(parts) => match parts.first() {
                    Some(redis::Value::Int(n)) => *n,
                    _ => 0,
                },
                _ => 0,
            }
        }
    };
    assert_eq!(pending(&mut connection).await, 1);

    let store = RedisStore::open(&client, RedisStoreConfig { key: key.clone() })
        .await
        .unwrap();
    let mut letter = support::stores::letter(
        "e",
        "orders",
        tower_listener::DeadLetterReason::Exhausted,
        5,
    );
    letter.origin = Some(Origin::new("redis", stream.as_str(), entry.clone()).group("g"));
    DeadLetterStore::<Value>::append(&store, letter)
        .await
        .unwrap();
    assert_eq!(
        pending(&mut connection).await,
        0,
        "acknowledged with the letter stored"
    );
    assert_eq!(
        DeadLetterStore::<Value>::count(&store, LetterFilter::all())
            .await
            .unwrap(),
        1
    );
    broker::delete_later(client, vec![stream, key]);
}
