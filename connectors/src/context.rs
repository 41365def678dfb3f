//! The run an action is performed for, for connectors that record it (the revocation list
//! names the event and playbook that revoked an image).
//!
//! The engine sets it around every `run` and `revert` it calls; connectors read it with
//! [`current`]. Outside a run (a unit test, a CLI command) there is none.

use std::future::Future;

/// Who an action is performed for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunContext {
    /// The run id.
    pub run_id: Option<String>,
    /// The playbook.
    pub playbook: Option<String>,
    /// The normalized event's id.
    pub event_id: Option<String>,
    /// The step id.
    pub step: Option<String>,
    /// Who asked when a person did (`riposte revert`, an approver), else the engine.
    pub by: Option<String>,
}

tokio::task_local! {
    static CONTEXT: RunContext;
}

/// Runs `f` with `ctx` as its [`current`] context.
pub async fn scope<F: Future>(ctx: RunContext, f: F) -> F::Output {
    CONTEXT.scope(ctx, f).await
}

/// The context of the action being run, if the engine set one.
pub fn current() -> Option<RunContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        let ctx = RunContext {
            run_id: Some("r-1".into()),
            ..Default::default()
        };
        let seen = scope(ctx.clone(), async { current() }).await;
        assert_eq!(seen, Some(ctx));
        assert_eq!(current(), None);
    }
}
