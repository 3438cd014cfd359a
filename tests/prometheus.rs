//! Metrics export: `GET /metrics` scraped over a real server on 127.0.0.1 and read with a Prometheus
//! text-format parser, as Prometheus would read it.
#![cfg(all(feature = "prometheus", feature = "axum"))]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use prometheus_parse::{LineInfo, SampleType, Value};
use support::events::{event, opens_after, scripted};
use tower_listener::prometheus::ManagerCollector;
use tower_listener::source::MemorySource;
use tower_listener::{
    CircuitConfig, CircuitState, ConsumeConfig, LimitMode, ListenerConfig, ListenerManager,
    ManagerConfig, RetryPolicy, Stats,
};

/// Every exported family: the name a sample carries, the family's type.
const FAMILIES: [(&str, SampleType); 18] = [
    ("tower_listener_events_total", SampleType::Counter),
    (
        "tower_listener_event_duration_seconds",
        SampleType::Histogram,
    ),
    (
        "tower_listener_attempt_duration_seconds",
        SampleType::Histogram,
    ),
    ("tower_listener_in_flight", SampleType::Gauge),
    ("tower_listener_retries_total", SampleType::Counter),
    ("tower_listener_timeouts_total", SampleType::Counter),
    ("tower_listener_rejections_total", SampleType::Counter),
    ("tower_listener_circuit_breaker_state", SampleType::Gauge),
    (
        "tower_listener_circuit_breaker_transitions_total",
        SampleType::Counter,
    ),
    ("tower_listener_dead_letters_total", SampleType::Counter),
    (
        "tower_listener_dead_letter_failures_total",
        SampleType::Counter,
    ),
    ("tower_listener_dead_letters_stored", SampleType::Gauge),
    (
        "tower_listener_dead_letter_oldest_age_seconds",
        SampleType::Gauge,
    ),
    ("tower_listener_redriven_total", SampleType::Counter),
    (
        "tower_listener_source_settlements_total",
        SampleType::Counter,
    ),
    (
        "tower_listener_source_redeliveries_total",
        SampleType::Counter,
    ),
    ("tower_listener_health", SampleType::Gauge),
    ("tower_listener_listener_health", SampleType::Gauge),
];

/// One scrape: its families' types (by the name their samples carry) and its samples.
struct Scrape {
    types: HashMap<String, SampleType>,
    samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    fn parse(body: &str) -> Scrape {
        // OpenMetrics names a counter's family without `_total` (its samples carry it), and a histogram's
        // by its base name.
        let types = body
            .lines()
            .filter_map(|line| match LineInfo::parse(line) {
                LineInfo::Type {
                    metric_name,
                    metric_alias,
                    sample_type,
                } => {
                    let name = metric_alias.unwrap_or(metric_name);
                    let name = match sample_type {
                        SampleType::Counter => format!("{name}_total"),
                        _ => name,
                    };
                    Some((name, sample_type))
                }
                _ => None,
            })
            .collect();
        let samples = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("a scrape parses")
            .samples;
        Scrape { types, samples }
    }

    /// The value of the sample `name` whose labels include `labels`, if there is exactly one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<_> = self
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .collect();
        match matching.as_slice() {
            [one] => match &one.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
                other => panic!("{name} {labels:?} is not a number: {other:?}"),
            },
            [] => None,
            many => panic!("{name} {labels:?} matches {} samples", many.len()),
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self
            .value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
        value as u64
    }

    /// The breaker states of `listener` that read 1.
    fn breaker_states_on(&self, listener: &str) -> Vec<String> {
        let series: Vec<_> = self
            .samples
            .iter()
            .filter(|s| {
                s.metric == "tower_listener_circuit_breaker_state"
                    && s.labels.get("listener") == Some(listener)
            })
            .collect();
        assert_eq!(series.len(), 3, "one series per state");
        series
            .into_iter()
            .filter(|s| s.value == Value::Gauge(1.0))
            .map(|s| s.labels.get("state").unwrap().to_owned())
            .collect()
    }
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/metrics")
}

/// GETs `url`: the content type and the body.
async fn get(url: &str) -> (String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

async fn scrape(url: &str) -> Scrape {
    let (content_type, body) = get(url).await;
    assert_eq!(content_type, tower_listener::http::OPENMETRICS_CONTENT_TYPE);
    assert!(
        body.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    Scrape::parse(&body)
}

fn quick_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_delay: Duration::from_millis(1),
        max_delay: Some(Duration::from_millis(2)),
        ..RetryPolicy::new()
    }
}

