//! [`NatsStore`]: dead letters in a JetStream stream that every instance of a service shares.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    Config as StreamConfig, LastRawMessageErrorKind, RetentionPolicy, StorageType, Stream,
};
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::failed;
use crate::dead_letter::{
    encoding, sequence, sequence_after, Claim, Claims, Cursor, DeadLetter, DeadLetterSink,
    DeadLetterStore, LetterFilter, LetterId, LetterPage, MalformedLetter, SinkFuture, StoreFuture,
    StoredLetter,
};
use crate::{Error, Event};

/// Where a [`NatsStore`] keeps its letters.
///
/// ```
/// use std::time::Duration;
/// use tower_listener::backends::nats::NatsStoreConfig;
///
/// let config = NatsStoreConfig { max_age: Some(Duration::from_secs(14 * 24 * 3600)), ..NatsStoreConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsStoreConfig {
    /// The dead-letter stream, created (Limits retention, file storage) if it does not exist. Default
    /// `"DEAD_LETTERS"`.
    pub stream: String,
    /// Letters are published on `<prefix>.<listener>`. Default `"dead-letters"`.
    pub subject_prefix: String,
    /// Replicas of the stream, in a cluster. Default 1.
    pub replicas: usize,
    /// Letters older than this are dropped by the server. Default `None`: kept until deleted.
    pub max_age: Option<Duration>,
}

impl Default for NatsStoreConfig {
    fn default() -> Self {
        NatsStoreConfig {
            stream: "DEAD_LETTERS".to_owned(),
            subject_prefix: "dead-letters".to_owned(),
            replicas: 1,
            max_age: None,
        }
    }
}

impl NatsStoreConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.stream.is_empty() || self.stream.contains(['.', ' ', '*', '>']) {
            return Err(Error::invalid_config(
                "stream",
                "must be a non-empty name without '.', ' ', '*' or '>'",
            ));
        }
        if self.subject_prefix.is_empty()
            || self.subject_prefix.contains([' ', '*', '>'])
            || self.subject_prefix.starts_with('.')
            || self.subject_prefix.ends_with('.')
        {
            return Err(Error::invalid_config(
                "subject_prefix",
                "must be a subject without wildcards, spaces or a leading or trailing '.'",
            ));
        }
        if self.replicas == 0 {
            return Err(Error::invalid_config("replicas", "must be at least 1"));
        }
        if let Some(age) = self.max_age {
            crate::error::check_duration("max_age", age)?;
        }
        Ok(())
    }
}

/// What [`NatsStore::republish`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepublishReport {
    /// Letters whose event was published again to its original subject, then deleted.
    pub republished: usize,
    /// Letters kept because they do not say where they came from (not from a NATS source).
    pub no_origin: usize,
    /// Entries kept because they do not decode (malformed payloads among them).
    pub undecodable: usize,
}

/// Dead letters in a JetStream stream: one message per letter, on `<prefix>.<listener>`, with headers
/// (`Tower-Listener-Listener`, `-Reason`, `-Attempts`, `-Error-Kind`, `-Origin-Subject`,
/// `-Origin-Sequence`, `-Failed-At`) and the letter's JSON record as its payload. Its ids are stream
/// sequences. Every instance of a service can list, get, redrive and delete them.
///
/// Durable when `append` returns: the server acknowledged the letter, so it is in the stream's file
/// storage (replicated to a quorum with `replicas` > 1), as durable as the server's own storage settings
/// make it (a lone server flushes to disk on its sync interval; a cluster does not depend on it).
///
/// ```no_run
/// use tower_listener::backends::nats::{connect, NatsStore, NatsStoreConfig};
/// use tower_listener::{DeadLetterConfig, ListenerConfig};
///
/// # async fn run() -> Result<(), tower_listener::Error> {
/// let client = connect("nats://127.0.0.1:4222").await?;
/// let store = NatsStore::open(client, NatsStoreConfig::default()).await?;
/// let config: ListenerConfig = ListenerConfig {
///     dead_letter: DeadLetterConfig::to_sink(store.clone()),
///     ..Default::default()
/// };
/// # let _ = config;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

struct Inner {
    context: Context,
    stream: Stream,
    config: NatsStoreConfig,
    claims: Claims,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("stream", &self.inner.config.stream)
            .finish_non_exhaustive()
    }
}

const LISTENER: &str = "Tower-Listener-Listener";
const REASON: &str = "Tower-Listener-Reason";
const ATTEMPTS: &str = "Tower-Listener-Attempts";
const ERROR_KIND: &str = "Tower-Listener-Error-Kind";
const ORIGIN_SUBJECT: &str = "Tower-Listener-Origin-Subject";
const ORIGIN_SEQUENCE: &str = "Tower-Listener-Origin-Sequence";
const FAILED_AT: &str = "Tower-Listener-Failed-At";

