//! [`Permits`]: the limit's permit count, kept per thread shard: one uncontended atomic on the fast path.
//!
//! Not tokio's `Semaphore`: its release takes a mutex on every call (to hand permits to queued waiters in
//! order), a lock that every caller of a limit shares. Here taking and returning a permit are one atomic
//! operation each; only a call that finds no permit free registers as a waiter on a `Notify`. The price is
//! fairness: a new call can take a just-freed permit ahead of a waiter (the waiter then waits for the next
//! one); nothing is ever lost or stuck.
//!
//! The count is split into thread shards whose capacities add up to the limit: a call takes a permit from
//! its thread's shard, or, when that one is full, from the next shard with room, and gives it back to the
//! shard it came from. So no more than the limit are ever taken, and a call finds no permit only when
//! every shard is full, which is when the limit is reached. While each thread stays within its share, no
//! two threads write the same cache line; with one count for all, every call of every thread wrote the
//! same one, and a stack without metrics did not get faster with a second thread.
//!
//! No lost wake-up: a waiter counts itself in `waiting` and arms its `Notified` before it retries every
//! shard, and a release decrements its shard's count before it reads `waiting` (all SeqCst). So either the
//! waiter's retry sees the freed permit, or the release sees the waiter and notifies it (`notify_one` keeps
//! the notification when the waiter is between arming and waiting; a notified waiter that is dropped passes
//! it on).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::metrics::{shard_count, thread_shard};
use crate::shared::{Handle, Shared};
use crate::sync::AtomicUsize;

/// One thread shard's part of the count, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    in_use: AtomicUsize,
    capacity: usize,
}

pub(crate) struct Permits {
    limit: usize,
    shards: Box<[Shard]>,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One taken permit; returned on drop to the shard it came from (its handle's shard).
pub(crate) struct Permit {
    permits: Handle<Permits>,
}

impl Permits {
    /// A count of `limit` permits, with a handle anchor per shard.
    pub(crate) fn shared(limit: usize) -> Shared<Permits> {
        let shards = shard_count();
        let permits = Permits {
            limit,
            shards: (0..shards)
                .map(|shard| Shard {
                    in_use: AtomicUsize::new(0),
                    capacity: limit / shards + usize::from(shard < limit % shards),
                })
                .collect(),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        };
        Shared::with_shards(Arc::new(permits), shards)
    }

    pub(crate) fn available(&self) -> usize {
        let in_use: usize = self
            .shards
            .iter()
            .map(|shard| shard.in_use.load(Ordering::SeqCst))
            .sum();
        self.limit.saturating_sub(in_use)
    }
}

impl Shared<Permits> {
    /// Takes a permit if one is free: from this thread's shard, else from the next shard with room.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        let shards = self.shards.len();
        let home = thread_shard(shards);
        for step in 0..shards {
            let index = (home + step) & (shards - 1);
            let shard = &self.shards[index];
            let mut in_use = shard.in_use.load(Ordering::SeqCst);
            while in_use < shard.capacity {
                match shard.in_use.compare_exchange_weak(
                    in_use,
                    in_use + 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => {
                        return Some(Permit {
                            permits: self.handle_at(index),
                        })
                    }
                    Err(actual) => in_use = actual,
                }
            }
        }
        None
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
    #[inline]
    fn drop(&mut self) {
        let permits = &*self.permits;
        permits.shards[self.permits.shard()]
            .in_use
            .fetch_sub(1, Ordering::SeqCst);
        if permits.waiting.load(Ordering::SeqCst) > 0 {
            permits.freed.notify_one();
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
        Permits::shared(limit)
    }

    /// The one permit of `p` taken, and a task waiting for it, counted as waiting.
    async fn held_and_waited_for(p: &Shared<Permits>) -> (Permit, tokio::task::JoinHandle<Permit>) {
        let held = p.try_acquire().unwrap();
        let waiter = tokio::spawn(p.clone().acquire());
        while p.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        (held, waiter)
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
    fn the_shards_share_out_the_limit_exactly() {
        for limit in [1, 2, 3, 7, 10, 33, 1000] {
            let p = permits(limit);
            let capacities: Vec<usize> = p.shards.iter().map(|s| s.capacity).collect();
            assert_eq!(capacities.iter().sum::<usize>(), limit, "{capacities:?}");
            assert!(capacities.iter().max().unwrap() - capacities.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_thread_takes_its_own_shard_first_then_the_next_ones_in_turn() {
        let p = permits(4 * shard_count());
        let shards = p.shards.len();
        let home = thread_shard(shards);
        let taken: Vec<Permit> = (0..p.limit).map(|_| p.try_acquire().unwrap()).collect();
        let order: Vec<usize> = taken.iter().map(|permit| permit.permits.shard()).collect();
        let expected: Vec<usize> = (0..shards)
            .flat_map(|step| std::iter::repeat_n((home + step) % shards, 4))
            .collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn one_thread_takes_the_whole_limit_from_every_shard_and_gives_each_permit_back_where_it_came_from(
    ) {
        let p = permits(10);
        let taken: Vec<Permit> = (0..10).map(|_| p.try_acquire().unwrap()).collect();
        assert!(p.try_acquire().is_none());
        assert_eq!(p.available(), 0);
        for shard in p.shards.iter() {
            assert_eq!(shard.in_use.load(Ordering::SeqCst), shard.capacity);
        }
        // Each permit counts against the shard it was taken from, whichever thread drops it.
        let from_other_shards = taken
            .iter()
            .filter(|permit| permit.permits.shard() != taken[0].permits.shard())
            .count();
        assert_eq!(
            from_other_shards,
            10 - p.shards[taken[0].permits.shard()].capacity
        );
        std::thread::spawn(move || drop(taken)).join().unwrap();
        assert_eq!(p.available(), 10);
        assert!(p
            .shards
            .iter()
            .all(|s| s.in_use.load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn threads_never_hold_more_than_the_limit_together() {
        let p = permits(3);
        let holding = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                let holding = holding.clone();
                std::thread::spawn(move || {
                    let mut took = 0;
                    for _ in 0..20_000 {
                        if let Some(permit) = p.try_acquire() {
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 3, "{now} permits of 3 held at once");
                            took += 1;
                            holding.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                    }
                    took
                })
            })
            .collect();
        let took: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(took > 0);
        assert_eq!(p.available(), 3);
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
        let (held, waiter) = held_and_waited_for(&p).await;
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
        let (held, waiter) = held_and_waited_for(&p).await;
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
