//! What a node must do to make its pods match its assignments: pure, so every case is tested
//! without a process.

use super::protocol::{Assignment, SnapshotOrder};
use carapace_cluster::Revision;
use carapace_engine::{AgentId, CommandId, Instance, SnapshotId};
use std::collections::{BTreeMap, BTreeSet};

/// A pod this node runs, as the node keeps track of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pod {
    pub instance: Instance,
    /// A stop has been issued; the pod is on its way out.
    pub stopping: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Start(Box<Assignment>),
    Stop {
        agent: AgentId,
        instance: Instance,
        /// The leader's stop command, when the leader asked; `None` when the node stops a
        /// pod nobody assigns any more (its report then answers no command).
        command: Option<CommandId>,
        snapshot: Option<SnapshotId>,
    },
}

/// The actions that bring `pods` to `assigned`, for the node registered at `epoch`, in agent
/// order. Assignments for another epoch are not this node's: they are left to the leader, and
/// a pod of one is stopped. An assignment of an instance in `ended` (it ended on its own) is
/// not this node's to run again either: the leader decides what follows.
pub fn reconcile(
    epoch: Revision,
    assigned: &BTreeMap<AgentId, Assignment>,
    ended: &BTreeMap<AgentId, Instance>,
    pods: &BTreeMap<AgentId, Pod>,
) -> Vec<Action> {
    let runnable =
        |agent: &AgentId, a: &Assignment| a.epoch == epoch && ended.get(agent) != Some(&a.instance);
    let mut actions = Vec::new();
    for (agent, pod) in pods {
        if pod.stopping {
            continue;
        }
        let wanted = assigned
            .get(agent)
            .filter(|a| runnable(agent, a) && a.instance == pod.instance);
        match wanted {
            Some(assignment) => {
                if let Some(stop) = assignment.stop {
                    actions.push(Action::Stop {
                        agent: *agent,
                        instance: pod.instance,
                        command: Some(stop.command),
                        snapshot: stop.snapshot,
                    });
                }
            }
            None => actions.push(Action::Stop {
                agent: *agent,
                instance: pod.instance,
                command: None,
                snapshot: None,
            }),
        }
    }
    for (agent, assignment) in assigned {
        let runs = pods.contains_key(agent);
        if runnable(agent, assignment) && assignment.stop.is_none() && !runs {
            actions.push(Action::Start(Box::new(assignment.clone())));
        }
    }
    actions
}

