//! The manager's listener registry: read on every event, written on `register` and `unregister`.
//!
//! One copy of the map per thread shard, each behind a try-lock: an event takes the copy of its thread
//! (one uncontended atomic swap on a cache line no other thread writes, released by a plain store), finds
//! its listener and takes a per-thread handle to it. When two threads share a shard and meet there, the
//! later one reads the authoritative map instead, under its `RwLock`. A writer, rare and serialized,
//! makes the new map once, makes it authoritative and stores it in every shard. (It was one
//! `arc_swap::ArcSwap`: no lock, but ~100 instructions and two atomics on a debt list per read; then a
//! `RwLock` per shard: two atomics per read.)

use std::sync::{Arc, PoisonError, RwLock};

use rustc_hash::FxHashMap;
use try_lock::TryLock;

use super::listener::ManagedListener;
use crate::metrics::{shard_count, thread_shard};
use crate::shared::{Handle, Shared};
use crate::Error;

/// Listener id to listener, each behind per-thread anchors (see [`Shared`]). The registry's keys are the
/// service's own listener ids, so FxHash's lack of flooding resistance costs nothing.
pub(crate) type Listeners<T> = FxHashMap<String, Shared<ManagedListener<T>>>;

pub(crate) struct Registry<T> {
    shards: Box<[Shard<T>]>,
    /// The current map; writers hold its write lock while they change it and copy it to the shards.
    current: RwLock<Arc<Listeners<T>>>,
}

#[repr(align(128))] // one shard per cache line pair, so threads do not false-share
struct Shard<T>(TryLock<Arc<Listeners<T>>>);

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        let empty = Arc::new(Listeners::default());
        Registry {
            shards: (0..shard_count())
                .map(|_| Shard(TryLock::new(empty.clone())))
                .collect(),
            current: RwLock::new(empty),
        }
    }

    /// A handle to listener `id`, if registered.
    #[inline]
    pub(crate) fn get(&self, id: &str) -> Option<Handle<ManagedListener<T>>> {
        match self.shards[thread_shard(self.shards.len())].0.try_lock() {
            Some(map) => map.get(id).map(Shared::handle),
            None => self.current().get(id).map(Shared::handle),
        }
    }

    /// The current map.
    pub(crate) fn current(&self) -> Arc<Listeners<T>> {
        // A writer never panics while it holds the lock, so a poisoned lock still holds a whole map.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `change` to a copy of the map and, if it succeeds, makes the copy current everywhere.
    /// `change` runs under the write lock: it must not read the registry.
    pub(crate) fn update<R>(
        &self,
        change: impl FnOnce(&mut Listeners<T>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Listeners::clone(&current);
        let changed = change(&mut next)?;
        let next = Arc::new(next);
        *current = next.clone();
        for shard in self.shards.iter() {
            // A reader holds a shard for a lookup and a reference count: wait it out.
            loop {
                if let Some(mut map) = shard.0.try_lock() {
                    *map = next.clone();
                    break;
                }
                std::thread::yield_now();
            }
        }
        Ok(changed)
    }
}