/// Each listener's counters in the scrape equal its `stats()`.
fn assert_counters_equal_stats(scrape: &Scrape, listener: &str, stats: &Stats) {
    let l = ("listener", listener);
    let events = "tower_listener_events_total";
    let outcome = |o| [l, ("outcome", o)];
    assert_eq!(
        scrape.counter(events, &outcome("succeeded")),
        stats.events_succeeded
    );
    assert_eq!(
        scrape.counter(events, &outcome("failed")) + scrape.counter(events, &outcome("permanent")),
        stats.events_failed
    );
    assert_eq!(
        scrape.counter(events, &outcome("permanent")),
        stats.permanent_failures
    );
    assert_eq!(scrape.counter(events, &outcome("rejected")), stats.rejected);
    assert_eq!(
        scrape.counter("tower_listener_retries_total", &[l]),
        stats.events_retried
    );
    assert_eq!(
        scrape.counter("tower_listener_timeouts_total", &[l]),
        stats.timeouts
    );
    assert_eq!(
        scrape.counter("tower_listener_in_flight", &[l]),
        stats.in_flight
    );
    let cause = |c| [l, ("cause", c)];
    let rejections = "tower_listener_rejections_total";
    assert_eq!(
        scrape.counter(rejections, &cause("circuit_open")),
        stats.rejected_circuit_open
    );
    assert_eq!(
        scrape.counter(rejections, &cause("overloaded")),
        stats.rejected_overloaded
    );
    let dead_letters: u64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "tower_listener_dead_letters_total"
                && s.labels.get("listener") == Some(listener)
        })
        .map(|s| match s.value {
            // The parser reads Prometheus' text format, whose counter families carry `_total` in the
            // TYPE line; OpenMetrics' do not, so it leaves their samples untyped (the type is checked
            // from the TYPE lines).
            Value::Counter(v) | Value::Untyped(v) => v as u64,
            ref other => panic!("dead_letters_total is a counter, not {other:?}"),
        })
        .sum();
    assert_eq!(dead_letters, stats.dead_letter_events);
    assert_eq!(
        scrape.counter("tower_listener_dead_letter_failures_total", &[l]),
        stats.dead_letter_failures
    );
    let redriven = "tower_listener_redriven_total";
    assert_eq!(
        scrape.counter(redriven, &[l, ("outcome", "succeeded")]),
        stats.redriven_succeeded
    );
    assert_eq!(
        scrape.counter(redriven, &[l, ("outcome", "failed")]),
        stats.redriven_failed
    );
    let settled = "tower_listener_source_settlements_total";
    for (action, expected) in [
        ("ack", stats.source_acks),
        ("term", stats.source_terms),
        ("nak", stats.source_naks),
        ("progress", stats.source_progress),
    ] {
        assert_eq!(
            scrape.counter(settled, &[l, ("action", action)]),
            expected,
            "{listener} {action}"
        );
    }
    assert_eq!(
        scrape.counter("tower_listener_source_redeliveries_total", &[l]),
        stats.redeliveries
    );
    for (name, latency) in [
        ("tower_listener_event_duration_seconds", stats.event_latency),
        (
            "tower_listener_attempt_duration_seconds",
            stats.attempt_latency,
        ),
    ] {
        let histogram = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("listener") == Some(listener))
            .unwrap_or_else(|| panic!("no {name} of {listener}"));
        let Value::Histogram(buckets) = &histogram.value else {
            panic!("{name} is a histogram, not {:?}", histogram.value);
        };
        assert_eq!(
            buckets.len(),
            19,
            "18 bounds from 100 µs to 60 s, then +Inf"
        );
        assert_eq!(buckets[0].less_than, 0.0001);
        assert_eq!(buckets[17].less_than, 60.0);
        assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
        let last = buckets.last().unwrap();
        assert!(last.less_than.is_infinite());
        assert_eq!(last.count as u64, latency.count, "{name} of {listener}");
        assert_eq!(
            scrape.counter(&format!("{name}_count"), &[l]),
            latency.count
        );
    }
}

