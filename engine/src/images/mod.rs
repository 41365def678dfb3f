//! Images: the revocation list (kept by `connectors::revocation`) and where it is enforced.
//!
//! - [`AuditRecorder`]: every change of the list becomes a `revocation` audit record.
//! - [`Enforcement`]: what `riposte run` starts: the list, its in-memory index kept current
//!   by a watch, and the enforcement points configured under `images:`.

pub mod admission;
pub mod authz;

pub use admission::{EnforcementAudit, EnforcementError};

pub mod check;
pub mod report;

use std::sync::Arc;

use async_trait::async_trait;
use riposte_connectors::revocation::{Change, ChangeRecorder, RevocationIndex, RevocationList};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditRecord, AuditSink, RecordKind};
use crate::clock::Clock;

/// Writes a `revocation` audit record for every change of the list.
#[derive(Debug)]
pub struct AuditRecorder {
    /// Where records go.
    pub audit: AuditSink,
    /// The replica (or `cli`) that made the change.
    pub replica: String,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

#[async_trait]
impl ChangeRecorder for AuditRecorder {
    async fn record(&self, change: &Change) {
        let mut rec = AuditRecord::new(
            RecordKind::Revocation,
            change.op,
            self.clock.now(),
            &self.replica,
        );
        let e = &change.entry;
        rec.run_id.clone_from(&e.run_id);
        rec.event_id.clone_from(&e.event_id);
        rec.playbook.clone_from(&e.playbook);
        rec.reason = Some(match (&e.reinstated, change.op) {
            (Some(d), "reinstated") => d.reason.clone().unwrap_or_else(|| "reinstated".into()),
            _ => e.reason.clone(),
        });
        rec.output = serde_json::to_value(e).ok();
        let mut batch = self.audit.batch(format!(
            "revocation:{}:{}",
            e.key().unwrap_or_default(),
            change.revision
        ));
        batch.add(rec);
        if let Err(err) = batch.commit().await {
            tracing::error!(error = %err, "a revocation change is not in the audit trail");
        }
    }
}

/// The revocation list and its index, as `riposte run` keeps them.
#[derive(Debug, Clone)]
pub struct Enforcement {
    /// The list (for the `registry` connector and the commands).
    pub list: RevocationList,
    /// The in-memory copy enforcement points decide from.
    pub index: Arc<RevocationIndex>,
}

impl Enforcement {
    /// Opens the list with its audit recorder; with `follow` (an enforcement point is
    /// configured), the index starts following it, else it stays empty and not ready.
    pub async fn start(
        js: &async_nats::jetstream::Context,
        prefix: &str,
        replicas: usize,
        recorder: AuditRecorder,
        follow: bool,
        shutdown: CancellationToken,
    ) -> Result<Enforcement, riposte_connectors::revocation::ListError> {
        let list = RevocationList::open(js, prefix, replicas, Some(Arc::new(recorder))).await?;
        let index = RevocationIndex::new();
        if follow {
            tokio::spawn(index.clone().follow(list.clone(), shutdown));
        }
        Ok(Enforcement { list, index })
    }
}
