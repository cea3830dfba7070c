//! An agent class's name, shared rather than copied: every incident record names its class,
//! and a week of a large fleet keeps tens of thousands of records.

use serde::{Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A cheap-to-clone class name that reads, compares and serialises as the string itself.
/// `Arc<String>` rather than `Arc<str>`: a thin pointer, 8 bytes in each record instead of 16.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassName(Arc<String>);

impl ClassName {
    pub fn new(name: &str) -> ClassName {
        ClassName(Arc::new(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ClassName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ClassName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ClassName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for ClassName {
    fn from(name: &str) -> ClassName {
        ClassName::new(name)
    }
}

impl Serialize for ClassName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ClassName;

    #[test]
    fn is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<ClassName>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn reads_and_serialises_as_the_string() {
        let name = ClassName::new("power-user");
        assert_eq!(name, "power-user");
        assert_eq!(name.len(), 10);
        assert_eq!(format!("{name:?}"), format!("{:?}", "power-user"));
        assert_eq!(
            serde_json::to_string(&name).unwrap(),
            serde_json::to_string("power-user").unwrap()
        );
        let mut csv = csv::Writer::from_writer(Vec::new());
        csv.serialize((name.clone(), 1)).unwrap();
        assert_eq!(csv.into_inner().unwrap(), b"power-user,1\n");
    }
}
