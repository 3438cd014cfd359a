//! Per-call overhead of each layer and of the full stack, against a bare no-op service, plain tower and
//! tower-resilience, all in the same run; then the peers like for like, and the manager under a tracing
//! subscriber. `cargo bench --bench overhead` (add `--features prometheus` for the scraped-manager rows,
//! `tsc-clock` for the rows measuring with the time-stamp counter).
//!
//! Criterion measures each case one after another; the tables printed after it measure every case of a
//! table in interleaved rounds (each round runs every case once), so that the machine's drift hits every
//! row alike, and they are the figures to quote. `-- skip-criterion` (a filter no criterion bench
//! matches) prints the tables alone; `OVERHEAD_TABLES=per-layer,like,tracing` picks tables.

mod common;

use std::time::Duration;

use common::{drive, event, interleaved, noop, paired, runtime, stacks, Case, Table};
use criterion::Criterion;
use tokio::runtime::Runtime;
use tower::{Layer, Service};
use tower_listener::{
    CircuitBreakerLayer, CircuitConfig, ConcurrencyConfig, ConcurrencyLimitLayer, DeadLetterConfig,
    DeadLetterLayer, DeadLetterQueue, Event, LimitMode, ListenerConfig, ListenerManager,
    ListenerMetrics, ManagerConfig, MetricsLayer, RetryLayer, RetryPolicy, TimeoutLayer,
};

/// Rounds of each interleaved table, and calls per case per round.
const ROUNDS: usize = 21;
const ITERS: u64 = 100_000;

/// A case that drives `svc` on `rt`.
fn case<S>(rt: &'static Runtime, mut svc: S) -> Case<'static>
where
    S: Service<Event> + 'static,
    S::Error: std::fmt::Debug,
{
    let ev = event();
    Box::new(move |iters| rt.block_on(drive(&mut svc, &ev, iters)))
}

/// A started manager with one no-op listener configured by `config`, and a case that runs events
/// through it.
fn manager_case(
    rt: &'static Runtime,
    name: &str,
    config: ListenerConfig,
) -> (ListenerManager, Case<'static>) {
    let manager = ListenerManager::new(ManagerConfig::named(name)).unwrap();
    manager
        .register(tower_listener::Listener::new("bench", noop()), config)
        .unwrap();
    rt.block_on(manager.start()).unwrap();
    let ev = event();
    let running = manager.clone();
    let case: Case = Box::new(move |iters| {
        rt.block_on(async {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let _ = std::hint::black_box(running.process("bench", ev.clone()).await);
            }
            start.elapsed()
        })
    });
    (manager, case)
}

/// A breaker in rate mode: it opens on the failure ratio of its window instead of a count.
fn rate_mode() -> CircuitConfig {
    CircuitConfig {
        failure_rate_threshold: Some(0.5),
        ..Default::default()
    }
}

