//! The operator endpoints over a real server on 127.0.0.1: list with a cursor, get, redrive, delete; 401
//! without the token; a bad parameter gets 400 naming it.
#![cfg(all(feature = "axum", feature = "redb"))]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::stores::letter;
use tower_listener::dead_letter::DeadLetterStore;
use tower_listener::http::{dead_letter_router, OperatorAuth};
use tower_listener::{
    DeadLetterReason, Error, Event, ListenerConfig, ListenerManager, ManagerConfig, RedbStore,
    RetryPolicy,
};

const TOKEN: &str = "operator-token-0123456789";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

struct Admin {
    base: String,
    http: HttpClient,
}

impl Admin {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                body.to_string()
            }
            None => String::new(),
        };
        let response = self
            .http
            .request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, Some(TOKEN), None).await
    }
}

async fn serve(app: axum::Router) -> Admin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Admin {
        base: format!("http://{addr}"),
        http: Client::builder(TokioExecutor::new()).build_http(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_endpoints_list_get_redrive_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("letters.redb"))
        .await
        .unwrap();
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let dependency = up.clone();
    manager
        .register(
            tower_listener::listener_fn("orders", move |_event: Event| {
                let up = dependency.load(Ordering::SeqCst);
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err(Error::handler(std::io::Error::other("still down")))
                    }
                }
            }),
            ListenerConfig {
                retry_policy: RetryPolicy::never(),
                ..Default::default()
            },
        )
        .unwrap();
    manager.start().await.unwrap();
    let mut ids = Vec::new();
    for (i, reason) in [
        DeadLetterReason::Exhausted,
        DeadLetterReason::Permanent,
        DeadLetterReason::Exhausted,
        DeadLetterReason::Exhausted,
        DeadLetterReason::CircuitOpen,
    ]
    .into_iter()
    .enumerate()
    {
        let id = DeadLetterStore::<Value>::append(
            &store,
            letter(&format!("o-{i}"), "orders", reason, 1_000 + i as u64),
        )
        .await
        .unwrap();
        ids.push(id.to_string());
    }
    let admin = serve(dead_letter_router(
        manager.clone(),
        store.clone(),
        OperatorAuth::bearer(TOKEN).unwrap(),
    ))
    .await;

    // No token, or the wrong one: 401, and nothing is revealed.
    for token in [None, Some("operator-token-0123456780"), Some("x")] {
        let (status, body) = admin.call("GET", "/dead-letters", token, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    let (status, _) = admin
        .call("DELETE", &format!("/dead-letters/{}", ids[0]), None, None)
        .await;
    assert_eq!(status, 401);

    // A listing in pages of two, resumed by the cursor.
    let (status, page) = admin.get("/dead-letters?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["letters"].as_array().unwrap().len(), 2);
    assert_eq!(page["letters"][0]["id"], ids[0].as_str());
    assert_eq!(page["letters"][0]["letter"]["request"]["id"], "o-0");
    assert_eq!(page["letters"][0]["letter"]["error"]["kind"], "handler");
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page) = admin
        .get(&format!("/dead-letters?limit=2&cursor={next}"))
        .await;
    assert_eq!(page["letters"][0]["id"], ids[2].as_str());
    // Filters.
    let (_, page) = admin
        .get("/dead-letters?reason=exhausted&since=1970-01-01T00:16:41Z&listener=orders")
        .await;
    let got: Vec<&str> = page["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["letter"]["request"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["o-2", "o-3"]);
    assert!(page["next"].is_null());

    // One letter; an unknown one is 404.
    let (status, one) = admin.get(&format!("/dead-letters/{}", ids[1])).await;
    assert_eq!(
        (status, one["letter"]["reason"].as_str()),
        (200, Some("permanent"))
    );
    assert_eq!(admin.get("/dead-letters/9999").await.0, 404);

    // Delete: 204, then 404.
    let path = format!("/dead-letters/{}", ids[4]);
    assert_eq!(admin.call("DELETE", &path, Some(TOKEN), None).await.0, 204);
    assert_eq!(admin.call("DELETE", &path, Some(TOKEN), None).await.0, 404);

    // Redrive the exhausted ones through the listener, which works again.
    let (status, report) = admin
        .call(
            "POST",
            "/dead-letters/redrive",
            Some(TOKEN),
            Some(json!({"listener": "orders", "reason": "exhausted", "limit": 10})),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["succeeded"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(0))
    );
    let (_, page) = admin.get("/dead-letters").await;
    let left: Vec<&str> = page["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["letter"]["request"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["o-1"], "only the permanent one is left");
    assert_eq!(
        manager.listener_stats("orders").unwrap().redriven_succeeded,
        3
    );

    // Through an unknown listener: 404.
    let (status, _) = admin
        .call(
            "POST",
            "/dead-letters/redrive",
            Some(TOKEN),
            Some(json!({"listener": "ghost"})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_parameter_gets_400_naming_it() {
    let manager = ListenerManager::new(ManagerConfig::default()).unwrap();
    let store = tower_listener::DeadLetterQueue::<Event>::new(10);
    let admin = serve(dead_letter_router(
        manager,
        store,
        OperatorAuth::none_behind_my_own_auth(),
    ))
    .await;
    let cases = [
        ("/dead-letters?reason=bogus", "`reason`"),
        ("/dead-letters?since=yesterday", "`since`"),
        ("/dead-letters?until=2026-13-01T00:00:00Z", "`until`"),
        ("/dead-letters?limit=0", "`limit`"),
        ("/dead-letters?limit=abc", "`limit`"),
        ("/dead-letters?limit=100000", "`limit`"),
        ("/dead-letters?colour=red", "`colour`"),
        ("/dead-letters?cursor=zzz", "`cursor`"),
    ];
    for (path, named) in cases {
        // No token needed: this router sits behind the service's own auth.
        let (status, body) = admin.call("GET", path, None, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{path}: {message}");
    }
    let bodies = [
        (json!({}), "`listener`"),
        (json!({"listener": 7}), "`listener`"),
        (json!({"listener": "a", "reason": "nope"}), "`reason`"),
        (json!({"listener": "a", "limit": -1}), "`limit`"),
        (json!({"listener": "a", "since": "soon"}), "`since`"),
        (json!({"listener": "a", "everything": true}), "`everything`"),
    ];
    for (body, named) in bodies {
        let (status, reply) = admin
            .call("POST", "/dead-letters/redrive", None, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(named),
            "{body}: {reply}"
        );
    }
}
