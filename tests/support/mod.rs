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

/// What a handler returns for a payload it cannot read (for `permanent_when` tests).
#[derive(Debug, thiserror::Error)]
#[error("payload cannot be read")]
pub struct Unreadable;

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

/// The runtime of a test's child process (crash and kill tests re-run the test binary as a child).
pub fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Lets spawned tasks run up to their next await, without advancing paused time.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

pub mod conformance;
pub mod faults;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

/// Whether the broker tests must fail instead of skipping when their broker is unreachable.
pub fn brokers_required() -> bool {
    std::env::var("TOWER_LISTENER_BROKERS").is_ok_and(|v| v == "required")
}
pub mod stores;

/// Events for the manager tests: the event type says what the handler does.
pub mod events {
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tower_listener::{CircuitConfig, Error, Event, Listener, ListenerConfig, RetryPolicy};

    use super::{ScriptedFailure, Unreadable};

    /// `kind` is one of "ok", "fail", "panic", "hang", "slow" (sleeps `data` ms, then succeeds),
    /// "flaky" (fails the first `data` attempts of this event id, then succeeds), "permanent" (fails with
    /// `Error::permanent`), "unreadable" (fails with the handler error `Unreadable`).
    pub fn event(id: impl Into<String>, kind: &str, data: u64) -> Event {
        Event::new(id, kind, serde_json::json!(data))
    }

    /// Redrives every letter the manager keeps in memory for listener `id`.
    pub async fn redrive_all(
        manager: &tower_listener::ListenerManager,
        id: &str,
    ) -> tower_listener::RedriveReport {
        let queue = manager.dead_letters(id).unwrap().unwrap();
        manager
            .redrive(
                id,
                &queue,
                tower_listener::dead_letter::LetterFilter::all(),
                usize::MAX,
            )
            .await
            .unwrap()
    }

    /// A listener's config without retries, whose breaker opens after `failures` failures.
    pub fn opens_after(failures: u32) -> ListenerConfig {
        ListenerConfig {
            retry_policy: RetryPolicy::never(),
            circuit: CircuitConfig {
                failure_threshold: failures,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub type Fut = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    /// Counts handler calls per listener.
    #[derive(Clone, Default)]
    pub struct Calls(Arc<AtomicUsize>);

    impl Calls {
        pub fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A listener that does what each event's type says.
    pub fn scripted(
        id: &str,
    ) -> (
        Listener<
            impl tower::Service<Event, Response = (), Error = Error, Future = Fut>
                + Clone
                + Send
                + Sync
                + 'static,
        >,
        Calls,
    ) {
        let calls = Calls::default();
        let seen = calls.clone();
        let attempts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let listener = tower_listener::listener_fn(id, move |event: Event| {
            seen.0.fetch_add(1, Ordering::SeqCst);
            let attempts = attempts.clone();
            Box::pin(async move {
                let data = event.data().as_u64().unwrap_or(0);
                match event.event_type() {
                    "ok" => Ok(()),
                    "fail" => Err(Error::handler(ScriptedFailure)),
                    "permanent" => Err(Error::permanent(ScriptedFailure)),
                    "unreadable" => Err(Error::handler(Unreadable)),
                    "panic" => panic!("scripted panic"),
                    "hang" => std::future::pending().await,
                    "slow" => {
                        tokio::time::sleep(Duration::from_millis(data)).await;
                        Ok(())
                    }
                    "flaky" => {
                        let n = {
                            let mut map = attempts.lock().unwrap();
                            let n = map.entry(event.id().to_owned()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if n <= data {
                            Err(Error::handler(ScriptedFailure))
                        } else {
                            Ok(())
                        }
                    }
                    other => panic!("unknown event kind {other}"),
                }
            }) as Fut
        });
        (listener, calls)
    }
}

/// Keeps the panics that tests inject on purpose ("scripted panic", "injected panic", "… panics") out of
/// the test output; any other panic is printed as usual.
pub fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let injected = message.contains("scripted panic")
                || message.contains("injected panic")
                || message.ends_with(" panics")
                || message.contains("a hook that panics");
            if !injected {
                default(info);
            }
        }));
    });
}

/// The broker fault tests' manager (`tests/nats_faults.rs`, `tests/redis_faults.rs`), started, with one
/// listener, "orders": each event takes 1 ms, then fails for good when its type is "fail" (dead-lettered
/// into `sink`) or reports its id through `handled`; up to `in_flight` at once, no retries, no breaker.
pub async fn orders_instance(
    name: &str,
    sink: impl tower_listener::DeadLetterSink<tower_listener::Event>,
    in_flight: usize,
    handled: impl Fn(&str) + Send + Sync + Clone + 'static,
) -> tower_listener::ListenerManager {
    use tower_listener::{
        CircuitConfig, DeadLetterConfig, Event, ListenerConfig, ListenerManager, ManagerConfig,
        RetryPolicy,
    };
    let manager = ListenerManager::new(ManagerConfig::named(name)).unwrap();
    manager
        .register(
            tower_listener::listener_fn("orders", move |event: Event| {
                let handled = handled.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if event.event_type() == "fail" {
                        return Err(Error::handler(std::io::Error::other("card declined")));
                    }
                    handled(event.id());
                    Ok(())
                }
            }),
            ListenerConfig {
                concurrency: in_flight,
                retry_policy: RetryPolicy::never(),
                circuit: CircuitConfig::disabled(),
                dead_letter: DeadLetterConfig::to_sink(sink),
                ..Default::default()
            },
        )
        .unwrap();
    manager.start().await.unwrap();
    manager
}

/// A broker server a fault test runs itself: `program` with `args` (given the port and the data
/// directory), on a free loopback port, with a temporary data directory it keeps across restarts.
pub struct ServerProcess {
    program: &'static str,
    args: fn(u16, &std::path::Path) -> Vec<std::ffi::OsString>,
    child: Option<std::process::Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts the server; `None` (after saying why) when its binary cannot start and brokers are not
    /// required.
    pub fn start(
        program: &'static str,
        args: fn(u16, &std::path::Path) -> Vec<std::ffi::OsString>,
    ) -> Option<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = ServerProcess {
            program,
            args,
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        server.run().then_some(server)
    }

    /// Starts the process (again, on the same port and data directory) and waits until it accepts
    /// connections; false (after saying why) when the binary cannot start and brokers are not required.
    pub fn run(&mut self) -> bool {
        let started = std::process::Command::new(self.program)
            .args((self.args)(self.port, self.dir.path()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match started {
            Ok(child) => {
                self.child = Some(child);
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{} did not start",
                        self.program
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                true
            }
            Err(e) => {
                assert!(
                    !brokers_required(),
                    "{} is required but cannot start: {e}",
                    self.program
                );
                eprintln!("skipped: cannot start {} ({e})", self.program);
                false
            }
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs this test binary's test `child_test` in a child process, with `env` set (the child's test does
/// nothing without it), and collects the ids it prints as `handled <id>`, one per line, until it exits.
pub fn spawn_child(
    child_test: &str,
    env: (&str, String),
) -> (std::process::Child, std::thread::JoinHandle<Vec<String>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // The test harness prints "test <child_test> ... " on the line of the first one.
            .filter_map(|line| line.rsplit_once("handled ").map(|(_, id)| id.to_owned()))
            .collect()
    });
    (child, lines)
}
