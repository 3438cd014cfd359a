//! The concurrency limit, under paused time.

mod support;

use std::time::Duration;

use support::{handler, settle, Call};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_listener::{ConcurrencyConfig, ConcurrencyLimitLayer, Error, LimitMode};

fn limited(
    limit: usize,
    mode: LimitMode,
) -> (
    ConcurrencyLimitLayer,
    impl Service<
            Call,
            Response = &'static str,
            Error = Error,
            Future = impl std::future::Future<Output = Result<&'static str, Error>> + Send,
        > + Clone
        + Send
        + 'static,
    support::Probe,
) {
    let layer = ConcurrencyLimitLayer::new(ConcurrencyConfig::new(limit, mode)).unwrap();
    let (inner, probe) = handler();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(inner);
    (layer, svc, probe)
}

#[tokio::test(start_paused = true)]
async fn wait_queues_the_call_past_the_limit_until_a_permit_frees() {
    let (layer, svc, probe) = limited(2, LimitMode::Wait);
    let a = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(1))));
    let b = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(2))));
    settle().await;
    let c = tokio::spawn(svc.clone().oneshot(Call::Ok));
    settle().await;
    assert_eq!(probe.calls(), 2, "the third call waits");
    assert_eq!(layer.available_permits(), 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(a.await.unwrap().unwrap(), "slow");
    assert_eq!(c.await.unwrap().unwrap(), "ok");
    assert_eq!(probe.calls(), 3);
    tokio::time::advance(Duration::from_secs(1)).await;
    b.await.unwrap().unwrap();
    assert_eq!(layer.available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_for_gives_overloaded_after_the_wait() {
    let (_, svc, probe) = limited(1, LimitMode::WaitFor(Duration::from_millis(100)));
    let hog = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    let started = tokio::time::Instant::now();
    assert!(matches!(
        svc.clone().oneshot(Call::Ok).await,
        Err(Error::Overloaded)
    ));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(probe.calls(), 1);
    hog.abort();
}

#[tokio::test(start_paused = true)]
async fn wait_for_runs_the_call_when_a_permit_frees_in_time() {
    let (_, svc, _) = limited(1, LimitMode::WaitFor(Duration::from_millis(100)));
    let first = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_millis(50))));
    settle().await;
    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn reject_gives_overloaded_at_once() {
    let (_, svc, probe) = limited(1, LimitMode::Reject);
    let hog = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    let started = tokio::time::Instant::now();
    assert!(matches!(
        svc.clone().oneshot(Call::Ok).await,
        Err(Error::Overloaded)
    ));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(probe.calls(), 1);
    hog.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_frees_its_permit() {
    let (layer, svc, probe) = limited(1, LimitMode::Reject);
    let hog = tokio::spawn(svc.clone().oneshot(Call::Hang));
    settle().await;
    assert_eq!(layer.available_permits(), 0);
    hog.abort();
    let _ = hog.await;
    assert_eq!(probe.dropped(), 1);
    assert_eq!(layer.available_permits(), 1);
    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_future_leaves_the_queue() {
    let (layer, svc, probe) = limited(1, LimitMode::Wait);
    let first = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(1))));
    settle().await;
    let waiting = tokio::spawn(svc.clone().oneshot(Call::Ok));
    settle().await;
    waiting.abort();
    let _ = waiting.await;
    tokio::time::advance(Duration::from_secs(1)).await;
    first.await.unwrap().unwrap();
    assert_eq!(probe.calls(), 1, "the cancelled waiter never ran");
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_limit() {
    let layer = ConcurrencyLimitLayer::new(ConcurrencyConfig::new(2, LimitMode::Reject)).unwrap();
    let (inner, _) = handler();
    let a = ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner.clone());
    let b = a.clone();
    let c = ServiceBuilder::new().layer(layer.clone()).service(inner);
    let _h1 = tokio::spawn(a.oneshot(Call::Hang));
    let _h2 = tokio::spawn(b.oneshot(Call::Hang));
    settle().await;
    assert!(matches!(c.oneshot(Call::Ok).await, Err(Error::Overloaded)));
}

#[tokio::test(start_paused = true)]
async fn a_clone_called_without_poll_ready_neither_panics_nor_hangs() {
    let (_, svc, _) = limited(1, LimitMode::Wait);
    let mut never_readied = svc.clone();
    let result = tokio::time::timeout(Duration::from_secs(1), never_readied.call(Call::Ok)).await;
    assert_eq!(result.unwrap().unwrap(), "ok");
}

#[test]
fn bad_limit_config_names_the_field() {
    for (config, want) in [
        (ConcurrencyConfig::new(0, LimitMode::Wait), "concurrency"),
        (
            ConcurrencyConfig::new(usize::MAX, LimitMode::Wait),
            "concurrency",
        ),
        (
            ConcurrencyConfig::new(1, LimitMode::WaitFor(Duration::ZERO)),
            "concurrency.mode",
        ),
        (
            ConcurrencyConfig::new(1, LimitMode::WaitFor(Duration::MAX)),
            "concurrency.mode",
        ),
    ] {
        match ConcurrencyLimitLayer::new(config) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("expected InvalidConfig for {want}, got {other:?}"),
        }
    }
}
