//! A real etcd cluster of N members on one machine (loopback, or an address inside a network
//! namespace): each member is an `etcd` process with its own
//! data directory, client port and peer port. For tests (a member can be killed and brought
//! back) and for trying the cluster mode on one machine. The binary is `$ETCD_BIN` or `etcd`
//! on the PATH (Debian's `etcd-server`).

use crate::etcd::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

/// A running local cluster; every member is killed when it is dropped.
#[derive(Debug)]
pub struct LocalEtcd {
    members: Vec<Member>,
    binary: PathBuf,
    initial_cluster: String,
    host: String,
    /// The network namespace the members run in, if not this process's.
    netns: Option<String>,
}

impl LocalEtcd {
    /// Starts `size` members in `dir` with client ports `base_port + 1..` and peer ports
    /// `base_port + 101..`, and waits (until `deadline`) for the cluster to commit a write.
    pub fn start(
        dir: &Path,
        size: usize,
        base_port: u16,
        deadline: Duration,
    ) -> Result<LocalEtcd, String> {
        LocalEtcd::start_on(dir, size, base_port, "127.0.0.1", None, deadline)
    }

    /// As [`LocalEtcd::start`], with the members listening on `host` inside network namespace
    /// `netns` (see [`crate::netns`]), so that other namespaces can reach them.
    pub fn start_on(
        dir: &Path,
        size: usize,
        base_port: u16,
        host: &str,
        netns: Option<&str>,
        deadline: Duration,
    ) -> Result<LocalEtcd, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let binary = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("etcd"));
        let members: Vec<Member> = (0..size)
            .map(|i| {
                let name = format!("m{}", i + 1);
                Member {
                    client_port: base_port + 1 + i as u16,
                    peer_port: base_port + 101 + i as u16,
                    data_dir: dir.join(&name),
                    log: dir.join(format!("{name}.log")),
                    name,
                    process: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{host}:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalEtcd {
            members,
            binary,
            initial_cluster,
            host: host.to_owned(),
            netns: netns.map(str::to_owned),
        };
        for index in 0..size {
            cluster.start_member(index)?;
        }
        cluster.wait_for_quorum(deadline)?;
        Ok(cluster)
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}:{}", self.host, m.client_port))
            .collect()
    }

    /// A client of every member.
    pub fn client(&self, timeout: Duration) -> Client {
        Client::new(&self.endpoints(), timeout).expect("loopback endpoints are valid")
    }

    /// Kills member `index` (SIGKILL, as a crash) and waits until it is reaped.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data directory.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        self.start_member(index)
    }

    /// Waits until a write commits: a quorum is up and has a leader.
    pub fn wait_for_quorum(&self, deadline: Duration) -> Result<(), String> {
        let client = self.client(Duration::from_millis(500));
        let until = Instant::now() + deadline;
        loop {
            match client.put("/local-etcd/probe", b"1", None) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= until => {
                    return Err(format!(
                        "the local etcd cluster did not commit a write within {deadline:?}: \
                         {error} (logs in {})",
                        self.members[0]
                            .log
                            .parent()
                            .unwrap_or(Path::new("."))
                            .display()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn start_member(&mut self, index: usize) -> Result<(), String> {
        let member = &self.members[index];
        if member.process.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|e| format!("{}: {e}", member.log.display()))?;
        let client_url = format!("http://{}:{}", self.host, member.client_port);
        let peer_url = format!("http://{}:{}", self.host, member.peer_port);
        let mut command = match &self.netns {
            // `ip netns exec` execs etcd in place: the child is etcd itself.
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "carapace-local"])
            // Short raft timings: a lost member is noticed, and a leader elected, in well
            // under a second on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} (install Debian's etcd-server, or set ETCD_BIN): {e}",
                    self.binary.display()
                )
            })?;
        self.members[index].process = Some(child);
        Ok(())
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}
