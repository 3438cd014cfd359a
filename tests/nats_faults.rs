//! Faults against NATS: an instance killed with SIGKILL mid-stream while another shares its durable
//! consumer, and the server itself killed with SIGKILL and restarted on the same store. Every event ends
//! succeeded or dead-lettered; none is lost; the duplicates (at least once) are counted and bounded.
#![cfg(feature = "nats")]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::nats;
use tower_listener::backends::nats::{NatsSource, NatsSourceConfig, NatsStore, NatsStoreConfig};
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
use tower_listener::{ConsumeConfig, Event, ListenerManager};

/// What a consuming instance is given: stream, consumer, dead-letter stream and its subject prefix.
#[derive(Clone)]
struct Names {
    stream: String,
    subject: String,
    consumer: String,
    dead_letters: String,
    prefix: String,
}

impl Names {
    fn new(test: &str) -> Self {
        let stream = nats::unique(test);
        Names {
            subject: format!("tl.{}.orders", stream.to_lowercase()),
            consumer: "shared".to_owned(),
            dead_letters: format!("{stream}_DL"),
            prefix: format!("tl.{}.dead", stream.to_lowercase()),
            stream,
        }
    }

    fn to_env(&self) -> String {
        [
            &self.stream,
            &self.subject,
            &self.consumer,
            &self.dead_letters,
            &self.prefix,
        ]
        .map(|s| s.as_str())
        .join(",")
    }

    fn from_env(text: &str) -> Self {
        let parts: Vec<&str> = text.split(',').collect();
        Names {
            stream: parts[0].to_owned(),
            subject: parts[1].to_owned(),
            consumer: parts[2].to_owned(),
            dead_letters: parts[3].to_owned(),
            prefix: parts[4].to_owned(),
        }
    }

    fn store_config(&self) -> NatsStoreConfig {
        NatsStoreConfig {
            stream: self.dead_letters.clone(),
            subject_prefix: self.prefix.clone(),
            ..NatsStoreConfig::default()
        }
    }
}

const IN_FLIGHT: usize = 32;

/// A manager consuming `names` with a handler that reports each success through `handled`; events of
/// type "fail" fail for good (dead-lettered into the JetStream store).
async fn instance(
    client: async_nats::Client,
    names: &Names,
    handled: impl Fn(&str) + Send + Sync + Clone + 'static,
) -> ListenerManager {
    let store = NatsStore::open(client.clone(), names.store_config())
        .await
        .unwrap();
    let manager = support::orders_instance("fault-instance", store, IN_FLIGHT, handled).await;
    let source = NatsSource::<Value>::new(
        client,
        NatsSourceConfig {
            ack_wait: Duration::from_secs(2),
            wait: Duration::from_millis(200),
            ..NatsSourceConfig::new(&names.stream, &names.consumer)
        },
    )
    .await
    .unwrap();
    let config = ConsumeConfig {
        // A request the killed server never answers is given up after this.
        broker_timeout: Duration::from_secs(3),
        ..ConsumeConfig::default()
    };
    manager.consume("orders", source, config).unwrap();
    manager
}

