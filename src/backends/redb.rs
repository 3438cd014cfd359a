//! [`RedbStore`]: dead letters in one file on the local disk, durable when `append` returns (feature
//! `redb`, on by default).
//!
//! Built on [redb](https://docs.rs/redb): pure Rust, ACID, crash-safe, with the fastest fsynced single
//! inserts among the embedded stores in its own benchmark. A letter is stored as its JSON record (the
//! CloudEvents event, the error record, the times), under a sequence number that is its id, so listings
//! are oldest first and a cursor is the last id seen.
//!
//! **Group commit.** An fsync costs about as much as hundreds of inserts, so appends that arrive together
//! share one: a writer thread takes every append (and delete, and replace) waiting for it, up to
//! [`RedbConfig::max_batch`], writes them in one transaction, commits it with one fsync, and only then
//! answers each. Every `append` still returns only once its own letter is on disk; under load, 64
//! appenders pay for a few fsyncs instead of 64.
//!
//! **Durability.** A letter whose `append` returned survives a crash of the process (SIGKILL included) or of
//! the machine, as far as the disk honours fsync. The file is locked by the process that opened it: a
//! second process gets a clear error instead of a second writer.
//!
//! **How it fails.** Opening a file that is not a redb database, is damaged beyond repair, or is a redb
//! database of another program is an [`Error::Backend`] naming the path; nothing panics. A stored letter
//! whose event no longer decodes into the payload type is listed as an
//! [`Undecodable`](crate::dead_letter::Undecodable) entry with its raw bytes. Filters, counts and `oldest`
//! read every letter's small header: fine for a dead-letter file (thousands of letters), not meant for
//! millions.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::dead_letter::{encoding, sequence, sequence_after};
use crate::dead_letter::{
    Claim, Claims, Cursor, DeadLetter, DeadLetterSink, DeadLetterStore, LetterFilter, LetterId,
    LetterPage, MalformedLetter, SinkFuture, StoreFuture, StoredLetter,
};
use crate::{Error, Event};

const LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("tower_listener_letters");
const META: TableDefinition<&str, &str> = TableDefinition::new("tower_listener_meta");
/// What the meta table says a file of this crate is; a later format would say another thing.
const FORMAT: &str = "tower-listener dead letters, format 1 (JSON records)";

/// Settings of a [`RedbStore`].
///
/// ```
/// use tower_listener::RedbConfig;
///
/// let config = RedbConfig { max_batch: 256, ..RedbConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbConfig {
    /// The most writes committed together (group commit). Default 1024; 1 commits (and fsyncs) every
    /// letter on its own.
    pub max_batch: usize,
    /// redb's page cache, in bytes. Default 16 MiB.
    pub cache_size: usize,
}

impl Default for RedbConfig {
    fn default() -> Self {
        RedbConfig {
            max_batch: 1024,
            cache_size: 16 << 20,
        }
    }
}

