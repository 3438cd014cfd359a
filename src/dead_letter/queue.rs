//! [`DeadLetterQueue`]: a bounded in-memory sink that can be listed, drained and redriven.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tower::{BoxError, Service, ServiceExt};

use super::sink::{DeadLetter, DeadLetterSink, SinkFuture};
use crate::{Error, ErrorRecord};

/// A bounded, in-memory dead-letter queue. Clones share one queue.
///
/// When it is full a new letter is refused: the sink reports a failure, which the dead-letter layer counts
/// in `dead_letter_failures` and logs. Letters are never evicted silently.
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
    letters: Mutex<VecDeque<DeadLetter<R>>>,
    capacity: usize,
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
    /// Letters not run because the redrive stopped at a rejection (the rejected letter included); all
    /// kept as they were.
    pub not_run: usize,
    /// The rejection that stopped the redrive (an open breaker or an overloaded listener), if one did.
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
                capacity,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<DeadLetter<R>>> {
        // Nothing panics while holding this lock except a user's Clone of R in `list`; the deque is
        // consistent in that case too.
        self.inner
            .letters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a letter; fails when the queue is full.
    pub fn push(&self, letter: DeadLetter<R>) -> Result<(), BoxError> {
        let mut letters = self.lock();
        if letters.len() >= self.inner.capacity {
            return Err(format!(
                "dead-letter queue is full ({} letters)",
                self.inner.capacity
            )
            .into());
        }
        letters.push_back(letter);
        Ok(())
    }

    /// Letters held now.
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

    /// Removes and returns every letter, oldest first.
    pub fn drain(&self) -> Vec<DeadLetter<R>> {
        self.lock().drain(..).collect()
    }

    /// Copies of every letter, oldest first.
    pub fn list(&self) -> Vec<DeadLetter<R>>
    where
        R: Clone,
    {
        self.lock().iter().cloned().collect()
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
        let mut letters = self.drain().into_iter();
        let mut report = RedriveReport::default();
        let mut kept = Vec::new();
        while let Some(mut letter) = letters.next() {
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
                kept.push(letter);
                kept.extend(letters);
                break;
            }
            report.failed += 1;
            letter.error = error.into();
            letter.attempts = letter.attempts.saturating_add(1);
            letter.dead_lettered_at = SystemTime::now();
            kept.push(letter);
        }
        // Put the kept letters back ahead of letters that arrived during the redrive, capacity permitting
        // (they were in the queue before, so there is room unless new letters filled it; those overflow
        // letters are kept anyway rather than lost).
        let mut letters = self.lock();
        for letter in kept.into_iter().rev() {
            letters.push_front(letter);
        }
        report
    }
}

impl<R: Send + 'static> DeadLetterSink<R> for DeadLetterQueue<R> {
    fn send(&self, letter: DeadLetter<R>) -> SinkFuture {
        Box::pin(std::future::ready(self.push(letter)))
    }
}
