//! [`DeadLetterQueue`]: a bounded in-memory sink that can be listed, drained and redriven.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tower::{BoxError, Service, ServiceExt};

use super::sink::{DeadLetter, DeadLetterReason, DeadLetterSink, MalformedLetter, SinkFuture};
use super::store::{
    sequence, sequence_after, Claim, Claims, Cursor, DeadLetterStore, LetterFilter, LetterId,
    LetterPage, StoreFuture, StoredLetter, Undecodable,
};
use crate::{Error, ErrorRecord, Event};

/// A bounded, in-memory dead-letter queue. Clones share one queue.
///
/// When it is full a new letter is refused: the sink reports a failure, which the dead-letter layer counts
/// in `dead_letter_failures` and logs. Letters are never evicted silently.
///
/// It is a [`DeadLetterStore`] too (for events), with ids `"1"`, `"2"`, … in the order letters arrived: so
/// tests, and services that can afford to lose their letters on exit, use the same listing, redrive and
/// HTTP endpoints as with a durable store.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_listener::{DeadLetterLayer, DeadLetterQueue, Error};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let queue = DeadLetterQueue::new(100);
/// let svc = ServiceBuilder::new()
///     .layer(DeadLetterLayer::with_sink(queue.clone()))
///     .service(service_fn(|n: u32| async move {
///         if n == 7 { Err(Error::handler(std::fmt::Error)) } else { Ok(n) }
///     }));
/// assert!(svc.clone().oneshot(7).await.is_err());
/// assert_eq!(queue.len(), 1);
///
/// // The dependency is fixed: redrive through a handler that now succeeds.
/// let report = queue.redrive(service_fn(|n: u32| async move { Ok::<_, Error>(n) })).await;
/// assert_eq!((report.succeeded, report.failed), (1, 0));
/// assert!(queue.is_empty());
/// # }
/// ```
pub struct DeadLetterQueue<R> {
    inner: Arc<Inner<R>>,
}

struct Inner<R> {
    /// Oldest first, ids ascending.
    letters: Mutex<VecDeque<(u64, Entry<R>)>>,
    next_id: AtomicU64,
    capacity: usize,
    claims: Claims,
}

/// A letter, or a payload a source could not decode.
enum Entry<R> {
    Letter(DeadLetter<R>),
    Malformed(MalformedLetter),
}

impl<R> Entry<R> {
    fn letter(&self) -> Option<&DeadLetter<R>> {
        match self {
            Entry::Letter(letter) => Some(letter),
            Entry::Malformed(_) => None,
        }
    }

    fn dead_lettered_at(&self) -> SystemTime {
        match self {
            Entry::Letter(letter) => letter.dead_lettered_at,
            Entry::Malformed(letter) => letter.dead_lettered_at,
        }
    }

    fn matches(&self, filter: &LetterFilter) -> bool {
        match self {
            Entry::Letter(letter) => filter.matches(letter),
            Entry::Malformed(letter) => filter.matches_parts(
                &letter.listener,
                DeadLetterReason::Malformed,
                letter.dead_lettered_at,
            ),
        }
    }
}

/// What a redrive did.
///
/// ```
/// use tower_listener::RedriveReport;
///
/// let report = RedriveReport::default();
/// assert!(report.completed());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct RedriveReport {
    /// Letters that succeeded and were removed.
    pub succeeded: usize,
    /// Letters that failed again and were kept (with the new error and one more attempt).
    pub failed: usize,
    /// Letters skipped because another redrive was running them.
    pub in_progress: usize,
    /// Entries skipped because they no longer decode into a letter of the listener's payload type (kept,
    /// and listed with their raw bytes).
    pub undecodable: usize,
    /// Letters not run because the redrive stopped (at a rejection, the rejected letter included, or at
    /// a failing store); all kept as they were.
    pub not_run: usize,
    /// What stopped the redrive, if something did: a rejection (an open breaker, an overloaded listener)
    /// or the store's own error.
    pub stopped_by: Option<ErrorRecord>,
}

impl RedriveReport {
    /// True when every letter was run (none left because of a rejection).
    pub fn completed(&self) -> bool {
        self.stopped_by.is_none()
    }
}

impl<R> Clone for DeadLetterQueue<R> {
    fn clone(&self) -> Self {
        DeadLetterQueue {
            inner: self.inner.clone(),
        }
    }
}