impl RedbConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_batch == 0 {
            return Err(Error::invalid_config("max_batch", "must be at least 1"));
        }
        if self.cache_size == 0 {
            return Err(Error::invalid_config("cache_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// Dead letters in one redb file. Clones share the file; the file is closed when the last clone is
/// dropped (after the writes already taken are committed). See the [module docs](self).
///
/// ```
/// use tower_listener::dead_letter::{DeadLetterStore, LetterFilter};
/// use tower_listener::{DeadLetter, DeadLetterReason, Error, Event, RedbStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("dead-letters.redb");
/// let store = RedbStore::open(&path).await?;
/// let event = Event::new("o-1", "order.created", serde_json::json!({"total": 42}));
/// let id = DeadLetterStore::<serde_json::Value>::append(
///     &store,
///     DeadLetter::new(event, Error::Overloaded, "orders", 1, DeadLetterReason::Overloaded),
/// ).await?; // on disk now
/// drop(store);
///
/// // After a restart (or a crash) the letter is still there.
/// let store = RedbStore::open(&path).await?;
/// let letter = DeadLetterStore::<serde_json::Value>::get(&store, id).await?.unwrap();
/// assert_eq!(letter.decoded().unwrap().request.id(), "o-1");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    claims: Claims,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has committed what it took; waiting for it means
        // the file is closed (and can be opened again) when the last handle is gone.
        drop(
            self.writes
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!(target: "tower_listener::dead_letter", path = %self.path.display(), "the dead-letter store's writer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// One write for the writer thread, with where its answer goes.
enum Write {
    Append(Vec<u8>, oneshot::Sender<Result<u64, Error>>),
    Delete(u64, oneshot::Sender<Result<bool, Error>>),
    Replace(u64, Vec<u8>, oneshot::Sender<Result<u64, Error>>),
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if it does not exist, with the default
    /// [`RedbConfig`]. After a crash, opening repairs the file (which can take a while for a large one).
    ///
    /// # Errors
    /// [`Error::Backend`] naming the path: the file cannot be created or read, is not a redb database or
    /// is damaged beyond repair, belongs to another program, or is open in another process.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, RedbConfig::default()).await
    }

    /// [`open`](Self::open) with `config`.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`Error::InvalidConfig`] for a bad `config` field.
    pub async fn open_with(path: impl AsRef<Path>, config: RedbConfig) -> Result<Self, Error> {
        config.validate()?;
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let opening = path.clone();
        let (db, next) = tokio::task::spawn_blocking(move || open_file(&opening, config))
            .await
            .map_err(|e| {
                Error::backend(format!("dead-letter store {shown}: opening failed"), e)
            })??;
        let db = Arc::new(db);
        let (writes, taken) = mpsc::channel();
        let writing = db.clone();
        let writer = std::thread::Builder::new()
            .name("tower-listener-redb".into())
            .spawn(move || write_loop(&writing, taken, next, config.max_batch, &shown))
            .map_err(|e| {
                Error::backend(
                    format!(
                        "dead-letter store {}: cannot start its writer",
                        path.display()
                    ),
                    e,
                )
            })?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                path,
                writes: Mutex::new(Some(writes)),
                writer: Mutex::new(Some(writer)),
                claims: Claims::new(),
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn context(&self, what: &str) -> String {
        format!("dead-letter store {}: {what}", self.inner.path.display())
    }

    /// Hands `write` to the writer and waits for its answer.
    fn write<R: Send + 'static>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<R, Error>>) -> Write,
    ) -> StoreFuture<R> {
        let (answer, answered) = oneshot::channel();
        let sent = self
            .inner
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|writes| writes.send(write(answer)));
        let context = self.context("the writer has stopped");
        Box::pin(async move {
            match sent {
                Some(Ok(())) => answered.await.map_err(|e| Error::backend(context, e))?,
                _ => Err(Error::backend(context, "closed")),
            }
        })
    }

    /// Runs `read` on a blocking thread with a read transaction of the letters table.
    fn read<R: Send + 'static>(
        &self,
        what: &'static str,
        read: impl FnOnce(&redb::ReadOnlyTable<u64, &'static [u8]>, &str) -> Result<R, Error>
            + Send
            + 'static,
    ) -> StoreFuture<R> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let context = format!("dead-letter store {}: {what}", inner.path.display());
            tokio::task::spawn_blocking(move || {
                let context = format!("dead-letter store {}: {what}", inner.path.display());
                let txn = inner
                    .db
                    .begin_read()
                    .map_err(|e| Error::backend(context.clone(), e))?;
                let table = txn
                    .open_table(LETTERS)
                    .map_err(|e| Error::backend(context.clone(), e))?;
                read(&table, &context)
            })
            .await
            .map_err(|e| Error::backend(context, e))?
        })
    }
}

