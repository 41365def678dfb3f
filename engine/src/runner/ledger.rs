//! The runner's side of the step ledger (see [`crate::state::StepEntry`]): a step with side
//! effects is marked `started` before its action and `finished` after it, so that a redelivered
//! event (its replica died, or its acknowledgement was lost) does not perform it twice.
//!
//! On a redelivery, a step found `finished` is recorded with its stored outcome and output and
//! not performed again. A step found `started` (its replica stopped during the action) is
//! performed again only when its action is idempotent: the Docker, Kubernetes and registry
//! actions reach a state rather than add to one, and `nats.publish` sends a `Nats-Msg-Id` of run
//! and step that JetStream deduplicates. Any other action (notifications above all) is recorded
//! `skipped` rather than risk sending it twice.

use riposte_connectors::ActionSpec;

use super::{RunCtx, RunError, Runner, StepOutcome, StepReport};
use crate::playbook::Step;
use crate::state::{StepEntry, StepState};

/// Whether `spec` is one of `actions`.
fn among(spec: &ActionSpec, actions: &[ActionSpec]) -> bool {
    actions
        .iter()
        .any(|a| a.name == spec.name && a.description == spec.description)
}

/// Whether a step with this action goes through the ledger: every action but `log`'s.
pub(super) fn has_side_effects(spec: &ActionSpec) -> bool {
    spec.destructive || !among(spec, riposte_connectors::log::ACTIONS)
}

/// Whether performing this action twice has the effect of performing it once.
pub(super) fn idempotent(spec: &ActionSpec) -> bool {
    use riposte_connectors::{docker, kubernetes, nats, registry};
    among(spec, docker::ACTIONS)
        || among(spec, kubernetes::ACTIONS)
        || among(spec, registry::ACTIONS)
        || among(spec, nats::ACTIONS)
}

impl Runner {
    /// What the ledger says of `step` before it is performed: `Some(attempts)` when it must not
    /// be performed (`r` then holds what is recorded), `None` when it may.
    pub(super) fn ledger_decides(
        &self,
        step: &Step,
        held: &StepEntry,
        r: &mut StepReport,
    ) -> Option<Option<u32>> {
        match held.state {
            StepState::Finished => {
                r.outcome = held
                    .outcome
                    .as_deref()
                    .and_then(|o| serde_json::from_value(serde_json::json!(o)).ok())
                    .unwrap_or(StepOutcome::Skipped);
                r.output = held.output.clone();
                r.revert = held.revert.clone();
                let done = format!(
                    "already done by replica {} before a redelivery",
                    held.replica
                );
                r.reason = Some(match &held.reason {
                    Some(why) => format!("{done}: {why}"),
                    None => done,
                });
                Some(held.attempts)
            }
            StepState::Started if idempotent(step.action.spec) => {
                tracing::info!(
                    step = %step.id,
                    replica = %held.replica,
                    "step begun by a replica that stopped; performing it again (idempotent)"
                );
                None
            }
            StepState::Started => {
                r.outcome = StepOutcome::Skipped;
                r.reason = Some(format!(
                    "may have been performed by replica {} before it stopped; `{}` is not \
                     idempotent, so it is not performed again",
                    held.replica, r.action
                ));
                Some(None)
            }
        }
    }

    /// Reads the ledger before a step: `Some(attempts)` when it must not be performed.
    pub(super) async fn ledger_before(
        &self,
        run: &RunCtx<'_>,
        step: &Step,
        r: &mut StepReport,
    ) -> Result<Option<Option<u32>>, RunError> {
        Ok(match self.state.step_entry(run.run_id, &step.id).await? {
            Some(held) => self.ledger_decides(step, &held, r),
            None => None,
        })
    }

    /// Marks `step` started right before its action: `Some(attempts)` when another delivery
    /// of the run holds it and it must not be performed here.
    pub(super) async fn ledger_start(
        &self,
        run: &RunCtx<'_>,
        step: &Step,
        r: &mut StepReport,
    ) -> Result<Option<Option<u32>>, RunError> {
        let entry = StepEntry {
            state: StepState::Started,
            replica: self.settings.replica.clone(),
            at: self.clock.now(),
            outcome: None,
            output: None,
            reason: None,
            revert: None,
            attempts: None,
        };
        Ok(
            match self
                .state
                .step_started(run.run_id, &step.id, &entry)
                .await?
            {
                Some(held) => self.ledger_decides(step, &held, r),
                None => None,
            },
        )
    }

    /// Marks `step` finished with what `r` says.
    pub(super) async fn ledger_finish(
        &self,
        run: &RunCtx<'_>,
        step: &Step,
        r: &StepReport,
        attempts: u32,
    ) -> Result<(), RunError> {
        let entry = StepEntry {
            state: StepState::Finished,
            replica: self.settings.replica.clone(),
            at: self.clock.now(),
            outcome: Some(r.outcome.as_str().to_owned()),
            output: r.output.clone(),
            reason: r.reason.clone(),
            revert: r.revert.clone(),
            attempts: Some(attempts),
        };
        self.state
            .step_finished(run.run_id, &step.id, &entry)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_actions_are_ledgered_and_which_are_idempotent() {
        use riposte_connectors::{docker, log, nats, slack};
        assert!(log::ACTIONS.iter().all(|a| !has_side_effects(a)));
        assert!(nats::ACTIONS.iter().all(has_side_effects));
        assert!(nats::ACTIONS.iter().all(idempotent));
        assert!(docker::ACTIONS.iter().all(idempotent));
        assert!(slack::ACTIONS.iter().all(|a| !idempotent(a)));
    }
}
