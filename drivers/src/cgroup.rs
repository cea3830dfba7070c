//! Memory cgroups for pods: a hard memory limit per agent, enforced by the kernel.
//!
//! Carapace packs agents by their learned memory use rather than by their limits, so a node
//! is overcommitted on purpose. Then one agent's leak must hit a wall of its own: without a
//! cgroup the kernel's OOM killer chooses among every process of the machine and may take a
//! neighbour, or the daemon itself. Each pod (an agent's process tree plus its supervisor)
//! therefore runs in its own memory cgroup, `<this process's cgroup>/<parent>/<pod>`: nested
//! under the cgroup we already live in, because that is where a container or a delegated
//! service is allowed to create cgroups.
//!
//! A supervisor joins its pod's cgroup ([`PodCgroup::join_self`]) before it spawns the agent.
//! A child starts in its parent's cgroup, so the agent is confined from its first page on,
//! without a `pre_exec` hook (which would need unsafe code).
//!
//! The two kernel interfaces sit behind one API. Where they differ:
//!
//! | | v1 (a `memory` hierarchy of its own) | v2 (the unified hierarchy) |
//! |---|---|---|
//! | hard limit | `memory.limit_in_bytes` | `memory.max` |
//! | soft limit | `memory.soft_limit_in_bytes`: no throttling, it only steers reclaim under global memory pressure | `memory.high`: throttles and reclaims the cgroup above it |
//! | usage | `memory.usage_in_bytes` | `memory.current` |
//! | OOM kills | the `oom_kill` line of `memory.oom_control` (newer kernels only) | `oom_kill` in `memory.events` |
//! | unlimited | a huge number (the page counter's maximum) | `max` |
//! | enabling | the controller is active in every cgroup of its hierarchy | a parent lists `memory` in `cgroup.subtree_control`, which v2 allows only in a cgroup that holds no processes of its own |
//!
//! Two things hold for both: moving a process moves its future charges, not the memory it
//! already holds (v1 moves charges only with `memory.move_charge_at_immigrate`, v2 never), which
//! is one more reason to join before spawning; and limits cover RAM, not swap
//! (`memory.memsw.*` and `memory.swap.max` are left alone), so on a node with swap a pod can
//! page out past its limit instead of being OOM-killed.

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};
use std::{fmt, fs, io};

/// Longest cgroup name accepted; pod names are identifiers, far below the kernel's 255 bytes.
pub const MAX_NAME_LEN: usize = 128;
/// v1 reports "unlimited" as its page counter's maximum, `i64::MAX` rounded down to a page;
/// anything at or above this (which also covers 64 KiB pages) is treated as no limit.
const UNLIMITED_FROM: u64 = (i64::MAX as u64) & !0xffff;
/// How often [`PodCgroup::remove_when_empty`] retries while killed processes finish exiting.
const POLL: Duration = Duration::from_millis(10);
/// Passes of [`PodCgroup::kill_all`]: a process may fork between our read of `cgroup.procs`
/// and its SIGKILL, so the list is read again until it shows no one new.
const KILL_ROUNDS: usize = 16;
/// Longest file content quoted in an error, so a runaway file cannot flood a log line.
const QUOTE_LEN: usize = 64;

/// Which kernel interface the memory controller is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn limit_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        }
    }

    fn high_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.soft_limit_in_bytes",
            CgroupVersion::V2 => "memory.high",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        }
    }

    fn events_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        }
    }

    /// What each interface accepts as "no limit": v1 takes -1, v2 the word `max`.
    fn unlimited(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "-1",
            CgroupVersion::V2 => "max",
        }
    }
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "cgroup v1",
            CgroupVersion::V2 => "cgroup v2",
        })
    }
}

/// Whether pods' memory limits are enforced on this node: reported loudly at startup and in
/// `/metrics`, since a node without cgroups runs agents whose limits are only advisory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Pods get cgroups under `root`.
    Enforced {
        version: CgroupVersion,
        root: PathBuf,
    },
    /// No writable memory cgroup was found; `reason` says what failed.
    Unenforced { reason: String },
}

impl Enforcement {
    /// The enforcement a [`MemoryCgroups::detect`] outcome amounts to.
    pub fn of(detected: &Result<MemoryCgroups, CgroupError>) -> Enforcement {
        match detected {
            Ok(cgroups) => cgroups.enforcement(),
            Err(error) => Enforcement::Unenforced {
                reason: error.to_string(),
            },
        }
    }

