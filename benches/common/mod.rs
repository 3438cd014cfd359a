//! Shared bench helpers: drive a service in a tight loop on a tokio runtime, and print each result as a ratio
//! to a bare no-op service measured in the same run.
#![allow(dead_code)]

use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};
use tower_listener::{Error, Event};

/// A current-thread runtime: the benches measure per-call overhead, not scheduling.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn event() -> Event {
    Event::new("bench-1", "bench.event", serde_json::json!({ "n": 1 }))
}

/// The bare handler every ratio is taken against: succeeds at once.
pub fn noop() -> impl Service<Event, Response = (), Error = Error, Future = Ready<Result<(), Error>>>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_event: Event| ready(Ok::<(), Error>(())))
}

/// Runs `iters` calls of `svc` (ready, then call, then await) and returns the time they took.
pub async fn drive<S>(svc: &mut S, event: &Event, iters: u64) -> Duration
where
    S: Service<Event>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let ready = svc.ready().await.expect("ready");
        let _ = std::hint::black_box(ready.call(event.clone()).await);
    }
    start.elapsed()
}

/// Nanoseconds per call: the median of `rounds` rounds of `iters` calls, measured in this process.
pub fn ns_per_call(rounds: usize, iters: u64, mut round: impl FnMut(u64) -> Duration) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| round(iters).as_nanos() as f64 / iters as f64)
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// A case of a table: runs `iters` calls and returns the time they took.
pub type Case<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Measures `cases` round-robin: each round runs every case once for `iters` calls (starting from a
/// different case each round), so that the machine's drift hits every case alike. Returns, per case, its
/// nanoseconds per call in each round (round order).
pub fn interleaved(rounds: usize, iters: u64, cases: &mut [&mut Case<'_>]) -> Vec<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    for case in cases.iter_mut() {
        case(iters / 10); // warm up
    }
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            samples[i].push(cases[i](iters).as_nanos() as f64 / iters as f64);
        }
    }
    samples
}

/// The median, 25th and 75th percentiles of `samples`.
pub fn quartiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

/// Round by round, `b / a` (both measured in the same rounds): the median ratio and its range.
pub fn paired(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
    ratios.sort_by(|x, y| x.total_cmp(y));
    (
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
    )
}

/// A table of results with their ratio to the first row (the baseline).
pub struct Table {
    title: String,
    /// Name, samples (ns per call), note.
    rows: Vec<(String, Vec<f64>, String)>,
}

