//! Versioned, content-addressed snapshots of an agent's state directory.
//!
//! Every file is stored once under the blake3 hash of its bytes (`objects/ab/cdef…`), and each
//! version is a manifest listing paths, sizes, modes and hashes (`manifests/N.json`), so
//! versions share what did not change. Writes go to a temporary name and are renamed into
//! place: a crash leaves either the old state or the new, never half of one.
//!
//! Consistency is the caller's part: OpenClaw keeps SQLite databases in WAL mode, so a snapshot
//! is taken while the gateway is stopped (the db, `-wal` and `-shm` then agree).

use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directories no snapshot should carry: locks and caches, rebuilt on start.
pub const DEFAULT_EXCLUDES: [&str; 2] = ["tmp", "cache"];
/// Files one snapshot may hold; a state directory beyond this is a mistake, not state.
const MAX_FILES: usize = 100_000;

/// One version of a state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Sorted by path, so the same tree gives the same manifest bytes.
    pub files: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the state directory, with `/` separators.
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub blake3: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("version {0} is not in the store")]
    UnknownVersion(u32),
    #[error("version {0} is already in the store; versions are never rewritten")]
    VersionExists(u32),
    #[error("{path}: the stored object does not match its hash (the store is damaged)")]
    Corrupt { path: PathBuf },
    #[error("{0}: more than {MAX_FILES} files")]
    TooManyFiles(PathBuf),
    #[error("{path}: manifest does not parse: {problem}")]
    BadManifest { path: PathBuf, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A snapshot store on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, SnapshotError> {
        let root = root.into();
        for dir in ["objects", "manifests"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        Ok(Store { root })
    }

    /// Snapshots `state` as `version`, skipping top-level directories named in `excludes`
    /// (and symbolic links, which a restore could not trust).
    pub fn take(
        &self,
        state: &Path,
        version: u32,
        excludes: &[&str],
    ) -> Result<Manifest, SnapshotError> {
        let manifest_path = self.manifest_path(version);
        if manifest_path.exists() {
            return Err(SnapshotError::VersionExists(version));
        }
        let mut files = Vec::new();
        walk(state, state, excludes, &mut files)?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        for path in files {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let mode = std::fs::metadata(&path)
                .map_err(io(&path))?
                .permissions()
                .mode()
                & 0o7777;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let object = self.object_path(&hash);
            if !object.exists() {
                write_atomically(&object, &bytes)?;
            }
            let relative = path
                .strip_prefix(state)
                .expect("walked under state")
                .to_string_lossy()
                .replace('\\', "/");
            entries.push(Entry {
                path: relative,
                size: bytes.len() as u64,
                mode,
                blake3: hash,
            });
        }
        let manifest = Manifest {
            version,
            files: entries,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        write_atomically(&manifest_path, &json)?;
        Ok(manifest)
    }

    /// Every version in the store, ascending.
    pub fn versions(&self) -> Result<Vec<u32>, SnapshotError> {
        let dir = self.root.join("manifests");
        let mut versions: Vec<u32> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    pub fn manifest(&self, version: u32) -> Result<Manifest, SnapshotError> {
        let path = self.manifest_path(version);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::UnknownVersion(version));
            }
            Err(e) => return Err(SnapshotError::Io { path, source: e }),
        };
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::BadManifest {
            path,
            problem: e.to_string(),
        })
    }

    /// Replaces `state` with `version`: built beside it, checked against every hash, then
    /// swapped in, so a failure leaves the old state in place.
    pub fn restore(&self, version: u32, state: &Path) -> Result<Manifest, SnapshotError> {
        let manifest = self.manifest(version)?;
        let staging = sibling(state, "restoring");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        for entry in &manifest.files {
            if entry
                .path
                .split('/')
                .any(|part| part == ".." || part.is_empty())
            {
                return Err(SnapshotError::BadManifest {
                    path: self.manifest_path(version),
                    problem: format!("unsafe path `{}`", entry.path),
                });
            }
            let object = self.object_path(&entry.blake3);
            let bytes = std::fs::read(&object).map_err(io(&object))?;
            if blake3::hash(&bytes).to_hex().as_str() != entry.blake3 {
                return Err(SnapshotError::Corrupt { path: object });
            }
            let target = staging.join(&entry.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&target, &bytes).map_err(io(&target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(entry.mode))
                .map_err(io(&target))?;
        }
        let old = sibling(state, "replaced");
        let _ = std::fs::remove_dir_all(&old);
        if state.exists() {
            std::fs::rename(state, &old).map_err(io(state))?;
        }
        std::fs::rename(&staging, state).map_err(io(state))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(manifest)
    }

    /// Whether `version` is in the store (its manifest is written last, so a version that is
    /// there is whole).
    #[must_use]
    pub fn has(&self, version: u32) -> bool {
        self.manifest_path(version).exists()
    }

    /// Copies `version` into `to`: the objects `to` lacks, each checked against its hash (a
    /// damaged object is never spread), then the manifest, last, so that `to` holds the whole
    /// version or none of it. Answers the bytes copied.
    pub fn copy_version(&self, version: u32, to: &Store) -> Result<u64, SnapshotError> {
        let manifest = self.manifest(version)?;
        let mut copied = 0;
        for entry in &manifest.files {
            let target = to.object_path(&entry.blake3);
            if target.exists() {
                continue;
            }
            let object = self.object_path(&entry.blake3);
            let bytes = std::fs::read(&object).map_err(io(&object))?;
            if blake3::hash(&bytes).to_hex().as_str() != entry.blake3 {
                return Err(SnapshotError::Corrupt { path: object });
            }
            write_atomically(&target, &bytes)?;
            copied += bytes.len() as u64;
        }
        if !to.has(version) {
            let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
            write_atomically(&to.manifest_path(version), &json)?;
        }
        Ok(copied)
    }

    fn manifest_path(&self, version: u32) -> PathBuf {
        self.root.join("manifests").join(format!("{version}.json"))
    }

    fn object_path(&self, hash: &str) -> PathBuf {
        self.root.join("objects").join(&hash[..2]).join(&hash[2..])
    }
}

