//! [`Event`]: the unit of work a listener processes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// An event: an id, a type, a timestamp, a payload and string metadata.
///
/// Cloning is O(1): the contents are shared and immutable behind one `Arc`, so the retry layer can clone
/// an event per attempt and the dead-letter layer can keep it without ever copying the payload.
/// [`with_metadata`](Event::with_metadata) copies on write only when the event is shared.
///
/// With the `serde` feature (on by default) an `Event<T>` is `Serialize`/`Deserialize` when `T` is, so a
/// dead letter can be stored and replayed. The JSON form is
/// `{"id": .., "event_type": .., "data": .., "metadata": {..}, "timestamp": {"secs_since_epoch": .., "nanos_since_epoch": ..}}`;
/// `metadata` and `timestamp` may be left out (empty, and now).
///
/// ```
/// use tower_listener::Event;
///
/// let event = Event::new("ord-1", "order.created", serde_json::json!({"total": 42}))
///     .with_metadata("tenant", "acme");
/// let copy = event.clone(); // shares the payload, copies nothing
/// assert_eq!(copy.id(), "ord-1");
/// assert_eq!(copy.event_type(), "order.created");
/// assert_eq!(copy.data()["total"], 42);
/// assert_eq!(copy.metadata().get("tenant").map(String::as_str), Some("acme"));
/// ```
pub struct Event<T = serde_json::Value> {
    inner: Arc<Inner<T>>,
}

#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Inner<T> {
    id: String,
    event_type: String,
    #[cfg_attr(feature = "serde", serde(default = "SystemTime::now"))]
    timestamp: SystemTime,
    data: T,
    #[cfg_attr(feature = "serde", serde(default))]
    metadata: BTreeMap<String, String>,
}

impl<T> Event<T> {
    /// A new event stamped with the current wall-clock time.
    pub fn new(id: impl Into<String>, event_type: impl Into<String>, data: T) -> Self {
        Event {
            inner: Arc::new(Inner {
                id: id.into(),
                event_type: event_type.into(),
                timestamp: SystemTime::now(),
                data,
                metadata: BTreeMap::new(),
            }),
        }
    }

    /// The event's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The event's type, such as `"order.created"`.
    pub fn event_type(&self) -> &str {
        &self.inner.event_type
    }

    /// When the event was created.
    pub fn timestamp(&self) -> SystemTime {
        self.inner.timestamp
    }

    /// The payload.
    pub fn data(&self) -> &T {
        &self.inner.data
    }

    /// The string metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.inner.metadata
    }
}

impl<T: Clone> Event<T> {
    /// Returns the event with `key` set to `value` in its metadata. The contents are copied only when this
    /// event shares them with a clone.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner)
            .metadata
            .insert(key.into(), value.into());
        self
    }

    /// Returns the event with its timestamp replaced (for replays and tests).
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        Arc::make_mut(&mut self.inner).timestamp = timestamp;
        self
    }
}

impl<T> Clone for Event<T> {
    fn clone(&self) -> Self {
        Event {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.inner.id)
            .field("event_type", &self.inner.event_type)
            .field("timestamp", &self.inner.timestamp)
            .field("data", &self.inner.data)
            .field("metadata", &self.inner.metadata)
            .finish()
    }
}

impl<T: PartialEq> PartialEq for Event<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.id == other.inner.id
                && self.inner.event_type == other.inner.event_type
                && self.inner.timestamp == other.inner.timestamp
                && self.inner.data == other.inner.data
                && self.inner.metadata == other.inner.metadata)
    }
}

#[cfg(feature = "serde")]
impl<T: serde::Serialize> serde::Serialize for Event<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

#[cfg(feature = "serde")]
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Event<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inner::deserialize(deserializer).map(|inner| Event {
            inner: Arc::new(inner),
        })
    }
}
