//! The axum integration over a real TCP listener on 127.0.0.1 with a real HTTP client.
#![cfg(feature = "axum")]

mod support;

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::events::scripted;
use tower::ServiceBuilder;
use tower_listener::{
    CircuitBreakerLayer, CircuitConfig, ConcurrencyConfig, ConcurrencyLimitLayer, Error, LimitMode,
    ListenerConfig, ListenerManager, ManagerConfig, RetryPolicy, TimeoutLayer,
};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    send_as(client, method, url, Some("application/json"), body).await
}

/// `send` with another `Content-Type` (or none).
async fn send_as(
    client: &HttpClient,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, retry_after, json)
}

fn event_json(id: &str, kind: &str, data: u64) -> String {
    serde_json::json!({ "specversion": "1.0", "id": id, "type": kind, "data": data }).to_string()
}

#[tokio::test]
async fn events_over_http_map_each_outcome_to_its_status() {
    support::quiet_injected_panics();
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let no_retry = || ListenerConfig {
        retry_policy: RetryPolicy::never(),
        ..Default::default()
    };
    let (orders, _) = scripted("orders");
    manager.register(orders, no_retry()).unwrap();
    let (slow, _) = scripted("slow");
    manager
        .register(
            slow,
            ListenerConfig {
                timeout: Duration::from_millis(50),
                ..no_retry()
            },
        )
        .unwrap();
    let (narrow, _) = scripted("narrow");
    manager
        .register(
            narrow,
            ListenerConfig {
                concurrency: 1,
                concurrency_mode: LimitMode::Reject,
                ..no_retry()
            },
        )
        .unwrap();
    let (guarded, _) = scripted("guarded");
    manager.register(guarded, no_retry()).unwrap();
    manager.start().await.unwrap();
    let base = serve(tower_listener::http::router(manager.clone())).await;
    let http = client();

    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/orders"),
        &event_json("e1", "ok", 0),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str(), body["event_id"].as_str()),
        (200, Some("ok"), Some("e1"))
    );

    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/ghost"),
        &event_json("e2", "ok", 0),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/orders"),
        &event_json("e2p", "permanent", 0),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (422, Some("permanent")));

    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/orders"),
        &event_json("e3", "fail", 0),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (500, Some("handler")));

    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/orders"),
        &event_json("e4", "panic", 0),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (500, Some("panicked")));

    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/slow"),
        &event_json("e5", "hang", 0),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (504, Some("timeout")));

    // Hold the only slot of "narrow", then a second event is refused.
    let held = {
        let (http, url) = (http.clone(), format!("{base}/events/narrow"));
        tokio::spawn(
            async move { send(&http, "POST", &url, &event_json("hold", "slow", 300)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = send(
        &http,
        "POST",
        &format!("{base}/events/narrow"),
        &event_json("e6", "ok", 0),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (429, Some("overloaded")));
    assert_eq!(held.await.unwrap().0, 200);

    manager.circuit_breaker("guarded").unwrap().reset();
    let guarded_breaker = manager.circuit_breaker("guarded").unwrap();
    for i in 0..5 {
        let _ = send(
            &http,
            "POST",
            &format!("{base}/events/guarded"),
            &event_json(&format!("g{i}"), "fail", 0),
        )
        .await;
    }
    let (status, retry_after, body) = send(
        &http,
        "POST",
        &format!("{base}/events/guarded"),
        &event_json("g9", "ok", 0),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("circuit_open"))
    );
    let seconds: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((29..=30).contains(&seconds), "{seconds}");
    assert_eq!(guarded_breaker.state(), tower_listener::CircuitState::Open);
}

#[tokio::test]
async fn health_answers_as_the_go_package_documents() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (a, _) = scripted("a");
    manager
        .register(
            a,
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                circuit: CircuitConfig::disabled(),
                ..Default::default()
            },
        )
        .unwrap();
    manager.start().await.unwrap();
    let base = serve(tower_listener::http::router(manager.clone())).await;
    let http = client();

    let (status, _, body) = send(&http, "GET", &format!("{base}/health"), "").await;
    assert_eq!(
        (status, body["status"].as_str(), body["listeners"].as_u64()),
        (200, Some("healthy"), Some(1))
    );

    manager
        .process("a", support::events::event("ok", "ok", 0))
        .await
        .unwrap();
    for i in 0..3 {
        let _ = manager
            .process("a", support::events::event(format!("f{i}"), "fail", 0))
            .await;
    }
    let (status, _, body) = send(&http, "GET", &format!("{base}/health"), "").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(
        (
            body["processed"].as_u64(),
            body["failed"].as_u64(),
            body["retried"].as_u64()
        ),
        (Some(4), Some(3), Some(0))
    );
    assert_eq!(body["listener_health"]["a"]["status"], "unhealthy");
    assert_eq!(body["listener_health"]["a"]["latency"]["count"], 4);

    manager.circuit_breaker("a").unwrap().reset();
    manager.circuit_breaker("a").unwrap().force_open();
    let (status, _, body) = send(&http, "GET", &format!("{base}/health"), "").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("circuit-open"))
    );
}

