//! Human units in scenario files: `"4GiB"`, `"1.5 GB"`, `"90s"`, `"2h 30m"`, or plain integers
//! (bytes, milliseconds).

use carapace_engine::Millis;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// A size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

/// A duration, kept in milliseconds of virtual time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Millis);

impl Span {
    pub const fn ms(self) -> u64 {
        self.0.0
    }
}

const UNITS: [(&str, u64); 11] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("K", 1 << 10),
    ("G", 1 << 30),
];

impl std::str::FromStr for Bytes {
    type Err = String;

    fn from_str(text: &str) -> Result<Bytes, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = (text[..split].trim(), text[split..].trim());
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size such as \"4GiB\" or \"512 MB\""))?;
        let scale = UNITS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit) && !unit.is_empty())
            .map(|(_, scale)| *scale)
            .or(unit.is_empty().then_some(1))
            .ok_or_else(|| {
                format!("unknown size unit `{unit}` (use B, KB, MB, GB, KiB, MiB, GiB, TiB)")
            })?;
        let bytes = value * scale as f64;
        if !(bytes.is_finite() && (0.0..=(1u64 << 62) as f64).contains(&bytes)) {
            return Err(format!("size `{text}` is out of range"));
        }
        Ok(Bytes(bytes as u64))
    }
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            format!("`{text}` is not a duration such as \"90s\" or \"2h 30m\": {e}")
        })?;
        let ms = u64::try_from(duration.as_millis())
            .map_err(|_| format!("duration `{text}` is out of range"))?;
        if ms > 1 << 50 {
            return Err(format!("duration `{text}` is out of range"));
        }
        Ok(Span(Millis(ms)))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw<'a> {
    Integer(u64),
    Text(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        match Raw::deserialize(deserializer)? {
            Raw::Integer(n) => Ok(Bytes(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        match Raw::deserialize(deserializer)? {
            Raw::Integer(n) if n <= 1 << 50 => Ok(Span(Millis(n))),
            Raw::Integer(_) => Err(serde::de::Error::custom("duration is out of range")),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, scale) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= scale && self.0.is_multiple_of((scale / 1024).max(1)) {
                let value = self.0 as f64 / scale as f64;
                return write!(f, "{}{name}", trim_float(value));
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.ms();
        if ms == 0 {
            return f.write_str("0s");
        }
        let duration = std::time::Duration::from_millis(ms);
        write!(f, "{}", humantime::format_duration(duration))
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl JsonSchema for Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Bytes".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: bytes as an integer, or a string with a unit such as \"4GiB\" or \"512 MB\".",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B|[KG]|B)?\\s*$" }
            ]
        })
    }
}

impl JsonSchema for Span {
    fn schema_name() -> Cow<'static, str> {
        "Span".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: milliseconds as an integer, or a string such as \"90s\", \"15m\" or \"2h 30m\".",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string" }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_and_print_back() {
        assert_eq!("4GiB".parse::<Bytes>().unwrap(), Bytes(4 << 30));
        assert_eq!("1.5 GB".parse::<Bytes>().unwrap(), Bytes(1_500_000_000));
        assert_eq!("512".parse::<Bytes>().unwrap(), Bytes(512));
        assert!("4 parsecs".parse::<Bytes>().is_err());
        assert!("-1GiB".parse::<Bytes>().is_err());
        assert_eq!("90s".parse::<Span>().unwrap(), Span(Millis(90_000)));
        assert_eq!("2h 30m".parse::<Span>().unwrap(), Span(Millis(9_000_000)));
        assert!("soon".parse::<Span>().is_err());
        for text in ["4GiB", "1.5GiB", "640MiB", "12B"] {
            let bytes: Bytes = text.parse().unwrap();
            assert_eq!(bytes.to_string().parse::<Bytes>().unwrap(), bytes, "{text}");
        }
    }
}
