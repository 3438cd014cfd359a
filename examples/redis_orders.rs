//! Orders from a Redis stream, at least once, through two consumers of one consumer group.
//!
//! Appends 2,000 order entries to a Redis stream (some fail at the payment provider, a few are invalid
//! orders, a few are not events at all), consumes them with two managers, as two instances of a service
//! in one consumer group, dead-letters the failures into a Redis dead-letter stream (each letter stored
//! and its entry acknowledged in one transaction), then "fixes" the provider and sends its letters back to
//! the orders stream. At the end every order is accounted for: succeeded, or a dead letter.
//!
//! ```sh
//! cargo run --example redis_orders --features redis      # needs Redis on 127.0.0.1:6379
//! TOWER_LISTENER_REDIS_URL=redis://host:6379 cargo run --example redis_orders --features redis
//! ```
//!
//! Its keys are named after the process and deleted at the end.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tower_listener::backends::redacted;
use tower_listener::backends::redis::{
    client, RedisSource, RedisSourceConfig, RedisStore, RedisStoreConfig,
};
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
use tower_listener::{
    ConsumeConfig, DeadLetterConfig, DeadLetterReason, Error, Event, ListenerConfig,
    ListenerManager, ManagerConfig, RetryPolicy,
};

const ORDERS: usize = 2_000;

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("payment provider declined the call (HTTP 503)")]
    ProviderDown,
    #[error("order total must be positive")]
    Invalid,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TOWER_LISTENER_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis = client(&url)?;
    let mut connection = match tokio::time::timeout(
        Duration::from_secs(5),
        redis.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        _ => {
            eprintln!(
                "cannot reach Redis at {}: start redis-server, or set TOWER_LISTENER_REDIS_URL",
                redacted(&url)
            );
            std::process::exit(2);
        }
    };
    let run = std::process::id();
    let (stream, letters_key) = (
        format!("example:{run}:orders"),
        format!("example:{run}:dead-letters"),
    );
    let store = RedisStore::open(
        &redis,
        RedisStoreConfig {
            key: letters_key.clone(),
        },
    )
    .await?;

    let started = Instant::now();
    let mut expected = HashSet::new();
    let mut garbage = 0;
    let mut pipe = redis::pipe();
    for n in 0..ORDERS {
        let payload = if n % 150 == 149 {
            garbage += 1;
            format!("order #{n}: <not json>").into_bytes()
        } else {
            let kind = if n % 97 == 96 {
                "order.invalid"
            } else {
                "order.created"
            };
            let pays = if n % 25 == 24 {
                "flaky-provider"
            } else {
                "card"
            };
            expected.insert(format!("order-{n}"));
            serde_json::to_vec(&Event::new(
                format!("order-{n}"),
                kind,
                json!({"n": n, "pays": pays}),
            ))?
        };
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("event")
            .arg(payload)
            .ignore();
    }
    let _: () = pipe.query_async(&mut connection).await?;
    println!(
        "appended {ORDERS} orders to {stream} in {:.2?} ({garbage} of them malformed)",
        started.elapsed()
    );

    let provider_up = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(Mutex::new(HashSet::new()));
    let mut instances = Vec::new();
    for name in ["instance-a", "instance-b"] {
        let manager = ListenerManager::new(ManagerConfig::named(name))?;
        let (up, done) = (provider_up.clone(), succeeded.clone());
        manager.register(
            tower_listener::listener_fn("orders", move |event: Event| {
                let (up, done) = (up.load(Ordering::SeqCst), done.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if event.event_type() == "order.invalid" {
                        return Err(Error::permanent(OrderError::Invalid));
                    }
                    if event.data()["pays"] == "flaky-provider" && !up {
                        return Err(Error::handler(OrderError::ProviderDown));
                    }
                    done.lock().unwrap().insert(event.id().to_owned());
                    Ok(())
                }
            }),
            ListenerConfig {
                concurrency: 16,
                retry_policy: RetryPolicy {
                    max_retries: 2,
                    initial_delay: Duration::from_millis(20),
                    ..Default::default()
                },
                circuit: tower_listener::CircuitConfig::disabled(),
                dead_letter: DeadLetterConfig::to_sink(store.clone()),
                ..Default::default()
            },
        )?;
        manager.start().await?;
        let source = RedisSource::<Value>::new(
            &redis,
            RedisSourceConfig::new(&stream, "order-processor", name),
        )
        .await?;
        manager.consume("orders", source, ConsumeConfig::default())?;
        instances.push(manager);
    }

    let settled = |instances: &[ListenerManager]| {
        instances.iter().fold((0, 0, 0), |(a, t, n), manager| {
            let s = manager.listener_stats("orders").unwrap_or_default();
            (a + s.source_acks, t + s.source_terms, n + s.source_naks)
        })
    };
    loop {
        let (acks, terms, naks) = settled(&instances);
        print!(
            "\r[{:>5.2}s] acked {acks:>4}  termed {terms:>3}  nak'd {naks:>3}",
            started.elapsed().as_secs_f64()
        );
        std::io::stdout().flush()?;
        if acks + terms >= ORDERS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!();
    for manager in &instances {
        let s = manager.listener_stats("orders")?;
        println!(
            "  {:<11} acked {:>4}  termed {:>3}  nak'd {:>2}  redeliveries {:>2}",
            manager.name(),
            s.source_acks,
            s.source_terms,
            s.source_naks,
            s.redeliveries
        );
    }
    let page = DeadLetterStore::<Value>::list(&store, LetterFilter::all(), None, 10_000).await?;
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for letter in &page.letters {
        let reason = match &letter.letter {
            Ok(letter) => letter.reason.as_str().to_owned(),
            Err(undecodable) => format!(
                "{} (undecodable)",
                undecodable.reason.map_or("?", |r| r.as_str())
            ),
        };
        *by_reason.entry(reason).or_default() += 1;
    }
    println!("\ndead letters in {letters_key}: {by_reason:?}");

    // The provider is back: its letters go back to the orders stream, each appended and deleted in one
    // transaction.
    provider_up.store(true, Ordering::SeqCst);
    let republished = store
        .republish::<Value>(
            LetterFilter::all().reason(DeadLetterReason::Exhausted),
            10_000,
        )
        .await?;
    println!("sent {republished} letters back to {stream}");
    let target = ORDERS as u64 + republished as u64;
    while {
        let (acks, terms, _) = settled(&instances);
        acks + terms < target
    } {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for manager in &instances {
        manager.stop(Duration::from_secs(10)).await?;
    }

    let done = succeeded.lock().unwrap().clone();
    let page = DeadLetterStore::<Value>::list(&store, LetterFilter::all(), None, 10_000).await?;
    let lettered: HashSet<String> = page
        .letters
        .iter()
        .filter_map(|l| l.decoded().map(|l| l.request.id().to_owned()))
        .collect();
    let malformed = page
        .letters
        .iter()
        .filter(|l| l.decoded().is_none())
        .count();
    let lost: Vec<_> = expected
        .iter()
        .filter(|id| !done.contains(*id) && !lettered.contains(*id))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(
        malformed, garbage,
        "every malformed payload is a dead letter"
    );
    println!(
        "\nall {ORDERS} orders accounted for: {} succeeded, {} dead letters ({} permanent, {malformed} malformed), in {:.2?}",
        done.len(),
        lettered.len() + malformed,
        lettered.len(),
        started.elapsed()
    );
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(&letters_key)
        .query_async(&mut connection)
        .await?;
    Ok(())
}