impl<R> std::fmt::Debug for DeadLetterQueue<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("len", &self.len())
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl<R> DeadLetterQueue<R> {
    /// A queue holding at most `capacity` letters (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DeadLetterQueue {
            inner: Arc::new(Inner {
                letters: Mutex::new(VecDeque::new()),
                next_id: AtomicU64::new(1),
                capacity,
                claims: Claims::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(u64, Entry<R>)>> {
        // Nothing panics while holding this lock except a user's Clone of R in `list`; the deque is
        // consistent in that case too.
        self.inner
            .letters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a letter; fails when the queue is full.
    pub fn push(&self, letter: DeadLetter<R>) -> Result<(), BoxError> {
        self.insert(Entry::Letter(letter)).map(drop)
    }

    /// Adds an entry and returns its id; fails when the queue is full.
    fn insert(&self, entry: Entry<R>) -> Result<u64, BoxError> {
        let mut letters = self.lock();
        if letters.len() >= self.inner.capacity {
            return Err(format!(
                "dead-letter queue is full ({} letters)",
                self.inner.capacity
            )
            .into());
        }
        // Relaxed: taken under the lock, which orders it.
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        letters.push_back((id, entry));
        Ok(id)
    }

    /// Letters held now (malformed payloads included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no letter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most letters it holds.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Removes and returns every letter, oldest first (malformed payloads stay: see
    /// [`malformed`](Self::malformed)).
    pub fn drain(&self) -> Vec<DeadLetter<R>> {
        let mut entries = self.lock();
        let mut drained = Vec::new();
        for (id, entry) in std::mem::take(&mut *entries) {
            match entry {
                Entry::Letter(letter) => drained.push(letter),
                malformed => entries.push_back((id, malformed)),
            }
        }
        drained
    }

    /// Copies of every letter, oldest first (malformed payloads: see [`malformed`](Self::malformed)).
    pub fn list(&self) -> Vec<DeadLetter<R>>
    where
        R: Clone,
    {
        self.lock()
            .iter()
            .filter_map(|(_, entry)| entry.letter().cloned())
            .collect()
    }

    /// Copies of the payloads a source could not decode, oldest first.
    pub fn malformed(&self) -> Vec<MalformedLetter> {
        self.lock()
            .iter()
            .filter_map(|(_, entry)| match entry {
                Entry::Malformed(letter) => Some(letter.clone()),
                Entry::Letter(_) => None,
            })
            .collect()
    }

    /// Re-processes every letter held now through `service`, one at a time, oldest first. A letter that
    /// succeeds is removed; one that fails again is kept with the new error, one more attempt and a new
    /// dead-letter time. The run stops at the first rejection ([`Error::CircuitOpen`] or
    /// [`Error::Overloaded`]): that letter and the rest are kept as they were and counted in
    /// [`RedriveReport::not_run`] (redriving into an open breaker would only fail them again). Letters
    /// that arrive meanwhile are kept too.
    ///
    /// Redrive through a stack *without* a dead-letter layer that writes into this queue, or a letter
    /// that fails again would be stored twice. (The manager's redrive does this for you.)
    pub async fn redrive<S>(&self, mut service: S) -> RedriveReport
    where
        S: Service<R>,
        S::Error: Into<BoxError>,
        R: Clone,
    {
        let mut letters = std::mem::take(&mut *self.lock()).into_iter();
        let mut report = RedriveReport::default();
        let mut kept = Vec::new();
        while let Some((id, entry)) = letters.next() {
            let mut letter = match entry {
                Entry::Letter(letter) => letter,
                malformed => {
                    report.undecodable += 1;
                    kept.push((id, malformed));
                    continue;
                }
            };
            let result = match service.ready().await {
                Ok(ready) => ready.call(letter.request.clone()).await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(_) => {
                    report.succeeded += 1;
                    continue;
                }
                Err(e) => Error::from_boxed(e.into()),
            };
            if error.is_rejection() {
                report.not_run = 1 + letters.len();
                report.stopped_by = Some(error.into());
                kept.push((id, Entry::Letter(letter)));
                kept.extend(letters);
                break;
            }
            report.failed += 1;
            letter.error = error.into();
            letter.attempts = letter.attempts.saturating_add(1);
            letter.dead_lettered_at = SystemTime::now();
            kept.push((id, Entry::Letter(letter)));
        }
        // Put the kept letters back ahead of letters that arrived during the redrive, capacity permitting
        // (they were in the queue before, so there is room unless new letters filled it; those overflow
        // letters are kept anyway rather than lost).
        let mut letters = self.lock();
        for entry in kept.into_iter().rev() {
            letters.push_front(entry);
        }
        report
    }
}

impl<R: Send + 'static> DeadLetterSink<R> for DeadLetterQueue<R> {
    fn send(&self, letter: DeadLetter<R>) -> SinkFuture {
        Box::pin(std::future::ready(self.push(letter)))
    }

    fn send_malformed(&self, letter: MalformedLetter) -> SinkFuture {
        Box::pin(std::future::ready(
            self.insert(Entry::Malformed(letter)).map(drop),
        ))
    }
}

/// The queue as a store of event letters. Everything happens at once, in memory; `append` fails when the
/// queue is full.
impl<T: Send + Sync + 'static> DeadLetterStore<T> for DeadLetterQueue<Event<T>> {
    fn name(&self) -> &str {
        "memory"
    }

    fn append(&self, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        let result = self
            .insert(Entry::Letter(letter))
            .map(|id| LetterId::new(id.to_string()))
            .map_err(|e| Error::backend("dead-letter store memory", e));
        Box::pin(std::future::ready(result))
    }

    fn get(&self, id: LetterId) -> StoreFuture<Option<StoredLetter<T>>> {
        let found = sequence(&id).and_then(|n| {
            self.lock()
                .iter()
                .find(|(i, _)| *i == n)
                .map(|(i, entry)| stored(*i, entry))
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn list(
        &self,
        filter: LetterFilter,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<LetterPage<T>> {
        let result = sequence_after(after.as_ref()).map(|after| self.page(&filter, after, limit));
        Box::pin(std::future::ready(result))
    }

    fn delete(&self, id: LetterId) -> StoreFuture<bool> {
        let deleted = sequence(&id).is_some_and(|n| {
            let mut letters = self.lock();
            let before = letters.len();
            letters.retain(|(i, _)| *i != n);
            letters.len() < before
        });
        Box::pin(std::future::ready(Ok(deleted)))
    }

    fn replace(&self, id: LetterId, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        let mut letter = Some(letter);
        let replaced = sequence(&id).is_some_and(|n| {
            let mut letters = self.lock();
            match letters.iter_mut().find(|(i, _)| *i == n) {
                Some((_, stored)) => {
                    if let Some(letter) = letter.take() {
                        *stored = Entry::Letter(letter);
                    }
                    true
                }
                None => false,
            }
        });
        match (replaced, letter) {
            (true, _) => Box::pin(std::future::ready(Ok(id))),
            // Deleted meanwhile: keep the new letter anyway rather than lose it.
            (false, Some(letter)) => self.append(letter),
            (false, None) => Box::pin(std::future::ready(Ok(id))),
        }
    }

    fn count(&self, filter: LetterFilter) -> StoreFuture<u64> {
        let count = self
            .lock()
            .iter()
            .filter(|(_, entry)| entry.matches(&filter))
            .count() as u64;
        Box::pin(std::future::ready(Ok(count)))
    }

    fn oldest(&self) -> StoreFuture<Option<SystemTime>> {
        let oldest = self
            .lock()
            .iter()
            .map(|(_, entry)| entry.dead_lettered_at())
            .min();
        Box::pin(std::future::ready(Ok(oldest)))
    }

    fn claim(&self, id: &LetterId) -> Option<Claim> {
        self.inner.claims.claim(id)
    }
}

impl<T> DeadLetterQueue<Event<T>> {
    /// Up to `limit` letters matching `filter` with ids above `after`.
    fn page(&self, filter: &LetterFilter, after: u64, limit: usize) -> LetterPage<T> {
        let letters = self.lock();
        let mut matching = letters
            .iter()
            .filter(|(id, entry)| *id > after && entry.matches(filter));
        let page: Vec<StoredLetter<T>> = matching
            .by_ref()
            .take(limit)
            .map(|(id, entry)| stored(*id, entry))
            .collect();
        let more = matching.next().is_some();
        LetterPage::of(page, more)
    }
}

/// An entry as a store lists it: a malformed payload is an undecodable entry whose raw bytes are the
/// payload.
fn stored<T>(id: u64, entry: &Entry<Event<T>>) -> StoredLetter<T> {
    let letter = match entry {
        Entry::Letter(letter) => Ok(letter.clone()),
        Entry::Malformed(letter) => Err(Undecodable {
            raw: letter.payload.clone(),
            error: letter.error.message.clone(),
            listener: Some(letter.listener.to_string()),
            reason: Some(DeadLetterReason::Malformed),
            dead_lettered_at: Some(letter.dead_lettered_at),
        }),
    };
    StoredLetter {
        id: LetterId::new(id.to_string()),
        letter,
    }
}
