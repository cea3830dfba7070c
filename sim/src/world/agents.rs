//! The simulated agents by id, in slots that are reused.
//!
//! Ids are never reused (the engine numbers agents for good), but a week of churn removes
//! thousands of agents: kept dense by id, every one of them would hold its state and its draw
//! counters to the end of the run. Here an id maps to a slot, and a removed agent's slot is
//! handed to a later agent once the agent is retired, so the table holds the live fleet, not
//! every agent the run ever had.
//!
//! A retired id, like one never given, reads as [`SimAgent::ABSENT`]: not desired, no pod, no
//! process, which is what a removed agent at rest looks like to every event still queued for
//! it. Writing one, or drawing for one, is a bug and panics.

use super::SimAgent;
use crate::rng::Counters;
use carapace_engine::AgentId;
use carapace_engine::growth::GrowGently;
use std::ops::{Index, IndexMut};

const VACANT: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct AgentTable {
    /// By id: the agent's slot, or [`VACANT`].
    slot_of: Vec<u32>,
    agents: Vec<SimAgent>,
    /// Beside `agents` rather than in it: the node tick reads agents and never these.
    draws: Vec<Counters>,
    free: Vec<u32>,
    /// Agents holding a slot.
    live: u32,
}

impl AgentTable {
    /// Room for `ids` ids over the run, `slots` of them live at once.
    pub fn reserve(&mut self, ids: usize, slots: usize) {
        self.slot_of
            .reserve_exact(ids.saturating_sub(self.slot_of.len()));
        self.agents
            .reserve_exact(slots.saturating_sub(self.agents.len()));
        self.draws
            .reserve_exact(slots.saturating_sub(self.draws.len()));
    }

    /// The id the next agent gets: one past the highest given.
    pub fn next_id(&self) -> AgentId {
        AgentId(u32::try_from(self.slot_of.len()).expect("agent ids fit in a u32"))
    }

    /// Agents holding a slot (not retired).
    #[cfg(test)]
    fn live(&self) -> u32 {
        self.live
    }

    /// Gives `id` (not given before) a slot.
    pub fn insert(&mut self, id: AgentId, agent: SimAgent, draws: Counters) {
        assert!(
            id.index() >= self.slot_of.len(),
            "agent {id} was given before: ids are never reused"
        );
        // Grown by an eighth, not doubled: a large fleet's table is grown one id at a time.
        self.slot_of.grow_gently();
        self.slot_of.resize(id.index() + 1, VACANT);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.agents[slot as usize] = agent;
                self.draws[slot as usize] = draws;
                slot
            }
            None => {
                self.agents.grow_gently();
                self.draws.grow_gently();
                self.agents.push(agent);
                self.draws.push(draws);
                u32::try_from(self.agents.len() - 1).expect("slots fit in a u32")
            }
        };
        self.slot_of[id.index()] = slot;
        self.live += 1;
    }

    pub fn get(&self, id: AgentId) -> Option<&SimAgent> {
        self.slot(id).map(|slot| &self.agents[slot])
    }

    pub fn get_mut(&mut self, id: AgentId) -> Option<&mut SimAgent> {
        self.slot(id).map(|slot| &mut self.agents[slot])
    }

    /// The agent's draw counters.
    ///
    /// # Panics
    /// If `id` holds no slot: nothing draws for an agent that is gone.
    pub fn draws_mut(&mut self, id: AgentId) -> &mut Counters {
        let slot = self.expect_slot(id);
        &mut self.draws[slot]
    }

    /// Frees the agent's slot for a later agent; from now on the id reads as absent.
    pub fn retire(&mut self, id: AgentId) {
        let slot = self.expect_slot(id);
        self.slot_of[id.index()] = VACANT;
        self.agents[slot] = SimAgent::ABSENT;
        self.draws[slot] = Counters::default();
        self.free.push(slot as u32);
        self.live -= 1;
    }

    /// Every id given so far, in order, retired ones included.
    pub fn ids(&self) -> impl Iterator<Item = AgentId> + use<> {
        (0..self.next_id().0).map(AgentId)
    }

    fn slot(&self, id: AgentId) -> Option<usize> {
        match self.slot_of.get(id.index()) {
            Some(&slot) if slot != VACANT => Some(slot as usize),
            _ => None,
        }
    }

    fn expect_slot(&self, id: AgentId) -> usize {
        self.slot(id)
            .unwrap_or_else(|| panic!("agent {id} holds no slot: it was retired or never given"))
    }
}

