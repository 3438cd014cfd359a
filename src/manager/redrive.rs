//! Redrive: dead letters from any [`DeadLetterStore`] run through their listener's stack again.

use std::time::SystemTime;

use super::listener::ManagedListener;
use super::stack::Lease;
use crate::attempts::WithAttempts;
use crate::dead_letter::{DeadLetterStore, LetterFilter, RedriveReport, StoredLetter};
use crate::Error;

/// Letters listed per page while a redrive gathers its batch.
const PAGE: usize = 256;

impl<T: Send + Sync + 'static> ManagedListener<T> {
    /// Redrives up to `limit` letters of `store` that match `filter` (this listener's letters when the
    /// filter names no listener) through the listener's stack without its dead-letter step. See
    /// `ListenerManager::redrive`.
    pub(crate) async fn redrive<S>(
        &self,
        store: &S,
        mut filter: LetterFilter,
        limit: usize,
    ) -> Result<RedriveReport, Error>
    where
        S: DeadLetterStore<T> + ?Sized,
    {
        if filter.listener.is_none() {
            filter.listener = Some(self.metrics.name().to_owned());
        }
        // The batch is taken first, so a letter kept by this run (failed again, it is replaced and may
        // move to the end of the store) is not met twice.
        let mut batch: Vec<StoredLetter<T>> = Vec::new();
        let mut cursor = None;
        while batch.len() < limit {
            let page = store
                .list(filter.clone(), cursor, (limit - batch.len()).min(PAGE))
                .await?;
            batch.extend(page.letters);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut report = RedriveReport::default();
        let mut letters = batch.into_iter();
        while let Some(listed) = letters.next() {
            if listed.letter.is_err() {
                report.undecodable += 1;
                continue;
            }
            let Some(_claim) = store.claim(&listed.id) else {
                report.in_progress += 1;
                continue;
            };
            // Read it again under the claim: another redrive may have finished it since it was listed.
            let current = match store.get(listed.id.clone()).await {
                Ok(Some(current)) => current,
                Ok(None) => continue,
                Err(error) => {
                    stop(&mut report, error, letters.len());
                    break;
                }
            };
            let Ok(mut letter) = current.letter else {
                report.undecodable += 1;
                continue;
            };
            let (result, record) = WithAttempts::new(
                Lease::new(&*self.stack, letter.request.clone()),
                &self.metrics,
            )
            .await;
            let error = match result {
                Ok(()) => {
                    self.metrics.redriven(true);
                    report.succeeded += 1;
                    if let Err(error) = store.delete(listed.id).await {
                        // Ran, but is still stored: a later redrive runs it again (at least once).
                        stop(&mut report, error, letters.len());
                        break;
                    }
                    continue;
                }
                Err(error) if error.is_rejection() => {
                    report.not_run = 1 + letters.len();
                    report.stopped_by = Some(error.into());
                    break;
                }
                Err(error) => error,
            };
            self.metrics.redriven(false);
            report.failed += 1;
            let attempts = record.map_or(1, |r| r.attempts.max(1));
            letter.attempts = letter.attempts.saturating_add(attempts);
            letter.error = error.into();
            letter.dead_lettered_at = SystemTime::now();
            if let Err(error) = store.replace(listed.id, letter).await {
                stop(&mut report, error, letters.len());
                break;
            }
        }
        Ok(report)
    }
}

/// A store failed mid-run: the run stops, and says why.
fn stop(report: &mut RedriveReport, error: Error, left: usize) {
    tracing::error!(target: "tower_listener::dead_letter", error = %error, "redrive stopped: the dead-letter store failed");
    report.not_run += left;
    report.stopped_by = Some(error.into());
}
