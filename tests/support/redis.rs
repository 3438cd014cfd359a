//! Redis for the tests: the project's server (or `TOWER_LISTENER_REDIS_URL`), keys named uniquely per
//! test run and deleted after it, and skipping (with the reason printed) when no server is reachable,
//! unless `TOWER_LISTENER_BROKERS=required`.

use std::time::Duration;

pub fn url() -> String {
    std::env::var("TOWER_LISTENER_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A client that has answered a PING, or `None` (after saying why) when Redis is unreachable and not
/// required.
pub async fn client() -> Option<redis::Client> {
    let url = url();
    let reachable = async {
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(client)
    };
    match tokio::time::timeout(Duration::from_secs(3), reachable).await {
        Ok(Ok(client)) => Some(client),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e,
                _ => "timed out".to_owned(),
            };
            let shown = tower_listener::backends::redacted(&url);
            assert!(
                !super::brokers_required(),
                "Redis at {shown} is required (TOWER_LISTENER_BROKERS=required) but unreachable: {why}"
            );
            eprintln!(
                "skipped: Redis at {shown} is unreachable ({why}); set TOWER_LISTENER_REDIS_URL, or \
                 TOWER_LISTENER_BROKERS=required to fail instead"
            );
            None
        }
    }
}

/// A key unique to this test and run: `tl:<test>:<pid>:<nanos>`.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tl:{test}:{}:{nanos}", std::process::id())
}

/// Deletes `keys` from a thread of its own (for `Drop`, which cannot await).
pub fn delete_later(client: redis::Client, keys: Vec<String>) {
    let deleting = std::thread::spawn(move || {
        if let Ok(mut connection) = client.get_connection() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    });
    let _ = deleting.join();
}
