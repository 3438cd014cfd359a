//! [`Permits`]: the limit's permit count, one atomic on the fast path.
//!
//! Not tokio's `Semaphore`: its release takes a mutex on every call (to hand permits to queued waiters in
//! order), a lock that every caller of a limit shares. Here taking and returning a permit are one atomic
//! operation each; only a call that finds no permit free registers as a waiter on a `Notify`. The price is
//! fairness: a new call can take a just-freed permit ahead of a waiter (the waiter then waits for the next
//! one); nothing is ever lost or stuck.
//!
//! No lost wake-up: a waiter counts itself in `waiting` and arms its `Notified` before it retries, and a
//! release decrements `in_use` before it reads `waiting` (all SeqCst). So either the waiter's retry sees the
//! freed permit, or the release sees the waiter and notifies it (`notify_one` keeps the notification when
//! the waiter is between arming and waiting; a notified waiter that is dropped passes it on).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::shared::{Handle, Shared};
use crate::sync::AtomicUsize;

pub(crate) struct Permits {
    limit: usize,
    in_use: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One taken permit; returned on drop.
pub(crate) struct Permit {
    permits: Handle<Permits>,
}

impl Permits {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Permits {
            limit,
            in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    pub(crate) fn available(&self) -> usize {
        self.limit
            .saturating_sub(self.in_use.load(Ordering::SeqCst))
    }
}

impl Shared<Permits> {
    /// Takes a permit if one is free.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        let mut in_use = self.in_use.load(Ordering::SeqCst);
        loop {
            if in_use >= self.limit {
                return None;
            }
            match self.in_use.compare_exchange_weak(
                in_use,
                in_use + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        permits: self.handle(),
                    })
                }
                Err(actual) => in_use = actual,
            }
        }
    }

    /// Waits for a permit. Cancel-safe: dropping the future leaves no trace (a notification it received is
    /// passed on).
    pub(crate) async fn acquire(self) -> Permit {
        if let Some(permit) = self.try_acquire() {
            return permit;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            notified.await;
        }
    }
}

struct Waiting<'a>(&'a Permits);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.permits.waiting.load(Ordering::SeqCst) > 0 {
            self.permits.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    fn permits(limit: usize) -> Shared<Permits> {
        Shared::new(Permits::new(limit))
    }

    /// True when a waiter arriving now would be woken at once (a wake-up stored in `freed`).
    fn wakeup_stored(permits: &Permits) -> bool {
        let notified = pin!(permits.freed.notified());
        notified
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn permits_go_up_to_the_limit_and_each_comes_back_on_drop() {
        let p = permits(2);
        let a = p.try_acquire().unwrap();
        assert_eq!(p.available(), 1);
        let b = p.try_acquire().unwrap();
        assert_eq!(p.available(), 0);
        assert!(p.try_acquire().is_none());
        drop(a);
        assert_eq!(p.available(), 1);
        let c = p.try_acquire().unwrap();
        assert!(p.try_acquire().is_none());
        drop((b, c));
        assert_eq!(p.available(), 2);
    }

    #[test]
    fn a_release_with_nobody_waiting_leaves_no_wakeup_behind() {
        let p = permits(1);
        drop(p.try_acquire().unwrap());
        assert!(!wakeup_stored(&p));
    }

    #[tokio::test]
    async fn a_waiter_takes_the_released_permit_and_stops_counting_as_waiting() {
        let p = permits(1);
        let held = p.try_acquire().unwrap();
        let waiter = tokio::spawn(p.clone().acquire());
        while p.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        let permit = waiter.await.unwrap();
        assert_eq!(p.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(p.available(), 0);
        // Its release finds nobody waiting: no wake-up is left for a later waiter.
        drop(permit);
        assert_eq!(p.available(), 1);
        assert!(!wakeup_stored(&p));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_stops_counting_as_waiting() {
        let p = permits(1);
        let held = p.try_acquire().unwrap();
        let waiter = tokio::spawn(p.clone().acquire());
        while p.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        match waiter.await {
            Err(error) => assert!(error.is_cancelled()),
            Ok(_) => panic!("the waiter got a permit that was held"),
        }
        assert_eq!(p.waiting.load(Ordering::SeqCst), 0);
        drop(held);
        assert!(!wakeup_stored(&p));
    }
}
