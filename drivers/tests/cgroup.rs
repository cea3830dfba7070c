//! Memory cgroups on this machine's real cgroupfs: limits the kernel applies, a real OOM kill,
//! usage, and cleanup. Each test owns a parent cgroup of its own and removes it when done.
//!
//! Where cgroups are not writable these tests fail and say so; set
//! `CARAPACE_SKIP_CGROUP_TESTS=1` to skip them on purpose.

// Real processes in real time: deadlines are wall-clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use carapace_drivers::cgroup::{CgroupError, CgroupVersion, Enforcement, MemoryCgroups, PodCgroup};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use std::{env, fs};

const SKIP: &str = "CARAPACE_SKIP_CGROUP_TESTS";
/// Set in the re-executed test binary of `join_self_confines_the_caller_and_its_children`.
const JOIN_SELF_ROOT: &str = "CARAPACE_CGROUP_JOIN_SELF_ROOT";
const MIB: u64 = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(20);

/// A parent cgroup unique to one test. Dropping it (on failure too) kills whatever is left in
/// its pods and removes them and itself.
struct Scratch {
    cgroups: MemoryCgroups,
}

impl Scratch {
    /// `None` only when skipping was asked for.
    fn new() -> Option<Scratch> {
        if env::var_os(SKIP).is_some_and(|v| v == "1") {
            eprintln!("skipped: {SKIP}=1");
            return None;
        }
        let cgroups = MemoryCgroups::detect(&unique_name()).unwrap_or_else(|e| {
            panic!("memory cgroups are not writable here: {e}; set {SKIP}=1 to skip on purpose")
        });
        Some(Scratch { cgroups })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for name in self.cgroups.list() {
            if let Some(pod) = self.cgroups.open(&name) {
                let _ = pod.kill_all();
                let _ = pod.remove_when_empty(Duration::from_secs(5));
            }
        }
        let _ = fs::remove_dir(self.cgroups.root());
    }
}

fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("carapace-test-{}-{n}", std::process::id())
}

/// A child process, killed and reaped if a test ends before it does. A thread forwards its
/// output lines, so that reading one can have a deadline.
struct Process {
    child: Child,
    lines: Receiver<String>,
}

impl Process {
    /// Starts `script` under `sh`, held at a `read` until [`Process::go`]: the test joins it
    /// to a cgroup first, so nothing it allocates is charged elsewhere, without a race.
    fn held(script: &str) -> Process {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ && {{ {script}; }}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) {
        let mut stdin: ChildStdin = self.child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("release the child");
    }

    /// The child's next line of output; `None` once its output has ended (it died).
    fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("no output from the child in {DEADLINE:?}"),
        }
    }

    fn wait(&mut self) -> ExitStatus {
        wait_for("the child to exit", || {
            self.child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it yields a value, failing the test after [`DEADLINE`].
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Python that holds `mib` MiB of touched memory (bytes multiplication writes every page).
fn python_holding(mib: u64, then: &str) -> String {
    format!("exec python3 -c \"b = b'x' * ({mib} * 1024 * 1024); {then}\"")
}

/// This process's memory cgroup as read straight from /proc and /proc/self/mounts, the
/// simple way, to check `detect` against.
fn expected_location() -> (CgroupVersion, PathBuf) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let membership = fs::read_to_string("/proc/self/cgroup").unwrap();
    let v1_mount = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(2) == Some(&"cgroup") && fields[3].split(',').any(|o| o == "memory"))
            .then(|| PathBuf::from(fields[1]))
    });
    match v1_mount {
        Some(mount) => {
            let path = membership
                .lines()
                .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
                .expect("a memory line in /proc/self/cgroup");
            (CgroupVersion::V1, mount.join(path.trim_start_matches('/')))
        }
        None => {
            let path = membership
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap();
            let cgroup = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            (CgroupVersion::V2, cgroup)
        }
    }
}

