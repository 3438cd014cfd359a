//! Integrations with stores and brokers, one module per integration, each behind its feature. A backend
//! knows the [`DeadLetterStore`](crate::dead_letter::DeadLetterStore) trait and its client crate; the
//! core never names a backend, so a feature switched off leaves no trace.

#[cfg(feature = "redb")]
pub mod redb;

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

/// `url` without its user name and password: what may be shown in logs and errors (a broker's URL can
/// carry credentials, and none of this crate's messages shows them).
///
/// ```
/// use tower_listener::backends::redacted;
///
/// assert_eq!(redacted("nats://app:s3cret@10.0.0.7:4222"), "nats://***@10.0.0.7:4222");
/// assert_eq!(redacted("redis://:s3cret@cache:6379/0"), "redis://***@cache:6379/0");
/// assert_eq!(redacted("nats://10.0.0.7:4222,nats://u:p@10.0.0.8"), "nats://10.0.0.7:4222,nats://***@10.0.0.8");
/// ```
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = one.split_once("://").unwrap_or(("", one));
            let shown = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            if scheme.is_empty() {
                shown
            } else {
                format!("{scheme}://{shown}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
