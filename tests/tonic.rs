//! gRPC health checking: the manager's health published through tonic-health on a real server on
//! 127.0.0.1, checked with a real gRPC health client, following a breaker as it opens and closes.
#![cfg(feature = "tonic")]

mod support;

use std::time::Duration;

use support::events::scripted;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_listener::{ListenerConfig, ListenerManager, ManagerConfig};

#[tokio::test]
async fn each_listener_is_a_grpc_service_whose_status_follows_its_breaker() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    for id in ["orders", "payments"] {
        let (listener, _) = scripted(id);
        manager
            .register(listener, ListenerConfig::default())
            .unwrap();
    }
    manager.start().await.unwrap();
    let every = Duration::from_millis(20);
    let (health, _publisher) = tower_listener::grpc::health_service(manager.clone(), every).await;
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = HealthClient::new(channel);
    let check = |service: &str| {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let mut client = client.clone();
        async move { client.check(request).await.map(|r| r.into_inner().status) }
    };
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(check("orders").await.unwrap(), serving);
    assert_eq!(check("payments").await.unwrap(), serving);
    assert_eq!(check("").await.unwrap(), serving, "the whole manager");
    assert_eq!(
        check("ghost").await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    let breaker = manager.circuit_breaker("payments").unwrap();
    breaker.force_open();
    tokio::time::sleep(every * 5).await;
    assert_eq!(check("payments").await.unwrap(), not_serving);
    assert_eq!(check("orders").await.unwrap(), serving);
    assert_eq!(
        check("").await.unwrap(),
        not_serving,
        "a circuit-open listener makes the manager circuit-open"
    );

    breaker.reset();
    tokio::time::sleep(every * 5).await;
    assert_eq!(check("payments").await.unwrap(), serving);
    assert_eq!(check("").await.unwrap(), serving);

    // An unregistered listener disappears from the health service.
    manager.unregister("orders").await.unwrap();
    tokio::time::sleep(every * 5).await;
    assert_eq!(
        check("orders").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}