#[tokio::test]
async fn a_scrape_has_every_family_with_its_type_and_the_counters_of_stats() {
    support::quiet_injected_panics();
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (orders, _) = scripted("orders");
    manager
        .register(
            orders,
            ListenerConfig {
                retry_policy: quick_retries(2),
                timeout: Duration::from_millis(50),
                circuit: CircuitConfig {
                    failure_threshold: 100,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    let (limited, _) = scripted("limited");
    manager
        .register(
            limited,
            ListenerConfig {
                concurrency: 1,
                concurrency_mode: LimitMode::Reject,
                retry_policy: RetryPolicy::never(),
                ..Default::default()
            },
        )
        .unwrap();
    let (fragile, _) = scripted("fragile");
    manager.register(fragile, opens_after(2)).unwrap();
    let (feed, _) = scripted("feed");
    manager.register(feed, ListenerConfig::default()).unwrap();
    manager.start().await.unwrap();

    // A scripted run touching every counter.
    for i in 0..10 {
        manager
            .process("orders", event(format!("ok-{i}"), "ok", 0))
            .await
            .unwrap();
    }
    for i in 0..3 {
        manager
            .process("orders", event(format!("flaky-{i}"), "flaky", 1))
            .await
            .unwrap();
    }
    for i in 0..2 {
        manager
            .process("orders", event(format!("perm-{i}"), "permanent", 0))
            .await
            .unwrap_err();
        manager
            .process("orders", event(format!("fail-{i}"), "fail", 0))
            .await
            .unwrap_err();
    }
    manager
        .process("orders", event("hang-0", "hang", 0))
        .await
        .unwrap_err();
    let slow = manager.process("limited", event("slow-0", "slow", 200));
    let refused = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        manager.process("limited", event("slow-1", "slow", 0)).await
    };
    let (slow, refused) = tokio::join!(slow, refused);
    slow.unwrap();
    assert!(matches!(refused, Err(tower_listener::Error::Overloaded)));
    for i in 0..3 {
        manager
            .process("fragile", event(format!("f-{i}"), "fail", 0))
            .await
            .unwrap_err();
    }
    // Redriven after a reset: they fail again, until the breaker opens again.
    manager.circuit_breaker("fragile").unwrap().reset();
    let report = support::events::redrive_all(&manager, "fragile").await;
    assert!(report.failed > 0, "{report:?}");
    let source = MemorySource::new("orders-stream");
    for i in 0..5 {
        source.publish(event(format!("src-{i}"), "ok", 0));
    }
    source.publish_malformed(b"{not json".to_vec(), "expected value at line 1 column 2");
    let consumer = manager
        .consume("feed", source.clone(), ConsumeConfig::default())
        .unwrap();

    // Watch the in-memory dead letters of `orders` as a store.
    let queue = manager.dead_letters("orders").unwrap().unwrap();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(
        ManagerCollector::new(manager.clone())
            .with_store("orders-memory", queue.clone(), Duration::from_millis(100))
            .unwrap(),
    ));
    let url = serve(tower_listener::http::router_with_registry(
        manager.clone(),
        Arc::new(registry),
    ))
    .await;

    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = source.settlements();
            if s.acked == 5 && s.termed == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    settled.expect("the source's deliveries are settled");
    consumer.stop(Duration::from_secs(5)).await;
    let stored = queue.len() as f64;
    let scrape = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let scrape = scrape(&url).await;
            if scrape.value(
                "tower_listener_dead_letters_stored",
                &[("store", "orders-memory")],
            ) == Some(stored)
            {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the store's gauge is refreshed");

    for (name, sample_type) in FAMILIES {
        assert_eq!(scrape.types.get(name), Some(&sample_type), "{name}");
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} has samples"
        );
    }
    for listener in ["orders", "limited", "fragile", "feed"] {
        let stats = manager.listener_stats(listener).unwrap();
        assert_counters_equal_stats(&scrape, listener, &stats);
    }
    // The run did touch what the comparison covers.
    let feed = manager.listener_stats("feed").unwrap();
    assert_eq!((feed.source_acks, feed.source_terms), (5, 1));
    let orders = manager.listener_stats("orders").unwrap();
    assert!(
        orders.events_retried >= 3 && orders.timeouts >= 3 && orders.permanent_failures == 2,
        "{orders:?}"
    );
    let limited = manager.listener_stats("limited").unwrap();
    assert_eq!(limited.rejected_overloaded, 1);
    let fragile = manager.listener_stats("fragile").unwrap();
    assert!(
        fragile.rejected_circuit_open >= 1
            && fragile.redriven_failed + fragile.redriven_succeeded > 0
    );
    let age = scrape
        .value(
            "tower_listener_dead_letter_oldest_age_seconds",
            &[("store", "orders-memory")],
        )
        .unwrap();
    assert!(age > 0.0 && age < 60.0, "oldest age {age}");

    // Label values come from fixed sets only: never an event id or an error message.
    let fixed: HashMap<&str, HashSet<&str>> = HashMap::from([
        (
            "outcome",
            HashSet::from(["succeeded", "failed", "permanent", "rejected"]),
        ),
        ("cause", HashSet::from(["circuit_open", "overloaded"])),
        ("state", HashSet::from(["closed", "open", "half_open"])),
        ("from", HashSet::from(["closed", "open", "half_open"])),
        ("to", HashSet::from(["closed", "open", "half_open"])),
        ("action", HashSet::from(["ack", "term", "nak", "progress"])),
        (
            "status",
            HashSet::from(["healthy", "degraded", "unhealthy", "circuit-open"]),
        ),
        (
            "listener",
            HashSet::from(["orders", "limited", "fragile", "feed"]),
        ),
        ("store", HashSet::from(["orders-memory"])),
        (
            "reason",
            tower_listener::DeadLetterReason::ALL
                .iter()
                .map(|r| r.as_str())
                .collect(),
        ),
    ]);
    for sample in &scrape.samples {
        for (key, value) in sample.labels.iter() {
            let allowed = fixed
                .get(key.as_str())
                .unwrap_or_else(|| panic!("{}: unexpected label {key}", sample.metric));
            assert!(
                allowed.contains(value.as_str()),
                "{}: {key}={value}",
                sample.metric
            );
        }
    }
}

