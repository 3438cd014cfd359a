//! The manager's listener registry: read on every event, written on `register` and `unregister`.
//!
//! One copy of the map per thread shard, each behind its own `RwLock`: an event read-locks the copy of its
//! thread (one uncontended atomic on a cache line no other thread writes, and a few dozen instructions),
//! finds its listener and takes a per-thread handle to it. A writer, rare and serialized, makes the new map
//! once and stores it in every shard. (It was one `arc_swap::ArcSwap`: no lock, but ~100 instructions and
//! two atomics on a debt list per read.)

use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use rustc_hash::FxHashMap;

use super::listener::ManagedListener;
use crate::metrics::{shard_count, thread_shard};
use crate::shared::{Handle, Shared};
use crate::Error;

/// Listener id to listener, each behind per-thread anchors (see [`Shared`]). The registry's keys are the
/// service's own listener ids, so FxHash's lack of flooding resistance costs nothing.
pub(crate) type Listeners<T> = FxHashMap<String, Shared<ManagedListener<T>>>;

pub(crate) struct Registry<T> {
    shards: Box<[Shard<T>]>,
    /// Serializes writers (each copies the map and stores the copy in every shard).
    writer: Mutex<()>,
}

#[repr(align(128))] // one shard per cache line pair, so threads do not false-share
struct Shard<T>(RwLock<Arc<Listeners<T>>>);

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        let empty = Arc::new(Listeners::default());
        Registry {
            shards: (0..shard_count())
                .map(|_| Shard(RwLock::new(empty.clone())))
                .collect(),
            writer: Mutex::new(()),
        }
    }

    /// This thread's copy of the map, read-locked.
    #[inline]
    fn read(&self) -> RwLockReadGuard<'_, Arc<Listeners<T>>> {
        // A writer never panics while it holds the lock, so a poisoned lock still holds a whole map.
        self.shards[thread_shard(self.shards.len())]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle to listener `id`, if registered.
    #[inline]
    pub(crate) fn get(&self, id: &str) -> Option<Handle<ManagedListener<T>>> {
        self.read().get(id).map(Shared::handle)
    }

    /// The current map.
    pub(crate) fn current(&self) -> Arc<Listeners<T>> {
        self.read().clone()
    }

    /// Applies `change` to a copy of the map and, if it succeeds, makes the copy current everywhere.
    pub(crate) fn update<R>(
        &self,
        change: impl FnOnce(&mut Listeners<T>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Listeners::clone(&self.current());
        let changed = change(&mut next)?;
        let next = Arc::new(next);
        for shard in self.shards.iter() {
            *shard.0.write().unwrap_or_else(PoisonError::into_inner) = next.clone();
        }
        Ok(changed)
    }
}
