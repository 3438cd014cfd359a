//! Per-thread handles to a layer's shared state, so that the futures of different threads do not count
//! references on one cache line.
//!
//! A response future must own what it reports to when it completes (a breaker, a permit count, metrics):
//! an `Arc`. With one `Arc` per layer, every call increments and decrements the same reference count
//! from every thread, and that cache line (with the fields stored next to the count) moves between
//! cores on every event: it is what kept two threads from scaling. A [`Shared`] keeps, next to the
//! `Arc<T>` its service reads, one anchor per thread shard, each an `Arc` of its own on its own cache
//! lines; a future takes a [`Handle`] on its thread's anchor. The anchors are made with the layer (the
//! retry layer's, which hold the wrapped service, when it wraps one); cloning a service clones two `Arc`s
//! and allocates nothing.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::metrics::{shard_count, thread_shard};

/// One thread shard's reference to the shared state, and that shard's index; aligned so that two anchors
/// never share a cache line.
#[repr(align(128))]
struct Anchor<T> {
    state: Arc<T>,
    shard: usize,
}

/// Shared state `T` with a reference-counted anchor per thread shard. Derefs to `T`.
pub(crate) struct Shared<T> {
    arc: Arc<T>,
    anchors: Arc<[Arc<Anchor<T>>]>,
}

impl<T> Shared<T> {
    pub(crate) fn new(arc: Arc<T>) -> Self {
        Self::with_shards(arc, shard_count())
    }

    /// With `shards` anchors (a power of two), for state kept in as many shards of its own.
    pub(crate) fn with_shards(arc: Arc<T>, shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two());
        Shared {
            anchors: (0..shards)
                .map(|shard| {
                    Arc::new(Anchor {
                        state: arc.clone(),
                        shard,
                    })
                })
                .collect(),
            arc,
        }
    }

    /// A handle for a future made on this thread: it counts a reference on this thread's anchor only.
    #[inline]
    pub(crate) fn handle(&self) -> Handle<T> {
        self.handle_at(thread_shard(self.anchors.len()))
    }

    /// A handle on shard `shard`'s anchor: for state that is itself kept per shard, where a future may
    /// take its part from another thread's shard.
    #[inline]
    pub(crate) fn handle_at(&self, shard: usize) -> Handle<T> {
        Handle(self.anchors[shard].clone())
    }

    /// The state's own `Arc`.
    pub(crate) fn arc(&self) -> &Arc<T> {
        &self.arc
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            arc: self.arc.clone(),
            anchors: self.anchors.clone(),
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.arc
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.arc.fmt(f)
    }
}

/// A future's reference to shared state `T`, counted on its thread's anchor. Derefs to `T`.
pub(crate) struct Handle<T>(Arc<Anchor<T>>);

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle(self.0.clone())
    }
}

impl<T> Deref for Handle<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0.state
    }
}

impl<T> Handle<T> {
    /// The shard of the anchor this handle counts on.
    #[inline]
    pub(crate) fn shard(&self) -> usize {
        self.0.shard
    }
}
