//! A listener's built stack with its handler type erased, called without a clone of the stack and
//! without a heap allocation per event.
//!
//! Erasing the handler's type means the stack's future cannot be named, so it lives behind a
//! `Pin<Box<dyn …>>`. Instead of allocating (and freeing) one per event, each listener keeps per-thread
//! shards, each holding a ready clone of the stack and a free list of boxes that already fit its future:
//! an event takes the shard of its thread (an uncontended try-lock: one atomic swap, released by a plain
//! store), calls the shard's service straight
//! into a recycled box (its future is written there, not moved in), and gives the box back (emptied: the
//! future and everything it held are dropped at once) when the event ends or is cancelled. When the shard
//! is busy or the handler is not ready at once, the event falls back to a clone of the stack and a fresh
//! box.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};
use try_lock::TryLock;

use crate::dead_letter::HoldsRequest;
use crate::metrics::{shard_count, thread_shard};
use crate::{Error, Event};

/// Boxes kept per shard for reuse; more are freed.
const FREE_PER_SHARD: usize = 64;

/// A boxed stack future, type-erased, that can be emptied and refilled in place.
pub(crate) trait Slot<T>: Send {
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;
    /// Drops the future inside, keeping the allocation.
    fn clear(self: Pin<&mut Self>);
    /// Calls `service` (a ready service of this slot's stack type) with `event` and keeps its future here,
    /// in place; hands the event back if `service` is of another type.
    fn call_into(
        self: Pin<&mut Self>,
        service: &mut dyn Any,
        event: Event<T>,
    ) -> Result<(), Event<T>>;
    /// Whether the slot is of its stack's usual future type (fallback slots are not recycled).
    fn recyclable(&self) -> bool;
    /// The event of the call in this slot: its future keeps it until it is emptied.
    fn event(&self) -> Option<&Event<T>>;
}

pin_project! {
    #[project = SlotProj]
    enum SlotState<F> {
        Empty,
        Running { #[pin] future: F },
    }
}

pin_project! {
    /// The usual slot: the future of a call of the stack `S`.
    struct FutureSlot<S, F> {
        #[pin]
        state: SlotState<F>,
        _stack: PhantomData<fn() -> S>,
    }
}

impl<S, T> Slot<T> for FutureSlot<S, S::Future>
where
    S: Service<Event<T>, Response = (), Error = Error> + 'static,
    S::Future: HoldsRequest<Event<T>> + Send + 'static,
    T: 'static,
{
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.project().state.project() {
            SlotProj::Running { future } => future.poll(cx),
            // Polled after it was emptied: cannot happen through `Lease`.
            SlotProj::Empty => Poll::Ready(Err(Error::Stopped)),
        }
    }

    fn clear(self: Pin<&mut Self>) {
        self.project().state.set(SlotState::Empty);
    }

    fn call_into(
        self: Pin<&mut Self>,
        service: &mut dyn Any,
        event: Event<T>,
    ) -> Result<(), Event<T>> {
        let Some(service) = service.downcast_mut::<S>() else {
            return Err(event);
        };
        self.project().state.set(SlotState::Running {
            future: service.call(event),
        });
        Ok(())
    }

    fn recyclable(&self) -> bool {
        true
    }

    fn event(&self) -> Option<&Event<T>> {
        match &self.state {
            SlotState::Running { future } => future.request(),
            SlotState::Empty => None,
        }
    }
}

pin_project! {
    /// The slow path's future: readiness, then the call, on a clone of the stack; with the event (the
    /// call gets a clone), as a slot answers for its event.
    struct Fallback<F, T> {
        #[pin]
        future: F,
        event: Event<T>,
    }
}

impl<F, T> Slot<T> for Fallback<F, T>
where
    F: Future<Output = Result<(), Error>> + Send,
    T: Send + Sync,
{
    fn poll_slot(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.project().future.poll(cx)
    }

    fn clear(self: Pin<&mut Self>) {}

    fn call_into(
        self: Pin<&mut Self>,
        _service: &mut dyn Any,
        event: Event<T>,
    ) -> Result<(), Event<T>> {
        Err(event)
    }

    fn recyclable(&self) -> bool {
        false
    }

    fn event(&self) -> Option<&Event<T>> {
        Some(&self.event)
    }
}

