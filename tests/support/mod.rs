//! Test support: a scripted handler whose behaviour per call is given by the request itself.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{service_fn, Service};
use tower_listener::Error;

/// What the handler does with one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Call {
    Ok,
    Fail,
    Panic,
    /// Succeed after sleeping.
    Slow(Duration),
    /// Fail after sleeping.
    SlowFail(Duration),
    /// Return `Error::Overloaded` (as an inner limit would).
    Overloaded,
    /// Never complete.
    Hang,
}

/// Counts of what the handler saw.
#[derive(Clone, Default, Debug)]
pub struct Probe {
    calls: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Probe {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    /// Calls whose future was dropped before completing.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

struct Running {
    probe: Probe,
    done: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.probe.running.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.probe.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub type BoxFut = Pin<Box<dyn Future<Output = Result<&'static str, Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
#[error("scripted failure")]
pub struct ScriptedFailure;

/// A handler that does what each request says, and its probe.
pub fn handler() -> (
    impl Service<Call, Response = &'static str, Error = Error, Future = BoxFut> + Clone + Send + 'static,
    Probe,
) {
    let probe = Probe::default();
    let p = probe.clone();
    let svc = service_fn(move |call: Call| {
        let probe = p.clone();
        probe.calls.fetch_add(1, Ordering::SeqCst);
        probe.running.fetch_add(1, Ordering::SeqCst);
        let guard = Running { probe, done: false };
        Box::pin(async move {
            let mut guard = guard; // capture the whole guard, not just its field
            let result = match call {
                Call::Ok => Ok("ok"),
                Call::Fail => Err(Error::handler(ScriptedFailure)),
                Call::Panic => panic!("scripted panic"),
                Call::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok("slow")
                }
                Call::SlowFail(d) => {
                    tokio::time::sleep(d).await;
                    Err(Error::handler(ScriptedFailure))
                }
                Call::Overloaded => Err(Error::Overloaded),
                Call::Hang => std::future::pending().await,
            };
            guard.done = true;
            result
        }) as BoxFut
    });
    (svc, probe)
}

/// Lets spawned tasks run up to their next await, without advancing paused time.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}
