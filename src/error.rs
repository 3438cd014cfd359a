//! The one error type of the crate.
//!
//! Every layer of this crate and the [`ListenerManager`](crate::ListenerManager) return [`Error`]. A caller
//! matches on it without downcasting; the handler's own error stays reachable as the
//! [`source`](std::error::Error::source) of [`Error::Handler`].
//!
//! Layers accept inner services whose error is anything `Into<tower::BoxError>` and convert it once, with
//! [`Error::from_boxed`]: an error that already is an [`Error`] is unwrapped, tower's own `Elapsed` and
//! `Overloaded` become [`Error::Timeout`] and [`Error::Overloaded`], anything else becomes [`Error::Handler`].
//! So stacking layers never nests or boxes an error twice.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;

/// The error of every layer and of the manager.
///
/// `Error` is `Clone` (the handler's error is shared behind an `Arc`), so a dead-letter sink can keep the
/// final error while the caller gets it too.
///
/// ```
/// use tower_listener::Error;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("card declined")]
/// struct Declined;
///
/// let err = Error::handler(Declined);
/// assert!(matches!(err, Error::Handler(_)));
/// assert!(!err.is_rejection());
/// let source = std::error::Error::source(&err).unwrap();
/// assert!(source.downcast_ref::<Declined>().is_some());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The circuit breaker is open (or half-open with every probe slot taken) and rejected the call without
    /// running it.
    #[error("circuit breaker is open{}", after(" (retry after ", *retry_after, ")"))]
    CircuitOpen {
        /// How long until the breaker admits a probe; `None` when it is half-open (retry as soon as a
        /// probe finishes) or forced open (no time is known).
        retry_after: Option<Duration>,
    },

    /// The call was refused for lack of capacity: a concurrency limit in reject mode, a bounded wait for a
    /// permit that ran out, or a full dispatch queue.
    #[error("overloaded: no capacity to run the event")]
    Overloaded,

    /// An attempt ran past its time limit and was cancelled.
    #[error("attempt timed out{}", after(" after ", *limit, ""))]
    Timeout {
        /// The limit that was exceeded; `None` when the timeout came from a layer that does not report
        /// it (tower's own `Timeout`).
        limit: Option<Duration>,
    },

    /// The handler failed; its error is the [`source`](std::error::Error::source), and the
    /// [`HandlerError`] derefs to it (`downcast_ref` finds the handler's own type).
    #[error("handler failed: {0}")]
    Handler(#[source] HandlerError),

    /// The handler said the event can never succeed (it returned [`Error::permanent`] or a [`Permanent`],
    /// or the listener's [`permanent_when`](crate::ListenerConfig::permanent_when) matched its error): it
    /// is not retried, counts for neither the circuit breaker nor health, and is dead-lettered at once
    /// with reason [`Permanent`](crate::DeadLetterReason::Permanent). The handler's error is the
    /// [`source`](std::error::Error::source).
    #[error("permanent failure: {0}")]
    Permanent(#[source] HandlerError),

    /// The handler panicked; the panic message is kept.
    #[error("handler panicked: {message}")]
    Panicked {
        /// The panic payload when it was a string, else a fixed description.
        message: String,
    },

    /// No listener is registered under this name.
    #[error("listener {0:?} not found")]
    NotFound(String),

    /// A listener with this name is registered already.
    #[error("listener {0:?} is already registered")]
    AlreadyRegistered(String),

    /// `start` was called on a manager that is running.
    #[error("the manager is already running")]
    AlreadyRunning,

    /// The manager (or the listener) is not running: it was never started, or it was stopped.
    #[error("the manager is not running")]
    NotRunning,

    /// The event was cancelled by a shutdown (`stop` or `unregister` ran past its deadline).
    #[error("cancelled by shutdown")]
    Stopped,

    /// A dead-letter store or a broker failed: a file that cannot be opened, a server that cannot be
    /// reached, a write that was not acknowledged. `context` says what was being done and where (a path,
    /// a stream; never a credential); the cause is the [`source`](std::error::Error::source).
    #[error("{context}: {source}")]
    Backend {
        /// What failed, and on what.
        context: String,
        /// The underlying error.
        #[source]
        source: HandlerError,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The path of the field, such as `"retry_policy.max_delay"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// `"{before}{duration:?}{after}"`, or nothing for `None` (for the messages above).
fn after(before: &str, duration: Option<Duration>, after: &str) -> String {
    duration.map_or_else(String::new, |d| format!("{before}{d:?}{after}"))
}

impl Error {
    /// Wraps a handler's error as [`Error::Handler`].
    pub fn handler<E>(err: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        Error::Handler(HandlerError(Arc::new(err)))
    }

    /// Wraps a handler's error as [`Error::Permanent`]: this event can never succeed (a malformed order, an
    /// unknown customer), so retrying it or counting it against the dependency would only do harm.
    ///
    /// ```
    /// use tower_listener::{Error, Event};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("order total must be positive")]
    /// struct InvalidOrder;
    ///
    /// async fn handle(event: Event) -> Result<(), Error> {
    ///     if event.data()["total"].as_i64().unwrap_or(0) <= 0 {
    ///         return Err(Error::permanent(InvalidOrder)); // never retried, dead-lettered at once
    ///     }
    ///     Ok(())
    /// }
    /// # let err = Error::permanent(InvalidOrder);
    /// # assert!(err.is_permanent());
    /// # assert!(err.downcast_ref::<InvalidOrder>().is_some());
    /// ```
    pub fn permanent<E>(err: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        Error::Permanent(HandlerError(Arc::new(err)))
    }

    /// The same failure, marked permanent: a [`Handler`](Error::Handler) error becomes
    /// [`Permanent`](Error::Permanent) with the same source; a panic or timeout becomes a permanent error
    /// whose source is this error; a permanent error stays as it is. Rejections and manager errors are
    /// returned unchanged (they say nothing about the event).
    pub fn into_permanent(self) -> Self {
        match self {
            Error::Handler(source) => Error::Permanent(source),
            Error::Panicked { .. } | Error::Timeout { .. } => {
                Error::Permanent(HandlerError(Arc::new(self)))
            }
            other => other,
        }
    }

    /// True for [`Error::Permanent`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Permanent(_))
    }

    /// The handler's own error as an `E`, when this is a [`Handler`](Error::Handler) or
    /// [`Permanent`](Error::Permanent) error whose source is an `E`.
    ///
    /// ```
    /// use tower_listener::Error;
    ///
    /// let err = Error::handler(std::io::Error::other("disk full"));
    /// assert_eq!(err.downcast_ref::<std::io::Error>().unwrap().to_string(), "disk full");
    /// assert!(err.downcast_ref::<std::fmt::Error>().is_none());
    /// ```
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Error::Handler(source) | Error::Permanent(source) => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// An [`Error::Backend`]: `context` (what failed, and on what) caused by `source`.
    ///
    /// ```
    /// use tower_listener::Error;
    ///
    /// let err = Error::backend("dead-letter store /var/lib/app/dl.redb: cannot open", std::io::Error::other("denied"));
    /// assert_eq!(err.kind(), "backend");
    /// assert_eq!(err.to_string(), "dead-letter store /var/lib/app/dl.redb: cannot open: denied");
    /// ```
    pub fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            context: context.into(),
            source: HandlerError(Arc::from(source.into())),
        }
    }

    /// An [`Error::InvalidConfig`] for `field`.
    pub fn invalid_config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// Converts any boxed error into an `Error`, once: an `Error` is unwrapped, a [`Permanent`] becomes
    /// [`Error::Permanent`], tower's `Elapsed` becomes [`Error::Timeout`], tower's `Overloaded` becomes
    /// [`Error::Overloaded`], anything else is kept as the source of [`Error::Handler`].
    ///
    /// ```
    /// use tower_listener::Error;
    ///
    /// let boxed: tower::BoxError = Box::new(Error::Overloaded);
    /// assert!(matches!(Error::from_boxed(boxed), Error::Overloaded));
    ///
    /// let boxed: tower::BoxError = "db down".into();
    /// assert_eq!(Error::from_boxed(boxed).to_string(), "handler failed: db down");
    /// ```
    pub fn from_boxed(err: BoxError) -> Self {
        let err = match err.downcast::<Error>() {
            Ok(err) => return *err,
            Err(err) => err,
        };
        let err = match err.downcast::<Permanent>() {
            Ok(permanent) => return Error::Permanent(HandlerError(Arc::from(permanent.0))),
            Err(err) => err,
        };
        let err = match err.downcast::<tower::timeout::error::Elapsed>() {
            Ok(_) => return Error::Timeout { limit: None },
            Err(err) => err,
        };
        match err.downcast::<tower::load_shed::error::Overloaded>() {
            Ok(_) => Error::Overloaded,
            Err(err) => Error::Handler(HandlerError(Arc::from(err))),
        }
    }

    /// True for the errors that mean "not run for lack of capacity or health": [`Error::CircuitOpen`] and
    /// [`Error::Overloaded`]. Rejections are never retried by default and never count as breaker failures.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Error::CircuitOpen { .. } | Error::Overloaded)
    }

    /// A short, stable name of the variant ("handler", "timeout", "circuit_open", …), for logs, metrics
    /// labels and JSON bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::CircuitOpen { .. } => "circuit_open",
            Error::Overloaded => "overloaded",
            Error::Timeout { .. } => "timeout",
            Error::Handler(_) => "handler",
            Error::Permanent(_) => "permanent",
            Error::Panicked { .. } => "panicked",
            Error::NotFound(_) => "not_found",
            Error::AlreadyRegistered(_) => "already_registered",
            Error::AlreadyRunning => "already_running",
            Error::NotRunning => "not_running",
            Error::Stopped => "stopped",
            Error::Backend { .. } => "backend",
            Error::InvalidConfig { .. } => "invalid_config",
        }
    }

    /// Builds [`Error::Panicked`] from a panic payload.
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Error::Panicked { message }
    }
}

