//! A listener's built stack with its handler type erased, called without a clone of the stack and
//! without a heap allocation per event.
//!
//! Erasing the handler's type means the stack's future cannot be named, so it lives behind a
//! `Pin<Box<dyn …>>`. Instead of allocating (and freeing) one per event, each listener keeps per-thread
//! shards, each holding a ready clone of the stack and a free list of boxes that already fit its future:
//! an event takes the shard of its thread (an uncontended `try_lock`), calls the shard's service, moves
//! the future into a recycled box, and gives the box back (emptied: the future and everything it held are
//! dropped at once) when the event ends or is cancelled. When the shard is busy or the handler is not
//! ready at once, the event falls back to a clone of the stack and a fresh box.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};

use crate::metrics::{shard_count, thread_index};
use crate::{Error, Event};

/// Boxes kept per shard for reuse; more are freed.
const FREE_PER_SHARD: usize = 64;

/// A boxed stack future, type-erased, that can be emptied and refilled in place.
pub(crate) trait Slot: Send {
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;
    /// Drops the future inside, keeping the allocation.
    fn clear(self: Pin<&mut Self>);
    /// Moves the future out of `future` (an `Option<F>` of this slot's future type) into the slot.
    fn fill(self: Pin<&mut Self>, future: &mut dyn Any) -> bool;
    /// Whether the slot is of its stack's usual future type (fallback slots are not recycled).
    fn recyclable(&self) -> bool;
}

pin_project! {
    #[project = SlotProj]
    enum FutureSlot<F> {
        Empty,
        Running { #[pin] future: F },
    }
}

impl<F> Slot for FutureSlot<F>
where
    F: Future<Output = Result<(), Error>> + Send + 'static,
{
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.project() {
            SlotProj::Running { future } => future.poll(cx),
            // Polled after it was emptied: cannot happen through `Lease`.
            SlotProj::Empty => Poll::Ready(Err(Error::Stopped)),
        }
    }

    fn clear(mut self: Pin<&mut Self>) {
        self.set(FutureSlot::Empty);
    }

    fn fill(mut self: Pin<&mut Self>, future: &mut dyn Any) -> bool {
        match future.downcast_mut::<Option<F>>().and_then(Option::take) {
            Some(future) => {
                self.set(FutureSlot::Running { future });
                true
            }
            None => false,
        }
    }

    fn recyclable(&self) -> bool {
        true
    }
}

pin_project! {
    /// The slow path's future: readiness, then the call, on a clone of the stack.
    struct Fallback<F> {
        #[pin]
        future: F,
    }
}

impl<F> Slot for Fallback<F>
where
    F: Future<Output = Result<(), Error>> + Send,
{
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.project().future.poll(cx)
    }

    fn clear(self: Pin<&mut Self>) {}

    fn fill(self: Pin<&mut Self>, _future: &mut dyn Any) -> bool {
        false
    }

    fn recyclable(&self) -> bool {
        false
    }
}

pub(crate) type BoxedSlot = Pin<Box<dyn Slot>>;

/// A listener's stack, type-erased.
pub(crate) trait EventStack<T>: Send + Sync {
    /// Starts one event: its future, in a box of this stack's.
    fn start(&self, event: Event<T>) -> BoxedSlot;
    /// Takes back a box whose event has ended.
    fn recycle(&self, slot: BoxedSlot);
}

#[repr(align(128))] // one shard per cache line pair, so threads do not false-share
struct Shard<S> {
    inner: Mutex<ShardInner<S>>,
}

struct ShardInner<S> {
    service: S,
    free: Vec<BoxedSlot>,
}

pub(crate) struct Stack<S> {
    prototype: S,
    shards: Box<[Shard<S>]>,
}

impl<S: Clone> Stack<S> {
    pub(crate) fn new(service: S) -> Self {
        Stack {
            shards: (0..shard_count())
                .map(|_| Shard {
                    inner: Mutex::new(ShardInner {
                        service: service.clone(),
                        free: Vec::new(),
                    }),
                })
                .collect(),
            prototype: service,
        }
    }

    fn shard(&self) -> &Shard<S> {
        &self.shards[thread_index() % self.shards.len()]
    }
}

impl<S, T> EventStack<T> for Stack<S>
where
    S: Service<Event<T>, Response = (), Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    T: Send + Sync + 'static,
{
    fn start(&self, event: Event<T>) -> BoxedSlot {
        if let Ok(mut shard) = self.shard().inner.try_lock() {
            // A stack whose handler is ready at once (the usual case) is called right here; a handler
            // that is not gets the slow path below with a real waker.
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(ready) = shard.service.poll_ready(&mut cx) {
                let mut future = Some(match ready {
                    Ok(()) => shard.service.call(event),
                    Err(error) => {
                        drop(shard);
                        return Box::pin(Fallback {
                            future: std::future::ready(Err(error)),
                        });
                    }
                });
                while let Some(mut slot) = shard.free.pop() {
                    if slot.as_mut().fill(&mut future) {
                        return slot;
                    }
                }
                drop(shard);
                return match future {
                    Some(future) => Box::pin(FutureSlot::Running { future }),
                    // `fill` takes the future only when it succeeds, and then the slot was returned.
                    None => Box::pin(Fallback {
                        future: std::future::ready(Err(Error::Stopped)),
                    }),
                };
            }
        }
        let service = self.prototype.clone();
        Box::pin(Fallback {
            future: async move { service.oneshot(event).await },
        })
    }

    fn recycle(&self, mut slot: BoxedSlot) {
        if !slot.recyclable() {
            return;
        }
        slot.as_mut().clear();
        if let Ok(mut shard) = self.shard().inner.try_lock() {
            if shard.free.len() < FREE_PER_SHARD {
                shard.free.push(slot);
            }
        }
    }
}

/// One event's stack future, given back to its stack when it ends or is dropped.
pub(crate) struct Lease<'a, T> {
    stack: &'a dyn EventStack<T>,
    slot: Option<BoxedSlot>,
}

impl<'a, T> Lease<'a, T> {
    pub(crate) fn new(stack: &'a dyn EventStack<T>, event: Event<T>) -> Self {
        Lease {
            slot: Some(stack.start(event)),
            stack,
        }
    }
}

impl<T> Future for Lease<'_, T> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.slot.as_mut() {
            Some(slot) => slot.as_mut().poll_slot(cx),
            None => Poll::Ready(Err(Error::Stopped)),
        }
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.stack.recycle(slot);
        }
    }
}