    pub fn is_enforced(&self) -> bool {
        matches!(self, Enforcement::Enforced { .. })
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enforcement::Enforced { version, root } => {
                write!(
                    f,
                    "memory limits enforced by {version} under {}",
                    root.display()
                )
            }
            Enforcement::Unenforced { reason } => {
                write!(
                    f,
                    "memory limits NOT enforced (agents may exhaust the node): {reason}"
                )
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable memory cgroup: {0}")]
    Unavailable(String),
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("read {path}: unexpected content {content:?}")]
    Malformed { path: PathBuf, content: String },
    #[error("move pid {pid} into {path}: {source}")]
    Join {
        pid: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("remove {path}: still holds processes {pids:?} or child cgroups")]
    Busy { path: PathBuf, pids: Vec<u32> },
    #[error("SIGKILL pid {pid} of {path}: {source}")]
    Kill {
        pid: u32,
        path: PathBuf,
        source: Errno,
    },
}

/// The parent cgroup under which every pod of this daemon gets its own memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroups {
    root: PathBuf,
    version: CgroupVersion,
}

impl MemoryCgroups {
    /// Finds the memory controller (v2 if the unified hierarchy has it, else a v1 `memory`
    /// hierarchy) from `/proc/self/mountinfo` and `/proc/self/cgroup`, and creates or reuses
    /// the cgroup `parent_name` under the one this process is in.
    pub fn detect(parent_name: &str) -> Result<MemoryCgroups, CgroupError> {
        validate_name(parent_name)?;
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        let membership = read(Path::new("/proc/self/cgroup"))?;
        let ours =
            locate(&mountinfo, &membership, v2_offers_memory).map_err(CgroupError::Unavailable)?;
        if ours.version == CgroupVersion::V2 {
            enable_memory_for_children(&ours.cgroup)?;
        }
        let root = ours.cgroup.join(parent_name);
        make_dir(&root)?;
        let cgroups = MemoryCgroups::at(root, ours.version)?;
        // A directory is not enforcement: only the controller's own files prove that the
        // kernel applies limits to cgroups created here.
        let probe = cgroups.root.join(cgroups.version.limit_file());
        if !probe.is_file() {
            return Err(CgroupError::Unavailable(format!(
                "{} has no {}: the memory controller is not enabled there",
                cgroups.root.display(),
                cgroups.version.limit_file()
            )));
        }
        Ok(cgroups)
    }

    /// Pods go directly under `root`, an existing cgroup directory: a delegated subtree named
    /// by the operator, or a scratch tree in tests. For v2 the memory controller is enabled
    /// for `root`'s children.
    pub fn at(root: PathBuf, version: CgroupVersion) -> Result<MemoryCgroups, CgroupError> {
        let metadata = fs::metadata(&root).map_err(io_error("open", &root))?;
        if !metadata.is_dir() {
            return Err(CgroupError::Io {
                op: "open",
                path: root,
                source: io::ErrorKind::NotADirectory.into(),
            });
        }
        if version == CgroupVersion::V2 {
            enable_memory_for_children(&root)?;
        }
        Ok(MemoryCgroups { root, version })
    }