/// The longest duration any setting of this crate accepts (365 days): longer values are almost surely a
/// unit mistake, and would overflow `Instant` arithmetic on some platforms.
pub const MAX_CONFIG_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Checks that a duration setting is positive and at most [`MAX_CONFIG_DURATION`].
pub(crate) fn check_duration(field: &'static str, value: Duration) -> Result<(), Error> {
    if value.is_zero() {
        return Err(Error::invalid_config(field, "must be greater than zero"));
    }
    if value > MAX_CONFIG_DURATION {
        return Err(Error::invalid_config(field, "must be at most 365 days"));
    }
    Ok(())
}

/// Marks a handler's error as permanent, for handlers whose error type is [`tower::BoxError`] (or
/// anything a `Permanent` converts into): `Err(Permanent::new(e).into())`. It becomes
/// [`Error::Permanent`] with `e` as its source. A handler returning this crate's [`Error`] uses
/// [`Error::permanent`] instead; for error types a handler cannot wrap (a serde error from a `?`), see
/// [`ListenerConfig::permanent_when`](crate::ListenerConfig::permanent_when).
///
/// ```
/// use tower::{BoxError, ServiceExt, service_fn};
/// use tower_listener::{CatchPanicLayer, Error, Permanent};
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = CatchPanicLayer.layer(service_fn(|raw: &'static str| async move {
///     let total: i64 = raw.parse().map_err(|e| Permanent::new(e))?; // a bad number never parses
///     Ok::<_, BoxError>(total)
/// }));
/// let err = svc.oneshot("forty-two").await.unwrap_err();
/// assert!(err.is_permanent());
/// assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
/// # }
/// ```
pub struct Permanent(BoxError);

impl Permanent {
    /// Marks `err` as permanent.
    pub fn new(err: impl Into<BoxError>) -> Self {
        Permanent(err.into())
    }

    /// The error inside.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl std::fmt::Debug for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Permanent").field(&self.0).finish()
    }
}

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "permanent failure: {}", self.0)
    }
}

