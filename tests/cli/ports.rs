//! Where the CLI tests listen. Every fixed port sits below Linux's ephemeral range (32,768 up):
//! a port in that range can be taken at any moment by the client side of some connection —
//! the tests' own API polls, a daemon's probes, a gateway's outgoing calls — and OpenClaw,
//! finding one of its ports taken, exits 1 after ~26 s, which reads as a crash.
//!
//! | ports           | who                                                           |
//! |-----------------|---------------------------------------------------------------|
//! | 12,000–13,199   | `cluster/tests/etcd.rs`: etcd members                          |
//! | 13,200–15,499   | `node.rs`, `cluster.rs`: etcd members, nodes' pods, controllers |
//! | 20,000–29,599   | `serve.rs` [`port_block`](crate::serve::port_block): test daemons and their test agents |
//! | 30,000–30,009   | the OpenClaw daemons' APIs                                     |
//! | 30,120–32,039   | OpenClaw gateways: blocks of 120 (a gateway derives ports up to base + 110) |
//!
//! The OpenClaw tests run one at a time (`scripts/test`), yet each has blocks of its own: a
//! gateway of one test still dying cannot hold a port the next is given.

use std::net::TcpListener;

/// Ports between two gateways' bases: OpenClaw derives ports up to base + 110.
pub(crate) const GATEWAY_STRIDE: u16 = 120;
/// The ports of a gateway's block checked before it is given: its base and derived ones.
pub(crate) const GATEWAY_PORTS: [u16; 4] = [0, 1, 2, 110];

/// An OpenClaw test's daemon API port and the base of its gateways' port blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenClawPorts {
    pub(crate) api: u16,
    pub(crate) gateways: u16,
    pub(crate) pods: u16,
}

/// `supervise.rs`: a lone gateway, in the first free one of `SUPERVISE_BLOCKS` blocks.
pub(crate) const SUPERVISE_GATEWAYS: u16 = 30_120;
pub(crate) const SUPERVISE_BLOCKS: u16 = 2;
/// `serve_openclaw.rs`: three gateways recovering from faults.
pub(crate) const SERVE: OpenClawPorts = OpenClawPorts {
    api: 30_000,
    gateways: 30_360,
    pods: 5,
};
/// `serve_openclaw.rs`: the warm pool.
pub(crate) const WARM: OpenClawPorts = OpenClawPorts {
    api: 30_001,
    gateways: 30_960,
    pods: 4,
};
/// `fidelity.rs`: the CI fidelity check.
pub(crate) const FIDELITY: OpenClawPorts = OpenClawPorts {
    api: 30_002,
    gateways: 31_440,
    pods: 5,
};

impl OpenClawPorts {
    /// The `[pods]` table's port lines for these gateways.
    pub(crate) fn pods_table(self) -> String {
        format!(
            "port_base = {}\nport_stride = {GATEWAY_STRIDE}\nmax_pods = {}\n",
            self.gateways, self.pods
        )
    }

    /// Fails the test, naming the port, if anything already listens where these gateways
    /// will: a lingering process from an earlier run would otherwise show up as a gateway
    /// crashing at boot.
    pub(crate) fn assert_free(self) {
        let blocks =
            (0..self.pods).map(|pod| (self.gateways + pod * GATEWAY_STRIDE, &GATEWAY_PORTS[..]));
        for (base, offsets) in std::iter::once((self.api, &[0][..])).chain(blocks) {
            if let Some((port, error)) = first_taken(base, offsets) {
                panic!("port {port} is taken ({error}): is another test run still going?");
            }
        }
    }
}

/// The first `base + offset` that cannot be bound on loopback right now, and why.
pub(crate) fn first_taken(base: u16, offsets: &[u16]) -> Option<(u16, std::io::Error)> {
    offsets.iter().find_map(|offset| {
        let port = base + offset;
        TcpListener::bind(("127.0.0.1", port))
            .err()
            .map(|error| (port, error))
    })
}

#[test]
fn the_openclaw_blocks_stay_apart_and_below_the_ephemeral_range() {
    let mut ranges = vec![
        (
            SUPERVISE_GATEWAYS,
            SUPERVISE_GATEWAYS + SUPERVISE_BLOCKS * GATEWAY_STRIDE,
        ),
        (SERVE.api, WARM.api.max(FIDELITY.api) + 1),
    ];
    for ports in [SERVE, WARM, FIDELITY] {
        ranges.push((ports.gateways, ports.gateways + ports.pods * GATEWAY_STRIDE));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping port ranges: {pair:?}");
    }
    let highest = ranges.last().expect("ranges").1;
    assert!(
        highest < 32_768,
        "a port at {highest} is in the ephemeral range"
    );
}
