//! The worker pool behind `dispatch`: a bounded queue shared by a fixed number of worker tasks.

use async_channel::{Receiver, Sender, TrySendError};
use tokio::task::JoinHandle;

use super::listener::Accepted;
use crate::Event;

/// One dispatched event, already counted as in flight on its listener.
pub(crate) struct Job<T> {
    pub(crate) accepted: Accepted<T>,
    pub(crate) event: Event<T>,
}

enum Message<T> {
    Job(Job<T>),
    Exit,
}

/// The queue lives as long as the manager; workers are started by `start` and told to exit by `stop`
/// once every accepted event has ended.
pub(crate) struct Pool<T> {
    sender: Sender<Message<T>>,
    receiver: Receiver<Message<T>>,
}

impl<T: Send + Sync + 'static> Pool<T> {
    pub(crate) fn new(queue: usize) -> Self {
        let (sender, receiver) = async_channel::bounded(queue);
        Pool { sender, receiver }
    }

    /// Queues a job, or hands it back at once when the queue is full.
    pub(crate) fn try_send(&self, job: Job<T>) -> Result<(), Job<T>> {
        match self.sender.try_send(Message::Job(job)) {
            Ok(()) => Ok(()),
            Err(
                TrySendError::Full(Message::Job(job)) | TrySendError::Closed(Message::Job(job)),
            ) => Err(job),
            // Only jobs are ever tried; an Exit is sent with `send`.
            Err(TrySendError::Full(Message::Exit) | TrySendError::Closed(Message::Exit)) => {
                unreachable!("try_send is only called with jobs")
            }
        }
    }

    /// Starts `workers` tasks that run jobs until told to exit.
    pub(crate) fn spawn_workers(&self, workers: usize) -> Vec<JoinHandle<()>> {
        (0..workers)
            .map(|_| {
                let receiver = self.receiver.clone();
                tokio::spawn(async move {
                    while let Ok(Message::Job(job)) = receiver.recv().await {
                        let Job { accepted, event } = job;
                        let listener = accepted.listener.clone();
                        // The outcome is final inside the stack (dead-lettered on failure); the worker only
                        // keeps the event counted until it ends.
                        let _ = listener.run(event, accepted.run).await;
                        drop(accepted);
                    }
                })
            })
            .collect()
    }

    /// Tells `workers` workers to exit (call once the queue is drained) and waits for them.
    pub(crate) async fn stop_workers(&self, handles: Vec<JoinHandle<()>>) {
        for _ in 0..handles.len() {
            // The manager keeps a receiver, so the channel is never closed.
            let _ = self.sender.send(Message::Exit).await;
        }
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(target: "tower_listener::manager", error = %e, "a dispatch worker ended abnormally");
            }
        }
    }
}