#[tokio::test]
async fn the_layers_guard_an_axum_route_and_their_errors_become_responses() {
    // The handler turns its errors into 500 responses before the layers see them: count those as failures.
    let breaker = CircuitBreakerLayer::new(
        CircuitConfig {
            failure_threshold: 2,
            ..Default::default()
        }
        .http_server_errors_are_failures(),
    )
    .unwrap();
    let handle = breaker.handle();
    let route = get(
        |axum::extract::Path(mode): axum::extract::Path<String>| async move {
            match mode.as_str() {
                "fail" => Err(Error::handler(std::io::Error::other("downstream down"))),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok("late")
                }
                _ => Ok("fine"),
            }
        },
    )
    .layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|error: Error| async move { error }))
            .layer(breaker)
            .layer(
                ConcurrencyLimitLayer::new(ConcurrencyConfig::new(4, LimitMode::Reject)).unwrap(),
            )
            .layer(TimeoutLayer::new(Duration::from_millis(50)).unwrap()),
    );
    let base = serve(Router::new().route("/downstream/{mode}", route)).await;
    let http = client();
    assert_eq!(
        send(&http, "GET", &format!("{base}/downstream/ok"), "")
            .await
            .0,
        200
    );
    assert_eq!(
        send(&http, "GET", &format!("{base}/downstream/slow"), "")
            .await
            .0,
        504
    );
    assert_eq!(
        send(&http, "GET", &format!("{base}/downstream/fail"), "")
            .await
            .0,
        500
    );
    // Two failures (the timeout and the error) opened the breaker: the next call is refused at once.
    assert_eq!(handle.state(), tower_listener::CircuitState::Open);
    let (status, retry_after, body) =
        send(&http, "GET", &format!("{base}/downstream/ok"), "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("circuit_open"))
    );
    assert!(retry_after.is_some());
}

#[tokio::test]
async fn what_is_not_an_event_keeps_axums_statuses() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (orders, calls) = scripted("orders");
    manager.register(orders, ListenerConfig::default()).unwrap();
    manager.start().await.unwrap();
    let base = serve(tower_listener::http::router(manager.clone())).await;
    let http = client();
    let url = format!("{base}/events/orders");

    let (status, _, body) = send_as(&http, "POST", &url, None, &event_json("a", "ok", 0)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, _, body) = send_as(
        &http,
        "POST",
        &url,
        Some("text/plain"),
        &event_json("a", "ok", 0),
    )
    .await;
    assert_eq!(status, 415, "{body}");

    let huge = serde_json::json!({
        "specversion": "1.0", "id": "big", "type": "ok", "data": "x".repeat(5 * 1024 * 1024)
    })
    .to_string();
    let (status, _, body) = send(&http, "POST", &url, &huge).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    let (status, _, body) = send(&http, "POST", &url, "{not json").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );

    // JSON, but not an event: 422, and the message names the field.
    let (status, _, body) = send(&http, "POST", &url, r#"{"id": "x", "data": 1}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_event"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("`type`"),
        "{body}"
    );

    let bad_time =
        r#"{"specversion": "1.0", "id": "x", "type": "ok", "data": 1, "time": "yesterday"}"#;
    let (status, _, body) = send(&http, "POST", &url, bad_time).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("`time`"),
        "{body}"
    );

    assert_eq!(
        calls.get(),
        0,
        "nothing that is not an event reached the handler"
    );
}