impl Table {
    pub fn new(title: &str) -> Self {
        Table {
            title: title.to_owned(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of `ns` nanoseconds per call, with a note.
    pub fn row(&mut self, name: &str, ns: f64, note: &str) {
        self.rows.push((name.to_owned(), vec![ns], note.to_owned()));
    }

    /// Adds a row measured in rounds: its median, with the quartiles as its spread.
    pub fn measured(&mut self, name: &str, samples: Vec<f64>, note: &str) {
        self.rows.push((name.to_owned(), samples, note.to_owned()));
    }

    pub fn print(&self) {
        let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
        let rounds = self.rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        if rounds > 1 {
            println!(
                "\n{} ({machine} cores; median of {rounds} interleaved rounds, p25–p75; ratio of medians to the first row)",
                self.title
            );
            println!("| case | ns/call | p25–p75 | ratio | note |\n|---|---:|---:|---:|---|");
        } else {
            println!(
                "\n{} ({machine} cores; median of rounds; ratio to the first row)",
                self.title
            );
            println!("| case | ns/call | ratio | note |\n|---|---:|---:|---|");
        }
        let base = self.rows.first().map_or(1.0, |r| quartiles(&r.1).0);
        for (name, samples, note) in &self.rows {
            let (median, p25, p75) = quartiles(samples);
            if rounds > 1 {
                println!(
                    "| {name} | {median:.1} | {p25:.1}–{p75:.1} | {:.2}x | {note} |",
                    median / base
                );
            } else {
                println!("| {name} | {median:.1} | {:.2}x | {note} |", median / base);
            }
        }
    }
}

pub mod stacks {
    //! The stacks the benches compare: ours (by hand and through the manager), plain tower, and
    //! tower-resilience, each with a latency histogram so all do the same work.

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use hdrhistogram::Histogram;
    use pin_project_lite::pin_project;
    use tower::{BoxError, Layer, Service, ServiceBuilder};
    use tower_listener::{
        CatchPanicLayer, CircuitBreakerLayer, CircuitConfig, ConcurrencyLimitLayer,
        DeadLetterConfig, DeadLetterLayer, DeadLetterQueue, Error, Event, ListenerMetrics,
        MetricsLayer, RetryLayer, RetryPolicy, TimeoutLayer,
    };

    use super::noop;

    /// What a stack of ours is to the benches: a service of events, cloned per thread.
    pub trait OursStack:
        Service<Event, Response = (), Error = Error, Future: Send> + Clone + Send + Sync + 'static
    {
    }

    impl<S> OursStack for S where
        S: Service<Event, Response = (), Error = Error, Future: Send>
            + Clone
            + Send
            + Sync
            + 'static
    {
    }

    /// What a plain tower stack is to the benches (tower's layers give a `BoxError`).
    pub trait TowerStack:
        Service<Event, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
    {
    }

    impl<S> TowerStack for S where
        S: Service<Event, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
    {
    }

    /// The full stack of this crate, assembled by hand exactly as the manager does.
    pub fn ours() -> impl OursStack {
        ours_with(CircuitConfig::default())
    }

    /// [`ours`] without the breaker and dead-letter layers: the layers plain tower has (retry, limit,
    /// timeout), with our metrics and panic catcher.
    pub fn ours_without_breaker_and_letters() -> impl OursStack {
        let metrics = Arc::new(ListenerMetrics::new("bench"));
        ServiceBuilder::new()
            .layer(MetricsLayer::per_event(metrics.clone()))
            .layer(RetryLayer::with_metrics(RetryPolicy::default(), metrics.clone()).unwrap())
            .layer(
                ConcurrencyLimitLayer::new(10)
                    .unwrap()
                    .with_metrics(metrics.clone()),
            )
            .layer(MetricsLayer::per_attempt(metrics))
            .layer(TimeoutLayer::new(Duration::from_secs(30)).unwrap())
            .layer(CatchPanicLayer)
            .service(noop())
    }

    /// [`ours`] with the breaker configured by `circuit`.
    pub fn ours_with(circuit: CircuitConfig) -> impl OursStack {
        let metrics = Arc::new(ListenerMetrics::new("bench"));
        ServiceBuilder::new()
            .layer(MetricsLayer::per_event(metrics.clone()))
            .layer(
                DeadLetterLayer::with_metrics(
                    DeadLetterConfig::to_sink(DeadLetterQueue::<Event>::new(1_000)),
                    metrics.clone(),
                )
                .unwrap(),
            )
            .layer(RetryLayer::with_metrics(RetryPolicy::default(), metrics.clone()).unwrap())
            .layer(CircuitBreakerLayer::with_metrics(circuit, metrics.clone()).unwrap())
            .layer(
                ConcurrencyLimitLayer::new(10)
                    .unwrap()
                    .with_metrics(metrics.clone()),
            )
            .layer(MetricsLayer::per_attempt(metrics))
            .layer(TimeoutLayer::new(Duration::from_secs(30)).unwrap())
            .layer(CatchPanicLayer)
            .service(noop())
    }

    /// The same six layers without any metrics (no histograms, no counters, no health window), to show
    /// what recording costs, alone and under contention.
    pub fn ours_without_metrics() -> impl OursStack {
        ServiceBuilder::new()
            .layer(DeadLetterLayer::with_sink(DeadLetterQueue::<Event>::new(
                1_000,
            )))
            .layer(RetryLayer::new(RetryPolicy::default()).unwrap())
            .layer(CircuitBreakerLayer::new(CircuitConfig::default()).unwrap())
            .layer(ConcurrencyLimitLayer::new(10).unwrap())
            .layer(TimeoutLayer::new(Duration::from_secs(30)).unwrap())
            .layer(CatchPanicLayer)
            .service(noop())
    }

    /// A latency layer for the peer stacks: one mutex-guarded hdrhistogram, as peers do it.
    #[derive(Clone)]
    pub struct MutexHistogramLayer(Arc<Mutex<Histogram<u64>>>);

    impl MutexHistogramLayer {
        pub fn new() -> Self {
            MutexHistogramLayer(Arc::new(Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000_000, 2).unwrap(),
            )))
        }
    }

    impl<S> Layer<S> for MutexHistogramLayer {
        type Service = MutexHistogram<S>;
        fn layer(&self, inner: S) -> Self::Service {
            MutexHistogram {
                inner,
                hist: self.0.clone(),
            }
        }
    }

    #[derive(Clone)]
    pub struct MutexHistogram<S> {
        inner: S,
        hist: Arc<Mutex<Histogram<u64>>>,
    }

    impl<S: Service<R>, R> Service<R> for MutexHistogram<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Recorded<S::Future>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }
        fn call(&mut self, req: R) -> Self::Future {
            Recorded {
                inner: self.inner.call(req),
                hist: self.hist.clone(),
                start: Instant::now(),
            }
        }
    }

    pin_project! {
        pub struct Recorded<F> { #[pin] inner: F, hist: Arc<Mutex<Histogram<u64>>>, start: Instant }
    }

    impl<F: Future> Future for Recorded<F> {
        type Output = F::Output;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            let out = std::task::ready!(this.inner.poll(cx));
            let ns = this.start.elapsed().as_nanos() as u64;
            this.hist.lock().unwrap().saturating_record(ns);
            Poll::Ready(out)
        }
    }

    /// A latency layer as ours records: a histogram of atomic buckets (two significant digits, the
    /// layout of ours), one shard per thread, recorded with one relaxed add and no lock. For the
    /// like-for-like rows, so that the peers' histogram costs what ours does.
    #[derive(Clone)]
    pub struct ShardedHistogramLayer(Arc<[Shard]>);

    #[repr(align(128))]
    pub struct Shard(Box<[AtomicU64]>);

    /// Buckets: exact below 256 ns, then 128 per power of two, up to one hour.
    fn bucket(nanos: u64) -> usize {
        let nanos = nanos.min(3_600_000_000_000);
        if nanos < 256 {
            return nanos as usize;
        }
        let octave = 63 - nanos.leading_zeros() as u64;
        (256 + (octave - 8) * 128 + ((nanos >> (octave - 7)) - 128)) as usize
    }

    static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    }

    impl ShardedHistogramLayer {
        pub fn new() -> Self {
            let shards = (std::thread::available_parallelism().map_or(4, |n| n.get()) * 2)
                .next_power_of_two()
                .clamp(2, 32);
            let buckets = bucket(u64::MAX) + 1;
            ShardedHistogramLayer(
                (0..shards)
                    .map(|_| Shard((0..buckets).map(|_| AtomicU64::new(0)).collect()))
                    .collect(),
            )
        }
    }

    impl<S> Layer<S> for ShardedHistogramLayer {
        type Service = ShardedHistogram<S>;
        fn layer(&self, inner: S) -> Self::Service {
            ShardedHistogram {
                inner,
                shards: self.0.clone(),
            }
        }
    }

    #[derive(Clone)]
    pub struct ShardedHistogram<S> {
        inner: S,
        shards: Arc<[Shard]>,
    }

    impl<S: Service<R>, R> Service<R> for ShardedHistogram<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = ShardRecorded<S::Future>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }
        fn call(&mut self, req: R) -> Self::Future {
            ShardRecorded {
                inner: self.inner.call(req),
                shards: self.shards.clone(),
                start: Instant::now(),
            }
        }
    }

    pin_project! {
        pub struct ShardRecorded<F> { #[pin] inner: F, shards: Arc<[Shard]>, start: Instant }
    }

    impl<F: Future> Future for ShardRecorded<F> {
        type Output = F::Output;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            let out = std::task::ready!(this.inner.poll(cx));
            let ns = this.start.elapsed().as_nanos() as u64;
            let shard = &this.shards[THREAD.with(|t| *t) & (this.shards.len() - 1)];
            shard.0[bucket(ns)].fetch_add(1, Ordering::Relaxed);
            Poll::Ready(out)
        }
    }

    /// tower's own retry policy: up to 3 retries on error, no backoff (never used on the success path).
    #[derive(Clone)]
    pub struct Attempts(pub u32);

    impl<E> tower::retry::Policy<Event, (), E> for Attempts {
        type Future = std::future::Ready<()>;
        fn retry(&mut self, _req: &mut Event, result: &mut Result<(), E>) -> Option<Self::Future> {
            match result {
                Ok(()) => None,
                Err(_) if self.0 > 0 => {
                    self.0 -= 1;
                    Some(std::future::ready(()))
                }
                Err(_) => None,
            }
        }
        fn clone_request(&mut self, req: &Event) -> Option<Event> {
            Some(req.clone())
        }
    }

    /// Plain tower: `$histogram` → retry → concurrency limit → timeout → handler.
    macro_rules! plain_tower {
        ($histogram:expr) => {
            ServiceBuilder::new()
                .layer($histogram)
                .layer(tower::retry::RetryLayer::new(Attempts(3)))
                .layer(tower::limit::ConcurrencyLimitLayer::new(10))
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
                .service(noop())
        };
    }

    /// Plain tower recording latency in a sharded histogram like ours.
    pub fn plain_tower() -> impl TowerStack {
        plain_tower!(ShardedHistogramLayer::new())
    }

    /// Plain tower recording what ours records: each event's latency (outside the retry) and each
    /// attempt's (inside it), in sharded histograms like ours.
    pub fn plain_tower_both_latencies() -> impl TowerStack {
        ServiceBuilder::new()
            .layer(ShardedHistogramLayer::new())
            .layer(tower::retry::RetryLayer::new(Attempts(3)))
            .layer(tower::limit::ConcurrencyLimitLayer::new(10))
            .layer(ShardedHistogramLayer::new())
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
            .service(noop())
    }

    /// Plain tower as its users write it, with one mutex-guarded hdrhistogram.
    pub fn plain_tower_mutex() -> impl TowerStack {
        plain_tower!(MutexHistogramLayer::new())
    }

    /// tower-resilience: `$histogram` → retry → circuit breaker (`$breaker`) → bulkhead → time limiter →
    /// handler.
    macro_rules! tower_resilience {
        ($histogram:expr, $breaker:expr) => {{
            use tower_resilience::bulkhead::BulkheadLayer;
            use tower_resilience::retry::RetryLayer as ResilienceRetry;
            use tower_resilience::timelimiter::TimeLimiterLayer;

            let inner = ServiceBuilder::new()
                .layer($breaker)
                .layer(
                    BulkheadLayer::builder()
                        .max_concurrent_calls(10)
                        .build()
                        .unwrap(),
                )
                .layer(
                    TimeLimiterLayer::builder()
                        .timeout_duration(Duration::from_secs(30))
                        .build(),
                )
                .service(noop());
            let retry = ResilienceRetry::<Event, (), _>::builder()
                .max_attempts(4)
                .exponential_backoff(Duration::from_millis(100))
                .build();
            ServiceBuilder::new()
                .layer($histogram)
                .layer(retry)
                .service(inner)
        }};
    }

    /// tower-resilience with its defaults (an unnamed breaker) and one mutex-guarded hdrhistogram.
    pub fn tower_resilience(
    ) -> impl Service<Event, Response = (), Error = impl std::fmt::Debug, Future = impl Future + Send>
           + Clone
           + Send
           + 'static {
        use tower_resilience::circuitbreaker::CircuitBreakerLayer as ResilienceBreaker;
        tower_resilience!(
            MutexHistogramLayer::new(),
            ResilienceBreaker::builder().build().unwrap()
        )
    }

    /// tower-resilience like for like: the sharded histogram, and a breaker with a name (as a service
    /// names its breakers) and its count-based window set explicitly.
    pub fn tower_resilience_sharded(
    ) -> impl Service<Event, Response = (), Error = impl std::fmt::Debug, Future = impl Future + Send>
           + Clone
           + Send
           + 'static {
        use tower_resilience::circuitbreaker::{
            CircuitBreakerLayer as ResilienceBreaker, SlidingWindowType,
        };
        tower_resilience!(
            ShardedHistogramLayer::new(),
            ResilienceBreaker::builder()
                .name("bench")
                .sliding_window_type(SlidingWindowType::CountBased)
                .sliding_window_size(100)
                .build()
                .unwrap()
        )
    }
}
