//! [`DeadLetterStore`]: where dead letters are kept, so that they can be listed, inspected, redriven and
//! deleted, by this process or, for durable stores, after a restart or from another instance.
//!
//! Every store is also a [`DeadLetterSink`], so a listener's
//! [`DeadLetterConfig`](super::DeadLetterConfig) takes one directly: a failed event is appended, and the
//! append returns only once the letter is as durable as the store makes it. The stores:
//!
//! - [`DeadLetterQueue`](super::DeadLetterQueue): in memory, bounded, lost on exit (tests, the default).
//! - `RedbStore` (feature `redb`, on by default): one file on the local disk, fsynced, with group commit.
//! - Broker-backed stores (features `nats`, `redis`) that every instance of a service shares.
//!
//! Redrive them with [`ListenerManager::redrive`](crate::ListenerManager::redrive), or over HTTP with
//! the operator endpoints of `http::dead_letter_router` (feature `axum`).
//!
//! **How it fails.** A store's operations return [`Error::Backend`] naming the store and what failed. A
//! stored letter that no longer decodes into the listener's payload type is returned as an
//! [`Undecodable`] entry with its raw bytes, never dropped.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::sink::{DeadLetter, DeadLetterReason, DeadLetterSink};
use crate::{Error, Event};

/// The future of a store operation: `'static`, so it can be spawned or held across awaits freely.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// A letter's id in its store: opaque text (a sequence number, a stream entry id), stable for as long as
/// the letter is stored.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct LetterId(Arc<str>);

impl LetterId {
    /// An id from its text.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        LetterId(id.into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LetterId({:?})", &*self.0)
    }
}

/// Where a listing resumes: the position after the last letter of a page (opaque; only the store that
/// made it reads it).
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Cursor(String);

impl Cursor {
    /// A cursor from its text (as a page's [`next`](LetterPage::next) gave it).
    pub fn new(text: impl Into<String>) -> Self {
        Cursor(text.into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({:?})", self.0)
    }
}

/// Which letters a listing, a count or a redrive is about. Every condition that is set must hold; the
/// time range is on [`dead_lettered_at`](DeadLetter::dead_lettered_at), `since` included, `until` not.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_listener::dead_letter::LetterFilter;
/// use tower_listener::DeadLetterReason;
///
/// let last_hour = LetterFilter::all()
///     .listener("payments")
///     .reason(DeadLetterReason::Exhausted)
///     .since(SystemTime::now() - Duration::from_secs(3600));
/// assert!(!last_hour.is_all());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LetterFilter {
    /// Only letters of this listener (its name, as in [`DeadLetter::listener`]).
    pub listener: Option<String>,
    /// Only letters dead-lettered for this reason.
    pub reason: Option<DeadLetterReason>,
    /// Only letters dead-lettered at or after this time.
    pub since: Option<SystemTime>,
    /// Only letters dead-lettered before this time.
    pub until: Option<SystemTime>,
}

impl LetterFilter {
    /// Every letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the letters of `listener`.
    pub fn listener(mut self, listener: impl Into<String>) -> Self {
        self.listener = Some(listener.into());
        self
    }

    /// Only the letters dead-lettered for `reason`.
    pub fn reason(mut self, reason: DeadLetterReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Only the letters dead-lettered at or after `since`.
    pub fn since(mut self, since: SystemTime) -> Self {
        self.since = Some(since);
        self
    }

    /// Only the letters dead-lettered before `until`.
    pub fn until(mut self, until: SystemTime) -> Self {
        self.until = Some(until);
        self
    }

    /// True when no condition is set.
    pub fn is_all(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `letter` matches.
    pub fn matches<R>(&self, letter: &DeadLetter<R>) -> bool {
        self.matches_parts(&letter.listener, letter.reason, letter.dead_lettered_at)
    }

    /// Whether a letter of `listener`, dead-lettered for `reason` at `at`, matches.
    pub fn matches_parts(&self, listener: &str, reason: DeadLetterReason, at: SystemTime) -> bool {
        self.listener.as_deref().is_none_or(|l| l == listener)
            && self.reason.is_none_or(|r| r == reason)
            && self.since.is_none_or(|since| at >= since)
            && self.until.is_none_or(|until| at < until)
    }

    /// Whether an undecodable entry matches: by what could be read of it; one of which nothing could be
    /// read matches only a filter with no condition (it is never hidden from a full listing).
    pub fn matches_undecodable(&self, entry: &Undecodable) -> bool {
        match (&entry.listener, entry.reason, entry.dead_lettered_at) {
            (Some(listener), Some(reason), Some(at)) => self.matches_parts(listener, reason, at),
            _ => self.is_all(),
        }
    }
}

/// A stored entry that no longer decodes into a dead letter of the listener's payload type (the type
/// changed since it was stored, or the bytes are damaged): kept, and listed, with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Undecodable {
    /// The bytes as stored.
    pub raw: Vec<u8>,
    /// Why they do not decode.
    pub error: String,
    /// The listener, when that much could be read.
    pub listener: Option<String>,
    /// The reason, when that much could be read.
    pub reason: Option<DeadLetterReason>,
    /// The dead-letter time, when that much could be read.
    pub dead_lettered_at: Option<SystemTime>,
}

/// One stored entry: its id, and the letter (or, when it no longer decodes, what is left of it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLetter<T> {
    /// Its id in the store.
    pub id: LetterId,
    /// The letter, or the undecodable entry.
    pub letter: Result<DeadLetter<Event<T>>, Undecodable>,
}