#[tokio::test]
async fn a_cloudevent_with_an_rfc3339_time_is_accepted_and_its_attributes_kept() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    manager
        .register(
            tower_listener::listener_fn("orders", move |event: tower_listener::Event| {
                record.lock().unwrap().push(event);
                async { Ok::<_, Error>(()) }
            }),
            ListenerConfig::default(),
        )
        .unwrap();
    manager.start().await.unwrap();
    let base = serve(tower_listener::http::router(manager.clone())).await;
    let body = r#"{
        "specversion": "1.0", "id": "A234-1234-1234", "type": "com.example.order.created",
        "source": "/shop/orders", "time": "2026-04-05T17:31:00.25+02:00",
        "datacontenttype": "application/json", "tenant": "acme", "priority": 3,
        "data": {"total": 42}
    }"#;
    let (status, _, reply) = send(&client(), "POST", &format!("{base}/events/orders"), body).await;
    assert_eq!(
        (status, reply["event_id"].as_str()),
        (200, Some("A234-1234-1234"))
    );

    let event = seen.lock().unwrap().pop().unwrap();
    assert_eq!(event.event_type(), "com.example.order.created");
    assert_eq!(event.source(), Some("/shop/orders"));
    let expected = std::time::UNIX_EPOCH + Duration::new(1_775_403_060, 250_000_000);
    assert_eq!(event.timestamp(), expected, "15:31:00.25Z");
    assert_eq!(event.data()["total"], 42);
    let metadata = event.metadata();
    assert_eq!(metadata.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(metadata.get("priority").map(String::as_str), Some("3"));
    assert_eq!(
        metadata.get("datacontenttype").map(String::as_str),
        Some("application/json")
    );
}

#[tokio::test]
async fn a_typed_manager_serves_the_router() {
    #[derive(Debug, Clone, serde::Deserialize)]
    struct Order {
        total: i64,
    }
    let manager = ListenerManager::<Order>::typed(ManagerConfig::default()).unwrap();
    manager
        .register(
            tower_listener::listener_fn(
                "orders",
                |event: tower_listener::Event<Order>| async move {
                    if event.data().total > 0 {
                        Ok(())
                    } else {
                        Err(Error::permanent(std::io::Error::other(
                            "total must be positive",
                        )))
                    }
                },
            ),
            ListenerConfig::default(),
        )
        .unwrap();
    manager.start().await.unwrap();
    let base = serve(tower_listener::http::router(manager.clone())).await;
    let http = client();
    let url = format!("{base}/events/orders");
    let order = |id: &str, total: i64| {
        serde_json::json!({"specversion": "1.0", "id": id, "type": "order.created", "data": {"total": total}})
            .to_string()
    };
    assert_eq!(send(&http, "POST", &url, &order("o-1", 42)).await.0, 200);
    assert_eq!(send(&http, "POST", &url, &order("o-2", -1)).await.0, 422);
    // A payload that is not an Order is refused before the handler, naming the field.
    let (status, _, body) = send(
        &http,
        "POST",
        &url,
        r#"{"id": "o-3", "type": "order.created", "data": {"sum": 1}}"#,
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["message"].as_str().unwrap().contains("total"),
        "{body}"
    );
    let stats = manager.stats();
    assert_eq!((stats.events_succeeded, stats.permanent_failures), (1, 1));
}

#[tokio::test]
async fn a_refused_dispatch_answers_with_its_status() {
    use axum::response::IntoResponse;
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let (orders, _) = scripted("orders");
    manager.register(orders, ListenerConfig::default()).unwrap();
    let refused = manager
        .dispatch("orders", support::events::event("e", "ok", 0))
        .unwrap_err();
    assert_eq!(refused.into_response().status(), 503); // not running
    manager.start().await.unwrap();
    let refused = manager
        .dispatch("ghost", support::events::event("e", "ok", 0))
        .unwrap_err();
    assert_eq!(refused.into_response().status(), 404);
}
