//! The engine, driven through its public API exactly as a production driver drives it:
//! inputs in, commands out, timers woken when they fall due.

use super::*;

impl Simulation {
    pub(crate) fn feed(&mut self, input: Input) {
        if self.failover.is_down() {
            self.failover.hold(input);
            return;
        }
        self.stats.engine_inputs += 1;
        if let Err(error) = self.controller.handle(self.now, input) {
            self.note_engine_error(error);
        }
        self.drain_controller();
    }

    pub(super) fn note_engine_error(&mut self, error: EngineError) {
        self.stats.engine_errors += 1;
        if self.stats.first_engine_error.is_none() {
            self.stats.first_engine_error = Some(format!("at {}: {error}", self.now));
        }
        if !matches!(error, EngineError::UnknownAgent(_))
            && self.stats.first_unexpected_engine_error.is_none()
        {
            self.stats.first_unexpected_engine_error = Some(format!("at {}: {error}", self.now));
        }
    }

    pub(super) fn drain_controller(&mut self) {
        while let Some(command) = self.controller.poll_command() {
            self.stats.engine_commands += 1;
            self.hash_command(&command);
            if let Some(log) = self.command_log.as_mut()
                && log.entries.len() < log.limit
            {
                log.entries
                    .push((self.now, command.agent(), format!("{command:?}")));
            }
            self.execute(command);
        }
        if let Some(at) = self.controller.next_deadline()
            && self.controller_wake.is_none_or(|wake| at < wake)
        {
            self.controller_wake = Some(at);
            self.queue.push(at.max(self.now), Event::ControllerWake);
        }
    }

    pub(super) fn hash_command(&mut self, command: &Command) {
        self.stats.command_stream_hash =
            command.digest(self.stats.command_stream_hash ^ self.now.0);
    }

    pub(super) fn feed_supervisor(&mut self, node: NodeId, input: SupervisorInput) {
        let supervisor = &mut self.nodes[node.index()].supervisor;
        // A pod the supervisor never adopted (its config failed validation) has nothing to release.
        let _ = supervisor.handle(self.now, input);
        self.drain_supervisor(node);
    }

    pub(super) fn drain_supervisor(&mut self, node: NodeId) {
        while let Some(command) = self.nodes[node.index()].supervisor.poll_command() {
            match command {
                SupervisorCommand::Restart {
                    agent, instance, ..
                } => self.restart_in_place(node, agent, instance),
                SupervisorCommand::Escalate {
                    agent,
                    instance,
                    reason,
                } => {
                    self.feed(Input::Escalate {
                        agent,
                        instance,
                        reason,
                    });
                }
            }
        }
        let next = self.nodes[node.index()].supervisor.next_deadline();
        let sim_node = &mut self.nodes[node.index()];
        if let Some(at) = next
            && sim_node.supervisor_wake.is_none_or(|wake| at < wake)
        {
            sim_node.supervisor_wake = Some(at);
            self.queue
                .push(at.max(self.now), Event::SupervisorWake(node));
        }
    }
}
