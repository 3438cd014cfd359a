//! The conformance suite every source backend passes: each row of the settlement table, max deliveries,
//! progress, stop, an open breaker pausing the pump, and two consumers sharing the work. A backend
//! implements [`Broker`]; its test file calls every row. Real time, short delays; where a broker cannot
//! meet a delay exactly, the assertion widens by its declared nak granularity instead of skipping.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tower_listener::source::{Capabilities, Source};
use tower_listener::{
    CircuitConfig, ConsumeConfig, DeadLetter, DeadLetterConfig, DeadLetterQueue, DeadLetterReason,
    DeadLetterSink, Error, Event, LimitMode, ListenerConfig, ListenerManager, ManagerConfig,
    RetryPolicy, SinkFuture,
};

/// A broker under test: one fresh stream and consumer per test.
#[allow(async_fn_in_trait)]
pub trait Broker: Sized {
    type Source: Source<Value>;
    /// Another consumer instance on this test's stream and durable consumer.
    async fn source(&self) -> Self::Source;
    /// Publishes an event (as CloudEvents JSON where the broker carries bytes).
    async fn publish(&self, event: &Event);
    /// Publishes bytes that are not an event.
    async fn publish_raw(&self, payload: &[u8]);
    /// Deliveries the broker has made to the consumer so far (redeliveries included).
    async fn deliveries(&self) -> u64;
    /// Messages published and not yet settled for good (acked or termed).
    async fn unsettled(&self) -> u64;
    /// The ack wait the consumer was made with.
    fn ack_wait(&self) -> Duration;
    fn capabilities(&self) -> Capabilities;
}

/// Polls `check` every 20 ms until it holds, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sink that refuses its first `refusals` letters, then keeps them in a queue.
#[derive(Clone)]
pub struct Refusing {
    refusals: Arc<AtomicUsize>,
    pub queue: DeadLetterQueue<Event>,
}

impl Refusing {
    pub fn new(refusals: usize) -> Self {
        Refusing {
            refusals: Arc::new(AtomicUsize::new(refusals)),
            queue: DeadLetterQueue::new(1000),
        }
    }