impl Index<AgentId> for AgentTable {
    type Output = SimAgent;

    fn index(&self, id: AgentId) -> &SimAgent {
        self.get(id).unwrap_or(&SimAgent::ABSENT)
    }
}

impl IndexMut<AgentId> for AgentTable {
    /// # Panics
    /// If `id` holds no slot: a retired agent is never changed.
    fn index_mut(&mut self, id: AgentId) -> &mut SimAgent {
        let slot = self.expect_slot(id);
        &mut self.agents[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Component;
    use proptest::prelude::*;

    fn agent(class: u16) -> SimAgent {
        SimAgent {
            class,
            desired: true,
            ..SimAgent::ABSENT
        }
    }

    #[test]
    fn a_retired_slot_is_reused_and_the_retired_id_reads_absent() {
        let mut table = AgentTable::default();
        table.insert(AgentId(0), agent(1), Counters::default());
        table.insert(AgentId(1), agent(2), Counters::default());
        table.draws_mut(AgentId(0)).next(Component::Crash);
        table.retire(AgentId(0));
        assert!(table.get(AgentId(0)).is_none());
        assert!(!table[AgentId(0)].desired);
        table.insert(AgentId(2), agent(3), Counters::default());
        assert_eq!(table.agents.len(), 2, "the freed slot was reused");
        assert_eq!(table[AgentId(2)].class, 3);
        assert_eq!(
            table.draws_mut(AgentId(2)).next(Component::Crash),
            0,
            "a reused slot starts with fresh counters"
        );
        assert_eq!(table[AgentId(1)].class, 2);
        assert_eq!(table.live(), 2);
        assert_eq!(table.next_id(), AgentId(3));
    }

    #[test]
    #[should_panic(expected = "holds no slot")]
    fn writing_a_retired_agent_panics() {
        let mut table = AgentTable::default();
        table.insert(AgentId(0), agent(1), Counters::default());
        table.retire(AgentId(0));
        table[AgentId(0)].desired = true;
    }

    #[test]
    fn an_id_never_given_reads_absent() {
        let mut table = AgentTable::default();
        table.insert(AgentId(3), agent(1), Counters::default());
        assert!(table.get(AgentId(1)).is_none());
        assert!(table.get(AgentId(9)).is_none());
        assert_eq!(table.ids().count(), 4);
    }

    proptest! {
        /// Against a map of the agents that should be live: every id reads what it was given
        /// until retired, and slots never outnumber the most agents live at once.
        #[test]
        fn the_table_holds_exactly_the_live_agents(ops in prop::collection::vec(any::<(bool, u16)>(), 1..200)) {
            let mut table = AgentTable::default();
            let mut model = std::collections::BTreeMap::new();
            let mut most_live = 0;
            for (retire, pick) in ops {
                if retire && !model.is_empty() {
                    let id = *model.keys().nth(usize::from(pick) % model.len()).expect("in range");
                    model.remove(&id);
                    table.retire(id);
                } else {
                    let id = table.next_id();
                    table.insert(id, agent(pick), Counters::default());
                    model.insert(id, pick);
                }
                most_live = most_live.max(model.len());
                prop_assert_eq!(table.live() as usize, model.len());
                for id in table.ids() {
                    prop_assert_eq!(table.get(id).map(|a| a.class), model.get(&id).copied());
                }
            }
            prop_assert!(table.agents.len() <= most_live);
        }
    }
}
