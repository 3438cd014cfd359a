//! Throughput of the full stack driven by 1 and by 2 threads at once (each thread its own clone of the
//! service, all sharing one breaker, limit and metrics), by hand and through the manager.
//! `cargo bench --bench contention`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{event, noop, stacks};
use criterion::Criterion;
use tower::{Service, ServiceExt};
use tower_listener::{Event, Listener, ListenerConfig, ListenerManager, ManagerConfig};

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `per_thread` calls on each of `threads` tasks at once; returns the wall time.
fn run_stack<S>(rt: &tokio::runtime::Runtime, svc: &S, threads: usize, per_thread: u64) -> Duration
where
    S: Service<Event> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..threads)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    let ev = event();
                    for _ in 0..per_thread {
                        let ready = svc.ready().await.unwrap();
                        let _ = std::hint::black_box(ready.call(ev.clone()).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn run_manager(
    rt: &tokio::runtime::Runtime,
    m: &ListenerManager,
    threads: usize,
    per_thread: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..threads)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    let ev = event();
                    for _ in 0..per_thread {
                        let _ = std::hint::black_box(m.process("bench", ev.clone()).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
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

/// One throughput row: (runtime index, threads, calls per thread) -> wall time.
type Run<'a> = dyn Fn(usize, usize, u64) -> Duration + 'a;

fn main() {
    let rts = [Arc::new(runtime(1)), Arc::new(runtime(2))];
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let report = std::env::args().any(|a| a == "--bench");

    let ours = stacks::ours();
    let bare = noop();
    let managers: Vec<ListenerManager> = rts
        .iter()
        .map(|rt| {
            let m = ListenerManager::new(ManagerConfig::named("bench")).unwrap();
            m.register(Listener::new("bench", noop()), ListenerConfig::default())
                .unwrap();
            rt.block_on(m.start()).unwrap();
            m
        })
        .collect();

    let mut group = criterion.benchmark_group("contention");
    for (i, threads) in [1usize, 2].into_iter().enumerate() {
        let rt = &rts[i];
        group.bench_function(format!("full stack, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| run_stack(rt, &ours, threads, iters.div_ceil(threads as u64)))
        });
        group.bench_function(format!("manager.process, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| {
                run_manager(rt, &managers[i], threads, iters.div_ceil(threads as u64))
            })
        });
    }
    group.finish();
    criterion.final_summary();

    if report {
        let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("\nThroughput, millions of calls/s ({machine} cores; median of 7 runs of 400k calls per thread)");
        println!("| stack | 1 thread | 2 threads | 2 / 1 |\n|---|---:|---:|---:|");
        let per = 400_000;
        let rows: [(&str, Box<Run>); 3] = [
            (
                "bare no-op service",
                Box::new(|i, t, n| run_stack(&rts[i], &bare, t, n)),
            ),
            (
                "full stack (by hand, histograms on)",
                Box::new(|i, t, n| run_stack(&rts[i], &ours, t, n)),
            ),
            (
                "full stack through manager.process",
                Box::new(|i, t, n| run_manager(&rts[i], &managers[i], t, n)),
            ),
        ];
        for (name, run) in rows.iter() {
            let one = throughput(7, 1, per, |t, n| run(0, t, n));
            let two = throughput(7, 2, per, |t, n| run(1, t, n));
            println!("| {name} | {one:.2} | {two:.2} | {:.2}x |", two / one);
        }
    }
}