/// The snapshots the leader ordered of pods that run here as assigned and that are not in
/// `taken` (ordered before): each is taken once.
pub fn snapshots_due(
    epoch: Revision,
    assigned: &BTreeMap<AgentId, Assignment>,
    pods: &BTreeMap<AgentId, Pod>,
    taken: &BTreeSet<CommandId>,
) -> Vec<(AgentId, Instance, SnapshotOrder)> {
    assigned
        .iter()
        .filter_map(|(agent, a)| {
            let order = a.take_snapshot?;
            let runs = pods
                .get(agent)
                .is_some_and(|p| p.instance == a.instance && !p.stopping);
            (a.epoch == epoch && a.stop.is_none() && runs && !taken.contains(&order.command))
                .then_some((*agent, a.instance, order))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::node::protocol::StopOrder;
    use crate::cli::serve::agents::{AgentRecord, AgentRequest};
    use carapace_engine::Version;

    fn assignment(agent: u32, epoch: Revision, instance: u32) -> Assignment {
        let request: AgentRequest = serde_json::from_value(serde_json::json!({
            "name": format!("a{agent}"),
            "memory_limit": "64MiB",
            "command": ["true"],
            "probe": "tcp://127.0.0.1:{port}",
        }))
        .unwrap();
        Assignment {
            epoch,
            record: AgentRecord {
                id: AgentId(agent),
                request,
                version: Version::new(1, 1),
            },
            instance: Instance(instance),
            start_command: CommandId(u64::from(agent) * 10),
            config_text: None,
            snapshot: None,
            stop: None,
            take_snapshot: None,
        }
    }

    fn assigned(list: &[Assignment]) -> BTreeMap<AgentId, Assignment> {
        list.iter().map(|a| (a.record.id, a.clone())).collect()
    }

    fn running(list: &[(u32, u32, bool)]) -> BTreeMap<AgentId, Pod> {
        list.iter()
            .map(|&(agent, instance, stopping)| {
                (
                    AgentId(agent),
                    Pod {
                        instance: Instance(instance),
                        stopping,
                    },
                )
            })
            .collect()
    }

    fn summary(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|action| match action {
                Action::Start(a) => format!("start {} {}", a.record.id.0, a.instance.0),
                Action::Stop {
                    agent,
                    instance,
                    command,
                    ..
                } => format!("stop {} {} {:?}", agent.0, instance.0, command.map(|c| c.0)),
            })
            .collect()
    }

    #[test]
    fn assigned_pods_start_once_and_unassigned_ones_stop() {
        let list = assigned(&[assignment(1, 7, 1), assignment(2, 7, 3)]);
        let pods = running(&[(2, 3, false), (9, 1, false)]);
        assert_eq!(
            summary(&reconcile(7, &list, &BTreeMap::new(), &pods)),
            ["stop 9 1 None", "start 1 1"]
        );
        // Once started, nothing more to do.
        let pods = running(&[(1, 1, false), (2, 3, false)]);
        assert!(reconcile(7, &list, &BTreeMap::new(), &pods).is_empty());
    }

    #[test]
    fn an_instance_that_ended_on_its_own_is_not_started_again_nor_kept() {
        let list = assigned(&[assignment(1, 7, 1), assignment(2, 7, 1)]);
        let ended = BTreeMap::from([(AgentId(1), Instance(1)), (AgentId(2), Instance(1))]);
        // Agent 1's pod is gone; agent 2's supervisor gave up but its pod is still there.
        let pods = running(&[(2, 1, false)]);
        assert_eq!(
            summary(&reconcile(7, &list, &ended, &pods)),
            ["stop 2 1 None"]
        );
        // A new instance assigned to agent 1 runs.
        let next = assigned(&[assignment(1, 7, 2)]);
        assert_eq!(
            summary(&reconcile(7, &next, &ended, &BTreeMap::new())),
            ["start 1 2"]
        );
    }

    #[test]
    fn an_assignment_for_an_older_registration_is_not_run() {
        // The node was fenced and registered again at revision 12: what the leader assigned
        // to its old self (epoch 7) is the leader's to move.
        let list = assigned(&[assignment(1, 7, 1), assignment(2, 12, 1)]);
        assert_eq!(
            summary(&reconcile(12, &list, &BTreeMap::new(), &BTreeMap::new())),
            ["start 2 1"]
        );
        let pods = running(&[(1, 1, false)]);
        assert_eq!(
            summary(&reconcile(12, &list, &BTreeMap::new(), &pods)),
            ["stop 1 1 None", "start 2 1"]
        );
    }

    #[test]
    fn a_stop_order_stops_with_its_command_and_a_new_instance_replaces_the_old() {
        let mut stop = assignment(1, 7, 1);
        stop.stop = Some(StopOrder {
            command: CommandId(99),
            snapshot: Some(SnapshotId(4)),
        });
        let pods = running(&[(1, 1, false)]);
        let actions = reconcile(7, &assigned(&[stop.clone()]), &BTreeMap::new(), &pods);
        assert_eq!(summary(&actions), ["stop 1 1 Some(99)"]);
        assert!(matches!(
            actions[0],
            Action::Stop {
                snapshot: Some(SnapshotId(4)),
                ..
            }
        ));
        // Already stopping: nothing is issued twice, and a stopped order is not started.
        let stopping = running(&[(1, 1, true)]);
        assert!(reconcile(7, &assigned(&[stop]), &BTreeMap::new(), &stopping).is_empty());
        // Instance 2 assigned while instance 1 runs: 1 stops now, 2 starts once 1 is gone.
        let next = assignment(1, 7, 2);
        assert_eq!(
            summary(&reconcile(
                7,
                &assigned(std::slice::from_ref(&next)),
                &BTreeMap::new(),
                &pods
            )),
            ["stop 1 1 None"]
        );
        assert_eq!(
            summary(&reconcile(
                7,
                &assigned(&[next]),
                &BTreeMap::new(),
                &BTreeMap::new()
            )),
            ["start 1 2"]
        );
    }

    #[test]
    fn a_snapshot_order_is_taken_once_of_the_running_assigned_instance_only() {
        let order = SnapshotOrder {
            command: CommandId(50),
            snapshot: SnapshotId(2),
        };
        let mut ordered = assignment(1, 7, 1);
        ordered.take_snapshot = Some(order);
        let pods = running(&[(1, 1, false)]);
        let none = BTreeSet::new();
        let due = snapshots_due(7, &assigned(std::slice::from_ref(&ordered)), &pods, &none);
        assert_eq!(due, [(AgentId(1), Instance(1), order)]);
        let taken = BTreeSet::from([CommandId(50)]);
        assert!(
            snapshots_due(7, &assigned(std::slice::from_ref(&ordered)), &pods, &taken).is_empty()
        );
        // Not of another epoch, another instance, a stopping pod or a pod not running.
        assert!(
            snapshots_due(8, &assigned(std::slice::from_ref(&ordered)), &pods, &none).is_empty()
        );
        let stopping = running(&[(1, 1, true)]);
        assert!(
            snapshots_due(
                7,
                &assigned(std::slice::from_ref(&ordered)),
                &stopping,
                &none
            )
            .is_empty()
        );
        assert!(
            snapshots_due(
                7,
                &assigned(std::slice::from_ref(&ordered)),
                &BTreeMap::new(),
                &none
            )
            .is_empty()
        );
        let mut other = ordered.clone();
        other.instance = Instance(2);
        assert!(snapshots_due(7, &assigned(&[other]), &pods, &none).is_empty());
    }
}