impl<T> StoredLetter<T> {
    /// The letter, when it decodes.
    pub fn decoded(&self) -> Option<&DeadLetter<Event<T>>> {
        self.letter.as_ref().ok()
    }
}

/// One page of a listing, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct LetterPage<T> {
    /// The letters of this page.
    pub letters: Vec<StoredLetter<T>>,
    /// Where the next page starts; `None` when this is the last.
    pub next: Option<Cursor>,
}

impl<T> LetterPage<T> {
    /// A page of `letters`, the first of their listing's order; `more` when letters follow them, so that
    /// the next page starts after the last of these.
    pub(crate) fn of(letters: Vec<StoredLetter<T>>, more: bool) -> Self {
        let next = match letters.last() {
            Some(last) if more => Some(Cursor::new(last.id.as_str())),
            _ => None,
        };
        LetterPage { letters, next }
    }
}

/// The set of letters being redriven in this process: a redrive claims each letter before it runs it,
/// so two redrives at once never run one letter twice. Stores keep one and hand out [`Claim`]s from it.
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashSet<LetterId>>>);

impl Claims {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `id`, or `None` when it is claimed already.
    pub fn claim(&self, id: &LetterId) -> Option<Claim> {
        // Nothing panics while this lock is held; a poisoned set is still a whole set.
        let mut claimed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        claimed.insert(id.clone()).then(|| Claim {
            claims: self.clone(),
            id: id.clone(),
        })
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let claimed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Claims")
            .field("claimed", &claimed.len())
            .finish()
    }
}

/// A claim on one letter; dropping it releases the letter.
#[derive(Debug)]
pub struct Claim {
    claims: Claims,
    id: LetterId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Where dead letters of events with payload `T` are kept, listed, inspected and deleted.
///
/// Every operation returns a `'static` future (stores are cheap handles to shared state). Letters are
/// listed oldest first (in the order they were appended) and a listing resumes from a [`Cursor`].
///
/// ```
/// use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
/// use tower_listener::{DeadLetter, DeadLetterQueue, DeadLetterReason, Error, Event};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let store = DeadLetterQueue::<Event>::new(100); // any store: in memory here, a file or a broker in production
/// for n in 0..3 {
///     let event = Event::new(format!("o-{n}"), "order.created", serde_json::json!({"n": n}));
///     store.append(DeadLetter::new(event, Error::Overloaded, "orders", 1, DeadLetterReason::Overloaded)).await?;
/// }
/// // (`DeadLetterQueue` has an inherent `list()` of its own: name the trait's.)
/// let page = DeadLetterStore::list(&store, LetterFilter::all().listener("orders"), None, 2).await?;
/// assert_eq!(page.letters.len(), 2);
/// let rest = DeadLetterStore::list(&store, LetterFilter::all(), page.next, 2).await?;
/// assert_eq!(rest.letters[0].decoded().unwrap().request.id(), "o-2");
/// assert_eq!(store.count(LetterFilter::all()).await?, 3);
/// assert!(store.delete(rest.letters[0].id.clone()).await?);
/// # Ok(()) }
/// ```
pub trait DeadLetterStore<T>: DeadLetterSink<Event<T>> {
    /// A short name for logs and metrics labels (`"memory"`, `"redb"`, a stream name).
    fn name(&self) -> &str;