/// A listener's name as one subject token.
fn token(listener: &str) -> String {
    let token: String = listener
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

impl NatsStore {
    /// Opens the store, creating its stream if it does not exist.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad field; [`Error::Backend`] when the stream cannot be created or
    /// read, or exists with another retention than Limits (its letters could not all be listed).
    pub async fn open(client: async_nats::Client, config: NatsStoreConfig) -> Result<Self, Error> {
        config.validate()?;
        let context = async_nats::jetstream::new(client);
        let context_of = |what: &str| format!("dead-letter stream {}: {what}", config.stream);
        let mut stream = context
            .get_or_create_stream(StreamConfig {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: config.replicas,
                max_age: config.max_age.unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(|e| failed(context_of("cannot create or open it"), e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| failed(context_of("cannot read it"), e))?;
        if info.config.retention != RetentionPolicy::Limits {
            return Err(Error::backend(
                context_of("not a dead-letter stream"),
                format!(
                    "its retention is {:?}; dead letters need Limits",
                    info.config.retention
                ),
            ));
        }
        Ok(NatsStore {
            inner: Arc::new(Inner {
                context,
                stream,
                config,
                claims: Claims::new(),
            }),
        })
    }

    fn context(&self, what: &str) -> String {
        format!("dead-letter stream {}: {what}", self.inner.config.stream)
    }

    /// Publishes `payload` with `headers` on the listener's subject; resolves with its sequence once the
    /// server acknowledged it.
    fn publish(&self, listener: &str, headers: HeaderMap, payload: Vec<u8>) -> StoreFuture<u64> {
        let this = self.clone();
        let subject = format!("{}.{}", self.inner.config.subject_prefix, token(listener));
        Box::pin(async move {
            let context = this.context("cannot store a letter");
            let ack = this
                .inner
                .context
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(|e| failed(context.clone(), e))?
                .await
                .map_err(|e| failed(context, e))?;
            Ok(ack.sequence)
        })
    }

    /// The first message at or after `from` on `subject` (a filter), if any.
    async fn next(&self, from: u64, subject: &str) -> Result<Option<StreamMessage>, Error> {
        match self
            .inner
            .stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(failed(self.context("cannot read letters"), e)),
        }
    }

    /// The subject filter of letters of `listener` (all letters for `None`).
    fn filter_subject(&self, listener: Option<&str>) -> String {
        match listener {
            Some(listener) => format!("{}.{}", self.inner.config.subject_prefix, token(listener)),
            None => format!("{}.>", self.inner.config.subject_prefix),
        }
    }

    /// Walks the letters after `after` matching `filter`, calling `each` until it returns false.
    async fn walk(
        &self,
        filter: &LetterFilter,
        after: u64,
        mut each: impl FnMut(&StreamMessage) -> bool,
    ) -> Result<(), Error> {
        let subject = self.filter_subject(filter.listener.as_deref());
        let mut from = after.saturating_add(1);
        while let Some(message) = self.next(from, &subject).await? {
            from = message.sequence + 1;
            if encoding::matches(filter, &message.payload) && !each(&message) {
                break;
            }
        }
        Ok(())
    }

    /// Publishes each letter's event (as CloudEvents JSON) again to the subject it came from, with
    /// `Nats-Msg-Id` set from the letter so that two instances republishing the same letter publish it
    /// once (within the source stream's duplicate window), then deletes the letter. The event then flows
    /// through the source like any other. Up to `limit` letters matching `filter`; letters that do not
    /// say where they came from, or do not decode, are kept.
    ///
    /// # Errors
    /// [`Error::Backend`] when the stream cannot be read or a publish is not acknowledged (what was
    /// republished before stays republished).
    pub async fn republish<T>(
        &self,
        filter: LetterFilter,
        limit: usize,
    ) -> Result<RepublishReport, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut report = RepublishReport::default();
        let mut listed = Vec::new();
        self.walk(&filter, 0, |message| {
            listed.push(message.clone());
            listed.len() < limit
        })
        .await?;
        for message in listed {
            let stored: StoredLetter<T> = encoding::decode(
                LetterId::new(message.sequence.to_string()),
                &message.payload,
            );
            let Ok(letter) = stored.letter else {
                report.undecodable += 1;
                continue;
            };
            let Some(subject) = letter.origin.as_ref().and_then(|o| o.subject.clone()) else {
                report.no_origin += 1;
                continue;
            };
            let Some(_claim) = self.inner.claims.claim(&stored.id) else {
                continue;
            };
            let payload = serde_json::to_vec(&letter.request)
                .map_err(|e| failed(self.context("cannot encode an event"), e))?;
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("redrive:{}:{}", self.inner.config.stream, message.sequence).as_str(),
            );
            let context = self.context("cannot republish a letter");
            self.inner
                .context
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(|e| failed(context.clone(), e))?
                .await
                .map_err(|e| failed(context, e))?;
            self.remove(message.sequence).await?;
            report.republished += 1;
        }
        Ok(report)
    }

    async fn remove(&self, seq: u64) -> Result<bool, Error> {
        match self.inner.stream.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            Err(e) => match e.kind() {
                // Deleting what is not there: the server answers "no message found".
                async_nats::jetstream::stream::DeleteMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                        || js.error_code() == ErrorCode::NO_MESSAGE_FOUND
                        || (js.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                            && js.to_string().contains("no message found")) =>
                {
                    Ok(false)
                }
                _ => Err(failed(self.context("cannot delete a letter"), e)),
            },
        }
    }
}

