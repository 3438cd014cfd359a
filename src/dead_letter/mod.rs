//! Dead letters: no failed event is lost.
//!
//! Reach for it wherever an event must not vanish when it finally fails: the [`DeadLetterLayer`] sits
//! outside the retry layer, and when an event's final outcome is a failure it hands a [`DeadLetter`] (the
//! original event, the final error, the listener name, the attempts, the first-failure and dead-letter times,
//! and a [`DeadLetterReason`]) to a [`DeadLetterSink`], then returns the error to the caller.
//!
//! Sinks: a closure ([`dead_letter_fn`], the Go package's `Handler(event, err)`), a `tokio::sync::mpsc`
//! sender, and the bounded in-memory [`DeadLetterQueue`], which can be listed, drained and
//! [redriven](DeadLetterQueue::redrive). The [`DeadLetterSink`] trait is async and fallible, so durable
//! stores fit behind it. By default every failure is captured, rejections included
//! ([`DeadLetterConfig::capture`] narrows that).
//!
//! **How it fails**: a sink that returns an error or panics never crashes the process and never replaces
//! the event's own error: it is counted in `dead_letter_failures` and logged at error level (target
//! `tower_listener::dead_letter`).
//!
//! **Cancellation**: see [`DeadLetterFuture`]. A cancelled call is not a failure: whoever cancelled it still
//! holds the event. (The manager dead-letters what its own shutdown cancels, with reason `Shutdown`.)
//!
//! Neither tower nor its peers have dead letters; this is written here.

mod future;
mod layer;
mod queue;
mod service;
mod sink;
mod store;

pub use future::DeadLetterFuture;
pub(crate) use future::{reason_for, sink_failed, HoldsRequest, InCall, Lettering};
pub(crate) use layer::{captures, DeadLetterShared};
pub use layer::{CaptureFilter, DeadLetterConfig, DeadLetterLayer};
pub use queue::{DeadLetterQueue, RedriveReport};
pub use service::DeadLetterService;
pub use sink::{
    dead_letter_fn, DeadLetter, DeadLetterReason, DeadLetterSink, FnSink, MalformedLetter, Origin,
    SinkFuture,
};
#[cfg(feature = "serde")]
pub(crate) use store::encoding;
pub(crate) use store::{sequence, sequence_after};
pub use store::{
    Claim, Claims, Cursor, DeadLetterStore, LetterFilter, LetterId, LetterPage, StoreFuture,
    StoredLetter, Undecodable,
};
