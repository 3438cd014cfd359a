//! The operator's view of a dead-letter store over HTTP: list, inspect, redrive and delete letters.
//!
//! A router of its own, separate from the events router, so that a service mounts it where its operators
//! reach it (an admin port, behind its own auth): [`dead_letter_router`]. Every request must carry
//! `Authorization: Bearer <token>` unless the router was built with
//! [`OperatorAuth::none_behind_my_own_auth`]; the token is compared in constant time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::dead_letter::{Cursor, DeadLetterStore, LetterFilter, LetterId, StoredLetter};
use crate::{DeadLetterReason, Error, ListenerManager};

/// The most letters one listing returns, and the default.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// Who may use the operator endpoints.
///
/// ```
/// use tower_listener::http::OperatorAuth;
///
/// let auth = OperatorAuth::bearer(std::env::var("DEAD_LETTER_TOKEN").unwrap_or_else(|_| "a-long-random-operator-token".into()))?;
/// assert!(OperatorAuth::bearer("short").is_err()); // too easy to guess
/// # let _ = auth;
/// # Ok::<_, tower_listener::Error>(())
/// ```
#[derive(Clone)]
pub struct OperatorAuth(Option<Arc<[u8]>>);

impl OperatorAuth {
    /// Requests must carry `Authorization: Bearer <token>`; others get 401.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `token` when it is shorter than 16 bytes or holds whitespace.
    pub fn bearer(token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        if token.len() < 16 {
            return Err(Error::invalid_config(
                "token",
                "must be at least 16 bytes (a random secret)",
            ));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(Error::invalid_config("token", "must not hold whitespace"));
        }
        Ok(OperatorAuth(Some(Arc::from(token.into_bytes()))))
    }

    /// No check at all: for a router mounted behind the service's own authentication. Named so that the
    /// choice is visible where the router is built.
    pub fn none_behind_my_own_auth() -> Self {
        OperatorAuth(None)
    }
}

impl std::fmt::Debug for OperatorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.write_str(match self.0 {
            Some(_) => "OperatorAuth::Bearer(..)",
            None => "OperatorAuth::None",
        })
    }
}

struct Operator<T> {
    manager: ListenerManager<T>,
    store: Arc<dyn DeadLetterStore<T>>,
}

/// The operator endpoints over `store`, redriving through `manager`'s listeners:
///
/// - `GET /dead-letters?listener=&reason=&since=&until=&cursor=&limit=`: a page of letters, oldest first
///   (`since`/`until` RFC 3339, `limit` 1 to 1000, default 100), and the `next` cursor.
/// - `GET /dead-letters/{id}`: one letter (404 when not stored).
/// - `POST /dead-letters/redrive` with `{"listener": .., "reason"?, "since"?, "until"?, "limit"?}`: redrives
///   the matching letters through that listener ([`ListenerManager::redrive`]) and answers its report.
/// - `DELETE /dead-letters/{id}`: 204, or 404 when not stored.
///
/// A letter is `{"id": .., "letter": <the dead letter>}`, or `{"id": .., "undecodable": {"error": ..,
/// "raw": ..}}` for one that no longer decodes. A bad parameter gets 400 naming it; a request without the
/// token 401.
///
/// ```no_run
/// use std::sync::Arc;
/// use tower_listener::http::{dead_letter_router, OperatorAuth};
/// use tower_listener::{ListenerManager, ManagerConfig, RedbStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedbStore::open("/var/lib/orders/dead-letters.redb").await?;
/// let manager = ListenerManager::new(ManagerConfig::named("orders"))?;
/// let admin = dead_letter_router(manager.clone(), store, OperatorAuth::bearer(std::env::var("ADMIN_TOKEN")?)?);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9091").await?; // an admin port
/// axum::serve(listener, admin).await?;
/// # Ok(()) }
/// ```
pub fn dead_letter_router<T, S>(manager: ListenerManager<T>, store: S, auth: OperatorAuth) -> Router
where
    T: Serialize + Send + Sync + 'static,
    S: DeadLetterStore<T>,
{
    let state = Arc::new(Operator {
        manager,
        store: Arc::new(store) as Arc<dyn DeadLetterStore<T>>,
    });
    Router::new()
        .route("/dead-letters", get(list::<T>))
        .route("/dead-letters/redrive", post(redrive::<T>))
        .route("/dead-letters/{id}", get(one::<T>).delete(remove::<T>))
        .with_state(state)
        .layer(middleware::from_fn_with_state(auth, authorize))
}

async fn authorize(State(auth): State<OperatorAuth>, request: Request, next: Next) -> Response {
    let Some(token) = &auth.0 else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let allowed = presented.is_some_and(|presented| bool::from(presented.ct_eq(token)));
    if allowed {
        return next.run(request).await;
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a bearer token is required",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn problem(status: StatusCode, kind: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": kind, "message": message.to_string() })),
    )
        .into_response()
}

/// A bad parameter: answered 400, naming the field.
struct Bad(String);

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        problem(StatusCode::BAD_REQUEST, "invalid_parameter", self.0)
    }
}

