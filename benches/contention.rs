//! Throughput of the full stack driven by 1 and by 2 threads at once (each thread its own clone of the
//! service, all sharing one breaker, limit and metrics), by hand and through the manager.
//! `cargo bench --bench contention` (add `-- skip-criterion` for the interleaved table alone: a filter no
//! criterion bench matches).

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

/// Calls per thread that make one single-thread run of `run` last about `target`.
fn calibrate(run: &Run, target: Duration) -> u64 {
    let probe = 50_000;
    let took = run(1, probe).max(Duration::from_micros(1));
    let calls = probe as f64 * target.as_secs_f64() / took.as_secs_f64();
    (calls as u64).max(probe)
}

/// Millions of calls per second of one run.
fn rate(threads: usize, per_thread: u64, took: Duration) -> f64 {
    (threads as u64 * per_thread) as f64 / took.as_secs_f64() / 1e6
}

/// The median and the range of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
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
        contention_table(&[
            ("bare no-op service", &|t, n| run_stack(&bare, t, n)),
            ("full stack without metrics (no histograms)", &|t, n| {
                run_stack(&unrecorded, t, n)
            }),
            ("full stack (by hand, histograms on)", &|t, n| {
                run_stack(&ours, t, n)
            }),
            ("full stack through manager.process", &|t, n| {
                run_manager(&manager, t, n)
            }),
        ]);
    }
}

/// Rounds of the table; each runs every row with 1 thread, then with 2.
const ROUNDS: usize = 5;
/// How long a single-thread run of a row lasts (a 2-thread run does as many calls per thread).
const RUN_FOR: Duration = Duration::from_millis(250);

/// Measures every row in `ROUNDS` interleaved rounds (row by row, 1 thread then 2 threads each), with
/// runs long enough that starting and joining threads does not count, and prints the median rates and
/// the 2-thread/1-thread ratio with its range over the rounds.
fn contention_table(rows: &[(&str, &Run)]) {
    let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
    let calls: Vec<u64> = rows
        .iter()
        .map(|(_, run)| calibrate(*run, RUN_FOR))
        .collect();
    // rates[row][round] = (1 thread, 2 threads)
    let mut rates = vec![Vec::with_capacity(ROUNDS); rows.len()];
    for _ in 0..ROUNDS {
        for ((_, run), (&per, rates)) in rows.iter().zip(calls.iter().zip(rates.iter_mut())) {
            let one = rate(1, per, run(1, per));
            let two = rate(2, per, run(2, per));
            rates.push((one, two));
        }
    }
    println!(
        "\nThroughput, millions of calls/s ({machine} cores; one OS thread and current-thread runtime per \
         thread; {ROUNDS} interleaved rounds, each run about {} ms; median, and the range over the rounds)",
        RUN_FOR.as_millis()
    );
    println!("| stack | calls/thread/run | 1 thread | 2 threads | 2 / 1 | 2 / 1 range |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (((name, _), per), rates) in rows.iter().zip(&calls).zip(&rates) {
        let ones: Vec<f64> = rates.iter().map(|r| r.0).collect();
        let twos: Vec<f64> = rates.iter().map(|r| r.1).collect();
        let ratios: Vec<f64> = rates.iter().map(|(one, two)| two / one).collect();
        let (ratio, lo, hi) = spread(&ratios);
        println!(
            "| {name} | {per} | {:.2} | {:.2} | {ratio:.2}x | {lo:.2}x–{hi:.2}x |",
            spread(&ones).0,
            spread(&twos).0
        );
    }
}