/// Opens (or creates) the file and checks that it is ours; returns the database and the next id.
fn open_file(path: &Path, config: RedbConfig) -> Result<(Database, u64), Error> {
    let context = |what: &str| format!("dead-letter store {}: {what}", path.display());
    let db = Database::builder()
        .set_cache_size(config.cache_size)
        .create(path)
        .map_err(|e| Error::backend(context("cannot open it as a redb database"), e))?;
    let existing: Vec<String> = {
        let txn = db
            .begin_read()
            .map_err(|e| Error::backend(context("cannot read it"), e))?;
        let tables = txn
            .list_tables()
            .map_err(|e| Error::backend(context("cannot read it"), e))?;
        tables.map(|t| t.name().to_owned()).collect()
    };
    let ours = existing.iter().any(|t| t == META.name());
    if !ours && !existing.is_empty() {
        return Err(Error::backend(
            context("not a tower-listener dead-letter store"),
            format!("it holds other tables: {}", existing.join(", ")),
        ));
    }
    let txn = db
        .begin_write()
        .map_err(|e| Error::backend(context("cannot write to it"), e))?;
    let next = {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| Error::backend(context("cannot read its format"), e))?;
        let format = meta
            .get("format")
            .map_err(|e| Error::backend(context("cannot read its format"), e))?
            .map(|v| v.value().to_owned());
        match format {
            Some(format) if format != FORMAT => {
                return Err(Error::backend(
                    context("written in a format this version does not read"),
                    format!("its format is {format:?}"),
                ))
            }
            Some(_) => {}
            None => {
                meta.insert("format", FORMAT)
                    .map_err(|e| Error::backend(context("cannot initialize it"), e))?;
            }
        }
        let letters = txn
            .open_table(LETTERS)
            .map_err(|e| Error::backend(context("cannot read its letters"), e))?;
        let last = letters
            .last()
            .map_err(|e| Error::backend(context("cannot read its letters"), e))?
            .map(|(k, _)| k.value());
        last.map_or(1, |last| last + 1)
    };
    txn.commit()
        .map_err(|e| Error::backend(context("cannot write to it"), e))?;
    Ok((db, next))
}

