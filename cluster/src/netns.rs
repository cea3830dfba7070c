//! Machines on one machine: network namespaces joined by a bridge, for tests that cut a node
//! off for real. A *hub* namespace holds the bridge and the etcd members; each *host* namespace
//! is one node's machine, linked to the bridge by a veth pair whose hub end can be taken down
//! (a cut cable) and brought back up. The process that builds the network reaches the hub
//! through a veth of its own. Everything is made with `ip` (iproute2, as root) and removed on
//! drop.
//!
//! Addresses are `10.R.S.x/24`, a subnet picked per network: `.1` the hub, `.254` the
//! builder's side, `.10 + i` host `i`. They live only in the namespaces this module makes.

use std::process::Command;

/// A network of namespaces; removed (namespaces and links) on drop.
#[derive(Debug)]
pub struct TestNet {
    tag: String,
    subnet: [u8; 2],
    hosts: Vec<String>,
}

impl TestNet {
    /// Makes the hub and the builder's link to it. `tag` (at most 6 characters of
    /// `[a-z0-9]`) names the links and namespaces, and `subnet` picks `10.subnet.x`.
    pub fn new(tag: &str, subnet: [u8; 2]) -> Result<TestNet, String> {
        if tag.is_empty() || tag.len() > 6 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("network tag `{tag}`: 1 to 6 of [a-z0-9]"));
        }
        let net = TestNet {
            tag: tag.to_owned(),
            subnet,
            hosts: Vec::new(),
        };
        let hub = net.hub();
        let up = format!("cpu{tag}");
        ip(&["netns", "add", &hub])?;
        in_ns(&hub, &["link", "set", "lo", "up"])?;
        in_ns(&hub, &["link", "add", "br0", "type", "bridge"])?;
        in_ns(&hub, &["addr", "add", &net.cidr(1), "dev", "br0"])?;
        in_ns(&hub, &["link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", &up, "type", "veth", "peer", "name", "uplink", "netns", &hub,
        ])?;
        in_ns(&hub, &["link", "set", "uplink", "master", "br0", "up"])?;
        ip(&["addr", "add", &net.cidr(254), "dev", &up])?;
        ip(&["link", "set", &up, "up"])?;
        Ok(net)
    }

    /// The hub's namespace, where etcd runs.
    pub fn hub(&self) -> String {
        format!("cp-hub-{}", self.tag)
    }

    /// The hub's address.
    pub fn hub_address(&self) -> String {
        self.address(1)
    }

    /// Adds host `i` (a namespace with its own loopback and one link to the hub); answers its
    /// namespace's name.
    pub fn add_host(&mut self) -> Result<String, String> {
        let index = self.hosts.len();
        let name = format!("cp-h{index}-{}", self.tag);
        let hub_end = self.hub_end(index);
        ip(&["netns", "add", &name])?;
        self.hosts.push(name.clone());
        in_ns(&name, &["link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "add",
            &hub_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &name,
        ])?;
        in_ns(
            &self.hub(),
            &["link", "set", &hub_end, "master", "br0", "up"],
        )?;
        in_ns(
            &name,
            &["addr", "add", &self.cidr(10 + index as u8), "dev", "eth0"],
        )?;
        in_ns(&name, &["link", "set", "eth0", "up"])?;
        Ok(name)
    }

    /// Host `i`'s address on the network.
    pub fn host_address(&self, index: usize) -> String {
        self.address(10 + index as u8)
    }

    /// Cuts host `index` off (its cable, at the hub's end) or joins it again.
    pub fn set_connected(&self, index: usize, connected: bool) -> Result<(), String> {
        let state = if connected { "up" } else { "down" };
        in_ns(&self.hub(), &["link", "set", &self.hub_end(index), state])
    }

    /// `program args…` to run inside namespace `ns`.
    pub fn command_in(ns: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }

    /// Kills every process in namespace `ns` (SIGKILL): the machine dies.
    pub fn kill_everything_in(ns: &str) -> Result<(), String> {
        let output = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map_err(|e| format!("ip netns pids {ns}: {e}"))?;
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        Ok(())
    }

    fn hub_end(&self, index: usize) -> String {
        format!("cph{index}{}", self.tag)
    }

    fn address(&self, last: u8) -> String {
        format!("10.{}.{}.{last}", self.subnet[0], self.subnet[1])
    }

    fn cidr(&self, last: u8) -> String {
        format!("{}/24", self.address(last))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub())) {
            let _ = TestNet::kill_everything_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
        // Deleting the hub takes its veth ends, and with them the builder's.
        let _ = ip(&["link", "del", &format!("cpu{}", self.tag)]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (install iproute2; run as root)", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}
