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
/// With the `serde` feature (on by default) an `Event<T>` is `Serialize`/`Deserialize` when `T` is, as a
/// [CloudEvents 1.0](https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md)
/// structured JSON object:
///
/// ```json
/// {"specversion": "1.0", "id": "ord-1", "type": "order.created", "source": "/shop",
///  "time": "2026-12-01T21:30:07.5Z", "data": {"total": 42}, "tenant": "acme"}
/// ```
///
/// `id`, `type` and `data` are required (`data` may be left out when `T` accepts nothing, such as
/// `serde_json::Value`'s `null` or an `Option`); `source` is optional; `time` is an RFC 3339 date-time with
/// any offset and defaults to now; `specversion` is written as "1.0" and, when present, must be "1.0".
/// Every other attribute (`subject`, `datacontenttype`, extensions such as `tenant`) is metadata: strings,
/// or numbers and booleans kept as their text. A metadata key that is one of the attributes above cannot
/// be written (serializing fails naming it, rather than writing a second `id`).
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
struct Inner<T> {
    id: String,
    event_type: String,
    source: Option<String>,
    timestamp: SystemTime,
    data: T,
    metadata: BTreeMap<String, String>,
}

impl<T> Event<T> {
    /// A new event stamped with the current wall-clock time.
    pub fn new(id: impl Into<String>, event_type: impl Into<String>, data: T) -> Self {
        Self::new_at(id, event_type, data, SystemTime::now())
    }

    /// A new event stamped `timestamp` (no `Clone` needed: nothing shares it yet).
    pub(crate) fn new_at(
        id: impl Into<String>,
        event_type: impl Into<String>,
        data: T,
        timestamp: SystemTime,
    ) -> Self {
        Event {
            inner: Arc::new(Inner {
                id: id.into(),
                event_type: event_type.into(),
                source: None,
                timestamp,
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

    /// Where the event comes from (CloudEvents' `source`, such as `"/shop/orders"`), if known.
    pub fn source(&self) -> Option<&str> {
        self.inner.source.as_deref()
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

    /// Returns the event with its `source` set.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).source = Some(source.into());
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
            .field("source", &self.inner.source)
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
                && self.inner.source == other.inner.source
                && self.inner.timestamp == other.inner.timestamp
                && self.inner.data == other.inner.data
                && self.inner.metadata == other.inner.metadata)
    }
}

/// The attributes CloudEvents defines that are not metadata here.
#[cfg(feature = "serde")]
const ATTRIBUTES: [&str; 7] = [
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "data",
    "data_base64",
];

#[cfg(feature = "serde")]
impl<T: serde::Serialize> serde::Serialize for Event<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap};

        let inner = &*self.inner;
        if let Some(key) = inner
            .metadata
            .keys()
            .find(|k| ATTRIBUTES.contains(&k.as_str()))
        {
            return Err(S::Error::custom(format_args!(
                "event {:?}: metadata key {key:?} is a CloudEvents attribute and cannot be an extension",
                inner.id
            )));
        }
        let time = crate::rfc3339::format(inner.timestamp).map_err(S::Error::custom)?;
        let mut map = serializer.serialize_map(Some(
            5 + usize::from(inner.source.is_some()) + inner.metadata.len(),
        ))?;
        map.serialize_entry("specversion", "1.0")?;
        map.serialize_entry("id", &inner.id)?;
        map.serialize_entry("type", &inner.event_type)?;
        if let Some(source) = &inner.source {
            map.serialize_entry("source", source)?;
        }
        map.serialize_entry("time", &time)?;
        map.serialize_entry("data", &inner.data)?;
        for (key, value) in &inner.metadata {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(feature = "serde")]
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Event<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(EventVisitor(std::marker::PhantomData))
            .map(|inner| Event {
                inner: Arc::new(inner),
            })
    }
}

#[cfg(feature = "serde")]
struct EventVisitor<T>(std::marker::PhantomData<fn() -> T>);

/// An extension attribute's value: CloudEvents allows strings, integers and booleans (and URIs and
/// times, which arrive as strings).
#[cfg(feature = "serde")]
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Extension {
    Text(String),
    Integer(i64),
    Unsigned(u64),
    Boolean(bool),
    Number(f64),
}

#[cfg(feature = "serde")]
impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for EventVisitor<T> {
    type Value = Inner<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvents JSON object with `id`, `type` and `data`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Inner<T>, A::Error> {
        use serde::de::Error as _;

        let (mut id, mut event_type, mut source, mut time, mut data) =
            (None, None, None, None, None::<T>);
        let mut metadata = BTreeMap::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "specversion" => {
                    let version: std::borrow::Cow<'de, str> = map.next_value()?;
                    if version != "1.0" {
                        return Err(A::Error::custom(format_args!(
                            "`specversion` {version:?} is not supported (only \"1.0\")"
                        )));
                    }
                }
                "id" => id = Some(map.next_value::<String>()?),
                "type" => event_type = Some(map.next_value::<String>()?),
                "source" => source = map.next_value::<Option<String>>()?,
                "time" => {
                    let text: Option<std::borrow::Cow<'de, str>> = map.next_value()?;
                    if let Some(text) = text {
                        time = Some(crate::rfc3339::parse(&text).map_err(|e| {
                            A::Error::custom(format_args!(
                                "`time` {text:?} is not an RFC 3339 date-time: {e}"
                            ))
                        })?);
                    }
                }
                "data" => data = Some(map.next_value::<T>()?),
                "data_base64" => {
                    return Err(A::Error::custom(
                        "`data_base64` (binary data) is not supported: send the payload as `data`",
                    ))
                }
                _ => {
                    let value = map.next_value::<Option<Extension>>().map_err(|_| {
                        A::Error::custom(format_args!(
                            "extension attribute `{key}` must be a string, a number or a boolean"
                        ))
                    })?;
                    // CloudEvents: an attribute whose value is null is absent.
                    let Some(value) = value else { continue };
                    let text = match value {
                        Extension::Text(text) => text,
                        Extension::Integer(n) => n.to_string(),
                        Extension::Unsigned(n) => n.to_string(),
                        Extension::Boolean(b) => b.to_string(),
                        Extension::Number(n) => n.to_string(),
                    };
                    metadata.insert(key.into_owned(), text);
                }
            }
        }
        let id = id.ok_or_else(|| A::Error::missing_field("id"))?;
        let event_type = event_type.ok_or_else(|| A::Error::missing_field("type"))?;
        let data = match data {
            Some(data) => data,
            // No `data`: fine for a payload type that accepts nothing (`Value::Null`, `None`, `()`).
            None => T::deserialize(serde::de::value::UnitDeserializer::<A::Error>::new())
                .map_err(|_| A::Error::missing_field("data"))?,
        };
        Ok(Inner {
            id,
            event_type,
            source,
            timestamp: time.unwrap_or_else(SystemTime::now),
            data,
            metadata,
        })
    }
}