pub(crate) type BoxedSlot<T> = Pin<Box<dyn Slot<T>>>;

/// A listener's stack, type-erased.
pub(crate) trait EventStack<T>: Send + Sync {
    /// Starts one event: its future, in a box of this stack's.
    fn start(&self, event: Event<T>) -> BoxedSlot<T>;
    /// Takes back a box whose event has ended.
    fn recycle(&self, slot: BoxedSlot<T>);
}

#[repr(align(128))] // one shard per cache line pair, so threads do not false-share
struct Shard<S, T> {
    inner: TryLock<ShardInner<S, T>>,
}

struct ShardInner<S, T> {
    service: S,
    free: Vec<BoxedSlot<T>>,
}

pub(crate) struct Stack<S, T> {
    /// Cloned for the slow path; behind a mutex so that the stack is `Sync` whatever the handler (a
    /// `BoxCloneService` is `Send` but not `Sync`).
    prototype: Mutex<S>,
    shards: Box<[Shard<S, T>]>,
}

impl<S: Clone, T> Stack<S, T> {
    pub(crate) fn new(service: S) -> Self {
        Stack {
            shards: (0..shard_count())
                .map(|_| Shard {
                    inner: TryLock::new(ShardInner {
                        service: service.clone(),
                        free: Vec::new(),
                    }),
                })
                .collect(),
            prototype: Mutex::new(service),
        }
    }

    fn shard(&self) -> &Shard<S, T> {
        &self.shards[thread_shard(self.shards.len())]
    }
}

impl<S, T> EventStack<T> for Stack<S, T>
where
    S: Service<Event<T>, Response = (), Error = Error> + Clone + Send + 'static,
    S::Future: HoldsRequest<Event<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    fn start(&self, event: Event<T>) -> BoxedSlot<T> {
        if let Some(mut shard) = self.shard().inner.try_lock() {
            // A stack whose handler is ready at once (the usual case) is called right here; a handler
            // that is not gets the slow path below with a real waker.
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(ready) = shard.service.poll_ready(&mut cx) {
                if let Err(error) = ready {
                    drop(shard);
                    return Box::pin(Fallback {
                        future: std::future::ready(Err(error)),
                        event,
                    });
                }
                let shard = &mut *shard;
                let mut event = event;
                // The call writes its future straight into a recycled box (no copy through the stack).
                while let Some(mut slot) = shard.free.pop() {
                    match slot.as_mut().call_into(&mut shard.service, event) {
                        Ok(()) => return slot,
                        Err(back) => event = back,
                    }
                }
                return Box::pin(FutureSlot {
                    state: SlotState::Running {
                        future: shard.service.call(event),
                    },
                    _stack: PhantomData::<fn() -> S>,
                });
            }
        }
        // Only clones happen under this lock; a poisoned one still holds a valid service.
        let service = self
            .prototype
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let call = event.clone();
        Box::pin(Fallback {
            future: async move { service.oneshot(call).await },
            event,
        })
    }

    fn recycle(&self, mut slot: BoxedSlot<T>) {
        if !slot.recyclable() {
            return;
        }
        slot.as_mut().clear();
        if let Some(mut shard) = self.shard().inner.try_lock() {
            if shard.free.len() < FREE_PER_SHARD {
                shard.free.push(slot);
            }
        }
    }
}

/// One event's stack future, given back to its stack when it ends or is dropped.
pub(crate) struct Lease<'a, T> {
    stack: &'a dyn EventStack<T>,
    slot: Option<BoxedSlot<T>>,
}

impl<'a, T> Lease<'a, T> {
    #[inline]
    pub(crate) fn new(stack: &'a dyn EventStack<T>, event: Event<T>) -> Self {
        Lease {
            slot: Some(stack.start(event)),
            stack,
        }
    }
}

impl<T> HoldsRequest<Event<T>> for Lease<'_, T> {
    fn request(&self) -> Option<&Event<T>> {
        self.slot.as_ref()?.event()
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