    /// Stores a letter; resolves once it is as durable as this store makes it, with its id.
    fn append(&self, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId>;

    /// The letter with this id, if stored.
    fn get(&self, id: LetterId) -> StoreFuture<Option<StoredLetter<T>>>;

    /// Up to `limit` letters matching `filter`, oldest first, after `after` (from the previous page's
    /// [`next`](LetterPage::next)), or from the start.
    fn list(
        &self,
        filter: LetterFilter,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<LetterPage<T>>;

    /// Removes the letter; `false` when it was not stored.
    fn delete(&self, id: LetterId) -> StoreFuture<bool>;

    /// Replaces the letter stored under `id` with `letter` (after a failed redrive: one more attempt, the
    /// new error); resolves with the letter's id, which a store that cannot update in place changes (it
    /// appends the new letter first, then deletes the old one, so a crash between keeps both rather than
    /// neither).
    fn replace(&self, id: LetterId, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId>;

    /// How many letters match `filter`.
    fn count(&self, filter: LetterFilter) -> StoreFuture<u64>;

    /// When the oldest stored letter was dead-lettered; `None` when the store is empty.
    fn oldest(&self) -> StoreFuture<Option<SystemTime>>;

    /// Claims a letter for a redrive in this process (see [`Claims`]); `None` when another redrive holds
    /// it.
    fn claim(&self, id: &LetterId) -> Option<Claim>;
}

/// For stores whose ids are sequence numbers (the queue, redb): the number in `id`.
pub(crate) fn sequence(id: &LetterId) -> Option<u64> {
    id.as_str().parse().ok()
}

/// For stores whose ids are sequence numbers: the sequence a listing resumes after (0 from the start).
pub(crate) fn sequence_after(after: Option<&Cursor>) -> Result<u64, Error> {
    match after.map(|c| c.as_str().parse::<u64>()) {
        None => Ok(0),
        Some(Ok(after)) => Ok(after),
        Some(Err(_)) => Err(Error::invalid_config(
            "cursor",
            "is not a cursor of this dead-letter store",
        )),
    }
}

/// How the stores that keep bytes (a file, a broker) encode a letter, and read one back. JSON: readable by
/// people and by every other tool, and what the CloudEvents form of the event already is.
#[cfg(feature = "serde")]
pub(crate) mod encoding {
    use std::time::SystemTime;

    use std::sync::Arc;

    use super::{LetterFilter, LetterId, StoredLetter, Undecodable};
    use crate::dead_letter::{DeadLetter, DeadLetterReason, MalformedLetter, Origin};
    use crate::{Error, ErrorRecord, Event};

    /// The letter as bytes.
    pub(crate) fn encode<T: serde::Serialize>(
        store: &str,
        letter: &DeadLetter<Event<T>>,
    ) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(letter).map_err(|e| {
            Error::backend(
                format!(
                    "dead-letter store {store}: cannot encode the letter of event {:?}",
                    letter.request.id()
                ),
                e,
            )
        })
    }

    /// A malformed payload as stored: the letter's fields around the payload, which is kept as text when
    /// it is UTF-8 (`payload`) and as bytes otherwise (`payload_bytes`).
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Malformed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload_bytes: Option<Vec<u8>>,
        error: ErrorRecord,
        listener: Arc<str>,
        attempts: u32,
        #[serde(with = "crate::rfc3339")]
        dead_lettered_at: SystemTime,
        reason: DeadLetterReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    }

    /// The malformed letter as bytes.
    pub(crate) fn encode_malformed(
        store: &str,
        letter: &MalformedLetter,
    ) -> Result<Vec<u8>, Error> {
        let (payload, payload_bytes) = match std::str::from_utf8(&letter.payload) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(letter.payload.clone())),
        };
        let stored = Malformed {
            payload,
            payload_bytes,
            error: letter.error.clone(),
            listener: letter.listener.clone(),
            attempts: 0,
            dead_lettered_at: letter.dead_lettered_at,
            reason: DeadLetterReason::Malformed,
            origin: letter.origin.clone(),
        };
        serde_json::to_vec(&stored).map_err(|e| {
            Error::backend(
                format!("dead-letter store {store}: cannot encode a malformed payload"),
                e,
            )
        })
    }

    /// What a filter looks at, read without decoding the event.
    #[derive(serde::Deserialize)]
    pub(crate) struct Meta {
        pub(crate) listener: String,
        pub(crate) reason: DeadLetterReason,
        #[serde(with = "crate::rfc3339")]
        pub(crate) dead_lettered_at: SystemTime,
    }

    /// The parts of an entry a filter looks at; `None` when even they do not decode.
    pub(crate) fn meta(raw: &[u8]) -> Option<Meta> {
        serde_json::from_slice(raw).ok()
    }

    /// Whether the entry matches `filter`, decoding only what the filter needs.
    pub(crate) fn matches(filter: &LetterFilter, raw: &[u8]) -> bool {
        if filter.is_all() {
            return true;
        }
        meta(raw).is_some_and(|m| filter.matches_parts(&m.listener, m.reason, m.dead_lettered_at))
    }

    /// The stored entry `raw` under `id`: the letter, or an undecodable entry with what could be read.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        id: LetterId,
        raw: &[u8],
    ) -> StoredLetter<T> {
        let letter = serde_json::from_slice::<DeadLetter<Event<T>>>(raw).map_err(|error| {
            // A malformed payload: undecodable by nature, and its raw bytes are the payload.
            if let Ok(malformed) = serde_json::from_slice::<Malformed>(raw) {
                if let Some(payload) = malformed
                    .payload
                    .map(String::into_bytes)
                    .or(malformed.payload_bytes)
                {
                    return Undecodable {
                        raw: payload,
                        error: malformed.error.message,
                        listener: Some(malformed.listener.to_string()),
                        reason: Some(malformed.reason),
                        dead_lettered_at: Some(malformed.dead_lettered_at),
                    };
                }
            }
            let meta = meta(raw);
            Undecodable {
                raw: raw.to_vec(),
                error: error.to_string(),
                listener: meta.as_ref().map(|m| m.listener.clone()),
                reason: meta.as_ref().map(|m| m.reason),
                dead_lettered_at: meta.as_ref().map(|m| m.dead_lettered_at),
            }
        });
        StoredLetter { id, letter }
    }
}
