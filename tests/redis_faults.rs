//! Faults against Redis: a consumer killed with SIGKILL mid-stream while another of its group goes on
//! (the dead one's pending entries are claimed by the live one), and the test's own redis-server (with
//! `appendonly yes`, `appendfsync always`) killed with SIGKILL and restarted. Every entry ends succeeded
//! or dead-lettered; none is lost; the duplicates are counted and bounded.
#![cfg(feature = "redis")]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis as broker;
use tower_listener::backends::redis::{
    RedisSource, RedisSourceConfig, RedisStore, RedisStoreConfig,
};
use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
use tower_listener::{ConsumeConfig, Event, ListenerManager};

const IN_FLIGHT: usize = 32;

/// The stream, its dead-letter stream, and a consumer name.
#[derive(Clone)]
struct Names {
    stream: String,
    dead_letters: String,
}

impl Names {
    fn new(test: &str) -> Self {
        let stream = broker::unique(test);
        Names {
            dead_letters: format!("{stream}:dead"),
            stream,
        }
    }
}

/// A manager consuming `names.stream` as `consumer`, reporting each success through `handled`; entries
/// of type "fail" fail for good (dead-lettered into the Redis store).
async fn instance(
    client: &redis::Client,
    names: &Names,
    consumer: &str,
    handled: impl Fn(&str) + Send + Sync + Clone + 'static,
) -> ListenerManager {
    let store = RedisStore::open(
        client,
        RedisStoreConfig {
            key: names.dead_letters.clone(),
        },
    )
    .await
    .unwrap();
    let manager = support::orders_instance("redis-fault", store, IN_FLIGHT, handled).await;
    let source = RedisSource::<Value>::new(
        client,
        RedisSourceConfig {
            claim_idle: Duration::from_secs(2),
            block: Duration::from_millis(200),
            ..RedisSourceConfig::new(&names.stream, "shared", consumer)
        },
    )
    .await
    .unwrap();
    let config = ConsumeConfig {
        broker_timeout: Duration::from_secs(3),
        ..ConsumeConfig::default()
    };
    manager.consume("orders", source, config).unwrap();
    manager
}

async fn publish(client: &redis::Client, stream: &str, events: usize) {
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for chunk in (0..events).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let kind = if i % 100 == 7 { "fail" } else { "ok" };
            let event = Event::new(format!("e-{i}"), kind, json!({"n": i}));
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("event")
                .arg(serde_json::to_vec(&event).unwrap())
                .ignore();
        }
        let _: () = pipe.query_async(&mut connection).await.unwrap();
    }
}

/// The group's pending count and lag (entries not yet delivered).
async fn backlog(client: &redis::Client, stream: &str) -> Option<(u64, u64)> {
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut connection)
        .await
        .ok()?;
    let redis::Value::Array(groups) = groups else {
        return None;
    };
    let redis::Value::Array(kv) = groups.first()? else {
        return None;
    };
    let get = |name: &str| {
        kv.chunks(2).find_map(|pair| match (&pair[0], &pair[1]) {
            (redis::Value::BulkString(k), redis::Value::Int(n)) if k == name.as_bytes() => {
                Some(*n as u64)
            }
            _ => None,
        })
    };
    Some((get("pending")?, get("lag").unwrap_or(0)))
}