type Row = (&'static str, &'static str, Case<'static>);

/// `case` with the crate measuring on the time-stamp counter (`clock::use_tsc`) while it runs; the
/// switch is process-wide, so it is on for this row's rounds only.
#[cfg(feature = "tsc-clock")]
fn on_tsc(mut case: Case<'static>) -> Case<'static> {
    Box::new(move |iters| {
        tower_listener::clock::use_tsc(true);
        let took = case(iters);
        tower_listener::clock::use_tsc(false);
        took
    })
}

/// The headline table: each layer alone, the full stack by hand and through the manager, the peers.
fn per_layer(rt: &'static Runtime) -> Vec<Row> {
    let breaker = |config: CircuitConfig| CircuitBreakerLayer::new(config).unwrap();
    let open = breaker(CircuitConfig::default());
    open.handle().force_open();
    let half_open = breaker(CircuitConfig {
        failure_threshold: 1,
        success_threshold: u32::MAX,
        half_open_max_calls: u32::MAX,
        timeout: Duration::from_millis(1),
        ..Default::default()
    });
    // Trip it, let the timeout pass: every later call is a half-open probe.
    {
        let mut failing = half_open.layer(tower::service_fn(|_: Event| async {
            Err::<(), _>(tower_listener::Error::Overloaded.to_string())
        }));
        let _ = rt.block_on(drive(&mut failing, &event(), 1));
        std::thread::sleep(Duration::from_millis(2));
    }
    let limit = |mode| ConcurrencyLimitLayer::new(ConcurrencyConfig::new(10, mode)).unwrap();
    let (_, through_manager) = manager_case(rt, "bench", ListenerConfig::default());

    let mut rows: Vec<Row> = vec![
        ("bare no-op service", "the baseline", case(rt, noop())),
        (
            "breaker, closed",
            "success path",
            case(rt, breaker(CircuitConfig::default()).layer(noop())),
        ),
        (
            "breaker, open (rejection)",
            "no inner call",
            case(rt, open.layer(noop())),
        ),
        (
            "breaker, half-open probe",
            "takes the lock",
            case(rt, half_open.layer(noop())),
        ),
        (
            "retry, no retry needed",
            "",
            case(
                rt,
                RetryLayer::new(RetryPolicy::default())
                    .unwrap()
                    .layer(noop()),
            ),
        ),
        (
            "limit, Wait, uncontended",
            "",
            case(rt, limit(LimitMode::Wait).layer(noop())),
        ),
        (
            "limit, Reject, uncontended",
            "",
            case(rt, limit(LimitMode::Reject).layer(noop())),
        ),
        (
            "timeout",
            "",
            case(
                rt,
                TimeoutLayer::new(Duration::from_secs(30))
                    .unwrap()
                    .layer(noop()),
            ),
        ),
        (
            "dead letter, success",
            "",
            case(
                rt,
                DeadLetterLayer::with_sink(DeadLetterQueue::<Event>::new(10)).layer(noop()),
            ),
        ),
        (
            "metrics, per event",
            "",
            case(
                rt,
                MetricsLayer::per_event(std::sync::Arc::new(ListenerMetrics::new("m")))
                    .layer(noop()),
            ),
        ),
        (
            "full stack, by hand, no metrics",
            "ours: the layers without histograms or counters",
            case(rt, stacks::ours_without_metrics()),
        ),
        (
            "full stack, by hand",
            "ours: all six layers",
            case(rt, stacks::ours()),
        ),
        (
            "full stack, manager.process",
            "ours: the manager",
            through_manager,
        ),
    ];
    #[cfg(feature = "prometheus")]
    rows.push((
        "full stack, manager.process, scraped",
        "ours: the manager, its metrics encoded every 10 ms on the other core",
        scraped::case(rt),
    ));
    #[cfg(feature = "tsc-clock")]
    rows.extend([
        (
            "full stack, by hand, TSC clock",
            "ours: all six layers, measuring with the time-stamp counter",
            on_tsc(case(rt, stacks::ours())),
        ),
        (
            "full stack, manager.process, TSC clock",
            "ours: the manager, measuring with the time-stamp counter",
            on_tsc(manager_case(rt, "bench-tsc", ListenerConfig::default()).1),
        ),
    ]);
    rows.extend([
        (
            "plain tower stack",
            "tower retry + limit + timeout + sharded histogram",
            case(rt, stacks::plain_tower()),
        ),
        (
            "plain tower stack, both latencies",
            "the same, recording event and attempt latency as ours does",
            case(rt, stacks::plain_tower_both_latencies()),
        ),
        (
            "tower-resilience stack",
            "breaker + bulkhead + retry + time limiter + mutex histogram",
            case(rt, stacks::tower_resilience()),
        ),
    ]);
    rows
}

/// The peers like for like: every stack records its latency in the same kind of sharded histogram; the
/// peers as their users write them next to it.
fn like_for_like(rt: &'static Runtime) -> Vec<Row> {
    let (_, manager) = manager_case(rt, "like-count", ListenerConfig::default());
    let (_, manager_rate) = manager_case(
        rt,
        "like-rate",
        ListenerConfig {
            circuit: rate_mode(),
            ..Default::default()
        },
    );
    let without = |name: &str, circuit: bool, dead_letters: bool| {
        manager_case(
            rt,
            name,
            ListenerConfig {
                circuit: if circuit {
                    CircuitConfig::default()
                } else {
                    CircuitConfig::disabled()
                },
                dead_letter: if dead_letters {
                    DeadLetterConfig::default()
                } else {
                    DeadLetterConfig::disabled()
                },
                ..Default::default()
            },
        )
        .1
    };
    #[allow(unused_mut)]
    let mut rows = vec![
        ("bare no-op service", "the baseline", case(rt, noop())),
        (
            "ours, manager.process",
            "count-mode breaker (the default)",
            manager,
        ),
        (
            "ours, manager.process, breaker off",
            "`CircuitConfig::disabled()`",
            without("like-no-breaker", false, true),
        ),
        (
            "ours, manager.process, dead letters off",
            "`DeadLetterConfig::disabled()`",
            without("like-no-letters", true, false),
        ),
        (
            "ours, manager.process, both off",
            "both disabled; their layers stay in the stack",
            without("like-neither", false, false),
        ),
        (
            "ours, manager.process, rate mode",
            "breaker on the failure ratio of its window",
            manager_rate,
        ),
        (
            "ours, by hand",
            "count-mode breaker",
            case(rt, stacks::ours()),
        ),
        (
            "ours, by hand, no breaker or dead-letter layer",
            "the layers plain tower has, with our metrics",
            case(rt, stacks::ours_without_breaker_and_letters()),
        ),
        (
            "ours, by hand, rate mode",
            "",
            case(rt, stacks::ours_with(rate_mode())),
        ),
        (
            "plain tower, sharded histogram",
            "retry + limit + timeout; no breaker, no dead letters",
            case(rt, stacks::plain_tower()),
        ),
        (
            "plain tower, mutex histogram",
            "as its users write it",
            case(rt, stacks::plain_tower_mutex()),
        ),
        (
            "tower-resilience, sharded histogram",
            "named breaker, count-based window of 100",
            case(rt, stacks::tower_resilience_sharded()),
        ),
        (
            "tower-resilience, mutex histogram",
            "its defaults",
            case(rt, stacks::tower_resilience()),
        ),
    ];
    #[cfg(feature = "tsc-clock")]
    rows.insert(
        2,
        (
            "ours, manager.process, TSC clock",
            "the default listener, measuring with the time-stamp counter",
            on_tsc(manager_case(rt, "like-tsc", ListenerConfig::default()).1),
        ),
    );
    rows
}

/// The manager under a `tracing_subscriber::fmt` subscriber (writing to nowhere), scoped to the case.
fn traced(rt: &'static Runtime) -> Vec<Row> {
    use tracing::level_filters::LevelFilter;

    let under = |level: LevelFilter, mut run: Case<'static>| -> Case<'static> {
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(std::io::sink)
                .finish(),
        );
        Box::new(move |iters| tracing::dispatcher::with_default(&dispatch, || run(iters)))
    };
    let (_, plain) = manager_case(rt, "traced-none", ListenerConfig::default());
    let (_, info) = manager_case(rt, "traced-info", ListenerConfig::default());
    let (_, debug) = manager_case(rt, "traced-debug", ListenerConfig::default());
    vec![
        ("bare no-op service", "the baseline", case(rt, noop())),
        ("manager.process, no subscriber", "", plain),
        (
            "manager.process, subscriber at INFO",
            "the common setting (and fmt's default)",
            under(LevelFilter::INFO, info),
        ),
        (
            "manager.process, subscriber at DEBUG",
            "the event span is recorded",
            under(LevelFilter::DEBUG, debug),
        ),
    ]
}

/// The manager with Prometheus export: a `ManagerCollector` whose registry a thread encodes every 10 ms
/// (as a scrape would) while the case runs.
#[cfg(feature = "prometheus")]
mod scraped {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use tokio::runtime::Runtime;
    use tower_listener::prometheus::ManagerCollector;
    use tower_listener::ListenerConfig;

    use super::{manager_case, Case};

    /// Scrapes taken so far (to show the scraper ran), and the nanoseconds they took.
    pub static SCRAPES: AtomicU64 = AtomicU64::new(0);
    pub static SCRAPE_NANOS: AtomicU64 = AtomicU64::new(0);

    pub fn case(rt: &'static Runtime) -> Case<'static> {
        let (manager, mut run) = manager_case(rt, "bench-scraped", ListenerConfig::default());
        let mut registry = Registry::default();
        ManagerCollector::register(&mut registry, manager);
        let active = Arc::new(AtomicBool::new(false));
        let scraping = active.clone();
        std::thread::spawn(move || loop {
            if scraping.load(Ordering::Relaxed) {
                let start = std::time::Instant::now();
                let mut body = String::new();
                prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
                std::hint::black_box(&body);
                SCRAPE_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                SCRAPES.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        });
        Box::new(move |iters| {
            active.store(true, Ordering::Relaxed);
            let took = run(iters);
            active.store(false, Ordering::Relaxed);
            took
        })
    }
}

/// Measures `rows` interleaved and prints them as a table; returns each row's samples.
fn measure(title: &str, rows: &mut [Row]) -> Vec<Vec<f64>> {
    let mut cases: Vec<&mut Case> = rows.iter_mut().map(|(_, _, c)| c).collect();
    let samples = interleaved(ROUNDS, ITERS, &mut cases);
    let mut table = Table::new(title);
    for ((name, note, _), samples) in rows.iter().zip(&samples) {
        table.measured(name, samples.clone(), note);
    }
    table.print();
    samples
}

/// Prints round-by-round ratios between rows of one table: `(label, numerator, denominator)`.
fn ratios(rows: &[Row], samples: &[Vec<f64>], pairs: &[(&str, &str, &str)]) {
    let at = |name: &str| rows.iter().position(|(n, _, _)| *n == name).unwrap();
    for (label, over, under) in pairs {
        let (median, lo, hi) = paired(&samples[at(under)], &samples[at(over)]);
        println!("  {label}: {median:.2}x (rounds {lo:.2}x to {hi:.2}x)");
    }
}

fn main() {
    let rt: &'static Runtime = Box::leak(Box::new(runtime()));
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut rows = per_layer(rt);
    let mut group = criterion.benchmark_group("overhead");
    for (name, _, run) in rows.iter_mut() {
        group.bench_function(*name, |b| b.iter_custom(&mut **run));
    }
    group.finish();
    criterion.final_summary();
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches`: the cases ran once each
    }

    // OVERHEAD_TABLES=per-layer,like,tracing (the default: all three) picks the tables.
    let tables = std::env::var("OVERHEAD_TABLES").unwrap_or_default();
    let wanted = |table: &str| tables.is_empty() || tables.split(',').any(|t| t.trim() == table);
    if wanted("per-layer") {
        per_layer_table(&mut rows);
    }
    if wanted("like") {
        like_for_like_table(rt);
    }
    if wanted("tracing") {
        tracing_table(rt);
    }
}

fn per_layer_table(rows: &mut [Row]) {
    let samples = measure("Per-call overhead, current-thread runtime", rows);
    println!("\nRatios within each round (median, and the range over the rounds):");
    ratios(
        rows,
        &samples,
        &[
            (
                "manager.process / the same layers by hand",
                "full stack, manager.process",
                "full stack, by hand",
            ),
            (
                "manager.process / plain tower (sharded histogram)",
                "full stack, manager.process",
                "plain tower stack",
            ),
            (
                "manager.process / plain tower recording both latencies",
                "full stack, manager.process",
                "plain tower stack, both latencies",
            ),
            (
                "manager.process / tower-resilience",
                "full stack, manager.process",
                "tower-resilience stack",
            ),
            (
                "by hand / tower-resilience",
                "full stack, by hand",
                "tower-resilience stack",
            ),
        ],
    );
    #[cfg(feature = "tsc-clock")]
    ratios(
        rows,
        &samples,
        &[
            (
                "manager.process, TSC clock / manager.process (tokio's clock)",
                "full stack, manager.process, TSC clock",
                "full stack, manager.process",
            ),
            (
                "manager.process, TSC clock / the same layers by hand, TSC clock",
                "full stack, manager.process, TSC clock",
                "full stack, by hand, TSC clock",
            ),
            (
                "manager.process, TSC clock / plain tower (sharded histogram)",
                "full stack, manager.process, TSC clock",
                "plain tower stack",
            ),
        ],
    );
    #[cfg(feature = "prometheus")]
    {
        use std::sync::atomic::Ordering;
        let scrapes = scraped::SCRAPES.load(Ordering::Relaxed);
        let nanos = scraped::SCRAPE_NANOS.load(Ordering::Relaxed);
        println!(
            "  ({scrapes} scrapes so far, {:.0} µs each)",
            nanos as f64 / scrapes.max(1) as f64 / 1e3
        );
        ratios(
            rows,
            &samples,
            &[(
                "manager scraped every 10 ms / not scraped",
                "full stack, manager.process, scraped",
                "full stack, manager.process",
            )],
        );
    }
}

fn like_for_like_table(rt: &'static Runtime) {
    let mut rows = like_for_like(rt);
    let samples = measure(
        "Like for like: every stack with the same sharded histogram",
        &mut rows,
    );
    println!("\nRatios within each round:");
    ratios(
        &rows,
        &samples,
        &[
            (
                "ours, manager.process / tower-resilience, sharded histogram",
                "ours, manager.process",
                "tower-resilience, sharded histogram",
            ),
            (
                "ours, manager.process, rate mode / tower-resilience, sharded histogram",
                "ours, manager.process, rate mode",
                "tower-resilience, sharded histogram",
            ),
            (
                "ours, manager.process / plain tower, sharded histogram",
                "ours, manager.process",
                "plain tower, sharded histogram",
            ),
            #[cfg(feature = "tsc-clock")]
            (
                "ours, manager.process, TSC clock / plain tower, sharded histogram",
                "ours, manager.process, TSC clock",
                "plain tower, sharded histogram",
            ),
            (
                "ours, manager.process, breaker and dead letters off / plain tower, sharded histogram",
                "ours, manager.process, both off",
                "plain tower, sharded histogram",
            ),
            (
                "ours, by hand / plain tower, sharded histogram",
                "ours, by hand",
                "plain tower, sharded histogram",
            ),
            (
                "ours, by hand without breaker and dead letters / plain tower, sharded histogram",
                "ours, by hand, no breaker or dead-letter layer",
                "plain tower, sharded histogram",
            ),
        ],
    );
}

fn tracing_table(rt: &'static Runtime) {
    let mut rows = traced(rt);
    let samples = measure(
        "The manager under a tracing subscriber (fmt, to a sink)",
        &mut rows,
    );
    println!("\nRatios within each round:");
    ratios(
        &rows,
        &samples,
        &[
            (
                "subscriber at INFO / no subscriber",
                "manager.process, subscriber at INFO",
                "manager.process, no subscriber",
            ),
            (
                "subscriber at DEBUG / no subscriber",
                "manager.process, subscriber at DEBUG",
                "manager.process, no subscriber",
            ),
        ],
    );
}
