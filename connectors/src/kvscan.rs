//! One pass over a JetStream KV bucket's latest values.
//!
//! Listing keys and then reading each one costs a round trip per key; a watch from the last
//! value of every key delivers them all in one stream. The background workers of every replica
//! (reverts, approvals, notification groups) and the revocation list read their buckets this
//! way.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;

/// How long the next value of a scan may take before the scan fails.
const NEXT_WITHIN: Duration = Duration::from_secs(10);

/// Every live key of `kv` with its value and revision, in key order. Deleted and purged keys
/// are left out. The error is a sentence about what failed.
pub async fn latest(kv: &kv::Store) -> Result<BTreeMap<String, (bytes::Bytes, u64)>, String> {
    let mut out = BTreeMap::new();
    let info = kv
        .stream
        .get_info()
        .await
        .map_err(|e| format!("cannot read the state of bucket `{}`: {e}", kv.name))?;
    if info.state.messages == 0 {
        return Ok(out);
    }
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| format!("cannot scan bucket `{}`: {e}", kv.name))?;
    loop {
        let next = tokio::time::timeout(NEXT_WITHIN, watch.next())
            .await
            .map_err(|_| {
                format!(
                    "scanning bucket `{}`: no answer within {} s",
                    kv.name,
                    NEXT_WITHIN.as_secs()
                )
            })?;
        let Some(entry) = next else { break };
        let entry = entry.map_err(|e| format!("scanning bucket `{}`: {e}", kv.name))?;
        if entry.operation == kv::Operation::Put {
            out.insert(entry.key, (entry.value, entry.revision));
        } else {
            out.remove(&entry.key);
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}
