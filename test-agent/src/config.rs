//! The agent's config file. Strict, like OpenClaw's: an unknown key or a wrong type is an error,
//! and a broken file stops the agent with exit code 78 instead of running on half a config.

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::error::Category;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

/// How long a booting agent stays unready when neither the config nor `--boot-ms` says.
pub const DEFAULT_BOOT_MS: u64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub port: u16,
    #[serde(default = "default_boot_ms")]
    pub boot_ms: u64,
    /// Shown by `GET /state`, so a test can tell which version of a config is live.
    #[serde(default)]
    pub greeting: Option<String>,
    /// The credential `GET /auth` accepts (`Authorization: Bearer TOKEN`). Like `greeting`, it
    /// is reloaded while the agent runs when the file changes (a gateway's hot reload).
    #[serde(default)]
    pub token: Option<String>,
}

fn default_boot_ms() -> u64 {
    DEFAULT_BOOT_MS
}

/// One thing wrong with a config file, shaped like an issue of `openclaw config validate --json`:
/// `path` names the offending key, and is empty when the problem is the file as a whole.
#[derive(Debug, PartialEq, Serialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl Issue {
    fn whole_file(message: impl Into<String>) -> Issue {
        Issue {
            path: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Reads and checks the config file at `file`.
pub fn load(file: &Path) -> Result<Config, Issue> {
    let bytes =
        std::fs::read(file).map_err(|e| Issue::whole_file(format!("cannot read the file: {e}")))?;
    parse(&bytes)
}

/// Checks a config file's contents. Bytes rather than a string, so that invalid UTF-8 is
/// reported with its position like any other syntax error.
pub fn parse(bytes: &[u8]) -> Result<Config, Issue> {
    // serde_json would say "EOF while parsing a value at line 1 column 0": true, but obscure.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Issue::whole_file("the file is empty"));
    }
    parse_object(bytes).map_err(|e| issue_of(&e, bytes))
}

/// Parses `bytes` as a JSON object holding a `T`. serde's derived structs also accept a JSON
/// array of their fields in order (`[8080]`), which no config file means.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let value = parser.deserialize_map(ObjectVisitor(PhantomData))?;
    // Trailing text after the object is an error, as with `serde_json::from_slice`.
    parser.end()?;
    Ok(value)
}

/// Accepts only a JSON object, and hands its entries to `T`'s own deserializer.
struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, entries: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(entries))
    }
}

/// Turns serde_json's error into an issue: its message and position, the key at fault when
/// there is one, and never the offending value, since a config may hold secrets.
fn issue_of(error: &serde_json::Error, bytes: &[u8]) -> Issue {
    let position = format!(" at line {} column {}", error.line(), error.column());
    let text = error.to_string();
    let bare = text.strip_suffix(&position).unwrap_or(&text);
    let (path, message) = match error.classify() {
        // Syntax errors describe the text ("expected `,` or `}`"), never a value.
        Category::Syntax | Category::Eof | Category::Io => (String::new(), bare.to_owned()),
        Category::Data => {
            let path = named_field(bare)
                .map(str::to_owned)
                .or_else(|| mistyped_field(bytes).map(str::to_owned))
                .unwrap_or_default();
            (path, redact(bare))
        }
    };
    Issue {
        path,
        message: format!("{message}{position}"),
    }
}

/// The key that serde names in its message: "unknown field `gretting`, expected one of ...",
/// "missing field `port`", "duplicate field `port`".
fn named_field(message: &str) -> Option<&str> {
    let rest = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))?;
    // The key ends where serde's own words resume, so a backtick inside the key is kept.
    let end = rest.find("`, expected").or_else(|| rest.rfind('`'))?;
    Some(&rest[..end])
}

/// Whether a JSON value fits the type of one field.
type Fits = fn(&Value) -> bool;

/// [`Config`]'s fields with their types, to find the one at fault: serde names the type it
/// expected but not the key. Keep in step with the struct.
const FIELDS: [(&str, Fits); 4] = [
    ("port", fits::<u16>),
    ("boot_ms", fits::<u64>),
    ("greeting", fits::<Option<String>>),
    ("token", fits::<Option<String>>),
];

