//! Where a Carapace cluster keeps things in etcd. Every key is under one root (by default
//! `/carapace/`), so several clusters can share an etcd and a test can wipe its own.
//!
//! | key | written by | lease | value |
//! | --- | --- | --- | --- |
//! | `ROOT/nodes/NODE` | the node | the node's | its registration: address, memory, zone |
//! | `ROOT/assign/NODE/AGENT` | the leader (fenced) | — | what the node must run |
//! | `ROOT/reports/NODE/EPOCH/SEQ` | the node | the node's | one pod event, in order |
//! | `ROOT/election/controller` | etcd's election | each candidate's | candidate's address |
//!
//! A node's *epoch* is the revision at which its registration key was created: a node that
//! lost its lease and registers again has a new epoch, and an assignment names the epoch it
//! was made for, so a node that comes back never runs what was assigned to its old self.

/// A cluster's keyspace under one root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyspace {
    root: String,
}

/// The longest node or agent name a key may hold.
pub const MAX_NAME: usize = 64;

impl Keyspace {
    /// `root` must start and end with `/`.
    pub fn new(root: &str) -> Result<Keyspace, String> {
        if !root.starts_with('/') || !root.ends_with('/') || root.len() < 2 {
            return Err(format!(
                "key root `{root}`: expected a path that starts and ends with `/`, like /carapace/"
            ));
        }
        Ok(Keyspace {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.root)
    }

    pub fn assignments(&self, node: &str) -> String {
        format!("{}assign/{node}/", self.root)
    }

    pub fn assignment(&self, node: &str, agent: u32) -> String {
        format!("{}assign/{node}/{agent}", self.root)
    }

    /// Every node's reports.
    pub fn all_reports(&self) -> String {
        format!("{}reports/", self.root)
    }

    pub fn reports(&self, node: &str) -> String {
        format!("{}reports/{node}/", self.root)
    }

    /// A node's reports of one epoch sort by key in the order they were made: the epoch and
    /// the sequence are zero-padded.
    pub fn report(&self, node: &str, epoch: i64, seq: u64) -> String {
        format!("{}reports/{node}/{epoch:020}/{seq:020}", self.root)
    }

    pub fn election(&self) -> String {
        format!("{}election/controller", self.root)
    }

    /// The agent id at the end of an assignment key of `node`.
    pub fn agent_of_assignment(&self, node: &str, key: &str) -> Option<u32> {
        key.strip_prefix(&self.assignments(node))?.parse().ok()
    }
}

impl Default for Keyspace {
    fn default() -> Keyspace {
        Keyspace {
            root: "/carapace/".into(),
        }
    }
}

/// Checks a node name: it becomes a path segment of keys, so only `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node name `{name}`: use 1 to {MAX_NAME} of [A-Za-z0-9._-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_nest_under_the_root() {
        let keys = Keyspace::default();
        assert_eq!(keys.node("n1"), "/carapace/nodes/n1");
        assert_eq!(keys.assignment("n1", 7), "/carapace/assign/n1/7");
        assert_eq!(
            keys.report("n1", 9, 3),
            "/carapace/reports/n1/00000000000000000009/00000000000000000003"
        );
        assert_eq!(
            keys.agent_of_assignment("n1", &keys.assignment("n1", 42)),
            Some(42)
        );
        assert_eq!(
            keys.agent_of_assignment("n1", &keys.assignment("n2", 42)),
            None
        );
        assert!(Keyspace::new("carapace").is_err());
        assert!(Keyspace::new("/t/").is_ok());
    }

    #[test]
    fn names_that_would_escape_a_key_segment_are_refused() {
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("node-1.zone_a").is_ok());
    }

    proptest! {
        #[test]
        fn reports_sort_by_key_in_sequence_order(a in any::<u64>(), b in any::<u64>()) {
            let keys = Keyspace::default();
            prop_assert_eq!(a.cmp(&b), keys.report("n", 5, a).cmp(&keys.report("n", 5, b)));
        }
    }
}
