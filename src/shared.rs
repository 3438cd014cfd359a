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

/// One thread shard's reference to the shared state; aligned so that two anchors never share a cache line.
#[repr(align(128))]
struct Anchor<T>(Arc<T>);

/// Shared state `T` with a reference-counted anchor per thread shard. Derefs to `T`.
pub(crate) struct Shared<T> {
    arc: Arc<T>,
    anchors: Arc<[Arc<Anchor<T>>]>,
}

impl<T> Shared<T> {
    pub(crate) fn new(arc: Arc<T>) -> Self {
        Shared {
            anchors: (0..shard_count())
                .map(|_| Arc::new(Anchor(arc.clone())))
                .collect(),
            arc,
        }
    }

    /// A handle for a future made on this thread: it counts a reference on this thread's anchor only.
    #[inline]
    pub(crate) fn handle(&self) -> Handle<T> {
        Handle(self.anchors[thread_shard(self.anchors.len())].clone())
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
        &self.0 .0
    }
}