async fn publish(context: &async_nats::jetstream::Context, subject: &str, events: usize) {
    let mut acks = Vec::new();
    for i in 0..events {
        let kind = if i % 100 == 7 { "fail" } else { "ok" };
        let event = Event::new(format!("e-{i}"), kind, json!({"n": i}));
        acks.push(
            context
                .publish(
                    subject.to_owned(),
                    serde_json::to_vec(&event).unwrap().into(),
                )
                .await
                .unwrap(),
        );
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

async fn consumer_info(
    context: &async_nats::jetstream::Context,
    names: &Names,
) -> async_nats::jetstream::consumer::Info {
    context
        .get_stream(&names.stream)
        .await
        .unwrap()
        .consumer_info(&names.consumer)
        .await
        .unwrap()
}

/// Waits until the consumer has nothing pending and nothing unacknowledged.
async fn settled(context: &async_nats::jetstream::Context, names: &Names, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(stream) = context.get_stream(&names.stream).await {
            if let Ok(info) = stream.consumer_info(&names.consumer).await {
                if info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.delivered.stream_sequence > 0
                {
                    return;
                }
            }
        }
        if Instant::now() >= deadline {
            let info = match context.get_stream(&names.stream).await {
                Ok(stream) => format!("{:?}", stream.consumer_info(&names.consumer).await),
                Err(e) => e.to_string(),
            };
            panic!("the consumer did not settle within {within:?}: {info}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dead_lettered(client: async_nats::Client, names: &Names) -> HashSet<String> {
    let store = NatsStore::open(client, names.store_config()).await.unwrap();
    let mut ids = HashSet::new();
    let mut cursor = None;
    loop {
        let page = DeadLetterStore::<Value>::list(&store, LetterFilter::all(), cursor, 500)
            .await
            .unwrap();
        for letter in &page.letters {
            ids.insert(letter.decoded().unwrap().request.id().to_owned());
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

/// The child side of the two-process test: an instance that prints `handled <id>` for each event it handled,
/// until SIGTERM (then it stops gracefully) or SIGKILL. Does nothing unless the parent set the variable.
#[test]
fn nats_child() {
    let Ok(names) = std::env::var("TOWER_LISTENER_NATS_CHILD") else {
        return;
    };
    let names = Names::from_env(&names);
    support::child_runtime().block_on(async move {
        let client = tower_listener::backends::nats::connect(&nats::url())
            .await
            .unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let manager = instance(client, &names, move |id| {
            let mut out = out.lock().unwrap();
            writeln!(out, "handled {id}").unwrap();
            out.flush().unwrap();
        })
        .await;
        tower_listener::shutdown_signal().await;
        manager.stop(Duration::from_secs(5)).await.unwrap();
    });
}

fn spawn_child(names: &Names) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    support::spawn_child("nats_child", ("TOWER_LISTENER_NATS_CHILD", names.to_env()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_stream_loses_nothing() {
    let Some(client) = nats::client().await else {
        return;
    };
    let context = async_nats::jetstream::new(client.clone());
    nats::sweep(&context).await;
    let names = Names::new("kill_instance");
    nats::stream(&context, &names.stream, &names.subject).await;
    // The consumer and the dead-letter stream exist before either instance starts.
    drop(
        NatsSource::<Value>::new(
            client.clone(),
            NatsSourceConfig {
                ack_wait: Duration::from_secs(2),
                ..NatsSourceConfig::new(&names.stream, &names.consumer)
            },
        )
        .await
        .unwrap(),
    );
    drop(
        NatsStore::open(client.clone(), names.store_config())
            .await
            .unwrap(),
    );
    const EVENTS: usize = 10_000;
    publish(&context, &names.subject, EVENTS).await;

    let (mut doomed, doomed_lines) = spawn_child(&names);
    let (mut survivor, survivor_lines) = spawn_child(&names);
    // Kill one once the work is well under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = consumer_info(&context, &names).await;
        if info.ack_floor.stream_sequence >= 3_000 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();
    settled(&context, &names, Duration::from_secs(60)).await;
    // The survivor stops gracefully (SIGTERM).
    Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .unwrap();
    survivor.wait().unwrap();

    let (doomed_ok, survivor_ok) = (doomed_lines.join().unwrap(), survivor_lines.join().unwrap());
    let mut runs: HashMap<String, usize> = HashMap::new();
    for id in doomed_ok.iter().chain(&survivor_ok) {
        *runs.entry(id.clone()).or_default() += 1;
    }
    let letters = dead_lettered(client.clone(), &names).await;
    let missing: Vec<String> = (0..EVENTS)
        .map(|i| format!("e-{i}"))
        .filter(|id| !runs.contains_key(id) && !letters.contains(id))
        .collect();
    let info = consumer_info(&context, &names).await;
    assert!(
        missing.is_empty(),
        "{:?}\n{} lost (of {} succeeded, {} dead-lettered): {:?}",
        info,
        missing.len(),
        runs.len(),
        letters.len(),
        &missing[..missing.len().min(20)]
    );
    for i in 0..EVENTS {
        let id = format!("e-{i}");
        let failing = i % 100 == 7;
        assert_eq!(letters.contains(&id), failing, "{id} dead-lettered?");
        assert_eq!(runs.contains_key(&id), !failing, "{id} succeeded?");
    }
    let duplicates: usize = runs.values().map(|n| n - 1).sum();
    eprintln!(
        "{EVENTS} events: {} succeeded ({} by the killed instance, {} by the survivor), {} dead-lettered, \
         {duplicates} handled twice",
        runs.len(),
        doomed_ok.len(),
        survivor_ok.len(),
        letters.len()
    );
    assert!(!doomed_ok.is_empty() && !survivor_ok.is_empty());
    // Only what the killed instance held (handled, not yet acknowledged) can run twice.
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates");
    let _ = context.delete_stream(&names.stream).await;
    let _ = context.delete_stream(&names.dead_letters).await;
}

/// A nats-server of the test's own (JetStream on), on a free port with a temporary store.
fn nats_server() -> Option<support::ServerProcess> {
    support::ServerProcess::start("nats-server", |port, dir| {
        let port = port.to_string();
        let mut args: Vec<std::ffi::OsString> = ["-js", "-a", "127.0.0.1", "-p", &port, "-sd"]
            .iter()
            .map(Into::into)
            .collect();
        args.push(dir.into());
        args
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_loses_nothing() {
    let Some(mut server) = nats_server() else {
        return;
    };
    let client =
        tower_listener::backends::nats::connect(&format!("nats://127.0.0.1:{}", server.port))
            .await
            .unwrap();
    let context = async_nats::jetstream::new(client.clone());
    let names = Names::new("kill_server");
    nats::stream(&context, &names.stream, &names.subject).await;
    const EVENTS: usize = 3_000;
    publish(&context, &names.subject, EVENTS).await;

    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = runs.clone();
    let manager = instance(client.clone(), &names, move |id| {
        *counted.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs.lock().unwrap().len() < 1_000 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.run(), "restarted on the same store");
    settled(&context, &names, Duration::from_secs(90)).await;
    manager.stop(Duration::from_secs(5)).await.unwrap();

    let runs = runs.lock().unwrap().clone();
    let letters = dead_lettered(client.clone(), &names).await;
    for i in 0..EVENTS {
        let id = format!("e-{i}");
        let failing = i % 100 == 7;
        assert!(
            runs.contains_key(&id) != failing && letters.contains(&id) == failing,
            "{id}: lost"
        );
    }
    let duplicates: usize = runs.values().map(|n| n - 1).sum();
    let stats = manager.listener_stats("orders").unwrap();
    eprintln!(
        "{EVENTS} events across a server kill: {} succeeded, {} dead-lettered, {duplicates} handled \
         twice, {} redeliveries seen",
        runs.len(),
        letters.len(),
        stats.redeliveries
    );
    // No bound here: a server killed with SIGKILL restarts from what its file store had synced, and can
    // forget acks it had confirmed (at least once); they are counted, and every event is accounted for.
}
