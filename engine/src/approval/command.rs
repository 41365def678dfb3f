//! `riposte approve`: records a decision and waits for a replica to resume the run, or lists
//! the steps that wait.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;

use super::{Approvals, Decision};
use crate::audit::RecordKind;
use crate::cli::ApproveArgs;

/// Runs `riposte approve`. Returns the exit code.
pub async fn approve(a: ApproveArgs) -> Result<i32> {
    let (config, url) = a.target()?;
    let client = crate::bus::connect(&config.nats, &url, "riposte approve").await?;
    let js = crate::bus::jetstream(client);
    let approvals =
        Approvals::open(&js, &config.engine.names.kv_prefix, config.nats.replicas).await?;
    let mut out = std::io::stdout().lock();
    if a.list {
        let pending = approvals.list().await?;
        for (p, _) in &pending {
            if a.json {
                writeln!(out, "{}", p.summary())?;
                continue;
            }
            let state = match &p.decision {
                Some(d) => format!("{} by {}, resuming", d.outcome(), d.by),
                None => format!(
                    "waits until {} (then: {})",
                    p.deadline
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    p.on_timeout.as_str()
                ),
            };
            let args = p.args.as_ref().map(ToString::to_string).unwrap_or_default();
            writeln!(
                out,
                "{:<24} {:<16} {:<24} {:<28} approvers: {}; {state}\n    {args}",
                p.run_id,
                p.step,
                p.action,
                p.playbook,
                p.approvers_text(),
            )?;
        }
        eprintln!("{} step(s) wait for approval", pending.len());
        return Ok(0);
    }
    let (Some(run), Some(step), Some(by)) = (a.run, a.step, a.by) else {
        anyhow::bail!("give RUN_ID STEP --as NAME, or --list");
    };
    let asked = chrono::Utc::now();
    let decision = Decision {
        approved: !a.deny,
        by,
        via: "cli".to_owned(),
        reason: a.reason.filter(|r| !r.trim().is_empty()),
        at: asked,
        timed_out: false,
    };
    let decided = match approvals.decide(&run, &step, decision.clone()).await {
        Ok(p) => p,
        Err(super::DecideError::State(e)) => return Err(e.into()),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(e.exit_code());
        }
    };
    eprintln!(
        "{} `{}` of run {run} as {}; waiting for an engine to resume the run",
        if decision.approved {
            "approved"
        } else {
            "denied"
        },
        decided.action,
        decision.by
    );
    let deadline = tokio::time::Instant::now() + Duration::from(a.wait);
    let mut resumed = false;
    while tokio::time::Instant::now() < deadline {
        if approvals.get(&run, &step).await?.is_none() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !resumed {
        writeln!(
            out,
            "the decision is recorded, but no engine resumed run {run} within {} (is an engine \
             running on {url}?); it will when one runs",
            humantime::format_duration(a.wait.into())
        )?;
        return Ok(1);
    }
    let records = crate::audit::read::since(&js, &config, asked).await?;
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.run_id.as_deref() == Some(run.as_str()))
        .filter(|r| {
            matches!(
                r.record,
                RecordKind::Approval | RecordKind::Step | RecordKind::Notify | RecordKind::Run
            )
        })
        .collect();
    for r in &mine {
        writeln!(out, "{}", crate::audit::read::line(r))?;
    }
    let ended = mine.iter().rev().find(|r| r.record == RecordKind::Run);
    Ok(match ended {
        Some(r) if r.outcome != "failed" => 0,
        _ => 1,
    })
}
