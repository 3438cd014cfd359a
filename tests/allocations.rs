//! Zero heap allocations per event on the success path of the full layer stack and of the manager, and on
//! the open-breaker rejection path, after warm-up. Counted by a global
//! allocator that counts the calls made on the test's own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_listener::{
    CatchPanicLayer, CircuitBreakerLayer, CircuitConfig, ConcurrencyLimitLayer, DeadLetterConfig,
    DeadLetterLayer, DeadLetterQueue, Error, Event, Listener, ListenerConfig, ListenerManager,
    ListenerMetrics, ManagerConfig, MetricsLayer, RetryLayer, RetryPolicy, TimeoutLayer,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the count is a const-initialized
// thread local, which needs no allocation of its own.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn noop() -> impl Service<Event, Response = (), Error = Error, Future = Ready<Result<(), Error>>>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_: Event| ready(Ok::<(), Error>(())))
}

/// Allocations per call of `svc` over `n` calls, after `n` warm-up calls.
async fn per_call<S>(svc: &mut S, n: u64) -> f64
where
    S: Service<Event>,
    S::Error: std::fmt::Debug,
{
    let event = Event::new("e", "t", serde_json::json!(1));
    for _ in 0..n {
        let _ = svc.ready().await.unwrap().call(event.clone()).await;
    }
    let before = allocations();
    for _ in 0..n {
        let _ = svc.ready().await.unwrap().call(event.clone()).await;
    }
    (allocations() - before) as f64 / n as f64
}

#[tokio::test(flavor = "current_thread")]
async fn the_full_layer_stack_allocates_nothing_per_event() {
    let metrics = Arc::new(ListenerMetrics::new("alloc"));
    let mut svc = ServiceBuilder::new()
        .layer(MetricsLayer::per_event(metrics.clone()))
        .layer(
            DeadLetterLayer::with_metrics(
                DeadLetterConfig::to_sink(DeadLetterQueue::<Event>::new(10)),
                metrics.clone(),
            )
            .unwrap(),
        )
        .layer(RetryLayer::with_metrics(RetryPolicy::default(), metrics.clone()).unwrap())
        .layer(
            CircuitBreakerLayer::with_metrics(CircuitConfig::default(), metrics.clone()).unwrap(),
        )
        .layer(
            ConcurrencyLimitLayer::new(10)
                .unwrap()
                .with_metrics(metrics.clone()),
        )
        .layer(MetricsLayer::per_attempt(metrics.clone()))
        .layer(TimeoutLayer::new(Duration::from_secs(30)).unwrap())
        .layer(CatchPanicLayer)
        .service(noop());
    assert_eq!(per_call(&mut svc, 10_000).await, 0.0);
    assert_eq!(metrics.snapshot().events_succeeded, 20_000);
}

#[tokio::test(flavor = "current_thread")]
async fn an_open_breaker_rejects_without_allocating() {
    let breaker = CircuitBreakerLayer::new(CircuitConfig::default()).unwrap();
    breaker.handle().force_open();
    let mut svc = ServiceBuilder::new().layer(breaker).service(noop());
    assert_eq!(per_call(&mut svc, 10_000).await, 0.0);
}

/// Allocations over `n` successful `process` calls to a running manager's listener around `handler`,
/// after `n` warm-up calls; and the manager.
async fn per_process<S>(handler: S, n: u64) -> (u64, ListenerManager)
where
    S: Service<Event, Response = (), Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let manager = ListenerManager::new(ManagerConfig::named("alloc")).unwrap();
    manager
        .register(Listener::new("l", handler), ListenerConfig::default())
        .unwrap();
    manager.start().await.unwrap();
    let event = Event::new("e", "t", serde_json::json!(1));
    for _ in 0..n {
        manager.process("l", event.clone()).await.unwrap();
    }
    let before = allocations();
    for _ in 0..n {
        manager.process("l", event.clone()).await.unwrap();
    }
    (allocations() - before, manager)
}

#[tokio::test(flavor = "current_thread")]
async fn the_manager_allocates_nothing_per_processed_event() {
    let (allocated, manager) = per_process(noop(), 10_000).await;
    assert_eq!(allocated, 0);
    assert_eq!(manager.stats().events_succeeded, 20_000);
}

/// The same with the crate measuring on the time-stamp counter. (The switch is process-wide; no test in
/// this file runs under paused time, and none counts anything but its own thread's allocations.)
#[cfg(feature = "tsc-clock")]
#[tokio::test(flavor = "current_thread")]
async fn the_manager_allocates_nothing_per_processed_event_on_the_time_stamp_counter() {
    tower_listener::clock::use_tsc(true);
    let (allocated, manager) = per_process(noop(), 10_000).await;
    tower_listener::clock::use_tsc(false);
    assert_eq!(allocated, 0);
    assert_eq!(manager.stats().events_succeeded, 20_000);
}

#[tokio::test(flavor = "current_thread")]
async fn a_handler_that_waits_costs_one_allocation_its_armed_timer() {
    // The one allocation off the immediate success path that every waiting handler meets: the timeout
    // boxes its timer when the attempt first waits (benches/README.md says why). Counted so that no other
    // allocation creeps in.
    let waits_once = tower::service_fn(|_: Event| async {
        tokio::task::yield_now().await;
        Ok::<(), Error>(())
    });
    assert_eq!(per_process(waits_once, 1_000).await.0, 1_000);
}

#[test]
fn the_counter_sees_an_allocation() {
    let before = allocations();
    let boxed = std::hint::black_box(Box::new([0u8; 64]));
    assert_eq!(allocations() - before, 1);
    drop(boxed);
}