#[test]
fn detect_finds_the_memory_hierarchy_and_a_writable_parent() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let cgroups = &scratch.cgroups;
    let (version, ours) = expected_location();
    let root = cgroups.root().to_owned();
    assert_eq!(
        cgroups.enforcement(),
        Enforcement::Enforced {
            version,
            root: root.clone()
        }
    );
    assert_eq!(
        root.parent(),
        Some(ours.as_path()),
        "nested under this process's cgroup"
    );
    assert!(root.is_dir());
    let detected = Ok(cgroups.clone());
    assert!(Enforcement::of(&detected).is_enforced());
    println!("{}", Enforcement::of(&detected));

    // A restarted daemon detects the same parent again.
    let name = root.file_name().unwrap().to_str().unwrap();
    assert_eq!(&MemoryCgroups::detect(name).unwrap(), cgroups);

    let refused = MemoryCgroups::detect("../escape");
    assert!(matches!(refused, Err(CgroupError::InvalidName { .. })));
    let unenforced = Enforcement::of(&refused);
    assert!(!unenforced.is_enforced());
    assert!(
        unenforced.to_string().contains("NOT enforced"),
        "{unenforced}"
    );
}

#[test]
fn pods_are_created_adopted_listed_and_removed() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let cgroups = &scratch.cgroups;
    assert!(cgroups.list().is_empty());
    let b = cgroups.create("pod-b").unwrap();
    let a = cgroups.create("pod-a").unwrap();
    assert_eq!(a.path(), cgroups.root().join("pod-a"));
    assert!(
        a.path().join("cgroup.procs").is_file(),
        "the kernel populated the cgroup"
    );
    assert_eq!(
        cgroups.create("pod-a").unwrap(),
        a,
        "create adopts an existing pod"
    );
    assert_eq!(cgroups.list(), ["pod-a", "pod-b"]);
    assert_eq!(cgroups.open("pod-b"), Some(b.clone()));
    assert_eq!(cgroups.open("pod-c"), None);

    a.remove().unwrap();
    assert!(!a.path().exists());
    assert_eq!(cgroups.list(), ["pod-b"]);
    assert_eq!(cgroups.open("pod-a"), None);
    a.remove().expect("removing a removed pod is a no-op");
    b.remove().unwrap();
    assert!(cgroups.list().is_empty());
}

#[test]
fn invalid_names_are_refused_and_nothing_escapes() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let cgroups = &scratch.cgroups;
    let long = "p".repeat(200);
    for bad in [
        "", ".", "..", "../up", "a/b", "/abs", ".hidden", "a b", "nul\0x", &long,
    ] {
        let refused = cgroups.create(bad);
        assert!(
            matches!(refused, Err(CgroupError::InvalidName { .. })),
            "{bad:?}: {refused:?}"
        );
        assert_eq!(cgroups.open(bad), None, "{bad:?}");
    }
    assert!(!cgroups.root().parent().unwrap().join("up").exists());
    // A name that is a control file can be no pod: the kernel refuses the directory.
    assert!(cgroups.create("cgroup.procs").is_err());
    assert_eq!(cgroups.open("cgroup.procs"), None);
    assert!(cgroups.list().is_empty());
}

#[test]
fn limits_are_written_to_the_kernel() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let pod = scratch.cgroups.create("limits").unwrap();
    assert_eq!(pod.limit().unwrap(), None, "a new cgroup is unlimited");

    pod.set_limit(64 * MIB).unwrap();
    let (limit_file, high_file) = match pod.version() {
        CgroupVersion::V1 => ("memory.limit_in_bytes", "memory.soft_limit_in_bytes"),
        CgroupVersion::V2 => ("memory.max", "memory.high"),
    };
    let kernel = |file: &str| fs::read_to_string(pod.path().join(file)).unwrap();
    assert_eq!(kernel(limit_file).trim(), (64 * MIB).to_string());
    assert_eq!(pod.limit().unwrap(), Some(64 * MIB));

    pod.set_high(Some(32 * MIB)).unwrap();
    assert_eq!(kernel(high_file).trim(), (32 * MIB).to_string());
    pod.set_high(None).unwrap();
    let cleared = kernel(high_file);
    assert!(
        cleared.trim() == "max" || cleared.trim().parse::<u64>().unwrap() > 1 << 62,
        "{cleared}"
    );
    pod.remove().unwrap();
}