/// The key holding a value of the wrong type or out of range: the first one written, as that
/// is the one serde stopped at.
fn mistyped_field(bytes: &[u8]) -> Option<&'static str> {
    let Entries(entries) = serde_json::from_slice(bytes).ok()?;
    entries.iter().find_map(|(key, value)| {
        FIELDS
            .iter()
            .find(|(name, fits)| name == key && !fits(value))
            .map(|(name, _)| *name)
    })
}

/// A JSON object's entries in the order they are written (a `serde_json::Map` sorts them).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Entries(entries))
    }
}

fn fits<T: DeserializeOwned>(value: &Value) -> bool {
    T::deserialize(value).is_ok()
}

/// Drops the quoted value from serde's "invalid type: string \"hunter2\", expected u16",
/// keeping its kind: "invalid type: string, expected u16".
fn redact(message: &str) -> String {
    // The last ", expected " is serde's: what follows is a type name, never user text.
    let Some((found, expected)) = message.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let Some((prefix, unexpected)) = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|prefix| found.strip_prefix(prefix).map(|rest| (*prefix, rest)))
    else {
        return message.to_owned();
    };
    // The kind ("string", "integer", "floating point") comes before the quoted value.
    let kind = unexpected
        .find(['"', '`'])
        .map_or(unexpected, |start| &unexpected[..start])
        .trim_end();
    format!("{prefix}{kind}, expected {expected}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(text: &str) -> Issue {
        parse(text.as_bytes()).expect_err("a broken config")
    }

    #[test]
    fn a_full_config_and_a_minimal_one_parse() {
        let full = parse(br#"{"port": 8080, "boot_ms": 5, "greeting": "hi"}"#).expect("valid");
        assert_eq!(
            (full.port, full.boot_ms, full.greeting.as_deref()),
            (8080, 5, Some("hi"))
        );
        let minimal = parse(br#"{"port": 1}"#).expect("valid");
        assert_eq!((minimal.boot_ms, minimal.greeting), (DEFAULT_BOOT_MS, None));
    }

    #[test]
    fn syntax_errors_carry_their_position_and_no_path() {
        let truncated = issue(r#"{"port": 80"#);
        assert_eq!(truncated.path, "");
        assert!(
            truncated.message.contains("at line 1 column"),
            "{truncated}"
        );
        assert_eq!(issue("  \n").message, "the file is empty");
        assert!(issue("port = 80").message.contains("line 1 column 1"));
    }

    #[test]
    fn data_errors_name_the_key_at_fault() {
        let unknown = issue(r#"{"port": 80, "gretting": "hi"}"#);
        assert_eq!(unknown.path, "gretting");
        assert!(unknown.message.starts_with("unknown field"), "{unknown}");
        assert_eq!(issue(r#"{"boot_ms": 5}"#).path, "port");
        assert_eq!(issue(r#"{"port": 80, "boot_ms": -1}"#).path, "boot_ms");
        assert_eq!(issue(r#"{"port": 70000}"#).path, "port");
        assert_eq!(issue(r#"{"port": 1, "greeting": 5}"#).path, "greeting");
        // Several wrong: the first written is the one serde reports, with its position.
        let first = issue(r#"{"port": 1, "greeting": ["x"], "boot_ms": "soon"}"#);
        assert_eq!(first.path, "greeting");
        assert!(first.message.contains("expected a string"), "{first}");
        let array = issue("[80]");
        assert_eq!(array.path, "");
        assert!(
            array
                .message
                .starts_with("invalid type: sequence, expected a JSON object at line 1"),
            "{array}"
        );
        assert!(
            issue(r#"{"port": 80} {"#)
                .message
                .starts_with("trailing characters")
        );
    }

    #[test]
    fn a_wrong_value_is_never_echoed() {
        let wrong = issue(r#"{"port": "sk-secret, expected nothing"}"#);
        assert_eq!(wrong.path, "port");
        assert_eq!(
            wrong.message,
            "invalid type: string, expected u16 at line 1 column 38"
        );
        let range = issue(r#"{"port": 123456}"#);
        assert!(!range.message.contains("123456"), "{range}");
    }
}
