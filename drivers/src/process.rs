//! Agent processes: spawned in their own process group (so a stop reaches every child the
//! agent started), stopped with SIGTERM then SIGKILL, measured from `/proc`.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// What to run. Environment values may hold secrets: they are passed on, never printed.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: Option<PathBuf>,
    /// Where the agent's stdout and stderr go (appended); discarded when `None`.
    pub log: Option<PathBuf>,
}

/// A running agent process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    pid: u32,
}

impl AgentProcess {
    pub fn spawn(spec: &ProcessSpec) -> std::io::Result<AgentProcess> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(dir) = &spec.dir {
            command.current_dir(dir);
        }
        match &spec.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // Its own group: signals reach everything the agent started, and a signal meant for
        // the driver (Ctrl-C in a terminal) does not reach the agent behind its back.
        command.process_group(0).kill_on_drop(true);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the process exited before its pid was read"))?;
        Ok(AgentProcess { child, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        signal_group(self.pid, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                // Children that outlived the leader go too.
                signal_group(self.pid, Signal::SIGKILL);
                status
            }
            Err(_) => {
                signal_group(self.pid, Signal::SIGKILL);
                self.child.wait().await
            }
        }
    }
}

pub(crate) fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // The group may be gone already; that is the goal, not an error.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Whether `pid` is stopped (by a signal or a tracer), from `/proc/PID/stat`.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state == 'T' || state == 't')
    })
}

/// The exit code, or 128 + signal for a process killed by a signal (as shells report it).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Resident memory of `pid` and all its descendants, from `/proc`.
pub fn tree_rss_bytes(pid: u32) -> std::io::Result<u64> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut parents: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if let Some(parent) = parent_of(&stat) {
            parents.insert(child, parent);
        }
    }
    let mut total = 0;
    for (&process, _) in parents
        .iter()
        .filter(|(p, _)| descends_from(**p, pid, &parents))
    {
        let Ok(statm) = std::fs::read_to_string(format!("/proc/{process}/statm")) else {
            continue;
        };
        let resident: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        total += resident * page;
    }
    Ok(total)
}

/// The parent pid from a `/proc/PID/stat` line; the command name may hold spaces and ')'.
fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn descends_from(mut process: u32, ancestor: u32, parents: &BTreeMap<u32, u32>) -> bool {
    // Bounded: a pid chain is short, and a cycle cannot occur but would end the walk.
    for _ in 0..64 {
        if process == ancestor {
            return true;
        }
        match parents.get(&process) {
            Some(&parent) if parent != process && parent != 0 => process = parent,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        assert_eq!(parent_of("42 (openclaw-gateway) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("43 (a) b) S 9 43"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_process_tree_is_measured_and_stopped_as_a_group() {
        let spec = ProcessSpec {
            program: "sh".into(),
            args: vec!["-c".into(), "sleep 30 & sleep 30 & wait".into()],
            env: Vec::new(),
            dir: None,
            log: None,
        };
        let mut process = AgentProcess::spawn(&spec).unwrap();
        let pid = process.pid();
        // Wait, with a deadline, for the children to appear in /proc.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let children = loop {
            let mut parents = BTreeMap::new();
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Some(child) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(parent) = std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .ok()
                    .and_then(|s| parent_of(&s))
                {
                    parents.insert(child, parent);
                }
            }
            let children: Vec<u32> = parents
                .iter()
                .filter(|(_, p)| **p == pid)
                .map(|(c, _)| *c)
                .collect();
            if children.len() == 2 || std::time::Instant::now() > deadline {
                break children;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(children.len(), 2, "both sleeps started");
        assert!(tree_rss_bytes(pid).unwrap() > 0);
        let status = process.stop(Duration::from_secs(5)).await.unwrap();
        assert_eq!(exit_code(status), 128 + 15);
        for child in children {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::path::Path::new(&format!("/proc/{child}")).exists() {
                let zombie = std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true);
                if zombie {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "child {child} outlived the stop"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
