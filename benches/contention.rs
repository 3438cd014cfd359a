//! Throughput of the full stack driven by 1 and by 2 threads at once (each thread its own clone of the
//! service, all sharing one breaker, limit and metrics), by hand and through the manager.
//! `cargo bench --bench contention`.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{event, noop, stacks};
use criterion::Criterion;
use tower::{Service, ServiceExt};
use tower_listener::{Event, Listener, ListenerConfig, ListenerManager, ManagerConfig};

/// Runs `per_thread` calls on each of `threads` OS threads at once (each with its own current-thread
/// runtime, so the threads really run in parallel and never share a scheduler); returns the wall time from
/// the common start to the last thread's end.
fn on_threads<F, Fut>(threads: usize, per_thread: u64, make: impl Fn() -> F) -> Duration
where
    F: FnOnce(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let work = make();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = common::runtime();
                barrier.wait();
                rt.block_on(work(per_thread));
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn run_stack<S>(svc: &S, threads: usize, per_thread: u64) -> Duration
where
    S: Service<Event> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    on_threads(threads, per_thread, || {
        let mut svc = svc.clone();
        move |n| async move {
            let ev = event();
            for _ in 0..n {
                let ready = svc.ready().await.unwrap();
                let _ = std::hint::black_box(ready.call(ev.clone()).await);
            }
        }
    })
}

fn run_manager(m: &ListenerManager, threads: usize, per_thread: u64) -> Duration {
    on_threads(threads, per_thread, || {
        let m = m.clone();
        move |n| async move {
            let ev = event();
            for _ in 0..n {
                let _ = std::hint::black_box(m.process("bench", ev.clone()).await);
            }
        }
    })
}

/// Millions of calls per second: the median of `rounds` runs.
fn throughput(
    rounds: usize,
    threads: usize,
    per_thread: u64,
    mut run: impl FnMut(usize, u64) -> Duration,
) -> f64 {
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            (threads as u64 * per_thread) as f64 / run(threads, per_thread).as_secs_f64() / 1e6
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
}

/// One throughput row: (threads, calls per thread) -> wall time.
type Run<'a> = dyn Fn(usize, u64) -> Duration + 'a;

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let report = std::env::args().any(|a| a == "--bench");

    let ours = stacks::ours();
    let unrecorded = stacks::ours_without_metrics();
    let bare = noop();
    let manager = ListenerManager::new(ManagerConfig::named("bench")).unwrap();
    manager
        .register(Listener::new("bench", noop()), ListenerConfig::default())
        .unwrap();
    common::runtime().block_on(manager.start()).unwrap();

    let mut group = criterion.benchmark_group("contention");
    for threads in [1usize, 2] {
        group.bench_function(format!("full stack, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| run_stack(&ours, threads, iters.div_ceil(threads as u64)))
        });
        group.bench_function(format!("manager.process, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| run_manager(&manager, threads, iters.div_ceil(threads as u64)))
        });
    }
    group.finish();
    criterion.final_summary();

    if report {
        let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("\nThroughput, millions of calls/s ({machine} cores; one OS thread and current-thread runtime per thread; median of 7 runs of 400k calls per thread)");
        println!("| stack | 1 thread | 2 threads | 2 / 1 |\n|---|---:|---:|---:|");
        let per = 400_000;
        let rows: [(&str, Box<Run>); 4] = [
            (
                "bare no-op service",
                Box::new(|t, n| run_stack(&bare, t, n)),
            ),
            (
                "full stack without metrics (no histograms)",
                Box::new(|t, n| run_stack(&unrecorded, t, n)),
            ),
            (
                "full stack (by hand, histograms on)",
                Box::new(|t, n| run_stack(&ours, t, n)),
            ),
            (
                "full stack through manager.process",
                Box::new(|t, n| run_manager(&manager, t, n)),
            ),
        ];
        for (name, run) in rows.iter() {
            let one = throughput(7, 1, per, run);
            let two = throughput(7, 2, per, run);
            println!("| {name} | {one:.2} | {two:.2} | {:.2}x |", two / one);
        }
    }
}