#[test]
fn a_child_over_its_limit_is_oom_killed_inside_its_pod() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let pod = scratch.cgroups.create("hog").unwrap();
    pod.set_limit(64 * MIB).unwrap();
    let before = pod.oom_kills().unwrap();

    let mut hog = Process::held(&python_holding(200, "print('survived', flush=True)"));
    pod.join(hog.pid()).unwrap();
    assert_eq!(pod.pids().unwrap(), [hog.pid()]);
    hog.go();
    let status = hog.wait();
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by SIGKILL, not {status:?}"
    );
    assert_eq!(hog.next_line(), None, "it never got past the allocation");

    match (before, pod.oom_kills().unwrap()) {
        (Some(before), Some(after)) => assert_eq!(after, before + 1, "one OOM kill counted"),
        (None, None) => eprintln!("this kernel does not count OOM kills per cgroup"),
        other => panic!("the oom_kill count appeared or vanished: {other:?}"),
    }
    pod.remove_when_empty(DEADLINE).unwrap();
}

#[test]
fn usage_and_pids_follow_a_process_until_kill_all() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let pod = scratch.cgroups.create("holder").unwrap();
    pod.set_limit(512 * MIB).unwrap();
    let idle = pod.usage_bytes().unwrap();

    let held = "print('ready', flush=True); import time; time.sleep(60)";
    let mut holder = Process::held(&python_holding(100, held));
    pod.join(holder.pid()).unwrap();
    holder.go();
    assert_eq!(holder.next_line().as_deref(), Some("ready"));
    let usage = wait_for("usage to grow by 100 MiB", || {
        let usage = pod.usage_bytes().unwrap();
        (usage >= idle + 100 * MIB).then_some(usage)
    });
    assert!(usage < 512 * MIB, "{usage}");
    assert_eq!(pod.pids().unwrap(), [holder.pid()]);

    // Busy while the process lives: the kernel refuses, and the error names who is left.
    let busy = pod.remove().unwrap_err();
    assert!(
        matches!(&busy, CgroupError::Busy { pids, .. } if pids == &[holder.pid()]),
        "{busy:?}"
    );
    assert!(
        busy.to_string().contains(&pod.path().display().to_string()),
        "{busy}"
    );

    assert_eq!(pod.kill_all().unwrap(), 1);
    assert_eq!(holder.wait().signal(), Some(9));
    wait_for("the pod to empty", || {
        pod.pids().unwrap().is_empty().then_some(())
    });
    wait_for("the charge to drain", || {
        (pod.usage_bytes().unwrap() < idle + 100 * MIB).then_some(())
    });
    pod.remove_when_empty(DEADLINE).unwrap();
    assert_eq!(scratch.cgroups.open("holder"), None);
}

#[test]
fn kill_all_reaches_grandchildren() {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let pod = scratch.cgroups.create("tree").unwrap();
    // sh starts two sleeps in the background; they are born in the pod because sh is in it.
    let mut tree = Process::held("sleep 60 & sleep 60 & echo started; wait");
    pod.join(tree.pid()).unwrap();
    tree.go();
    assert_eq!(tree.next_line().as_deref(), Some("started"));
    let pids = wait_for("three processes in the pod", || {
        let pids = pod.pids().unwrap();
        (pids.len() == 3).then_some(pids)
    });
    assert!(pids.contains(&tree.pid()));

    assert_eq!(pod.kill_all().unwrap(), 3);
    assert_eq!(tree.wait().signal(), Some(9));
    // The orphaned sleeps are reaped by init, not by us: removal waits for that.
    pod.remove_when_empty(DEADLINE).unwrap();
}

