//! Where each tenant's agents are, so placement can spread them across nodes and zones.

use crate::id::{NodeId, TenantId, ZoneId};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub(crate) struct Tenants {
    spread: BTreeMap<TenantId, Spread>,
}

/// Agent counts per node and per zone, sorted by id. A tenant has tens of agents, so sorted
/// vectors beat maps here.
#[derive(Debug, Default)]
pub(crate) struct Spread {
    pub nodes: Vec<(NodeId, u32)>,
    pub zones: Vec<(ZoneId, u32)>,
}

impl Tenants {
    pub(crate) fn get(&self, tenant: TenantId) -> Option<&Spread> {
        self.spread.get(&tenant)
    }

    pub(crate) fn add(&mut self, tenant: TenantId, node: NodeId, zone: ZoneId) {
        let spread = self.spread.entry(tenant).or_default();
        bump(&mut spread.nodes, node);
        bump(&mut spread.zones, zone);
    }

    pub(crate) fn remove(&mut self, tenant: TenantId, node: NodeId, zone: ZoneId) {
        let spread = self
            .spread
            .get_mut(&tenant)
            .expect("invariant: a tenant with a placed agent has a spread");
        drop_one(&mut spread.nodes, node);
        drop_one(&mut spread.zones, zone);
        if spread.nodes.is_empty() {
            self.spread.remove(&tenant);
        }
    }
}

fn bump<K: Ord + Copy>(counts: &mut Vec<(K, u32)>, key: K) {
    match counts.binary_search_by_key(&key, |(k, _)| *k) {
        Ok(i) => counts[i].1 += 1,
        Err(i) => counts.insert(i, (key, 1)),
    }
}

fn drop_one<K: Ord + Copy>(counts: &mut Vec<(K, u32)>, key: K) {
    let i = counts
        .binary_search_by_key(&key, |(k, _)| *k)
        .unwrap_or_else(|_| panic!("invariant: spread counts every placed agent"));
    counts[i].1 -= 1;
    if counts[i].1 == 0 {
        counts.remove(i);
    }
}
