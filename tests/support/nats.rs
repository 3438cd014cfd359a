//! NATS for the tests: the project's server (or `TOWER_LISTENER_NATS_URL`), a stream named uniquely per
//! test run and deleted after it, and skipping (with the reason printed) when no server is reachable,
//! unless `TOWER_LISTENER_BROKERS=required`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;

pub fn url() -> String {
    std::env::var("TOWER_LISTENER_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn required() -> bool {
    super::brokers_required()
}

/// A client, or `None` (after saying why) when NATS is unreachable and not required.
pub async fn client() -> Option<async_nats::Client> {
    let url = url();
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url.as_str());
    match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(client)) => Some(client),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            assert!(
                !required(),
                "NATS at {} is required (TOWER_LISTENER_BROKERS=required) but unreachable: {why}",
                tower_listener::backends::nats::redacted(&url)
            );
            eprintln!(
                "skipped: NATS at {} is unreachable ({why}); set TOWER_LISTENER_NATS_URL, or \
                 TOWER_LISTENER_BROKERS=required to fail instead",
                tower_listener::backends::nats::redacted(&url)
            );
            None
        }
    }
}

/// A name unique to this test and run: `TL_<test>_<pid>_<nanos>`.
pub fn unique(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "TL_{}_{}_{nanos}",
        test.to_uppercase().replace(['-', '.', ' '], "_"),
        std::process::id()
    )
}

/// Deletes streams of earlier runs (named `TL_…`) that are more than ten minutes old: a run that
/// crashed before its cleanup does not leave them for ever.
pub async fn sweep(context: &Context) {
    use futures_util::StreamExt;
    let mut names = context.stream_names();
    let mut old = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if !name.starts_with("TL_") {
            continue;
        }
        if let Ok(info) = context
            .get_stream(&name)
            .await
            .map(|s| s.cached_info().clone())
        {
            let created: SystemTime = info.created.into();
            if created
                .elapsed()
                .is_ok_and(|age| age > Duration::from_secs(600))
            {
                old.push(name);
            }
        }
    }
    for name in old {
        let _ = context.delete_stream(&name).await;
    }
}

/// A fresh stream `name` on `subject` (Limits retention, file storage).
pub async fn stream(context: &Context, name: &str, subject: &str) {
    context
        .create_stream(Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Deletes stream `name` from a thread of its own (for `Drop`, which cannot await).
pub fn delete_later(context: Context, name: String) {
    let deleting = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), context.delete_stream(&name)).await;
        });
    });
    let _ = deleting.join();
}