fn bad(field: &str, reason: impl std::fmt::Display) -> Bad {
    Bad(format!("`{field}` {reason}"))
}

fn reason(field: &str, text: &str) -> Result<DeadLetterReason, Bad> {
    DeadLetterReason::ALL
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| {
            let known: Vec<_> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
            bad(
                field,
                format!("{text:?} is not one of {}", known.join(", ")),
            )
        })
}

fn time(field: &str, text: &str) -> Result<SystemTime, Bad> {
    crate::rfc3339::parse(text)
        .map_err(|e| bad(field, format!("{text:?} is not an RFC 3339 date-time: {e}")))
}

fn limit(field: &str, text: &str) -> Result<usize, Bad> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad(
            field,
            format!("{text:?} is not a number from 1 to {MAX_LIMIT}"),
        )),
    }
}

fn letter_json<T: Serialize>(stored: &StoredLetter<T>) -> Value {
    match &stored.letter {
        Ok(letter) => json!({ "id": stored.id, "letter": letter }),
        Err(undecodable) => json!({
            "id": stored.id,
            "undecodable": {
                "error": undecodable.error,
                "raw": String::from_utf8_lossy(&undecodable.raw),
                "listener": undecodable.listener,
                "reason": undecodable.reason,
                "dead_lettered_at": undecodable.dead_lettered_at.and_then(|t| crate::rfc3339::format(t).ok()),
            }
        }),
    }
}

async fn list<T: Serialize + Send + Sync + 'static>(
    State(operator): State<Arc<Operator<T>>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad("query", "is not a valid query string").into_response();
    };
    let mut filter = LetterFilter::all();
    let (mut cursor, mut count) = (None, DEFAULT_LIMIT);
    for (key, value) in &query {
        let parsed = match key.as_str() {
            "listener" => {
                filter.listener = Some(value.clone());
                Ok(())
            }
            "reason" => reason(key, value).map(|r| filter.reason = Some(r)),
            "since" => time(key, value).map(|t| filter.since = Some(t)),
            "until" => time(key, value).map(|t| filter.until = Some(t)),
            "cursor" => {
                cursor = Some(Cursor::new(value.clone()));
                Ok(())
            }
            "limit" => limit(key, value).map(|n| count = n),
            other => Err(bad(other, "is not a parameter of this endpoint")),
        };
        if let Err(bad) = parsed {
            return bad.into_response();
        }
    }
    match operator.store.list(filter, cursor, count).await {
        Ok(page) => {
            let letters: Vec<Value> = page.letters.iter().map(letter_json).collect();
            Json(json!({ "letters": letters, "next": page.next })).into_response()
        }
        Err(Error::InvalidConfig { field, reason }) => bad(field, reason).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn one<T: Serialize + Send + Sync + 'static>(
    State(operator): State<Arc<Operator<T>>>,
    Path(id): Path<String>,
) -> Response {
    match operator.store.get(LetterId::new(id.as_str())).await {
        Ok(Some(stored)) => Json(letter_json(&stored)).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {id:?}"),
        ),
        Err(error) => error.into_response(),
    }
}

async fn remove<T: Serialize + Send + Sync + 'static>(
    State(operator): State<Arc<Operator<T>>>,
    Path(id): Path<String>,
) -> Response {
    match operator.store.delete(LetterId::new(id.as_str())).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {id:?}"),
        ),
        Err(error) => error.into_response(),
    }
}

async fn redrive<T: Serialize + Send + Sync + 'static>(
    State(operator): State<Arc<Operator<T>>>,
    body: Result<Json<HashMap<String, Value>>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return problem(rejection.status(), "invalid_body", rejection.body_text())
        }
    };
    let text = |key: &str, value: &Value| -> Result<String, Bad> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(key, "must be a string"))
    };
    let mut filter = LetterFilter::all();
    let (mut listener, mut count) = (None, DEFAULT_LIMIT);
    for (key, value) in &body {
        let parsed = match key.as_str() {
            "listener" => text(key, value).map(|l| listener = Some(l)),
            "reason" => {
                text(key, value).and_then(|t| reason(key, &t).map(|r| filter.reason = Some(r)))
            }
            "since" => text(key, value).and_then(|t| time(key, &t).map(|t| filter.since = Some(t))),
            "until" => text(key, value).and_then(|t| time(key, &t).map(|t| filter.until = Some(t))),
            "limit" => match value.as_u64() {
                Some(n) => limit(key, &n.to_string()).map(|n| count = n),
                None => Err(bad(key, format!("must be a number from 1 to {MAX_LIMIT}"))),
            },
            other => Err(bad(other, "is not a field of a redrive request")),
        };
        if let Err(bad) = parsed {
            return bad.into_response();
        }
    }
    let Some(listener) = listener else {
        return bad("listener", "is required: the listener to redrive through").into_response();
    };
    match operator
        .manager
        .redrive(&listener, &*operator.store, filter, count)
        .await
    {
        Ok(report) => Json(report).into_response(),
        Err(error) => error.into_response(),
    }
}