#[test]
fn join_self_confines_the_caller_and_its_children() {
    if let Some(root) = env::var_os(JOIN_SELF_ROOT) {
        return join_self_in_a_child(PathBuf::from(root));
    }
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let pod = scratch.cgroups.create("supervisor").unwrap();
    // Moving the test process itself would drag in the other tests' children, so a copy of
    // this test binary, running only this test, plays the supervisor.
    let output = Command::new(env::current_exe().unwrap())
        .args(["--exact", "join_self_confines_the_caller_and_its_children"])
        .args(["--nocapture", "--test-threads=1"])
        .env(JOIN_SELF_ROOT, scratch.cgroups.root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("supervisor confined"), "{stdout}");
    pod.remove_when_empty(DEADLINE).unwrap();
}

/// The supervisor's part: join, spawn, find the spawned agent confined, clear it out.
fn join_self_in_a_child(root: PathBuf) {
    let (version, _) = expected_location();
    let cgroups = MemoryCgroups::at(root, version).unwrap();
    let pod: PodCgroup = cgroups
        .open("supervisor")
        .expect("the parent created the pod");
    pod.join_self().unwrap();
    let me = std::process::id();
    assert_eq!(pod.pids().unwrap(), [me]);

    let mut agent = Process::held("exec sleep 60");
    let mut expected = vec![me, agent.pid()];
    expected.sort_unstable();
    assert_eq!(
        pod.pids().unwrap(),
        expected,
        "the agent was born in the pod"
    );
    assert_eq!(pod.kill_all().unwrap(), 1, "everyone but the caller");
    assert_eq!(agent.wait().signal(), Some(9));
    assert_eq!(pod.pids().unwrap(), [me]);
    println!("supervisor confined");
}

/// The v2 file layout, on a plain directory standing in for a cgroup: which files are
/// written, and what odd content reads as. Needs no cgroupfs, so it never skips.
#[test]
fn v2_files_and_odd_content_on_a_stand_in_tree() {
    let root = env::temp_dir().join(unique_name());
    fs::create_dir(&root).unwrap();
    fs::write(root.join("cgroup.subtree_control"), "cpu\n").unwrap();
    let result = std::panic::catch_unwind(|| {
        let cgroups = MemoryCgroups::at(root.clone(), CgroupVersion::V2).unwrap();
        let control = fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+memory", "memory enabled for the pods");
        let pod = cgroups.create("pod").unwrap();
        let file = |name: &str| pod.path().join(name);
        let kernel = |name: &str| fs::read_to_string(file(name)).unwrap();

        pod.set_limit(64 * MIB).unwrap();
        assert_eq!(kernel("memory.max"), "67108864");
        pod.set_high(Some(MIB)).unwrap();
        assert_eq!(kernel("memory.high"), "1048576");
        pod.set_high(None).unwrap();
        assert_eq!(kernel("memory.high"), "max");
        fs::write(file("memory.max"), "max\n").unwrap();
        assert_eq!(pod.limit().unwrap(), None);

        fs::write(file("memory.current"), "123\n").unwrap();
        assert_eq!(pod.usage_bytes().unwrap(), 123);
        fs::write(file("memory.current"), "lots").unwrap();
        assert!(matches!(
            pod.usage_bytes(),
            Err(CgroupError::Malformed { .. })
        ));

        let events = "low 0\nhigh 4\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n";
        fs::write(file("memory.events"), events).unwrap();
        assert_eq!(pod.oom_kills().unwrap(), Some(1));
        fs::write(file("memory.events"), "low 0\n").unwrap();
        assert_eq!(pod.oom_kills().unwrap(), None);

        fs::write(file("cgroup.procs"), "12\n5\n12\nnot-a-pid\n").unwrap();
        assert_eq!(pod.pids().unwrap(), [5, 12]);
        pod.join(77).unwrap();
        assert_eq!(kernel("cgroup.procs"), "77");
        assert!(matches!(pod.join(0), Err(CgroupError::Join { pid: 0, .. })));

        let missing = cgroups.create("empty").unwrap();
        let error = missing.usage_bytes().unwrap_err();
        assert!(error.to_string().contains("read"), "{error}");
        assert!(error.to_string().contains("memory.current"), "{error}");
    });
    fs::remove_dir_all(&root).unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