    pub fn enforcement(&self) -> Enforcement {
        Enforcement::Enforced {
            version: self.version,
            root: self.root.clone(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates the pod's cgroup, or adopts it if it exists: a restarted daemon takes its
    /// running pods back rather than failing on them.
    pub fn create(&self, name: &str) -> Result<PodCgroup, CgroupError> {
        validate_name(name)?;
        let path = self.root.join(name);
        make_dir(&path)?;
        Ok(self.pod(name, path))
    }

    /// The pod's cgroup if it exists; an invalid name never exists.
    pub fn open(&self, name: &str) -> Option<PodCgroup> {
        validate_name(name).ok()?;
        let path = self.root.join(name);
        path.is_dir().then(|| self.pod(name, path))
    }

    /// Names of the pod cgroups under the root, sorted; empty if the root cannot be read.
    /// Control files are not directories, so they never show up here.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| validate_name(name).is_ok())
            .collect();
        names.sort();
        names
    }

    fn pod(&self, name: &str, path: PathBuf) -> PodCgroup {
        PodCgroup {
            name: name.to_owned(),
            path,
            version: self.version,
        }
    }
}

/// One pod's memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    name: String,
    path: PathBuf,
    version: CgroupVersion,
}

impl PodCgroup {
    /// The pod cgroup at `path`, its version told by its control files; `None` when `path`
    /// is not a memory cgroup (a supervisor reopening the cgroup its spec names).
    pub fn at(path: PathBuf) -> Option<PodCgroup> {
        let version = if path.join("memory.limit_in_bytes").is_file() {
            CgroupVersion::V1
        } else if path.join("memory.max").is_file() {
            CgroupVersion::V2
        } else {
            return None;
        };
        let name = path.file_name()?.to_str()?.to_owned();
        Some(PodCgroup {
            name,
            path,
            version,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Sets the hard limit: above it the kernel reclaims, then OOM-kills inside this cgroup
    /// only. The kernel rounds it down to a whole page; lowering it below current usage fails
    /// (`EBUSY`) when the kernel cannot reclaim enough.
    pub fn set_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        write(&self.file(self.version.limit_file()), &bytes.to_string())
    }

    /// The hard limit in force; `None` when unlimited.
    pub fn limit(&self) -> Result<Option<u64>, CgroupError> {
        let path = self.file(self.version.limit_file());
        let text = read(&path)?;
        match parse_limit(&text) {
            Some(Limit::Bytes(bytes)) => Ok(Some(bytes)),
            Some(Limit::Unlimited) => Ok(None),
            None => Err(malformed(path, &text)),
        }
    }

    /// Sets (or with `None` clears) the soft limit. On v2 this is `memory.high`, which
    /// throttles the pod and reclaims its memory above the mark: a brake before the wall. v1
    /// has no throttle; `memory.soft_limit_in_bytes` only makes the pod a preferred victim
    /// of reclaim when the whole machine runs short, and does nothing otherwise.
    pub fn set_high(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        let value = bytes.map_or_else(|| self.version.unlimited().to_owned(), |b| b.to_string());
        write(&self.file(self.version.high_file()), &value)
    }

    /// Moves process `pid` (all its threads) into this cgroup; its future children are born
    /// here. Memory it already holds stays charged where it was.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        let path = self.file("cgroup.procs");
        let join_error = |source| CgroupError::Join {
            pid,
            path: path.clone(),
            source,
        };
        // The kernel reads pid 0 as "the writer": refuse it rather than move ourselves by
        // accident; `join_self` says so on purpose.
        if pid == 0 {
            return Err(join_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pid 0 is not a process (use join_self to move the caller)",
            )));
        }
        fs::write(&path, pid.to_string()).map_err(join_error)
    }

