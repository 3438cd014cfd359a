//! A bare loop of `manager.process` calls for profilers: no harness, nothing but the loop.
//!
//! Instructions per event under callgrind (repeatable, unlike time on a shared machine): run it with two
//! event counts and divide the difference, so start-up work cancels out.
//!
//! ```sh
//! cargo build --release --example profile_manager   # as the benches and a dependent service build
//! valgrind --tool=callgrind target/release/examples/profile_manager 100000
//! valgrind --tool=callgrind target/release/examples/profile_manager 300000
//! # (second total - first total) / 200000
//! perf record -g target/release/examples/profile_manager 3000000   # where the time goes
//! ```
//!
//! Arguments: the number of events (default 3,000,000), then a mode: `wait` gives the listener a handler
//! that waits once per event instead of one that succeeds at once; `hand` runs the same layers assembled
//! by hand and `tower` the plain tower stack of the benches (with its sharded histogram), for comparison.
//! Built with `--features tsc-clock`, `PROFILE_TSC=1` makes the crate measure with the time-stamp counter.

use std::future::ready;
use std::time::Instant;

use tower::{Service, ServiceExt};
use tower_listener::{Error, Event, Listener, ListenerConfig, ListenerManager, ManagerConfig};

#[path = "../benches/common/mod.rs"]
mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|n| n.parse().expect("the number of events"))
        .unwrap_or(3_000_000);
    let mode = args.next().unwrap_or_default();
    // PROFILE_TSC=1 (with the `tsc-clock` feature): the crate measures with the time-stamp counter.
    #[cfg(feature = "tsc-clock")]
    tower_listener::clock::use_tsc(std::env::var_os("PROFILE_TSC").is_some());
    let waits = mode == "wait";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let per_event = if mode == "hand" {
        runtime.block_on(drive(events, common::stacks::ours()))
    } else if mode == "tower" {
        runtime.block_on(drive(events, common::stacks::plain_tower()))
    } else if waits {
        runtime.block_on(process(
            events,
            tower::service_fn(|_: Event| async {
                tokio::task::yield_now().await;
                Ok::<(), Error>(())
            }),
        ))
    } else {
        runtime.block_on(process(
            events,
            tower::service_fn(|_: Event| ready(Ok::<(), Error>(()))),
        ))
    };
    println!("{events} events: {per_event:.1} ns per event");
}

/// Registers `handler` and processes `events` events through it; returns the nanoseconds per event.
async fn process<S>(events: u64, handler: S) -> f64
where
    S: Service<Event, Response = (), Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let manager = ListenerManager::new(ManagerConfig::named("profile")).expect("a manager");
    manager
        .register(Listener::new("profile", handler), ListenerConfig::default())
        .expect("registered");
    manager.start().await.expect("started");
    let event = Event::new("profile-1", "profile.event", serde_json::json!({ "n": 1 }));
    if std::env::var_os("PROFILE_SIZES").is_some() {
        let future = manager.process("profile", event.clone());
        println!("process future: {} bytes", std::mem::size_of_val(&future));
    }
    let started = Instant::now();
    for _ in 0..events {
        let _ = std::hint::black_box(manager.process("profile", event.clone()).await);
    }
    started.elapsed().as_nanos() as f64 / events as f64
}

/// Drives `stack` directly (ready, then call) `events` times; returns the nanoseconds per event.
async fn drive<S>(events: u64, mut stack: S) -> f64
where
    S: Service<Event>,
    S::Error: std::fmt::Debug,
{
    let event = Event::new("profile-1", "profile.event", serde_json::json!({ "n": 1 }));
    let started = Instant::now();
    for _ in 0..events {
        let ready = stack.ready().await.expect("ready");
        let _ = std::hint::black_box(ready.call(event.clone()).await);
    }
    started.elapsed().as_nanos() as f64 / events as f64
}