/// Copies of agents' snapshot stores in directories every node mounts (a network
/// filesystem, say), so that a version outlives the machine that took it. Each agent's
/// copy is `ROOT/AGENT/`, a store of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    roots: Vec<PathBuf>,
}

impl Replicas {
    #[must_use]
    pub fn new(roots: Vec<PathBuf>) -> Replicas {
        Replicas { roots }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Copies `version` of `local` (the store of agent `agent`) to every replica. An error
    /// means some replica does not hold it: the version is not as safe as asked.
    pub fn push(&self, local: &Store, agent: u32, version: u32) -> Result<(), SnapshotError> {
        for root in &self.roots {
            let replica = Store::open(root.join(agent.to_string()))?;
            local.copy_version(version, &replica)?;
        }
        Ok(())
    }

    /// Makes sure `local` holds `version`, copying it from the first replica that holds it
    /// whole and sound; answers whether `local` holds it now.
    pub fn pull(&self, local: &Store, agent: u32, version: u32) -> Result<bool, SnapshotError> {
        if local.has(version) {
            return Ok(true);
        }
        let mut last_error = None;
        for root in &self.roots {
            let replica = Store::open(root.join(agent.to_string()))?;
            if !replica.has(version) {
                continue;
            }
            match replica.copy_version(version, local) {
                Ok(_) => return Ok(true),
                Err(error) => last_error = Some(error),
            }
        }
        last_error.map_or(Ok(false), Err)
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    excludes: &[&str],
    out: &mut Vec<PathBuf>,
) -> Result<(), SnapshotError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        let top_level_excluded = dir == root && excludes.iter().any(|x| entry.file_name() == *x);
        if kind.is_symlink() || top_level_excluded {
            continue;
        }
        if kind.is_dir() {
            walk(root, &path, excludes, out)?;
        } else if kind.is_file() {
            if out.len() >= MAX_FILES {
                return Err(SnapshotError::TooManyFiles(root.to_owned()));
            }
            out.push(path);
        }
    }
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let parent = path.parent().expect("store paths have a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = path.with_extension("partial");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(label: &str) -> Dir {
            let path = std::env::temp_dir()
                .join(format!("carapace-snapshot-{}-{label}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn objects(store: &Path) -> usize {
        std::fs::read_dir(store.join("objects"))
            .unwrap()
            .flatten()
            .map(|d| std::fs::read_dir(d.path()).unwrap().count())
            .sum()
    }

    #[test]
    fn a_version_pushed_to_replicas_restores_from_them_once_its_machine_is_gone() {
        let dir = Dir::new("replicas");
        let state = dir.0.join("state");
        write(&state, "openclaw.json", "{}");
        write(&state, "state/db", "rows");
        let local = Store::open(dir.0.join("local")).unwrap();
        local.take(&state, 3, &DEFAULT_EXCLUDES).unwrap();
        let replicas = Replicas::new(vec![dir.0.join("r1"), dir.0.join("r2")]);
        replicas.push(&local, 7, 3).unwrap();
        // Pushing again copies nothing new and is no error.
        replicas.push(&local, 7, 3).unwrap();
        assert!(Store::open(dir.0.join("r2/7")).unwrap().has(3));

        // The machine is gone: another one's empty store pulls the version and restores it.
        std::fs::remove_dir_all(dir.0.join("local")).unwrap();
        let elsewhere = Store::open(dir.0.join("elsewhere")).unwrap();
        assert!(replicas.pull(&elsewhere, 7, 3).unwrap());
        assert!(
            !replicas.pull(&elsewhere, 7, 4).unwrap(),
            "no replica has 4"
        );
        let restored = dir.0.join("restored");
        elsewhere.restore(3, &restored).unwrap();
        assert_eq!(
            std::fs::read_to_string(restored.join("state/db")).unwrap(),
            "rows"
        );

        // A damaged object in one replica is never copied; the other replica serves.
        let r1 = dir.0.join("r1/7/objects");
        let damaged = std::fs::read_dir(&r1)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        for object in std::fs::read_dir(&damaged).unwrap().flatten() {
            std::fs::write(object.path(), "garbage").unwrap();
        }
        let third = Store::open(dir.0.join("third")).unwrap();
        assert!(replicas.pull(&third, 7, 3).unwrap());
        third.restore(3, &dir.0.join("again")).unwrap();
    }

    #[test]
    fn versions_share_unchanged_files_and_restore_exactly() {
        let dir = Dir::new("roundtrip");
        let state = dir.0.join("state");
        write(&state, "openclaw.json", "{\"gateway\":{}}");
        write(&state, "state/openclaw.sqlite", "db-v1");
        write(&state, "workspace/MEMORY.md", "remember");
        write(&state, "tmp/gateway.lock", "pid");
        let store = Store::open(dir.0.join("store")).unwrap();
        let first = store.take(&state, 1, &DEFAULT_EXCLUDES).unwrap();
        assert_eq!(
            first
                .files
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            [
                "openclaw.json",
                "state/openclaw.sqlite",
                "workspace/MEMORY.md"
            ]
        );
        assert_eq!(objects(&dir.0.join("store")), 3);
        write(&state, "state/openclaw.sqlite", "db-v2");
        store.take(&state, 2, &DEFAULT_EXCLUDES).unwrap();
        assert_eq!(
            objects(&dir.0.join("store")),
            4,
            "only the changed file is stored again"
        );
        assert!(matches!(
            store.take(&state, 2, &DEFAULT_EXCLUDES),
            Err(SnapshotError::VersionExists(2))
        ));
        assert_eq!(store.versions().unwrap(), vec![1, 2]);

        write(&state, "workspace/MEMORY.md", "garbled");
        write(&state, "junk.txt", "new");
        store.restore(1, &state).unwrap();
        assert_eq!(
            std::fs::read_to_string(state.join("state/openclaw.sqlite")).unwrap(),
            "db-v1"
        );
        assert_eq!(
            std::fs::read_to_string(state.join("workspace/MEMORY.md")).unwrap(),
            "remember"
        );
        assert!(!state.join("junk.txt").exists(), "a restore is exact");
        assert!(!state.join("tmp").exists(), "locks are not carried");
        assert!(matches!(
            store.restore(9, &state),
            Err(SnapshotError::UnknownVersion(9))
        ));
    }

    #[test]
    fn a_damaged_object_is_refused_and_the_state_left_alone() {
        let dir = Dir::new("corrupt");
        let state = dir.0.join("state");
        write(&state, "a.txt", "precious");
        let store = Store::open(dir.0.join("store")).unwrap();
        let manifest = store.take(&state, 1, &[]).unwrap();
        let object = store.object_path(&manifest.files[0].blake3);
        std::fs::write(&object, "tampered").unwrap();
        write(&state, "a.txt", "current");
        assert!(matches!(
            store.restore(1, &state),
            Err(SnapshotError::Corrupt { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(state.join("a.txt")).unwrap(),
            "current"
        );
    }
}
