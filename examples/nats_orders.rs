//! Orders from NATS JetStream, at least once, through two instances sharing one durable consumer.
//!
//! Publishes 2,000 order events to a JetStream stream: most are fine, some fail at the payment provider
//! (retried, then dead-lettered), a few are invalid orders (permanent failures) and a few are not events
//! at all (malformed payloads). Two managers, as two instances of a service would, consume the stream
//! through one durable consumer; the dead letters go to a JetStream dead-letter stream that both share.
//! Then the payment provider "recovers" and the letters it caused are republished to the orders subject
//! and processed again. At the end every order is accounted for: succeeded, or a dead letter.
//!
//! ```sh
//! cargo run --example nats_orders --features nats      # needs NATS with JetStream on 127.0.0.1:4222
//! TOWER_LISTENER_NATS_URL=nats://host:4222 cargo run --example nats_orders --features nats
//! ```
//!
//! Its streams are named after the process and deleted at the end.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tower_listener::backends::nats::{
    connect, redacted, NatsSource, NatsSourceConfig, NatsStore, NatsStoreConfig,
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
    let url = std::env::var("TOWER_LISTENER_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = match tokio::time::timeout(Duration::from_secs(5), connect(&url)).await {
        Ok(Ok(client)) => client,
        _ => {
            eprintln!(
                "cannot reach NATS at {}: start nats-server -js, or set TOWER_LISTENER_NATS_URL",
                redacted(&url)
            );
            std::process::exit(2);
        }
    };
    let jetstream = async_nats::jetstream::new(client.clone());
    let run = std::process::id();
    let (stream, subject) = (
        format!("EXAMPLE_ORDERS_{run}"),
        format!("example.{run}.orders"),
    );
    let dead_letters = NatsStoreConfig {
        stream: format!("EXAMPLE_DEAD_LETTERS_{run}"),
        subject_prefix: format!("example.{run}.dead-letters"),
        ..NatsStoreConfig::default()
    };
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            ..Default::default() // Limits retention: the right one for a source stream
        })
        .await?;
    let store = NatsStore::open(client.clone(), dead_letters.clone()).await?;

    // The orders: every 25th fails at the provider, every 97th is invalid, every 150th is not an event.
    let started = Instant::now();
    let mut expected = HashSet::new();
    let mut garbage = 0;
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
        jetstream
            .publish(subject.clone(), payload.into())
            .await?
            .await?;
    }
    println!(
        "published {ORDERS} orders to {stream} in {:.2?} ({garbage} of them malformed)",
        started.elapsed()
    );

    // Two instances of the service, one durable consumer.
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
        let source = NatsSource::<Value>::new(
            client.clone(),
            NatsSourceConfig::new(&stream, "order-processor"),
        )
        .await?;
        manager.consume("orders", source, ConsumeConfig::default())?;
        instances.push(manager);
    }

    let settled = |instances: &[ListenerManager]| {
        let (mut acks, mut terms, mut naks) = (0, 0, 0);
        for manager in instances {
            let s = manager.listener_stats("orders").unwrap_or_default();
            (acks, terms, naks) = (
                acks + s.source_acks,
                terms + s.source_terms,
                naks + s.source_naks,
            );
        }
        (acks, terms, naks)
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
            "  {:<11} acked {:>4}  termed {:>3}  nak'd {:>2}  progress {:>2}  redeliveries {:>2}",
            manager.name(),
            s.source_acks,
            s.source_terms,
            s.source_naks,
            s.source_progress,
            s.redeliveries
        );
    }

    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let page = DeadLetterStore::<Value>::list(&store, LetterFilter::all(), None, 10_000).await?;
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
    println!("\ndead letters in {}: {by_reason:?}", dead_letters.stream);

    // The provider is back: send the events it failed back through the stream.
    provider_up.store(true, Ordering::SeqCst);
    let report = store
        .republish::<Value>(
            LetterFilter::all().reason(DeadLetterReason::Exhausted),
            10_000,
        )
        .await?;
    println!("republished {} letters to {subject}", report.republished);
    let target = ORDERS as u64 + report.republished as u64;
    while {
        let (acks, terms, _) = settled(&instances);
        acks + terms < target
    } {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for manager in &instances {
        manager.stop(Duration::from_secs(10)).await?;
    }

    // Every order is accounted for: it succeeded, or it is a dead letter (the invalid ones).
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
        "\nall {ORDERS} orders accounted for: {} succeeded, {} dead letters ({} permanent, {malformed} malformed), \
         in {:.2?}",
        done.len(),
        lettered.len() + malformed,
        lettered.len(),
        started.elapsed()
    );
    jetstream.delete_stream(&stream).await?;
    jetstream.delete_stream(&dead_letters.stream).await?;
    Ok(())
}
