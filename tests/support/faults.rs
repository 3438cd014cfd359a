//! Fault injection: a listener whose behaviour on each attempt is drawn from a seed (succeed, fail, panic,
//! hang past the timeout, be slow) or follows a simulated dependency outage, and that records what it did.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_listener::{Error, Event, Listener};

use super::ScriptedFailure;

/// What one attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Succeed,
    Fail,
    Panic,
    /// Never completes: only the timeout (or a shutdown) ends it.
    Hang,
    /// Succeeds after this long.
    Slow(Duration),
}

/// Probabilities (in percent) of each fault, and an optional outage during which every attempt fails.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub seed: u64,
    pub fail: u64,
    pub panic: u64,
    pub hang: u64,
    pub slow: u64,
    pub slow_for: Duration,
    /// Attempts started inside this window (of tokio time since the plan's start) fail.
    pub outage: Option<(Duration, Duration)>,
}

impl FaultPlan {
    /// A plan drawn from `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let outage = rng.bool().then(|| {
            let start = Duration::from_millis(rng.u64(0..2_000));
            (start, start + Duration::from_millis(rng.u64(100..1_500)))
        });
        FaultPlan {
            seed,
            fail: rng.u64(0..60),
            panic: rng.u64(0..5),
            hang: rng.u64(0..10),
            slow: rng.u64(0..30),
            slow_for: Duration::from_millis(rng.u64(1..300)),
            outage,
        }
    }

    /// The fault for attempt `attempt` of the event `id`, started `since_start` after the plan began.
    pub fn fault(&self, id: &str, attempt: u64, since_start: Duration) -> Fault {
        if let Some((from, to)) = self.outage {
            if since_start >= from && since_start < to {
                return Fault::Fail;
            }
        }
        let mut h = self.seed ^ attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        let roll = fastrand::Rng::with_seed(h).u64(0..100);
        let mut edge = self.panic;
        if roll < edge {
            return Fault::Panic;
        }
        edge += self.hang;
        if roll < edge {
            return Fault::Hang;
        }
        edge += self.fail;
        if roll < edge {
            return Fault::Fail;
        }
        edge += self.slow;
        if roll < edge {
            return Fault::Slow(self.slow_for);
        }
        Fault::Succeed
    }
}

/// What a faulty listener did, shared with the test.
#[derive(Default)]
pub struct Record {
    /// Handler successes per event id.
    pub succeeded: Mutex<HashMap<String, u32>>,
    attempts: Mutex<HashMap<String, u64>>,
    /// When set, every attempt succeeds (the dependency has recovered).
    pub healthy: AtomicBool,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
}

impl Record {
    pub fn successes(&self, id: &str) -> u32 {
        self.succeeded.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

pub type Fut = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

struct Running(Arc<Record>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A listener that follows `plan`. Events of type "hold" sleep for their payload (ms) and succeed, whatever
/// the plan (for bursts that check the concurrency limit).
pub fn faulty(
    id: &str,
    plan: FaultPlan,
) -> (
    Listener<
        impl tower::Service<Event, Response = (), Error = Error, Future = Fut>
            + Clone
            + Send
            + Sync
            + 'static,
    >,
    Arc<Record>,
) {
    let record = Arc::new(Record::default());
    let rec = record.clone();
    let started = tokio::time::Instant::now();
    let listener = tower_listener::listener_fn(id, move |event: Event| {
        let rec = rec.clone();
        let plan = plan.clone();
        let attempt = {
            let mut attempts = rec.attempts.lock().unwrap();
            let n = attempts.entry(event.id().to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        Box::pin(async move {
            let now_running = rec.running.fetch_add(1, Ordering::SeqCst) + 1;
            rec.max_running.fetch_max(now_running, Ordering::SeqCst);
            let _running = Running(rec.clone());
            let fault = if event.event_type() == "hold" {
                Fault::Slow(Duration::from_millis(event.data().as_u64().unwrap_or(0)))
            } else if rec.healthy.load(Ordering::SeqCst) {
                Fault::Succeed
            } else {
                plan.fault(event.id(), attempt, started.elapsed())
            };
            match fault {
                Fault::Succeed => {}
                Fault::Fail => return Err(Error::handler(ScriptedFailure)),
                Fault::Panic => panic!("injected panic"),
                Fault::Hang => std::future::pending::<()>().await,
                Fault::Slow(d) => tokio::time::sleep(d).await,
            }
            *rec.succeeded
                .lock()
                .unwrap()
                .entry(event.id().to_owned())
                .or_insert(0) += 1;
            Ok(())
        }) as Fut
    });
    (listener, record)
}
