//! Per-call overhead of each layer and of the full stack, against a bare no-op service, plain tower and
//! tower-resilience, all in the same run. `cargo bench --bench overhead`.

mod common;

use std::time::Duration;

use common::{drive, event, noop, ns_per_call, runtime, stacks, Table};
use criterion::Criterion;
use tokio::runtime::Runtime;
use tower::{Layer, Service};
use tower_listener::{
    CircuitBreakerLayer, CircuitConfig, ConcurrencyConfig, ConcurrencyLimitLayer, DeadLetterLayer,
    DeadLetterQueue, Event, LimitMode, ListenerConfig, ListenerManager, ListenerMetrics,
    ManagerConfig, MetricsLayer, RetryLayer, RetryPolicy, TimeoutLayer,
};

type Case = Box<dyn FnMut(u64) -> Duration>;

/// A case that drives `svc` on `rt`.
fn case<S>(rt: &'static Runtime, mut svc: S) -> Case
where
    S: Service<Event> + 'static,
    S::Error: std::fmt::Debug,
{
    let ev = event();
    Box::new(move |iters| rt.block_on(drive(&mut svc, &ev, iters)))
}

fn cases(rt: &'static Runtime) -> Vec<(&'static str, &'static str, Case)> {
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

    let (_, through_manager) = manager_case(rt, "bench");
    vec![
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
            "limit, WaitFor, uncontended",
            "",
            case(
                rt,
                limit(LimitMode::WaitFor(Duration::from_secs(1))).layer(noop()),
            ),
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
        #[cfg(feature = "prometheus")]
        (
            "full stack, manager.process, scraped",
            "ours: the manager, its metrics encoded every 10 ms on the other core",
            scraped::case(rt),
        ),
        (
            "plain tower stack",
            "tower retry + limit + timeout + histogram",
            case(rt, stacks::plain_tower()),
        ),
        (
            "tower-resilience stack",
            "breaker + bulkhead + retry + time limiter + histogram",
            case(rt, stacks::tower_resilience()),
        ),
    ]
}

/// A started manager with one no-op listener, and a case that runs events through it.
fn manager_case(rt: &'static Runtime, name: &str) -> (ListenerManager, Case) {
    let manager = ListenerManager::new(ManagerConfig::named(name)).unwrap();
    manager
        .register(
            tower_listener::Listener::new("bench", noop()),
            ListenerConfig::default(),
        )
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

    use super::{manager_case, Case};

    /// Scrapes taken so far (to show the scraper ran), and the nanoseconds they took.
    pub static SCRAPES: AtomicU64 = AtomicU64::new(0);
    pub static SCRAPE_NANOS: AtomicU64 = AtomicU64::new(0);

    pub fn case(rt: &'static Runtime) -> Case {
        let (manager, mut run) = manager_case(rt, "bench-scraped");
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

fn main() {
    let rt: &'static Runtime = Box::leak(Box::new(runtime()));
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut all = cases(rt);
    let mut group = criterion.benchmark_group("overhead");
    for (name, _, run) in all.iter_mut() {
        group.bench_function(*name, |b| b.iter_custom(&mut **run));
    }
    group.finish();
    criterion.final_summary();

    // The ratio table, from one more pass over every case in this same process.
    if std::env::args().any(|a| a == "--bench") {
        let mut table = Table::new("Per-call overhead, current-thread runtime");
        for (name, note, run) in all.iter_mut() {
            let ns = ns_per_call(9, 200_000, &mut **run);
            table.row(name, ns, note);
        }
        table.print();
        #[cfg(feature = "prometheus")]
        scrape_comparison(rt, &mut all);
    }
}

/// The manager with and without a scrape every 10 ms, interleaved round by round so that drift of the
/// machine hits both alike, next to the same comparison between two unscraped managers (the noise).
#[cfg(feature = "prometheus")]
fn scrape_comparison(rt: &'static Runtime, all: &mut [(&'static str, &'static str, Case)]) {
    use std::sync::atomic::Ordering;

    let position = |name: &str| all.iter().position(|(n, _, _)| *n == name).unwrap();
    let (plain, scraped) = (
        position("full stack, manager.process"),
        position("full stack, manager.process, scraped"),
    );
    let (_, mut twin) = manager_case(rt, "bench-twin");
    let before = scraped::SCRAPES.load(Ordering::Relaxed);
    let nanos_before = scraped::SCRAPE_NANOS.load(Ordering::Relaxed);
    let (mut noise, mut scrape) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let a = (all[plain].2)(200_000).as_nanos() as f64;
        let b = (all[scraped].2)(200_000).as_nanos() as f64;
        let c = twin(200_000).as_nanos() as f64;
        scrape.push(b / a);
        noise.push(c / a);
    }
    let scrapes = scraped::SCRAPES.load(Ordering::Relaxed) - before;
    let nanos = scraped::SCRAPE_NANOS.load(Ordering::Relaxed) - nanos_before;
    println!(
        "\nmanager.process, 15 interleaved rounds of 200,000 events ({scrapes} scrapes of {:.0} µs each):",
        nanos as f64 / scrapes.max(1) as f64 / 1e3
    );
    for (what, ratios) in [
        ("scraped every 10 ms / not scraped", &mut scrape),
        (
            "another unscraped manager / not scraped (noise)",
            &mut noise,
        ),
    ] {
        ratios.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {what}: median {:.3}x, range {:.3}x to {:.3}x",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
}
