//! [`RedisStore`]: dead letters in a Redis stream that every instance of a service shares.

use std::sync::Arc;
use std::time::SystemTime;

use redis::aio::ConnectionManager;
use redis::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{entries, failed, is_entry_id, manager, Fields};
use crate::dead_letter::{
    encoding, Claim, Claims, Cursor, DeadLetter, DeadLetterSink, DeadLetterStore, LetterFilter,
    LetterId, LetterPage, MalformedLetter, Origin, SinkFuture, StoreFuture, StoredLetter,
};
use crate::{Error, Event};

/// Where a [`RedisStore`] keeps its letters.
///
/// ```
/// use tower_listener::backends::redis::RedisStoreConfig;
///
/// let config = RedisStoreConfig { key: "orders:dead-letters".into() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// The dead-letter stream's key. Default `"dead-letters"`.
    pub key: String,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            key: "dead-letters".to_owned(),
        }
    }
}

impl RedisStoreConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.key.is_empty() {
            return Err(Error::invalid_config("key", "must not be empty"));
        }
        Ok(())
    }
}

/// Dead letters in a Redis stream: one entry per letter, with the fields `letter` (its JSON record),
/// `listener`, `reason`, `attempts`, `error_kind`, `failed_at` and, for an event from Redis,
/// `origin_stream` and `origin_id`. Its ids are the entry ids. Every instance of a service can list,
/// get, redrive and delete them.
///
/// A letter of an event that came from a Redis stream is stored and its source entry acknowledged in one
/// `MULTI`/`EXEC`: a crash can leave neither or both done, never a stored letter whose event is
/// delivered again. **As durable as the Redis server's persistence settings**: with `appendonly yes` and
/// `appendfsync always` a letter whose `append` returned survives a crash of the server; without
/// persistence a restart of the server loses every letter.
///
/// ```no_run
/// use tower_listener::backends::redis::{client, RedisStore, RedisStoreConfig};
/// use tower_listener::{DeadLetterConfig, ListenerConfig};
///
/// # async fn run() -> Result<(), tower_listener::Error> {
/// let store = RedisStore::open(&client("redis://127.0.0.1:6379")?, RedisStoreConfig::default()).await?;
/// let config: ListenerConfig = ListenerConfig {
///     dead_letter: DeadLetterConfig::to_sink(store.clone()),
///     ..Default::default()
/// };
/// # let _ = config;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    key: String,
    claims: Claims,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

/// Letters read per request while walking the stream.
const PAGE: usize = 256;

