//! Durable dead-letter appends per second into the embedded redb store: one appender and 64 concurrent
//! appenders, with group commit (many letters, one transaction and one fsync) and with one transaction per
//! letter, in the same run. Every append counted here has returned, so its letter is on disk.
//! `cargo bench --bench dead_letter_store`.
//!
//! Rows are measured in interleaved rounds (each round times every row once, in turn), and each row's
//! figure is the median of its rounds, so drift of the machine hits every row alike.

use std::time::Instant;

use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tower_listener::dead_letter::DeadLetterStore;
use tower_listener::{DeadLetter, DeadLetterReason, Error, Event, RedbConfig, RedbStore};

const ROUNDS: usize = 5;

struct Row {
    name: &'static str,
    appenders: usize,
    per_appender: usize,
    config: RedbConfig,
    rates: Vec<f64>,
}

fn letter(n: usize) -> DeadLetter<Event> {
    let event = Event::new(
        format!("order-{n}"),
        "order.created",
        json!({"order": n, "customer": "c-42", "lines": [{"sku": "A-7", "qty": 2}], "total": 1999}),
    );
    DeadLetter::new(
        event,
        Error::handler(std::io::Error::other("payment provider unavailable")),
        "orders",
        4,
        DeadLetterReason::Exhausted,
    )
}

/// Appends `appenders × per_appender` letters into a fresh store; returns letters per second.
fn measure(rt: &Runtime, dir: &std::path::Path, round: usize, row: &Row) -> f64 {
    let path = dir.join(format!(
        "{}-{round}.redb",
        row.name.replace([' ', ','], "-")
    ));
    rt.block_on(async {
        let store = RedbStore::open_with(&path, row.config)
            .await
            .expect("opens");
        // Warm the file (table creation, first pages) outside the timing.
        DeadLetterStore::<Value>::append(&store, letter(0))
            .await
            .expect("appends");
        let started = Instant::now();
        let tasks: Vec<_> = (0..row.appenders)
            .map(|a| {
                let store = store.clone();
                let per = row.per_appender;
                tokio::spawn(async move {
                    for i in 0..per {
                        DeadLetterStore::<Value>::append(&store, letter(a * per + i))
                            .await
                            .expect("appends");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("appender");
        }
        let elapsed = started.elapsed();
        (row.appenders * row.per_appender) as f64 / elapsed.as_secs_f64()
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery: nothing to list
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory on the disk");
    let group = RedbConfig::default();
    let single = RedbConfig {
        max_batch: 1,
        ..RedbConfig::default()
    };
    let mut rows = vec![
        Row {
            name: "one txn per letter, 1 appender",
            appenders: 1,
            per_appender: 200,
            config: single,
            rates: vec![],
        },
        Row {
            name: "group commit, 1 appender",
            appenders: 1,
            per_appender: 200,
            config: group,
            rates: vec![],
        },
        Row {
            name: "one txn per letter, 64 appenders",
            appenders: 64,
            per_appender: 4,
            config: single,
            rates: vec![],
        },
        Row {
            name: "group commit, 64 appenders",
            appenders: 64,
            per_appender: 40,
            config: group,
            rates: vec![],
        },
    ];
    for round in 0..ROUNDS {
        for row in rows.iter_mut() {
            let rate = measure(&rt, dir.path(), round, row);
            row.rates.push(rate);
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nDurable dead-letter appends into redb ({cores} cores; median of {ROUNDS} interleaved rounds; \
         each append returned only once its letter was committed with an fsync)"
    );
    println!("| case | letters/s | min–max | ratio to one txn per letter, same appenders |");
    println!("|---|---:|---:|---:|");
    let baseline = |appenders: usize| {
        rows.iter()
            .find(|r| r.appenders == appenders && r.config.max_batch == 1)
            .map_or(1.0, |r| median(&r.rates))
    };
    for row in &rows {
        let (lo, hi) = row
            .rates
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "| {} | {:.0} | {:.0}–{:.0} | {:.2}x |",
            row.name,
            median(&row.rates),
            lo,
            hi,
            median(&row.rates) / baseline(row.appenders)
        );
    }
}
