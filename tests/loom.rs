//! Model checks (loom) of the two pieces of shared state every call touches: the breaker's state changes
//! and the limit's permit count. Run with
//! `RUSTFLAGS="--cfg tower_listener_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`.
#![cfg(tower_listener_loom)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use tower::{Layer, Service};
use tower_listener::{
    CircuitBreakerLayer, CircuitConfig, CircuitState, ConcurrencyConfig, ConcurrencyLimitLayer,
    Error, LimitMode, ListenerMetrics,
};

/// Polls a future that must complete without waiting.
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future was expected to complete at once"),
    }
}

/// Two threads fail at once against a threshold of two: the breaker opens exactly once, whatever the
/// interleaving of their window writes, threshold checks and state changes.
#[test]
fn concurrent_failures_trip_the_breaker_exactly_once() {
    loom::model(|| {
        let metrics = Arc::new(ListenerMetrics::new("loom"));
        let layer = CircuitBreakerLayer::with_metrics(
            CircuitConfig {
                failure_threshold: 2,
                ..Default::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let handle = layer.handle();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = layer.layer(tower::service_fn(|_: ()| async {
                    Err::<(), _>(Error::handler(std::fmt::Error))
                }));
                thread::spawn(move || {
                    let result = now(svc.call(()));
                    assert!(matches!(result, Err(Error::Handler(_))), "{result:?}");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(handle.state(), CircuitState::Open);
        assert_eq!(metrics.snapshot().circuit_trips, 1);
    });
}

/// A failure racing a manual reset: whatever the interleaving (the failure's result may belong to the
/// generation before the reset and be ignored), the breaker ends open or closed, never stuck elsewhere, and
/// a later reset closes it.
#[test]
fn a_failure_racing_a_reset_leaves_a_consistent_breaker() {
    loom::model(|| {
        let layer = CircuitBreakerLayer::new(CircuitConfig {
            failure_threshold: 1,
            ..Default::default()
        })
        .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(tower::service_fn(|_: ()| async {
            Err::<(), _>(Error::handler(std::fmt::Error))
        }));
        let resetter = {
            let handle = handle.clone();
            thread::spawn(move || handle.reset())
        };
        let _ = now(svc.call(()));
        resetter.join().unwrap();
        let state = handle.state();
        assert!(
            matches!(state, CircuitState::Open | CircuitState::Closed),
            "{state:?}"
        );
        handle.reset();
        assert_eq!(handle.state(), CircuitState::Closed);
    });
}

/// The handler's future: counts itself as holding a permit on its first poll, lets other threads run, and
/// stops counting on its second poll, just before the permit is released.
struct Hold {
    holding: Arc<AtomicUsize>,
    polled: bool,
}

impl Future for Hold {
    type Output = Result<(), Error>;

    fn poll(mut self: std::pin::Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polled {
            self.holding.fetch_sub(1, Ordering::SeqCst);
            return Poll::Ready(Ok(()));
        }
        self.polled = true;
        let holders = self.holding.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(
            holders <= 2,
            "{holders} calls hold a permit of a limit of 2"
        );
        Poll::Pending
    }
}

/// Three threads take and give back permits of a limit of two: never more than two hold one at once, and
/// every permit is back at the end.
#[test]
fn the_permit_count_never_exceeds_the_limit_and_every_permit_comes_back() {
    loom::model(|| {
        let layer =
            ConcurrencyLimitLayer::new(ConcurrencyConfig::new(2, LimitMode::Reject)).unwrap();
        let holding = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let holding = holding.clone();
                let mut svc = layer.layer(tower::service_fn(move |_: ()| Hold {
                    holding: holding.clone(),
                    polled: false,
                }));
                thread::spawn(move || {
                    let mut cx = Context::from_waker(Waker::noop());
                    let mut future = pin!(svc.call(()));
                    match future.as_mut().poll(&mut cx) {
                        Poll::Pending => {
                            thread::yield_now();
                            assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
                        }
                        Poll::Ready(Err(Error::Overloaded)) => {}
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(layer.available_permits(), 2);
    });
}