impl RedisStore {
    /// Opens the store (the stream is created by its first letter).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad field; [`Error::Backend`] when Redis cannot be reached.
    pub async fn open(client: &redis::Client, config: RedisStoreConfig) -> Result<Self, Error> {
        config.validate()?;
        let connection = manager(client, Some(std::time::Duration::from_secs(5))).await?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                key: config.key,
                claims: Claims::new(),
            }),
        })
    }

    fn context(&self, what: &str) -> String {
        format!("dead-letter stream {}: {what}", self.inner.key)
    }

    fn connection(&self) -> ConnectionManager {
        self.inner.connection.clone()
    }

    /// The `XADD` of a letter's fields, and the `XACK` of its source entry when it came from Redis, in one
    /// transaction; optionally the `XDEL` of the letter it replaces. Resolves with the new entry's id.
    fn store(
        &self,
        fields: Vec<(&'static str, Vec<u8>)>,
        origin: Option<&Origin>,
        replaces: Option<String>,
    ) -> StoreFuture<LetterId> {
        let mut transaction = redis::pipe();
        transaction.atomic();
        let xadd = transaction.cmd("XADD").arg(&self.inner.key).arg("*");
        for (field, value) in &fields {
            xadd.arg(*field).arg(value.as_slice());
        }
        if let Some(origin) = origin.filter(|o| &*o.broker == "redis") {
            if let Some(group) = &origin.group {
                transaction
                    .cmd("XACK")
                    .arg(&*origin.stream)
                    .arg(group)
                    .arg(&origin.sequence)
                    .ignore();
            }
        }
        if let Some(old) = replaces {
            transaction
                .cmd("XDEL")
                .arg(&self.inner.key)
                .arg(old)
                .ignore();
        }
        let (mut connection, context) = (self.connection(), self.context("cannot store a letter"));
        Box::pin(async move {
            let (id,): (String,) = transaction
                .query_async(&mut connection)
                .await
                .map_err(|e| failed(context, e))?;
            Ok(LetterId::new(id))
        })
    }

    /// Entries after `after` (exclusive; from the start for `None`), `count` at most.
    async fn range(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, Fields)>, Error> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.inner.key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.connection())
            .await
            .map_err(|e| failed(self.context("cannot read letters"), e))?;
        Ok(entries(&reply))
    }

    /// Walks the letters after `after` matching `filter`, calling `each` (with the id and the letter's
    /// bytes) until it returns false.
    async fn walk(
        &self,
        filter: &LetterFilter,
        after: Option<String>,
        mut each: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), Error> {
        let mut after = after;
        loop {
            let page = self.range(after.as_deref(), PAGE).await?;
            let Some(last) = page.last().map(|(id, _)| id.clone()) else {
                return Ok(());
            };
            for (id, fields) in &page {
                let letter = letter_bytes(fields);
                if encoding::matches(filter, letter) && !each(id, letter) {
                    return Ok(());
                }
            }
            if page.len() < PAGE {
                return Ok(());
            }
            after = Some(last);
        }
    }

    /// Appends each letter's event (as CloudEvents JSON, in the `event` field) back to the stream it came
    /// from and deletes the letter, both in one transaction; up to `limit` letters matching `filter`.
    /// Letters not from a Redis stream, or that do not decode, are kept. Returns how many went back.
    ///
    /// # Errors
    /// [`Error::Backend`] when the stream cannot be read or a transaction fails (what went back before
    /// stays back).
    pub async fn republish<T>(&self, filter: LetterFilter, limit: usize) -> Result<usize, Error>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut listed = Vec::new();
        self.walk(&filter, None, |id, letter| {
            listed.push((id.to_owned(), letter.to_vec()));
            listed.len() < limit
        })
        .await?;
        let mut republished = 0;
        for (id, bytes) in listed {
            let stored: StoredLetter<T> = encoding::decode(LetterId::new(id.as_str()), &bytes);
            let Ok(letter) = stored.letter else { continue };
            let Some(origin) = letter.origin.as_ref().filter(|o| &*o.broker == "redis") else {
                continue;
            };
            let Some(_claim) = self.inner.claims.claim(&stored.id) else {
                continue;
            };
            let event = serde_json::to_vec(&letter.request)
                .map_err(|e| failed(self.context("cannot encode an event"), e))?;
            let mut transaction = redis::pipe();
            transaction
                .atomic()
                .cmd("XADD")
                .arg(&*origin.stream)
                .arg("*")
                .arg("event")
                .arg(event)
                .ignore()
                .cmd("XDEL")
                .arg(&self.inner.key)
                .arg(&id)
                .ignore();
            let _: () = transaction
                .query_async(&mut self.connection())
                .await
                .map_err(|e| failed(self.context("cannot republish a letter"), e))?;
            republished += 1;
        }
        Ok(republished)
    }
}

/// The `letter` field of an entry (empty when there is none).
fn letter_bytes(fields: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
    fields
        .iter()
        .find(|(k, _)| k == b"letter")
        .map_or(&[][..], |(_, v)| v.as_slice())
}

/// The fields of an entry for `letter` (its JSON record in `bytes`).
fn fields<T>(letter: &DeadLetter<Event<T>>, bytes: Vec<u8>) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        ("letter", bytes),
        ("listener", letter.listener.as_bytes().to_vec()),
        ("reason", letter.reason.as_str().as_bytes().to_vec()),
        ("attempts", letter.attempts.to_string().into_bytes()),
        ("error_kind", letter.error.kind.clone().into_bytes()),
    ];
    if let Ok(at) = crate::rfc3339::format(letter.dead_lettered_at) {
        fields.push(("failed_at", at.into_bytes()));
    }
    if let Some(origin) = &letter.origin {
        fields.push(("origin_stream", origin.stream.as_bytes().to_vec()));
        fields.push(("origin_id", origin.sequence.clone().into_bytes()));
    }
    fields
}