fn headers<T>(letter: &DeadLetter<Event<T>>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(LISTENER, &*letter.listener);
    headers.insert(REASON, letter.reason.as_str());
    headers.insert(ATTEMPTS, letter.attempts.to_string().as_str());
    headers.insert(ERROR_KIND, letter.error.kind.as_str());
    if let Some(origin) = &letter.origin {
        if let Some(subject) = &origin.subject {
            headers.insert(ORIGIN_SUBJECT, subject.as_str());
        }
        headers.insert(ORIGIN_SEQUENCE, origin.sequence.as_str());
    }
    if let Ok(at) = crate::rfc3339::format(letter.dead_lettered_at) {
        headers.insert(FAILED_AT, at.as_str());
    }
    headers
}

impl<T> DeadLetterSink<Event<T>> for NatsStore
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn send(&self, letter: DeadLetter<Event<T>>) -> SinkFuture {
        let appending = DeadLetterStore::append(self, letter);
        Box::pin(async move { appending.await.map(drop).map_err(Into::into) })
    }

    fn send_malformed(&self, letter: MalformedLetter) -> SinkFuture {
        let payload = match encoding::encode_malformed(&self.inner.config.stream, &letter) {
            Ok(payload) => payload,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        };
        let mut headers = HeaderMap::new();
        headers.insert(LISTENER, &*letter.listener);
        headers.insert(REASON, "malformed");
        headers.insert(ERROR_KIND, "malformed");
        if let Some(origin) = &letter.origin {
            if let Some(subject) = &origin.subject {
                headers.insert(ORIGIN_SUBJECT, subject.as_str());
            }
            headers.insert(ORIGIN_SEQUENCE, origin.sequence.as_str());
        }
        let publishing = self.publish(&letter.listener, headers, payload);
        Box::pin(async move { publishing.await.map(drop).map_err(Into::into) })
    }
}

impl<T> DeadLetterStore<T> for NatsStore
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.inner.config.stream
    }

    fn append(&self, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        let payload = match encoding::encode(&self.inner.config.stream, &letter) {
            Ok(payload) => payload,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let publishing = self.publish(&letter.listener, headers(&letter), payload);
        Box::pin(async move { publishing.await.map(|seq| LetterId::new(seq.to_string())) })
    }

    fn get(&self, id: LetterId) -> StoreFuture<Option<StoredLetter<T>>> {
        let this = self.clone();
        Box::pin(async move {
            let Some(seq) = sequence(&id) else {
                return Ok(None);
            };
            let subject = this.filter_subject(None);
            match this.next(seq, &subject).await? {
                Some(message) if message.sequence == seq => {
                    Ok(Some(encoding::decode(id, &message.payload)))
                }
                _ => Ok(None),
            }
        })
    }

    fn list(
        &self,
        filter: LetterFilter,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<LetterPage<T>> {
        let this = self.clone();
        Box::pin(async move {
            let after = sequence_after(after.as_ref())?;
            let mut letters = Vec::new();
            let mut more = false;
            this.walk(&filter, after, |message| {
                if letters.len() == limit {
                    more = true;
                    return false;
                }
                letters.push(encoding::decode(
                    LetterId::new(message.sequence.to_string()),
                    &message.payload,
                ));
                true
            })
            .await?;
            Ok(LetterPage::of(letters, more))
        })
    }

    fn delete(&self, id: LetterId) -> StoreFuture<bool> {
        let this = self.clone();
        Box::pin(async move {
            match sequence(&id) {
                Some(seq) => this.remove(seq).await,
                None => Ok(false),
            }
        })
    }

    fn replace(&self, id: LetterId, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        // A stream is append-only: the new letter first, then the old one goes (a crash between keeps
        // both, never neither).
        let appending = DeadLetterStore::append(self, letter);
        let this = self.clone();
        Box::pin(async move {
            let new = appending.await?;
            if let Some(seq) = sequence(&id) {
                this.remove(seq).await?;
            }
            Ok(new)
        })
    }

    fn count(&self, filter: LetterFilter) -> StoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            if filter.is_all() {
                let info = this
                    .inner
                    .stream
                    .get_info()
                    .await
                    .map_err(|e| failed(this.context("cannot read it"), e))?;
                return Ok(info.state.messages);
            }
            let mut count = 0;
            this.walk(&filter, 0, |_| {
                count += 1;
                true
            })
            .await?;
            Ok(count)
        })
    }

    fn oldest(&self) -> StoreFuture<Option<SystemTime>> {
        let this = self.clone();
        Box::pin(async move {
            // Letters are appended as they fail, but a replaced letter moves to the end with its old
            // time kept, so every letter is read (one request each).
            let mut oldest: Option<SystemTime> = None;
            this.walk(&LetterFilter::all(), 0, |message| {
                if let Some(meta) = encoding::meta(&message.payload) {
                    let at = meta.dead_lettered_at;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
                true
            })
            .await?;
            Ok(oldest)
        })
    }

    fn claim(&self, id: &LetterId) -> Option<Claim> {
        self.inner.claims.claim(id)
    }
}
