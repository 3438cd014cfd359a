//! Events consumed from a broker and settled: through the full stack (`manager.consume`) against the
//! bare client's own consume-and-ack loop, with the same batch, in-flight limit and ack kind, in the same
//! run. NATS JetStream (a `NatsSource` against an async-nats pull and double-ack loop) and Redis Streams
//! (a `RedisSource` against an `XREADGROUP`/`XACK` loop). `cargo bench --bench source_throughput
//! --features nats,redis`; needs NATS with JetStream at `TOWER_LISTENER_NATS_URL` (default
//! 127.0.0.1:4222) and Redis at `TOWER_LISTENER_REDIS_URL` (default 127.0.0.1:6379), and says so and
//! skips a broker that is not there.
//!
//! Throughput: 100,000 events published beforehand, timed from the first pull to the last ack; rounds
//! interleaved (bare, ours, bare, ours, …), median per row. Latency: 5,000 events published at 2,000/s
//! while the consumer runs, from publication (the time in the event) to the confirmed ack.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{AckKind, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tower_listener::backends::nats::{NatsAcker, NatsSource, NatsSourceConfig};
use tower_listener::backends::redis::{RedisSource, RedisSourceConfig};
use tower_listener::source::{Acker, Capabilities, Delivery, Source};
use tower_listener::{ConsumeConfig, Error, Event, ListenerConfig, ListenerManager, ManagerConfig};

const EVENTS: usize = 100_000;
const BATCH: usize = 64;
const IN_FLIGHT: usize = 64;
const ROUNDS: usize = 5;
const PACED: usize = 5_000;
const RATE: u64 = 2_000;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn stream(context: &Context, name: &str, subject: &str) {
    let _ = context.delete_stream(name).await;
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .expect("a stream");
    let stream = context.get_stream(name).await.expect("the stream");
    stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .expect("a consumer");
}