    fn refuse(&self) -> bool {
        self.refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl DeadLetterSink<Event> for Refusing {
    fn send(&self, letter: DeadLetter<Event>) -> SinkFuture {
        if self.refuse() {
            return Box::pin(std::future::ready(Err("disk full".into())));
        }
        self.queue.send(letter)
    }
}

/// The future of a [`Handler`]'s calls.
pub type HandlerFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// What a [`Handler`] registers as.
pub trait HandlerService:
    tower::Service<Event, Response = (), Error = Error, Future = HandlerFuture> + Clone + Send + 'static
{
}

impl<S> HandlerService for S where
    S: tower::Service<Event, Response = (), Error = Error, Future = HandlerFuture>
        + Clone
        + Send
        + 'static
{
}

/// A handler that records the time of each call per event id and does what the event's type says:
/// "ok", "fail", "permanent", "slow" (sleeps `ms` then succeeds), "hang", "flaky" (fails its first
/// `fail` calls).
#[derive(Clone, Default)]
pub struct Handler {
    calls: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl Handler {
    pub fn calls(&self, id: &str) -> Vec<Instant> {
        self.calls
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.calls.lock().unwrap().values().map(Vec::len).sum()
    }

    pub fn ids(&self) -> HashMap<String, usize> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(id, calls)| (id.clone(), calls.len()))
            .collect()
    }

    pub fn listener(&self, id: &str) -> tower_listener::Listener<impl HandlerService> {
        let calls = self.calls.clone();
        tower_listener::listener_fn(id, move |event: Event| {
            let n = {
                let mut calls = calls.lock().unwrap();
                let seen = calls.entry(event.id().to_owned()).or_default();
                seen.push(Instant::now());
                seen.len()
            };
            Box::pin(async move {
                let data = event.data();
                match event.event_type() {
                    "ok" => Ok(()),
                    "fail" => Err(Error::handler(std::io::Error::other("dependency down"))),
                    "permanent" => Err(Error::permanent(std::io::Error::other("invalid order"))),
                    "slow" => {
                        tokio::time::sleep(Duration::from_millis(data["ms"].as_u64().unwrap_or(0)))
                            .await;
                        Ok(())
                    }
                    "hang" => std::future::pending().await,
                    "flaky" if n as u64 <= data["fail"].as_u64().unwrap_or(0) => {
                        Err(Error::handler(std::io::Error::other("flaky")))
                    }
                    "flaky" => Ok(()),
                    other => Err(Error::permanent(std::io::Error::other(format!(
                        "unknown kind {other}"
                    )))),
                }
            }) as HandlerFuture
        })
    }
}

pub fn event(id: &str, kind: &str, data: Value) -> Event {
    Event::new(id, kind, data)
}

/// A running manager with one listener "orders" over `handler`, dead letters into `sink`.
pub async fn manager(handler: &Handler, config: ListenerConfig) -> ListenerManager {
    let manager = ListenerManager::new(ManagerConfig::named("conformance")).unwrap();
    manager
        .register(handler.listener("orders"), config)
        .unwrap();
    manager.start().await.unwrap();
    manager
}

fn no_retry(sink: impl DeadLetterSink<Event>) -> ListenerConfig {
    ListenerConfig {
        retry_policy: RetryPolicy::never(),
        dead_letter: DeadLetterConfig::to_sink(sink),
        ..Default::default()
    }
}

fn short(delays: ConsumeConfig) -> ConsumeConfig {
    let mut config = delays;
    config.delays.not_stored = Duration::from_millis(300);
    config.delays.overloaded = Duration::from_millis(100);
    config.delays.circuit_open = Duration::from_millis(300);
    config
}

/// Slack for the time a redelivery takes to be pulled and run, beyond the broker's granularity.
fn slack<B: Broker>(broker: &B) -> Duration {
    broker.capabilities().nak_granularity + Duration::from_millis(1500)
}

/// succeeded → ack.
pub async fn succeeded_is_acked<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let manager = manager(&handler, no_retry(queue.clone())).await;
    manager
        .consume(
            "orders",
            broker.source().await,
            short(ConsumeConfig::default()),
        )
        .unwrap();
    for i in 0..20 {
        broker
            .publish(&event(&format!("ok-{i}"), "ok", json!({})))
            .await;
    }
    eventually(Duration::from_secs(10), "all acked", || async {
        manager.listener_stats("orders").unwrap().source_acks == 20
    })
    .await;
    eventually(Duration::from_secs(5), "nothing unsettled", || async {
        broker.unsettled().await == 0
    })
    .await;
    assert_eq!(broker.deliveries().await, 20, "each delivered once");
    assert_eq!(handler.total(), 20);
    assert!(queue.is_empty());
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// failed and stored → term; the letter keeps where it came from.
pub async fn a_stored_failure_is_termed<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let manager = manager(&handler, no_retry(queue.clone())).await;
    manager
        .consume(
            "orders",
            broker.source().await,
            short(ConsumeConfig::default()),
        )
        .unwrap();
    broker.publish(&event("bad", "permanent", json!({}))).await;
    broker.publish(&event("down", "fail", json!({}))).await;
    eventually(Duration::from_secs(10), "both termed", || async {
        manager.listener_stats("orders").unwrap().source_terms == 2
    })
    .await;
    let letters = queue.list();
    assert_eq!(letters.len(), 2);
    let reasons: Vec<_> = letters.iter().map(|l| l.reason).collect();
    assert!(
        reasons.contains(&DeadLetterReason::Permanent),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&DeadLetterReason::Exhausted),
        "{reasons:?}"
    );
    for letter in &letters {
        let origin = letter
            .origin
            .as_ref()
            .expect("the letter says where it came from");
        assert_eq!(origin.delivered, 1);
        assert!(!origin.sequence.is_empty());
    }
    // Termed means never again.
    tokio::time::sleep(slack(&broker)).await;
    assert_eq!(broker.deliveries().await, 2);
    assert_eq!(broker.unsettled().await, 0);
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// failed and not stored → nak with a delay, never acked; stored on a later delivery → term.
pub async fn an_unstored_failure_is_nakd_with_a_delay<B: Broker>(broker: B) {
    let handler = Handler::default();
    let sink = Refusing::new(1);
    let manager = manager(&handler, no_retry(sink.clone())).await;
    let config = short(ConsumeConfig::default());
    manager
        .consume("orders", broker.source().await, config)
        .unwrap();
    broker.publish(&event("e1", "fail", json!({}))).await;
    eventually(
        Duration::from_secs(15),
        "stored on the second delivery",
        || async { sink.queue.len() == 1 },
    )
    .await;
    eventually(Duration::from_secs(5), "termed", || async {
        broker.unsettled().await == 0
    })
    .await;
    let calls = handler.calls("e1");
    assert_eq!(calls.len(), 2, "run again after the nak");
    let gap = calls[1] - calls[0];
    assert!(gap >= config.delays.not_stored, "redelivered after {gap:?}");
    assert!(
        gap <= config.delays.not_stored + slack(&broker),
        "redelivered after {gap:?}"
    );
    let stats = manager.listener_stats("orders").unwrap();
    assert_eq!(
        (stats.source_naks, stats.source_terms, stats.source_acks),
        (1, 1, 0)
    );
    assert_eq!(stats.dead_letter_failures, 1);
    assert_eq!(stats.redeliveries, 1);
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// Rejected by a breaker that opened while the event was in flight → nak with its retry_after; the
/// pump pulls nothing while it is open; redelivered once it admits a probe.
pub async fn a_rejection_by_an_open_breaker_is_nakd_with_retry_after<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let breaker_open = Duration::from_millis(800);
    let config = ListenerConfig {
        retry_policy: RetryPolicy {
            max_retries: 1,
            initial_delay: Duration::from_millis(50),
            ..Default::default()
        },
        circuit: CircuitConfig {
            failure_threshold: 1,
            timeout: breaker_open,
            ..Default::default()
        },
        dead_letter: DeadLetterConfig::to_sink(queue.clone()),
        ..Default::default()
    };
    let manager = manager(&handler, config).await;
    manager
        .consume(
            "orders",
            broker.source().await,
            short(ConsumeConfig::default()),
        )
        .unwrap();
    // Fails once (the breaker opens), its retry is rejected: back to the broker, then it succeeds.
    broker
        .publish(&event("e1", "flaky", json!({"fail": 1})))
        .await;
    eventually(
        Duration::from_secs(15),
        "acked after the breaker closed",
        || async { manager.listener_stats("orders").unwrap().source_acks == 1 },
    )
    .await;
    let calls = handler.calls("e1");
    assert_eq!(calls.len(), 2);
    // Not redelivered before the breaker admitted a probe (its retry_after, less the retry's delay).
    let gap = calls[1] - calls[0];
    assert!(
        gap >= breaker_open - Duration::from_millis(100),
        "after {gap:?}"
    );
    assert!(gap <= breaker_open + slack(&broker), "after {gap:?}");
    let stats = manager.listener_stats("orders").unwrap();
    assert_eq!((stats.source_naks, stats.source_terms), (1, 0));
    assert!(
        queue.is_empty(),
        "a rejection is not a failure: nothing dead-lettered"
    );
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// Rejected as overloaded → nak with a short delay; every event ends acked.
pub async fn an_overloaded_rejection_is_nakd_briefly<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let config = ListenerConfig {
        concurrency: 1,
        concurrency_mode: LimitMode::Reject,
        ..no_retry(queue.clone())
    };
    let manager = manager(&handler, config).await;
    let mut consume = short(ConsumeConfig::default());
    // Four pulled for one slot: three are rejected and come back, again and again while the slot is
    // busy; those rounds are deliveries too, so max_deliveries is set out of the way.
    consume.max_in_flight = Some(4);
    consume.max_deliveries = 1000;
    manager
        .consume("orders", broker.source().await, consume)
        .unwrap();
    for i in 0..4 {
        broker
            .publish(&event(&format!("s-{i}"), "slow", json!({"ms": 150})))
            .await;
    }
    eventually(Duration::from_secs(20), "all acked", || async {
        manager.listener_stats("orders").unwrap().source_acks == 4
    })
    .await;
    let stats = manager.listener_stats("orders").unwrap();
    assert!(stats.source_naks >= 1, "some were rejected: {stats:?}");
    assert_eq!(stats.source_terms, 0);
    assert!(queue.is_empty());
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// A payload that does not decode → dead-lettered as malformed (raw bytes kept), then term; never run,
/// never redelivered.
pub async fn a_malformed_payload_is_dead_lettered_once_and_termed<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let manager = manager(&handler, no_retry(queue.clone())).await;
    manager
        .consume(
            "orders",
            broker.source().await,
            short(ConsumeConfig::default()),
        )
        .unwrap();
    broker.publish_raw(b"{\"id\": 7, not json at all").await;
    eventually(Duration::from_secs(10), "termed", || async {
        manager.listener_stats("orders").unwrap().source_terms == 1
    })
    .await;
    let malformed = queue.malformed();
    assert_eq!(malformed.len(), 1);
    assert_eq!(malformed[0].payload, b"{\"id\": 7, not json at all");
    assert_eq!(malformed[0].origin.as_ref().unwrap().delivered, 1);
    assert_eq!(handler.total(), 0, "never run");
    tokio::time::sleep(slack(&broker)).await;
    assert_eq!(broker.deliveries().await, 1, "never redelivered");
    let stats = manager.listener_stats("orders").unwrap();
    assert_eq!((stats.permanent_failures, stats.dead_letter_events), (1, 1));
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// Still running when the manager stops past its deadline → nak without delay (another instance takes
/// it at once), not dead-lettered.
pub async fn a_stop_past_its_deadline_hands_the_event_back<B: Broker>(broker: B) {
    let first = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let a = manager(&first, no_retry(queue.clone())).await;
    a.consume(
        "orders",
        broker.source().await,
        short(ConsumeConfig::default()),
    )
    .unwrap();
    broker.publish(&event("long", "hang", json!({}))).await;
    eventually(Duration::from_secs(10), "running", || async {
        first.total() == 1
    })
    .await;
    let report = a.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!((report.drained, report.cancelled), (false, 1));
    assert!(queue.is_empty(), "handed back, not dead-lettered");
    assert_eq!(a.listener_stats("orders").unwrap().source_naks, 1);

    // Another instance takes it at once, long before the ack wait would have passed.
    let second = Handler::default();
    let handed_back = Instant::now();
    let b = ListenerManager::new(ManagerConfig::named("second")).unwrap();
    b.register(
        second.listener("orders"),
        no_retry(DeadLetterQueue::<Event>::new(10)),
    )
    .unwrap();
    b.start().await.unwrap();
    b.consume(
        "orders",
        broker.source().await,
        short(ConsumeConfig::default()),
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "redelivered to the other instance",
        || async { second.total() == 1 },
    )
    .await;
    let waited = second.calls("long")[0] - handed_back;
    assert!(waited < broker.ack_wait(), "took {waited:?}");
    b.stop(Duration::from_millis(100)).await.unwrap();
}

/// Still running at half the ack wait → progress; the broker does not redeliver it.
pub async fn a_long_event_sends_progress_and_is_not_redelivered<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let manager = manager(&handler, no_retry(queue.clone())).await;
    manager
        .consume(
            "orders",
            broker.source().await,
            short(ConsumeConfig::default()),
        )
        .unwrap();
    let runs_for = broker.ack_wait() * 2 + broker.ack_wait() / 2;
    broker
        .publish(&event(
            "long",
            "slow",
            json!({"ms": runs_for.as_millis() as u64}),
        ))
        .await;
    eventually(runs_for + Duration::from_secs(10), "acked", || async {
        manager.listener_stats("orders").unwrap().source_acks == 1
    })
    .await;
    assert_eq!(handler.total(), 1, "not redelivered while it ran");
    assert_eq!(broker.deliveries().await, 1);
    let progress = manager.listener_stats("orders").unwrap().source_progress;
    assert!(progress >= 3, "progress every half ack wait: {progress}");
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// Delivered more than `max_deliveries` times → dead-lettered as redelivered without running, then term.
pub async fn past_max_deliveries_it_is_dead_lettered_without_running<B: Broker>(broker: B) {
    let handler = Handler::default();
    let sink = Refusing::new(2);
    let manager = manager(&handler, no_retry(sink.clone())).await;
    let mut config = short(ConsumeConfig::default());
    config.max_deliveries = 2;
    manager
        .consume("orders", broker.source().await, config)
        .unwrap();
    broker.publish(&event("e1", "fail", json!({}))).await;
    eventually(Duration::from_secs(20), "dead-lettered", || async {
        sink.queue.len() == 1
    })
    .await;
    let letter = &sink.queue.list()[0];
    assert_eq!(letter.reason, DeadLetterReason::Redelivered);
    assert_eq!(letter.origin.as_ref().unwrap().delivered, 3);
    assert_eq!(
        handler.calls("e1").len(),
        2,
        "the third delivery did not run"
    );
    eventually(Duration::from_secs(5), "termed", || async {
        broker.unsettled().await == 0
    })
    .await;
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// An open breaker pauses pulling: nothing is delivered while it is open; all of it after.
pub async fn an_open_breaker_pauses_pulling<B: Broker>(broker: B) {
    let handler = Handler::default();
    let queue = DeadLetterQueue::<Event>::new(100);
    let manager = manager(&handler, no_retry(queue.clone())).await;
    manager.circuit_breaker("orders").unwrap().force_open();
    manager
        .consume(
            "orders",
            broker.source().await,
            short(ConsumeConfig::default()),
        )
        .unwrap();
    for i in 0..5 {
        broker
            .publish(&event(&format!("p-{i}"), "ok", json!({})))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(broker.deliveries().await, 0, "nothing pulled while open");
    assert_eq!(broker.unsettled().await, 5);
    manager.circuit_breaker("orders").unwrap().reset();
    eventually(Duration::from_secs(10), "all acked after", || async {
        manager.listener_stats("orders").unwrap().source_acks == 5
    })
    .await;
    assert_eq!(handler.total(), 5);
    assert!(queue.is_empty());
    manager.stop(Duration::from_secs(5)).await.unwrap();
}

/// Two instances on one consumer share the work: each event is handled once, by one of them.
pub async fn two_consumers_share_the_work<B: Broker>(broker: B) {
    let (one, two) = (Handler::default(), Handler::default());
    let queue = DeadLetterQueue::<Event>::new(100);
    let a = manager(&one, no_retry(queue.clone())).await;
    let b = manager(&two, no_retry(queue.clone())).await;
    a.consume(
        "orders",
        broker.source().await,
        short(ConsumeConfig::default()),
    )
    .unwrap();
    b.consume(
        "orders",
        broker.source().await,
        short(ConsumeConfig::default()),
    )
    .unwrap();
    for i in 0..200 {
        broker
            .publish(&event(&format!("w-{i}"), "slow", json!({"ms": 2})))
            .await;
    }
    eventually(Duration::from_secs(30), "all acked", || async {
        a.listener_stats("orders").unwrap().source_acks
            + b.listener_stats("orders").unwrap().source_acks
            == 200
    })
    .await;
    let (x, y) = (one.ids(), two.ids());
    assert!(
        !x.is_empty() && !y.is_empty(),
        "both took some: {} and {}",
        x.len(),
        y.len()
    );
    for i in 0..200 {
        let id = format!("w-{i}");
        let runs = x.get(&id).copied().unwrap_or(0) + y.get(&id).copied().unwrap_or(0);
        assert_eq!(runs, 1, "{id}");
    }
    assert!(queue.is_empty());
    a.stop(Duration::from_secs(5)).await.unwrap();
    b.stop(Duration::from_secs(5)).await.unwrap();
}

/// Every row, one after another, each on a fresh broker from `fresh`.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn succeeded_is_acked() {
            if let Some(b) = $fresh("ack", 30).await {
                conformance::succeeded_is_acked(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_stored_failure_is_termed() {
            if let Some(b) = $fresh("term", 30).await {
                conformance::a_stored_failure_is_termed(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_unstored_failure_is_nakd_with_a_delay() {
            if let Some(b) = $fresh("notstored", 30).await {
                conformance::an_unstored_failure_is_nakd_with_a_delay(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rejection_by_an_open_breaker_is_nakd_with_retry_after() {
            if let Some(b) = $fresh("open", 30).await {
                conformance::a_rejection_by_an_open_breaker_is_nakd_with_retry_after(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_overloaded_rejection_is_nakd_briefly() {
            if let Some(b) = $fresh("overload", 30).await {
                conformance::an_overloaded_rejection_is_nakd_briefly(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_malformed_payload_is_dead_lettered_once_and_termed() {
            if let Some(b) = $fresh("malformed", 30).await {
                conformance::a_malformed_payload_is_dead_lettered_once_and_termed(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_stop_past_its_deadline_hands_the_event_back() {
            if let Some(b) = $fresh("stop", 30).await {
                conformance::a_stop_past_its_deadline_hands_the_event_back(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_long_event_sends_progress_and_is_not_redelivered() {
            if let Some(b) = $fresh("progress", 1).await {
                conformance::a_long_event_sends_progress_and_is_not_redelivered(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn past_max_deliveries_it_is_dead_lettered_without_running() {
            if let Some(b) = $fresh("maxdeliver", 30).await {
                conformance::past_max_deliveries_it_is_dead_lettered_without_running(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_open_breaker_pauses_pulling() {
            if let Some(b) = $fresh("pause", 30).await {
                conformance::an_open_breaker_pauses_pulling(b).await
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_consumers_share_the_work() {
            if let Some(b) = $fresh("share", 30).await {
                conformance::two_consumers_share_the_work(b).await
            }
        }
    };
}
