//! gRPC health checking for a manager, with tonic: each listener is a `grpc.health.v1` service whose status
//! follows its health. A payments dependency goes down for a while: its breaker opens (NOT_SERVING), then
//! probes and closes again (SERVING). A gRPC health client on loopback prints what it sees.
//!
//! `cargo run --example tonic_health --features tonic` (about 4 seconds; `PORT` sets the port, default 50051).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_listener::{
    listener_fn, CircuitConfig, Event, ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = ListenerManager::new(ManagerConfig::named("grpc-example"))?;
    let provider_down = Arc::new(AtomicBool::new(false));
    let down = provider_down.clone();
    manager.register(
        listener_fn("payments", move |_event: Event| {
            let down = down.load(Ordering::Relaxed);
            async move {
                if down {
                    Err(std::io::Error::other("payment provider unavailable"))
                } else {
                    Ok(())
                }
            }
        }),
        ListenerConfig {
            retry_policy: RetryPolicy::never(),
            circuit: CircuitConfig {
                failure_threshold: 3,
                success_threshold: 1,
                timeout: Duration::from_millis(800),
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    manager.register(
        listener_fn("emails", |_event: Event| async {
            Ok::<_, std::io::Error>(())
        }),
        ListenerConfig::default(),
    )?;
    manager.start().await?;

    let (health, _publisher) =
        tower_listener::grpc::health_service(manager.clone(), Duration::from_millis(100)).await;
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(50051u16);
    let incoming = TcpIncoming::bind(([127, 0, 0, 1], port).into())?;
    let addr = incoming.local_addr()?;
    println!("grpc.health.v1 on {addr}");
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let mut last = None;
    for tick in 0..40u32 {
        // The provider is down from 0.5 s to 1.5 s.
        provider_down.store((5..15).contains(&tick), Ordering::Relaxed);
        let _ = manager
            .process(
                "payments",
                Event::new(
                    format!("p{tick}"),
                    "payment.requested",
                    serde_json::json!({}),
                ),
            )
            .await;
        let status = client
            .check(HealthCheckRequest {
                service: "payments".into(),
            })
            .await?
            .into_inner()
            .status;
        let status = ServingStatus::try_from(status).map_or("?", |s| s.as_str_name());
        if last != Some(status) {
            println!(
                "[{:>4} ms] payments: {status:<11} (listener {}, breaker {})",
                tick * 100,
                manager.listener_health("payments")?,
                manager.circuit_breaker("payments")?.state()
            );
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    manager.stop(Duration::from_secs(5)).await?;
    Ok(())
}