#[tokio::test]
async fn exactly_one_breaker_state_reads_1_through_closed_open_half_open_closed() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (fragile, _) = scripted("fragile");
    manager
        .register(
            fragile,
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                circuit: CircuitConfig {
                    failure_threshold: 2,
                    success_threshold: 1,
                    timeout: Duration::from_millis(100),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    manager.start().await.unwrap();
    let url = serve(tower_listener::http::router(manager.clone())).await;
    let breaker = manager.circuit_breaker("fragile").unwrap();

    assert_eq!(scrape(&url).await.breaker_states_on("fragile"), ["closed"]);
    for i in 0..2 {
        manager
            .process("fragile", event(format!("f-{i}"), "fail", 0))
            .await
            .unwrap_err();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(scrape(&url).await.breaker_states_on("fragile"), ["open"]);

    // Past its timeout, the next call is a probe: half-open while it runs.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let probe = tokio::spawn({
        let manager = manager.clone();
        async move {
            manager
                .process("fragile", event("probe", "slow", 300))
                .await
        }
    });
    while breaker.state() != CircuitState::HalfOpen {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        scrape(&url).await.breaker_states_on("fragile"),
        ["half_open"]
    );
    probe.await.unwrap().unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    let scrape = scrape(&url).await;
    assert_eq!(scrape.breaker_states_on("fragile"), ["closed"]);

    let transition = |from, to| {
        scrape.counter(
            "tower_listener_circuit_breaker_transitions_total",
            &[("listener", "fragile"), ("from", from), ("to", to)],
        )
    };
    assert_eq!(transition("closed", "open"), 1);
    assert_eq!(transition("open", "half_open"), 1);
    assert_eq!(transition("half_open", "closed"), 1);
}

/// Every `tower_listener_*` name in the strings of `json` (the queries, the variables).
fn queried_names(json: &serde_json::Value, names: &mut HashSet<String>) {
    match json {
        serde_json::Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(at) = rest.find("tower_listener_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| queried_names(i, names)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| queried_names(v, names)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_in_a_scrape() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../examples/grafana/tower-listener.json"))
            .expect("the dashboard is JSON");
    let mut queried = HashSet::new();
    queried_names(&dashboard, &mut queried);
    // The panels the dashboard promises: events by outcome, latency, breaker state, retries,
    // rejections, dead letters stored and their oldest age, settlements.
    for promised in [
        "tower_listener_events_total",
        "tower_listener_event_duration_seconds_bucket",
        "tower_listener_circuit_breaker_state",
        "tower_listener_retries_total",
        "tower_listener_rejections_total",
        "tower_listener_dead_letters_stored",
        "tower_listener_dead_letter_oldest_age_seconds",
        "tower_listener_source_settlements_total",
    ] {
        assert!(
            queried.contains(promised),
            "the dashboard has no panel on {promised}"
        );
    }

    // A fresh manager with one listener and one watched store: every family is in its first scrapes.
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (orders, _) = scripted("orders");
    manager.register(orders, ListenerConfig::default()).unwrap();
    manager.start().await.unwrap();
    let queue = manager.dead_letters("orders").unwrap().unwrap();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(
        ManagerCollector::new(manager.clone())
            .with_store("memory", queue, Duration::from_millis(100))
            .unwrap(),
    ));
    let url = serve(tower_listener::http::router_with_registry(
        manager,
        Arc::new(registry),
    ))
    .await;
    let exported = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, body) = get(&url).await;
            let names: HashSet<String> = body
                .lines()
                .filter_map(|line| match LineInfo::parse(line) {
                    LineInfo::Sample { metric_name, .. } => Some(metric_name.to_owned()),
                    _ => None,
                })
                .collect();
            if names.contains("tower_listener_dead_letters_stored") {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the store's gauges appear");
    let mut missing: Vec<_> = queried.difference(&exported).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "the dashboard queries names no scrape has: {missing:?}"
    );
}

#[test]
fn watching_a_store_outside_a_runtime_is_refused_naming_the_call() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let store = tower_listener::DeadLetterQueue::new(10);
    match ManagerCollector::new(manager).with_store("memory", store, Duration::from_secs(1)) {
        Err(tower_listener::Error::InvalidConfig { field, .. }) => assert_eq!(field, "with_store"),
        other => panic!("{other:?}"),
    }
}
