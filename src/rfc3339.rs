//! Wall-clock times as RFC 3339 strings (`2026-12-01T21:30:07.123456789Z`), the form CloudEvents' `time`
//! and every stored record of this crate use: readable by people and by every other language's tools.
//! Parsing and formatting are the `time` crate's; this only adapts them to `SystemTime` and serde.

use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `at` as RFC 3339 in UTC, with as many fractional digits as it needs.
pub(crate) fn format(at: SystemTime) -> Result<String, time::error::Format> {
    OffsetDateTime::from(at).format(&Rfc3339)
}

/// An RFC 3339 date-time (any offset) as a `SystemTime`.
pub(crate) fn parse(text: &str) -> Result<SystemTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339).map(SystemTime::from)
}

/// `#[serde(with = "crate::rfc3339")]` for a `SystemTime` field.
pub(crate) fn serialize<S: serde::Serializer>(
    at: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = format(*at).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

/// `#[serde(with = "crate::rfc3339")]` for a `SystemTime` field.
pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SystemTime, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
    parse(&text).map_err(|e| {
        serde::de::Error::custom(format_args!("{text:?} is not an RFC 3339 date-time: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn round_trips_to_the_nanosecond_and_reads_offsets() {
        let at = UNIX_EPOCH + Duration::new(1_764_624_607, 123_456_789);
        let text = super::format(at).unwrap();
        assert_eq!(text, "2025-12-01T21:30:07.123456789Z");
        assert_eq!(super::parse(&text).unwrap(), at);
        assert_eq!(
            super::parse("2025-12-01T22:30:07.123456789+01:00").unwrap(),
            at
        );
        assert!(super::parse("2025-12-01 21:30").is_err());
    }
}
