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

/// A table of results with their ratio to the first row (the baseline).
pub struct Table {
    title: String,
    rows: Vec<(String, f64, String)>,
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
        self.rows.push((name.to_owned(), ns, note.to_owned()));
    }

    pub fn print(&self) {
        let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "\n{} ({} cores; median of rounds; ratio to the first row)",
            self.title, machine
        );
        println!("| case | ns/call | ratio | note |\n|---|---:|---:|---|");
        let base = self.rows.first().map_or(1.0, |r| r.1);
        for (name, ns, note) in &self.rows {
            println!("| {name} | {ns:.1} | {:.2}x | {note} |", ns / base);
        }
    }
}

pub mod stacks {
    //! The stacks the benches compare: ours (by hand and through the manager), plain tower, and
    //! tower-resilience, each with a latency histogram so all do the same work.

    use std::future::Future;
    use std::pin::Pin;
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

    /// The full stack of this crate, assembled by hand exactly as the manager does.
    pub fn ours() -> impl Service<
        Event,
        Response = (),
        Error = Error,
        Future = impl Future<Output = Result<(), Error>> + Send,
    > + Clone
           + Send
           + Sync
           + 'static {
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
            .layer(
                CircuitBreakerLayer::with_metrics(CircuitConfig::default(), metrics.clone())
                    .unwrap(),
            )
            .layer(
                ConcurrencyLimitLayer::new(10)
                    .unwrap()
                    .with_metrics(metrics.clone()),
            )
            .layer(
                TimeoutLayer::new(Duration::from_secs(30))
                    .unwrap()
                    .with_metrics(metrics.clone()),
            )
            .layer(MetricsLayer::per_attempt(metrics))
            .layer(CatchPanicLayer)
            .service(noop())
    }

    /// The same six layers without any metrics (no histograms, no counters, no health window), to show
    /// what recording costs, alone and under contention.
    pub fn ours_without_metrics() -> impl Service<
        Event,
        Response = (),
        Error = Error,
        Future = impl Future<Output = Result<(), Error>> + Send,
    > + Clone
           + Send
           + Sync
           + 'static {
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

    /// Plain tower: histogram → retry → concurrency limit → timeout → handler.
    pub fn plain_tower() -> impl Service<
        Event,
        Response = (),
        Error = BoxError,
        Future = impl Future<Output = Result<(), BoxError>> + Send,
    > + Clone
           + Send
           + 'static {
        ServiceBuilder::new()
            .layer(MutexHistogramLayer::new())
            .layer(tower::retry::RetryLayer::new(Attempts(3)))
            .layer(tower::limit::ConcurrencyLimitLayer::new(10))
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
            .service(noop())
    }

    /// tower-resilience: histogram → retry → circuit breaker → bulkhead → time limiter → handler.
    pub fn tower_resilience(
    ) -> impl Service<Event, Response = (), Error = impl std::fmt::Debug, Future = impl Future + Send>
           + Clone
           + Send
           + 'static {
        use tower_resilience::bulkhead::BulkheadLayer;
        use tower_resilience::circuitbreaker::CircuitBreakerLayer as ResilienceBreaker;
        use tower_resilience::retry::RetryLayer as ResilienceRetry;
        use tower_resilience::timelimiter::TimeLimiterLayer;

        let inner = ServiceBuilder::new()
            .layer(ResilienceBreaker::builder().build().unwrap())
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
            .layer(MutexHistogramLayer::new())
            .layer(retry)
            .service(inner)
    }
}