async fn publish(context: &Context, subject: &str, events: usize) {
    let mut acks = Vec::new();
    for n in 0..events {
        let event = Event::new(
            format!("e-{n}"),
            "bench",
            json!({"n": n, "sent": now_nanos()}),
        );
        acks.push(
            context
                .publish(
                    subject.to_owned(),
                    serde_json::to_vec(&event).expect("json").into(),
                )
                .await
                .expect("published"),
        );
        if acks.len() == 512 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
}

/// Publishes `events` at `RATE` per second.
async fn publish_paced(context: Context, subject: String, events: usize) {
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for n in 0..events {
        ticks.tick().await;
        let event = Event::new(
            format!("p-{n}"),
            "bench",
            json!({"n": n, "sent": now_nanos()}),
        );
        let _ = context
            .publish(
                subject.clone(),
                serde_json::to_vec(&event).expect("json").into(),
            )
            .await;
    }
}

/// Records how long ago `sent` (nanoseconds since the epoch) was.
fn record(latencies: &Mutex<Histogram<u64>>, sent: Option<u64>) {
    if let Some(sent) = sent {
        let _ = latencies
            .lock()
            .expect("histogram")
            .record(now_nanos().saturating_sub(sent).max(1));
    }
}

/// The bare loop: pull up to `BATCH` while fewer than `IN_FLIGHT` run, double-ack each in a task of its
/// own, until `events` are acked.
async fn bare(context: &Context, name: &str, events: usize, latencies: Arc<Mutex<Histogram<u64>>>) {
    let stream = context.get_stream(name).await.expect("stream");
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer("bench").await.expect("consumer");
    let mut running = JoinSet::new();
    let mut acked = 0;
    while acked < events {
        while running.len() >= IN_FLIGHT {
            running.join_next().await;
            acked += 1;
        }
        while running.try_join_next().is_some() {
            acked += 1;
        }
        let room = (IN_FLIGHT - running.len()).min(BATCH);
        let mut messages = consumer
            .fetch()
            .max_messages(room)
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(Ok(message)) = messages.next().await {
            got += 1;
            let latencies = latencies.clone();
            running.spawn(async move {
                // What a consumer does with a message at the least: read it.
                let event: Event<Value> =
                    serde_json::from_slice(&message.payload).expect("an event");
                message.double_ack_with(AckKind::Ack).await.expect("acked");
                record(&latencies, event.data()["sent"].as_u64());
            });
        }
        if got == 0 {
            if let Some(done) = running.join_next().await {
                done.expect("task");
                acked += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// A source that records, at each confirmed ack, how long ago the event was published.
struct Timed {
    inner: NatsSource<Value>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    acked: Arc<AtomicUsize>,
}

struct TimedAcker {
    inner: NatsAcker,
    sent: Option<u64>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    acked: Arc<AtomicUsize>,
}

impl Acker for TimedAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.inner.ack().await?;
        record(&self.latencies, self.sent);
        self.acked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.inner.nak(delay).await
    }
    async fn term(&self) -> Result<(), Error> {
        self.inner.term().await
    }
    async fn progress(&self) -> Result<(), Error> {
        self.inner.progress().await
    }
}

impl Source<Value> for Timed {
    type Acker = TimedAcker;

    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn pull(&mut self, max: usize) -> Result<Vec<Delivery<Value, TimedAcker>>, Error> {
        let deliveries = self.inner.pull(max).await?;
        Ok(deliveries
            .into_iter()
            .map(|d| {
                let sent = d
                    .payload
                    .as_ref()
                    .ok()
                    .and_then(|e| e.data()["sent"].as_u64());
                Delivery {
                    payload: d.payload,
                    origin: d.origin,
                    acker: TimedAcker {
                        inner: d.acker,
                        sent,
                        latencies: self.latencies.clone(),
                        acked: self.acked.clone(),
                    },
                }
            })
            .collect())
    }
    fn ack_wait(&self) -> Option<Duration> {
        self.inner.ack_wait()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Ours: a manager consuming the stream with a no-op handler, until `events` are acked.
async fn ours(
    client: &async_nats::Client,
    name: &str,
    events: usize,
    latencies: Option<Arc<Mutex<Histogram<u64>>>>,
) {
    let manager = ListenerManager::new(ManagerConfig::named("bench")).expect("manager");
    manager
        .register(
            tower_listener::listener_fn("bench", |_event: Event| async { Ok::<(), Error>(()) }),
            ListenerConfig {
                concurrency: IN_FLIGHT,
                ..Default::default()
            },
        )
        .expect("registered");
    manager.start().await.expect("started");
    let source = NatsSource::<Value>::new(client.clone(), NatsSourceConfig::new(name, "bench"))
        .await
        .expect("source");
    let config = ConsumeConfig {
        batch: BATCH,
        max_in_flight: Some(IN_FLIGHT),
        ..ConsumeConfig::default()
    };
    match latencies {
        // Latency: a wrapper times each confirmed ack, and counts them.
        Some(latencies) => {
            let acked = Arc::new(AtomicUsize::new(0));
            let timed = Timed {
                inner: source,
                latencies,
                acked: acked.clone(),
            };
            manager.consume("bench", timed, config).expect("consuming");
            while acked.load(Ordering::Relaxed) < events {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Throughput: the source as it is; the acks are read from the listener's stats every 5 ms.
        None => {
            manager.consume("bench", source, config).expect("consuming");
            // SOURCE_BENCH_POLL_MS reads them less often (under callgrind, whose instruction counts
            // should be the events', not the polls').
            let poll = std::env::var("SOURCE_BENCH_POLL_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(5);
            while manager.listener_stats("bench").expect("stats").source_acks < events as u64 {
                tokio::time::sleep(Duration::from_millis(poll)).await;
            }
        }
    }
    manager.stop(Duration::from_secs(5)).await.expect("stopped");
}

fn histogram() -> Arc<Mutex<Histogram<u64>>> {
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
    ))
}

/// This process's CPU time so far (user + system), from /proc (Linux); zero elsewhere.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses): fields 14 and 15 of the line are utime and stime.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // SOURCE_BENCH_BROKER=nats (or redis) measures one broker.
        let broker = std::env::var("SOURCE_BENCH_BROKER").ok();
        if broker.as_deref() != Some("redis") {
            jetstream().await;
        }
        if broker.as_deref() != Some("nats") {
            redis_streams().await;
        }
    });
}

/// The JetStream table.
async fn jetstream() {
    let url = std::env::var("TOWER_LISTENER_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client =
        match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(url.as_str())).await
        {
            Ok(Ok(client)) => client,
            _ => {
                eprintln!(
                    "source_throughput: NATS at {} is unreachable; nothing measured",
                    tower_listener::backends::nats::redacted(&url)
                );
                return;
            }
        };
    let context = async_nats::jetstream::new(client.clone());
    let name = format!("TL_BENCH_{}", std::process::id());
    let subject = format!("tl.bench.{}", std::process::id());
    // SOURCE_BENCH_EVENTS and SOURCE_BENCH_ROUNDS shrink a run (for callgrind).
    let count = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (events, rounds) = (
        count("SOURCE_BENCH_EVENTS", EVENTS),
        count("SOURCE_BENCH_ROUNDS", ROUNDS),
    );
    let (mut bare_rates, mut our_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare_cpu, mut our_cpu) = (Vec::new(), Vec::new());
    // SOURCE_BENCH_ONLY=ours (or bare) runs one side, for a profiler.
    let only = std::env::var("SOURCE_BENCH_ONLY").ok();
    for round in 0..rounds {
        for which in ["bare", "ours"] {
            if only.as_deref().is_some_and(|only| only != which) {
                continue;
            }
            stream(&context, &name, &subject).await;
            publish(&context, &subject, events).await;
            // A connection of its own for each measurement: nothing one leaves in the client (its
            // subscriptions, its buffers) weighs on the next.
            let fresh = async_nats::connect(url.as_str()).await.expect("connected");
            let (started, cpu) = (Instant::now(), cpu_time());
            let ignored = histogram();
            if which == "bare" {
                bare(
                    &async_nats::jetstream::new(fresh.clone()),
                    &name,
                    events,
                    ignored,
                )
                .await;
            } else {
                ours(&fresh, &name, events, None).await;
            }
            let rate = events as f64 / started.elapsed().as_secs_f64();
            let cpu_us = (cpu_time() - cpu).as_secs_f64() * 1e6 / events as f64;
            eprintln!("round {round} {which}: {rate:.0} events/s, {cpu_us:.1} µs of this process's CPU per event");
            if which == "bare" {
                bare_rates.push(rate);
                bare_cpu.push(cpu_us);
            } else {
                ratios.push(rate / bare_rates.last().copied().unwrap_or(rate));
                our_rates.push(rate);
                our_cpu.push(cpu_us);
            }
        }
    }
    if only.is_some() {
        let _ = context.delete_stream(&name).await;
        return;
    }
    let mut latency = Vec::new();
    for which in ["bare", "ours"] {
        stream(&context, &name, &subject).await;
        let latencies = histogram();
        let publishing = tokio::spawn(publish_paced(context.clone(), subject.clone(), PACED));
        let fresh = async_nats::connect(url.as_str()).await.expect("connected");
        if which == "bare" {
            bare(
                &async_nats::jetstream::new(fresh.clone()),
                &name,
                PACED,
                latencies.clone(),
            )
            .await;
        } else {
            ours(&fresh, &name, PACED, Some(latencies.clone())).await;
        }
        publishing.await.expect("published");
        let h = latencies.lock().expect("histogram").clone();
        latency.push((which, h.value_at_quantile(0.5), h.value_at_quantile(0.99)));
    }
    let _ = context.delete_stream(&name).await;

    let (bare, ours) = (median(&mut bare_rates), median(&mut our_rates));
    let ratio = median(&mut ratios);
    let (bare_cpu, our_cpu) = (median(&mut bare_cpu), median(&mut our_cpu));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nEvents consumed from JetStream and settled ({cores} cores; {EVENTS} events per round, median of \
         {ROUNDS} interleaved rounds; batch {BATCH}, {IN_FLIGHT} in flight, double ack; the ratio is the \
         median of each round's ours/bare, the two measured back to back)"
    );
    println!(
        "| case | events/s | ratio | CPU per event (this process) | publish-to-ack p50 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let ms = |nanos: u64| nanos as f64 / 1e6;
    let rows = [
        ("bare async-nats loop", bare, 1.0, bare_cpu),
        ("full stack, manager.consume", ours, ratio, our_cpu),
    ];
    for ((name, rate, ratio, cpu), (_, p50, p99)) in rows.into_iter().zip(&latency) {
        println!(
            "| {name} | {rate:.0} | {ratio:.2}x | {cpu:.1} µs | {:.2} ms | {:.2} ms |",
            ms(*p50),
            ms(*p99)
        );
    }
}

/// The Redis Streams table: a bare `XREADGROUP`/`XACK` loop against the full stack with a `RedisSource`,
/// the same batch and in-flight limit, each ack confirmed by Redis's reply.
async fn redis_streams() {
    let url = std::env::var("TOWER_LISTENER_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    if tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_or(true, |c| c.is_err())
    {
        eprintln!(
            "source_throughput: Redis at {} is unreachable; nothing measured",
            tower_listener::backends::redacted(&url)
        );
        return;
    }
    let count = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (events, rounds) = (
        count("SOURCE_BENCH_EVENTS", EVENTS),
        count("SOURCE_BENCH_ROUNDS", ROUNDS),
    );
    let key = format!("tl:bench:{}", std::process::id());
    let (mut bare_rates, mut our_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare_cpu, mut our_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for which in ["bare", "ours"] {
            redis_stream(&client, &key, events).await;
            let (started, cpu) = (Instant::now(), cpu_time());
            if which == "bare" {
                redis_bare(&client, &key, events).await;
            } else {
                redis_ours(&client, &key, events).await;
            }
            let rate = events as f64 / started.elapsed().as_secs_f64();
            let cpu_us = (cpu_time() - cpu).as_secs_f64() * 1e6 / events as f64;
            eprintln!("redis round {round} {which}: {rate:.0} events/s, {cpu_us:.1} µs of this process's CPU per event");
            if which == "bare" {
                bare_rates.push(rate);
                bare_cpu.push(cpu_us);
            } else {
                ratios.push(rate / bare_rates.last().copied().unwrap_or(rate));
                our_rates.push(rate);
                our_cpu.push(cpu_us);
            }
        }
    }
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nEvents consumed from a Redis stream and acknowledged ({cores} cores; {events} events per round, median \
         of {rounds} interleaved rounds; batch {BATCH}, {IN_FLIGHT} in flight, XACK; the ratio is the median of \
         each round's ours/bare)"
    );
    println!("| case | events/s | ratio | CPU per event (this process) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| bare XREADGROUP/XACK loop | {:.0} | 1.00x | {:.1} µs |",
        median(&mut bare_rates),
        median(&mut bare_cpu)
    );
    println!(
        "| full stack, manager.consume | {:.0} | {:.2}x | {:.1} µs |",
        median(&mut our_rates),
        median(&mut ratios),
        median(&mut our_cpu)
    );
}

/// A fresh stream `key` of `events` entries, and its group "bench" reading from the start.
async fn redis_stream(client: &redis::Client, key: &str, events: usize) {
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut connection)
        .await;
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let event = Event::new(
                format!("e-{n}"),
                "bench",
                json!({"n": n, "sent": now_nanos()}),
            );
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("event")
                .arg(serde_json::to_vec(&event).expect("json"))
                .ignore();
        }
        let _: () = pipe.query_async(&mut connection).await.expect("appended");
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("bench")
        .arg("0")
        .query_async(&mut connection)
        .await
        .expect("a group");
}

/// The bare loop: read what fits (new entries, blocking 100 ms when there are none), decode each entry's
/// event and XACK it in a task of its own, until `events` are acknowledged.
async fn redis_bare(client: &redis::Client, key: &str, events: usize) {
    let mut reader = client
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let writer = client
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let mut running = JoinSet::new();
    let mut acked = 0;
    while acked < events {
        while running.len() >= IN_FLIGHT {
            running.join_next().await;
            acked += 1;
        }
        while running.try_join_next().is_some() {
            acked += 1;
        }
        let room = (IN_FLIGHT - running.len()).min(BATCH);
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("bench")
            .arg("bare")
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(&mut reader)
            .await
            .unwrap_or_default();
        let mut got = 0;
        for stream in reply.keys {
            for entry in stream.ids {
                got += 1;
                let (mut writer, key) = (writer.clone(), key.to_owned());
                running.spawn(async move {
                    let payload: Vec<u8> = entry.get("event").expect("an event field");
                    let event: Event<Value> = serde_json::from_slice(&payload).expect("an event");
                    let _: i64 = redis::cmd("XACK")
                        .arg(&key)
                        .arg("bench")
                        .arg(&entry.id)
                        .query_async(&mut writer)
                        .await
                        .expect("acked");
                    std::hint::black_box(event);
                });
            }
        }
        if got == 0 {
            if let Some(done) = running.join_next().await {
                done.expect("task");
                acked += 1;
            }
        }
    }
}

/// Ours: a manager consuming the stream through a `RedisSource`, with a no-op handler.
async fn redis_ours(client: &redis::Client, key: &str, events: usize) {
    let manager = ListenerManager::new(ManagerConfig::named("bench")).expect("manager");
    manager
        .register(
            tower_listener::listener_fn("bench", |_event: Event| async { Ok::<(), Error>(()) }),
            ListenerConfig {
                concurrency: IN_FLIGHT,
                ..Default::default()
            },
        )
        .expect("registered");
    manager.start().await.expect("started");
    let source = RedisSource::<Value>::new(
        client,
        RedisSourceConfig {
            block: Duration::from_millis(100),
            ..RedisSourceConfig::new(key, "bench", "ours")
        },
    )
    .await
    .expect("source");
    let config = ConsumeConfig {
        batch: BATCH,
        max_in_flight: Some(IN_FLIGHT),
        ..ConsumeConfig::default()
    };
    manager.consume("bench", source, config).expect("consuming");
    while manager.listener_stats("bench").expect("stats").source_acks < events as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    manager.stop(Duration::from_secs(5)).await.expect("stopped");
}