/// The writer thread: takes every write waiting (up to `max_batch`), commits them in one transaction,
/// then answers each.
fn write_loop(
    db: &Database,
    writes: mpsc::Receiver<Write>,
    mut next: u64,
    max_batch: usize,
    path: &str,
) {
    let mut batch = Vec::with_capacity(max_batch.min(1024));
    while let Ok(first) = writes.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match writes.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let context = format!("dead-letter store {path}: cannot write");
        match commit(db, &batch, next) {
            Ok((answers, after)) => {
                next = after;
                for (write, answer) in batch.drain(..).zip(answers) {
                    match (write, answer) {
                        (Write::Append(_, reply), Answer::Id(id))
                        | (Write::Replace(_, _, reply), Answer::Id(id)) => {
                            let _ = reply.send(Ok(id));
                        }
                        (Write::Delete(_, reply), Answer::Deleted(deleted)) => {
                            let _ = reply.send(Ok(deleted));
                        }
                        // `commit` answers each write with its own kind.
                        (Write::Append(_, reply), _) | (Write::Replace(_, _, reply), _) => {
                            let _ = reply.send(Err(Error::backend(context.clone(), "internal")));
                        }
                        (Write::Delete(_, reply), _) => {
                            let _ = reply.send(Err(Error::backend(context.clone(), "internal")));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(target: "tower_listener::dead_letter", path, error = %e, writes = batch.len(), "dead-letter store commit failed");
                let shared = Error::backend(context, e);
                for write in batch.drain(..) {
                    match write {
                        Write::Append(_, reply) | Write::Replace(_, _, reply) => {
                            let _ = reply.send(Err(shared.clone()));
                        }
                        Write::Delete(_, reply) => {
                            let _ = reply.send(Err(shared.clone()));
                        }
                    }
                }
            }
        }
    }
}

enum Answer {
    Id(u64),
    Deleted(bool),
}

/// Applies `batch` in one write transaction and commits it (one fsync). Returns each write's answer and
/// the next id.
fn commit(
    db: &Database,
    batch: &[Write],
    mut next: u64,
) -> Result<(Vec<Answer>, u64), redb::Error> {
    let txn = db.begin_write()?;
    let mut answers = Vec::with_capacity(batch.len());
    {
        let mut letters = txn.open_table(LETTERS)?;
        for write in batch {
            answers.push(match write {
                Write::Append(bytes, _) => {
                    letters.insert(next, bytes.as_slice())?;
                    next += 1;
                    Answer::Id(next - 1)
                }
                Write::Delete(id, _) => Answer::Deleted(letters.remove(*id)?.is_some()),
                Write::Replace(id, bytes, _) => {
                    if letters.get(*id)?.is_some() {
                        letters.insert(*id, bytes.as_slice())?;
                        Answer::Id(*id)
                    } else {
                        // Deleted meanwhile: keep the new letter anyway rather than lose it.
                        letters.insert(next, bytes.as_slice())?;
                        next += 1;
                        Answer::Id(next - 1)
                    }
                }
            });
        }
    }
    txn.commit()?;
    Ok((answers, next))
}

impl<T> DeadLetterSink<Event<T>> for RedbStore
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn send(&self, letter: DeadLetter<Event<T>>) -> SinkFuture {
        let appending = DeadLetterStore::append(self, letter);
        Box::pin(async move { appending.await.map(drop).map_err(Into::into) })
    }

    fn send_malformed(&self, letter: MalformedLetter) -> SinkFuture {
        let bytes =
            match encoding::encode_malformed(&self.inner.path.display().to_string(), &letter) {
                Ok(bytes) => bytes,
                Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
            };
        let appending = self.write(|answer| Write::Append(bytes, answer));
        Box::pin(async move { appending.await.map(drop).map_err(Into::into) })
    }
}

impl<T> DeadLetterStore<T> for RedbStore
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        "redb"
    }

    fn append(&self, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        let bytes = match encoding::encode(&self.inner.path.display().to_string(), &letter) {
            Ok(bytes) => bytes,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let appending = self.write(|answer| Write::Append(bytes, answer));
        Box::pin(async move { appending.await.map(|id| LetterId::new(id.to_string())) })
    }

    fn get(&self, id: LetterId) -> StoreFuture<Option<StoredLetter<T>>> {
        let Some(key) = sequence(&id) else {
            return Box::pin(std::future::ready(Ok(None)));
        };
        self.read("cannot read a letter", move |letters, context| {
            let found = letters.get(key).map_err(|e| Error::backend(context, e))?;
            Ok(found.map(|raw| encoding::decode(id, raw.value())))
        })
    }

    fn list(
        &self,
        filter: LetterFilter,
        after: Option<Cursor>,
        limit: usize,
    ) -> StoreFuture<LetterPage<T>> {
        let after = match sequence_after(after.as_ref()) {
            Ok(after) => after,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        self.read("cannot list letters", move |letters, context| {
            let fail = |e: redb::StorageError| Error::backend(context, e);
            let mut page = Vec::new();
            let mut more = false;
            for entry in letters.range(after.saturating_add(1)..).map_err(fail)? {
                let (key, raw) = entry.map_err(fail)?;
                if !encoding::matches(&filter, raw.value()) {
                    continue;
                }
                if page.len() == limit {
                    more = true;
                    break;
                }
                page.push(encoding::decode(
                    LetterId::new(key.value().to_string()),
                    raw.value(),
                ));
            }
            Ok(LetterPage::of(page, more))
        })
    }

    fn delete(&self, id: LetterId) -> StoreFuture<bool> {
        match sequence(&id) {
            Some(key) => self.write(|answer| Write::Delete(key, answer)),
            None => Box::pin(std::future::ready(Ok(false))),
        }
    }

    fn replace(&self, id: LetterId, letter: DeadLetter<Event<T>>) -> StoreFuture<LetterId> {
        let bytes = match encoding::encode(&self.inner.path.display().to_string(), &letter) {
            Ok(bytes) => bytes,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let writing = match sequence(&id) {
            Some(key) => self.write(|answer| Write::Replace(key, bytes, answer)),
            None => self.write(|answer| Write::Append(bytes, answer)),
        };
        Box::pin(async move { writing.await.map(|id| LetterId::new(id.to_string())) })
    }

    fn count(&self, filter: LetterFilter) -> StoreFuture<u64> {
        self.read("cannot count letters", move |letters, context| {
            let fail = |e: redb::StorageError| Error::backend(context, e);
            if filter.is_all() {
                return letters.len().map_err(fail);
            }
            let mut count = 0;
            for entry in letters.iter().map_err(fail)? {
                let (_, raw) = entry.map_err(fail)?;
                count += u64::from(encoding::matches(&filter, raw.value()));
            }
            Ok(count)
        })
    }

    fn oldest(&self) -> StoreFuture<Option<SystemTime>> {
        self.read("cannot read letters", move |letters, context| {
            let fail = |e: redb::StorageError| Error::backend(context, e);
            let mut oldest: Option<SystemTime> = None;
            for entry in letters.iter().map_err(fail)? {
                let (_, raw) = entry.map_err(fail)?;
                if let Some(meta) = encoding::meta(raw.value()) {
                    oldest = Some(
                        oldest.map_or(meta.dead_lettered_at, |o| o.min(meta.dead_lettered_at)),
                    );
                }
            }
            Ok(oldest)
        })
    }

    fn claim(&self, id: &LetterId) -> Option<Claim> {
        self.inner.claims.claim(id)
    }
}