async fn settled(client: &redis::Client, stream: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let backlog = backlog(client, stream).await;
        if backlog == Some((0, 0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle within {within:?}: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dead_lettered(client: &redis::Client, names: &Names) -> HashSet<String> {
    let store = RedisStore::open(
        client,
        RedisStoreConfig {
            key: names.dead_letters.clone(),
        },
    )
    .await
    .unwrap();
    let page = DeadLetterStore::<Value>::list(&store, LetterFilter::all(), None, 100_000)
        .await
        .unwrap();
    page.letters
        .iter()
        .map(|l| l.decoded().unwrap().request.id().to_owned())
        .collect()
}

/// Every entry succeeded or was dead-lettered (the failing ones); returns the duplicates.
fn accounted(events: usize, runs: &HashMap<String, usize>, letters: &HashSet<String>) -> usize {
    let missing: Vec<String> = (0..events)
        .map(|i| format!("e-{i}"))
        .filter(|id| !runs.contains_key(id) && !letters.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    for i in 0..events {
        let id = format!("e-{i}");
        let failing = i % 100 == 7;
        assert_eq!(letters.contains(&id), failing, "{id} dead-lettered?");
        assert_eq!(runs.contains_key(&id), !failing, "{id} succeeded?");
    }
    runs.values().map(|n| n - 1).sum()
}

/// The child side of the two-process test: a consumer that prints `handled <id>` for each entry it
/// handled, until SIGTERM or SIGKILL. Does nothing unless the parent set the variable.
#[test]
fn redis_child() {
    let Ok(spec) = std::env::var("TOWER_LISTENER_REDIS_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let names = Names {
        stream: parts[0].to_owned(),
        dead_letters: parts[1].to_owned(),
    };
    let consumer = parts[2].to_owned();
    support::child_runtime().block_on(async move {
        let client = redis::Client::open(broker::url()).unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let manager = instance(&client, &names, &consumer, move |id| {
            let mut out = out.lock().unwrap();
            writeln!(out, "handled {id}").unwrap();
            out.flush().unwrap();
        })
        .await;
        tower_listener::shutdown_signal().await;
        manager.stop(Duration::from_secs(5)).await.unwrap();
    });
}

fn spawn_child(names: &Names, consumer: &str) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    support::spawn_child(
        "redis_child",
        (
            "TOWER_LISTENER_REDIS_CHILD",
            format!("{},{},{consumer}", names.stream, names.dead_letters),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_loses_nothing() {
    let Some(client) = broker::client().await else {
        return;
    };
    let names = Names::new("kill_consumer");
    const EVENTS: usize = 10_000;
    publish(&client, &names.stream, EVENTS).await;
    let (mut doomed, doomed_lines) = spawn_child(&names, "doomed");
    let (mut survivor, survivor_lines) = spawn_child(&names, "survivor");
    // Kill one once the work is well under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, lag)) = backlog(&client, &names.stream).await {
            if lag <= 7_000 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the doomed one holds pending now is what can be handled twice.
    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();
    settled(&client, &names.stream, Duration::from_secs(60)).await;
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
    let letters = dead_lettered(&client, &names).await;
    let duplicates = accounted(EVENTS, &runs, &letters);
    eprintln!(
        "{EVENTS} entries: {} succeeded ({} by the killed consumer, {} by the survivor), {} dead-lettered, \
         {duplicates} handled twice",
        runs.len(),
        doomed_ok.len(),
        survivor_ok.len(),
        letters.len()
    );
    assert!(!doomed_ok.is_empty() && !survivor_ok.is_empty());
    // Only what the killed consumer held pending (handled, not yet acknowledged) can run twice.
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates");
    broker::delete_later(client, vec![names.stream, names.dead_letters]);
}

/// A redis-server of the test's own, on a free port, persisting every write before answering it.
fn redis_server() -> Option<support::ServerProcess> {
    support::ServerProcess::start("redis-server", |port, dir| {
        let port = port.to_string();
        let mut args: Vec<std::ffi::OsString> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--dir",
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.push(dir.into());
        args
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_loses_nothing() {
    let Some(mut server) = redis_server() else {
        return;
    };
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", server.port)).unwrap();
    let names = Names::new("kill_server");
    const EVENTS: usize = 3_000;
    publish(&client, &names.stream, EVENTS).await;
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = runs.clone();
    let manager = instance(&client, &names, "only", move |id| {
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
    assert!(server.run(), "restarted on the same append-only file");
    settled(&client, &names.stream, Duration::from_secs(90)).await;
    manager.stop(Duration::from_secs(5)).await.unwrap();

    let runs = runs.lock().unwrap().clone();
    let letters = dead_lettered(&client, &names).await;
    let duplicates = accounted(EVENTS, &runs, &letters);
    let stats = manager.listener_stats("orders").unwrap();
    eprintln!(
        "{EVENTS} entries across a server kill: {} succeeded, {} dead-lettered, {duplicates} handled \
         twice, {} redeliveries seen",
        runs.len(),
        letters.len(),
        stats.redeliveries
    );
    // With appendfsync always, an acknowledged XACK is on disk: only what was in flight when the server
    // died can come back.
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates");
}