    /// Moves the calling process into this cgroup, so that everything it spawns from now on
    /// starts confined: how a supervisor puts its agent under the pod's limit.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        self.join(std::process::id())
    }

    /// Memory charged to the pod now, page cache included.
    pub fn usage_bytes(&self) -> Result<u64, CgroupError> {
        let path = self.file(self.version.usage_file());
        let text = read(&path)?;
        text.trim()
            .parse()
            .map_err(|_| malformed(path.clone(), &text))
    }

    /// OOM kills inside the pod since its cgroup was created; `None` when the kernel does not
    /// count them (v1 kernels without the `oom_kill` line).
    pub fn oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        let text = read(&self.file(self.version.events_file()))?;
        Ok(keyed_value(&text, "oom_kill"))
    }

    /// Processes in the pod, sorted, without duplicates (v1 may list a pid twice).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(parse_pids(&read(&self.file("cgroup.procs"))?))
    }

    /// Sends SIGKILL to every process of the pod except the caller (a supervisor inside its
    /// pod clears out its agent and stays), rereading the list so that a process forked in
    /// the meantime is not missed. Returns how many processes were signalled; they are gone
    /// once reaped, see [`PodCgroup::remove_when_empty`].
    pub fn kill_all(&self) -> Result<usize, CgroupError> {
        let me = std::process::id();
        let mut signalled = BTreeSet::new();
        for _ in 0..KILL_ROUNDS {
            let fresh: Vec<u32> = self
                .pids()?
                .into_iter()
                .filter(|pid| *pid != me && !signalled.contains(pid))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                self.sigkill(pid)?;
                signalled.insert(pid);
            }
        }
        Ok(signalled.len())
    }

    /// Removes the cgroup. The kernel refuses while processes remain ([`CgroupError::Busy`]);
    /// a cgroup already gone counts as removed.
    pub fn remove(&self) -> Result<(), CgroupError> {
        match fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::ResourceBusy => Err(CgroupError::Busy {
                path: self.path.clone(),
                pids: self.pids().unwrap_or_default(),
            }),
            Err(source) => Err(CgroupError::Io {
                op: "remove",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// [`PodCgroup::remove`], retried for up to `timeout` while the cgroup is busy: killed
    /// processes leave it only once they have finished exiting.
    pub fn remove_when_empty(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.remove() {
                Err(CgroupError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                outcome => return outcome,
            }
        }
    }

    fn sigkill(&self, pid: u32) -> Result<(), CgroupError> {
        // Pids in cgroup.procs are positive and below 2^22; anything else is no process.
        let Ok(raw) = i32::try_from(pid) else {
            return Ok(());
        };
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            // Exited between the read and the signal: the outcome we wanted.
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(CgroupError::Kill {
                pid,
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// A cgroup name becomes one path component: letters, digits, `.`, `_` and `-` only, not
/// starting with a dot, so no name can climb out of its parent, hide, or carry a separator.
fn validate_name(name: &str) -> Result<(), CgroupError> {
    let refuse = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return refuse("it starts with a dot");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !name.chars().all(allowed) {
        return refuse("it may hold only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Where this process sits in the memory controller's hierarchy.
#[derive(Debug, PartialEq, Eq)]
struct Location {
    version: CgroupVersion,
    /// This process's own cgroup directory, under the hierarchy's mount point.
    cgroup: PathBuf,
}

/// One line of `/proc/self/mountinfo`, reduced to what finding a hierarchy needs.
#[derive(Debug)]
struct Mount {
    /// The directory of the filesystem that is mounted: not `/` when a container got only
    /// its own subtree of a cgroup hierarchy.
    root: PathBuf,
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

/// Finds the memory hierarchy and this process's cgroup in it. v2 comes first: the memory
/// controller can be attached to one hierarchy only, so at most one of the two offers it, and
/// on a hybrid system the unified mount without it is skipped by `v2_has_memory`.
fn locate(
    mountinfo: &str,
    membership: &str,
    v2_has_memory: impl Fn(&Path) -> bool,
) -> Result<Location, String> {
    let mounts = parse_mountinfo(mountinfo);
    let v2 = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2" && v2_has_memory(&m.mount_point))
        .find_map(|m| Some((m, CgroupVersion::V2, v2_path(membership)?)));
    let v1 = || {
        mounts
            .iter()
            .filter(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
            .find_map(|m| Some((m, CgroupVersion::V1, v1_memory_path(membership)?)))
    };
    let Some((mount, version, path)) = v2.or_else(v1) else {
        return Err(
            "no mounted cgroup hierarchy with the memory controller that this \
                    process belongs to (/proc/self/mountinfo, /proc/self/cgroup)"
                .to_owned(),
        );
    };
    let relative = within(Path::new(path), &mount.root).ok_or_else(|| {
        format!(
            "this process's cgroup {path} lies outside the mounted part {} of the hierarchy",
            mount.root.display()
        )
    })?;
    Ok(Location {
        version,
        cgroup: mount.mount_point.join(relative),
    })
}

/// `path` relative to `root`, if it lies within it and climbs nowhere.
fn within(path: &Path, root: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| relative.to_owned())
}

fn v2_offers_memory(mount_point: &Path) -> bool {
    fs::read_to_string(mount_point.join("cgroup.controllers"))
        .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"))
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount).collect()
}

/// `36 35 98:0 /root /mnt rw,noatime master:1 - fstype source super,options`: a variable
/// number of optional fields ends at the lone `-`.
fn parse_mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut before = before.split(' ').skip(3);
    let root = unescape(before.next()?);
    let mount_point = unescape(before.next()?);
    let mut after = after.split(' ');
    let fstype = after.next()?.to_owned();
    let super_options = after.nth(1).unwrap_or_default().to_owned();
    Some(Mount {
        root,
        mount_point,
        fstype,
        super_options,
    })
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash in mount paths.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The v1 line of `/proc/self/cgroup` whose controllers include memory: `4:memory:/a/b`.
fn v1_memory_path(membership: &str) -> Option<&str> {
    membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })
}

/// The unified hierarchy's line of `/proc/self/cgroup`: `0::/a/b`.
fn v2_path(membership: &str) -> Option<&str> {
    membership.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Lets `dir`'s child cgroups use the memory controller (v2 only). The kernel refuses while
/// `dir` itself holds processes (the no-internal-process rule), which is worth saying plainly.
fn enable_memory_for_children(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    if read(&path)?.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    match fs::write(&path, "+memory") {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::ResourceBusy => {
            Err(CgroupError::Unavailable(format!(
                "{}: cgroup v2 cannot enable the memory controller for the children of a cgroup \
                 that holds processes itself; start carapace in a leaf of a delegated subtree, \
                 or give it an explicit root",
                path.display()
            )))
        }
        Err(source) => Err(CgroupError::Io {
            op: "enable the memory controller in",
            path,
            source,
        }),
    }
}

/// A limit file's value.
#[derive(Debug, PartialEq, Eq)]
enum Limit {
    Bytes(u64),
    Unlimited,
}

/// `max` (v2) and v1's page-counter maximum both mean no limit; `None` for anything else that
/// is not a number.
fn parse_limit(text: &str) -> Option<Limit> {
    let text = text.trim();
    if text == "max" {
        return Some(Limit::Unlimited);
    }
    let bytes: u64 = text.parse().ok()?;
    Some(if bytes >= UNLIMITED_FROM {
        Limit::Unlimited
    } else {
        Limit::Bytes(bytes)
    })
}

/// The number after `key` in a flat keyed file (`oom_kill 3`), if the key is there with one.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != key {
            return None;
        }
        fields.next()?.parse().ok()
    })
}

/// Pids, one a line; a line that is not a positive pid is no process and is skipped.
fn parse_pids(text: &str) -> Vec<u32> {
    let pids: BTreeSet<u32> = text
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .filter(|pid| *pid > 0)
        .collect();
    pids.into_iter().collect()
}

/// Creates a directory, or accepts one already there.
fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "create",
            path: path.to_owned(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_error("write", path))
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn malformed(path: PathBuf, text: &str) -> CgroupError {
    CgroupError::Malformed {
        path,
        content: text.chars().take(QUOTE_LEN).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_memory_is_found_on_a_hybrid_system() {
        let found = locate(HYBRID_MOUNTINFO, HYBRID_CGROUP, |_| false).unwrap();
        assert_eq!(found.version, CgroupVersion::V1);
        assert_eq!(
            found.cgroup,
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
    }

    #[test]
    fn v2_wins_when_the_unified_hierarchy_has_memory() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = locate(mountinfo, "0::/system.slice/carapace.service\n", |p| {
            p == Path::new("/sys/fs/cgroup")
        })
        .unwrap();
        assert_eq!(found.version, CgroupVersion::V2);
        assert_eq!(
            found.cgroup,
            Path::new("/sys/fs/cgroup/system.slice/carapace.service")
        );
    }

    #[test]
    fn a_mounted_subtree_is_stripped_and_escapes_are_refused() {
        let mountinfo = "35 31 0:32 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let found = locate(mountinfo, "4:memory:/docker/x/pod\n", |_| false).unwrap();
        assert_eq!(found.cgroup, Path::new("/sys/fs/cgroup/memory/pod"));
        assert!(locate(mountinfo, "4:memory:/other\n", |_| false).is_err());
        let root = "35 31 0:32 / /m rw - cgroup cgroup rw,memory\n";
        assert!(locate(root, "4:memory:/../../etc\n", |_| false).is_err());
        assert!(locate("", HYBRID_CGROUP, |_| true).is_err());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b\134c"), Path::new(r"/a b\c"));
        assert_eq!(unescape(r"/odd\04"), Path::new(r"/odd\04"));
        assert_eq!(unescape("/caf\u{e9}"), Path::new("/caf\u{e9}"));
    }

    #[test]
    fn values_parse_defensively() {
        assert_eq!(parse_limit("max\n"), Some(Limit::Unlimited));
        assert_eq!(parse_limit("9223372036854771712\n"), Some(Limit::Unlimited));
        assert_eq!(parse_limit("67108864\n"), Some(Limit::Bytes(64 << 20)));
        assert_eq!(parse_limit("-1"), None);
        assert_eq!(parse_limit(""), None);
        let events = "low 0\nhigh 2\noom 1\noom_kill 3\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(3));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
        assert_eq!(keyed_value("oom_kill\noom_kill x\n", "oom_kill"), None);
        assert_eq!(parse_pids("12\n5\n12\n\n0\njunk\n"), vec![5, 12]);
    }

    #[test]
    fn names_are_single_plain_components() {
        for good in ["pod-1", "tenant_a.agent-7", "a"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", ".hidden", "a b", "nul\0", &long,
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }
}