impl StdError for Permanent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

impl From<Permanent> for Error {
    fn from(permanent: Permanent) -> Self {
        Error::Permanent(HandlerError(Arc::from(permanent.0)))
    }
}

/// A handler's own error, shared so that [`Error`] is `Clone`.
///
/// It derefs to `dyn std::error::Error`, so `downcast_ref` finds the handler's type, and it is the
/// [`source`](std::error::Error::source) of [`Error::Handler`]. (It does not implement `Error` itself:
/// that is what makes `source()` return the handler's error rather than this wrapper.)
///
/// ```
/// use tower_listener::Error;
///
/// let err = Error::handler(std::io::Error::other("disk full"));
/// if let Error::Handler(source) = &err {
///     assert!(source.is::<std::io::Error>());
///     assert_eq!(source.to_string(), "disk full");
/// }
/// ```
#[derive(Clone)]
pub struct HandlerError(Arc<dyn StdError + Send + Sync>);

impl HandlerError {
    /// The shared error.
    pub fn into_inner(self) -> Arc<dyn StdError + Send + Sync> {
        self.0
    }
}

impl std::ops::Deref for HandlerError {
    type Target = dyn StdError + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error as a dead letter keeps it: what went wrong, in a form that can be stored, sent to a broker and
/// read back by another process or another version of the service.
///
/// A record made in this process also keeps the [`Error`] itself ([`error`](Self::error)), so an
/// in-process sink can still downcast the handler's error; a record read back from a store has only its
/// text.
///
/// ```
/// use tower_listener::{Error, ErrorRecord};
///
/// let io = std::io::Error::other("connection refused");
/// let record = ErrorRecord::from(&Error::handler(io));
/// assert_eq!(record.kind, "handler");
/// assert_eq!(record.message, "handler failed: connection refused");
/// assert_eq!(record.chain, ["connection refused"]);
/// assert!(!record.permanent);
/// assert!(record.error().is_some_and(|e| e.downcast_ref::<std::io::Error>().is_some()));
/// ```
#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ErrorRecord {
    /// [`Error::kind`]: "handler", "permanent", "timeout", "panicked", "circuit_open", … (a `String`, so a
    /// record from a newer version with a kind this one does not know still reads).
    pub kind: String,
    /// The error's message (its `Display`).
    pub message: String,
    /// The messages of its sources, outermost first (the handler's error, then what caused it, …).
    #[cfg_attr(feature = "serde", serde(default))]
    pub chain: Vec<String>,
    /// Whether the failure was permanent.
    #[cfg_attr(feature = "serde", serde(default))]
    pub permanent: bool,
    #[cfg_attr(feature = "serde", serde(skip))]
    live: Option<Error>,
}

impl ErrorRecord {
    /// A record with no live error (as read back from a store, or made by hand).
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorRecord {
            kind: kind.into(),
            message: message.into(),
            chain: Vec::new(),
            permanent: false,
            live: None,
        }
    }

    /// The error itself, when the record was made from it in this process; `None` once stored and read
    /// back.
    pub fn error(&self) -> Option<&Error> {
        self.live.as_ref()
    }
}

impl From<&Error> for ErrorRecord {
    fn from(error: &Error) -> Self {
        let mut chain = Vec::new();
        let mut source = StdError::source(error);
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        ErrorRecord {
            kind: error.kind().to_owned(),
            message: error.to_string(),
            chain,
            permanent: error.is_permanent(),
            live: Some(error.clone()),
        }
    }
}

impl From<Error> for ErrorRecord {
    fn from(error: Error) -> Self {
        ErrorRecord::from(&error)
    }
}

/// Records are equal when their text is: whether one still holds its live error does not matter.
impl PartialEq for ErrorRecord {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.message == other.message
            && self.chain == other.chain
            && self.permanent == other.permanent
    }
}

impl Eq for ErrorRecord {}

impl std::fmt::Debug for ErrorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorRecord")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("chain", &self.chain)
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl std::fmt::Display for ErrorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