impl<T> DeadLetterSink<Event<T>> for RedisStore
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn send(&self, letter: DeadLetter<Event<T>>) -> SinkFuture {
        let appending = DeadLetterStore::append(self, letter);
        Box::pin(async move { appending.await.map(drop).map_err(Into::into) })
    }

    fn send_malformed(&self, letter: MalformedLetter) -> SinkFuture {
        let bytes = match encoding::encode_malformed(&self.inner.key, &letter) {
            Ok(bytes) => bytes,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        };
        let mut fields = vec![
            ("letter", bytes),
            ("listener", letter.listener.as_bytes().to_vec()),
            ("reason", b"malformed".to_vec()),
        ];
        if let Some(origin) = &letter.origin {
            fields.push(("origin_stream", origin.stream.as_bytes().to_vec()));
            fields.push(("origin_id", origin.sequence.clone().into_bytes()));
        }
        let storing = self.store(fields, letter.origin.as_ref(), None);
        Box::pin(async move { storing.await.map(drop).map_err(Into::into) })
    }
}

impl<T> DeadLetterStore<T> for RedisStore
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.inner.key
    }

    fn append(&self, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        match encoding::encode(&self.inner.key, &letter) {
            Ok(bytes) => self.store(fields(&letter, bytes), letter.origin.as_ref(), None),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn get(&self, id: LetterId) -> StoreFuture<Option<StoredLetter<T>>> {
        let this = self.clone();
        Box::pin(async move {
            if !is_entry_id(id.as_str()) {
                return Ok(None);
            }
            let reply: Value = redis::cmd("XRANGE")
                .arg(&this.inner.key)
                .arg(id.as_str())
                .arg(id.as_str())
                .query_async(&mut this.connection())
                .await
                .map_err(|e| failed(this.context("cannot read a letter"), e))?;
            Ok(entries(&reply)
                .first()
                .map(|(_, fields)| encoding::decode(id.clone(), letter_bytes(fields))))
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
            let after = match after {
                Some(cursor) if is_entry_id(cursor.as_str()) => Some(cursor.as_str().to_owned()),
                Some(_) => {
                    return Err(Error::invalid_config(
                        "cursor",
                        "is not a cursor of this dead-letter store",
                    ))
                }
                None => None,
            };
            let (mut letters, mut more) = (Vec::new(), false);
            this.walk(&filter, after, |id, letter| {
                if letters.len() == limit {
                    more = true;
                    return false;
                }
                letters.push(encoding::decode(LetterId::new(id), letter));
                true
            })
            .await?;
            Ok(LetterPage::of(letters, more))
        })
    }

    fn delete(&self, id: LetterId) -> StoreFuture<bool> {
        let this = self.clone();
        Box::pin(async move {
            if !is_entry_id(id.as_str()) {
                return Ok(false);
            }
            let deleted: i64 = redis::cmd("XDEL")
                .arg(&this.inner.key)
                .arg(id.as_str())
                .query_async(&mut this.connection())
                .await
                .map_err(|e| failed(this.context("cannot delete a letter"), e))?;
            Ok(deleted > 0)
        })
    }

    fn replace(&self, id: LetterId, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        // A stream entry cannot change: the new letter and the deletion of the old, in one transaction.
        let replaces = is_entry_id(id.as_str()).then(|| id.as_str().to_owned());
        match encoding::encode(&self.inner.key, &letter) {
            Ok(bytes) => self.store(fields(&letter, bytes), None, replaces),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn count(&self, filter: LetterFilter) -> StoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            if filter.is_all() {
                return redis::cmd("XLEN")
                    .arg(&this.inner.key)
                    .query_async(&mut this.connection())
                    .await
                    .map_err(|e| failed(this.context("cannot count letters"), e));
            }
            let mut count = 0;
            this.walk(&filter, None, |_, _| {
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
            let mut oldest: Option<SystemTime> = None;
            this.walk(&LetterFilter::all(), None, |_, letter| {
                if let Some(meta) = encoding::meta(letter) {
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
