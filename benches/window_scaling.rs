//! Breaker cost per call against the number of calls its window holds: 10, 10,000 and 200,000 calls inside
//! a 60 s window. A real sliding window of fixed buckets costs the same at every size.
//! `cargo bench --bench window_scaling`.

mod common;

use std::time::Duration;

use common::{drive, event, noop, ns_per_call, runtime, Table};
use criterion::Criterion;
use tower::{Layer, Service, ServiceExt};
use tower_listener::{CircuitBreakerLayer, CircuitConfig, Error, Event};

/// A rate-mode breaker (every call is recorded in the window) that never trips.
fn layer() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(CircuitConfig {
        failure_rate_threshold: Some(1.0),
        minimum_calls: 1,
        sliding_window: Duration::from_secs(60),
        ..Default::default()
    })
    .unwrap()
}

fn failing(
) -> impl Service<Event, Response = (), Error = Error, Future = std::future::Ready<Result<(), Error>>>
       + Clone {
    tower::service_fn(|_: Event| std::future::ready(Err(Error::handler(std::fmt::Error))))
}

fn main() {
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime()));
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut table = Table::new("Breaker per-call cost by calls in its 60 s window");
    let report = std::env::args().any(|a| a == "--bench");
    let ev = event();

    let mut bare = noop();
    let mut group = criterion.benchmark_group("window_scaling");
    group.bench_function("bare no-op service", |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut bare, &ev, iters)))
    });
    if report {
        table.row(
            "bare no-op service",
            ns_per_call(9, 200_000, |i| rt.block_on(drive(&mut bare, &ev, i))),
            "baseline",
        );
    }
    for held in [10usize, 10_000, 200_000] {
        let breaker = layer();
        // Fill the window: `held` recorded calls, half of them failures, all within the last 60 s.
        rt.block_on(async {
            let mut ok = breaker.layer(noop());
            let mut bad = breaker.layer(failing());
            for i in 0..held {
                if i % 2 == 0 {
                    let _ = ok.ready().await.unwrap().call(event()).await;
                } else {
                    let _ = bad.ready().await.unwrap().call(event()).await;
                }
            }
        });
        let mut ok = breaker.layer(noop());
        let mut bad = breaker.layer(failing());
        let success = format!("success, {held} calls in window");
        let failure = format!("failure, {held} calls in window");
        group.bench_function(&success, |b| {
            b.iter_custom(|iters| rt.block_on(drive(&mut ok, &ev, iters)))
        });
        group.bench_function(&failure, |b| {
            b.iter_custom(|iters| rt.block_on(drive(&mut bad, &ev, iters)))
        });
        if report {
            table.row(
                &success,
                ns_per_call(9, 100_000, |i| rt.block_on(drive(&mut ok, &ev, i))),
                "records one bucket",
            );
            table.row(
                &failure,
                ns_per_call(9, 100_000, |i| rt.block_on(drive(&mut bad, &ev, i))),
                "records, then sums 64 buckets",
            );
        }
    }
    group.finish();
    criterion.final_summary();
    if report {
        table.print();
    }
}
