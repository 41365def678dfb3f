//! The compliance report in Markdown, for tickets: the same tables as the HTML page. Record
//! text is escaped for table cells (pipes, line breaks, HTML, emphasis and code marks).

use std::collections::BTreeMap;

use riposte_connectors::revocation::State;

use super::{severities, Report};
use crate::images::check::entry_name;

/// Text safe in a Markdown table cell: no line breaks, pipes, HTML or code spans.
pub fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '`' => out.push_str("\\`"),
            '*' | '_' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn opt(v: Option<&String>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| md(s))
}

fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    severities(counts)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{} {n}", md(&s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown form, for tickets.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line("# Compliance report".into());
    line(String::new());
    line(format!(
        "Period {} to {}; generated {} from {} audit records.",
        r.since, r.until, r.generated, r.records
    ));
    line(String::new());
    line("## Summary".into());
    line(String::new());
    line("| Figure | Value |".into());
    line("|---|---|".into());
    line(format!("| Images scanned | {} |", r.scans.images));
    line(format!("| Scans | {} |", r.scans.scans));
    for (sev, n) in severities(&r.findings) {
        line(format!("| Findings: {} | {n} |", md(&sev)));
    }
    line(format!("| Images revoked | {} |", r.revocations.revoked));
    line(format!(
        "| Images reinstated | {} |",
        r.revocations.reinstated
    ));
    line(format!(
        "| Blocked attempts | {} (admission {}, authz {}) |",
        r.blocked.total, r.blocked.admission, r.blocked.authz
    ));
    line(format!(
        "| Remediations | {} |",
        r.remediations.len() as u64 + r.remediations_omitted
    ));
    line(format!(
        "| Revocation list now | {} revoked, {} reinstated |",
        r.revocation_list.revoked, r.revocation_list.reinstated
    ));
    line(String::new());
    line("## Images scanned".into());
    line(String::new());
    line("| Image | Digest | Scans | Last scan | Latest findings | All findings |".into());
    line("|---|---|---|---|---|---|".into());
    for i in &r.images {
        line(format!(
            "| {} | {} | {} | {} | {} | {} |",
            md(&i.image),
            opt(i.digest.as_ref()),
            i.scans,
            md(&i.last),
            counts_text(&i.latest),
            counts_text(&i.findings)
        ));
    }
    if r.scans.images_omitted > 0 {
        line(format!(
            "\n{} scans of further images are counted above but not listed.",
            r.scans.images_omitted
        ));
    }
    line(String::new());
    line("## Images revoked and reinstated".into());
    line(String::new());
    line("| Time | Change | Image | Reason | Findings | By | Playbook | Run |".into());
    line("|---|---|---|---|---|---|---|---|".into());
    for c in &r.revocations.changes {
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            md(&c.time),
            md(&c.change),
            md(&c.image),
            md(&c.reason),
            md(&c.findings.join(", ")),
            md(&c.by),
            opt(c.playbook.as_ref()),
            opt(c.run_id.as_ref())
        ));
    }
    line(String::new());
    line("## Blocked attempts".into());
    line(String::new());
    line("| Image | Admission | AuthZ | Last | Latest object | User | Reason |".into());
    line("|---|---|---|---|---|---|---|".into());
    for b in &r.blocked.by_image {
        let last = b.attempts.back();
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            md(&b.image),
            b.admission,
            b.authz,
            md(&b.last),
            opt(last.and_then(|a| a.object.as_ref())),
            opt(last.and_then(|a| a.user.as_ref())),
            opt(last.and_then(|a| a.reason.as_ref()))
        ));
    }
    line(String::new());
    line("## Remediations".into());
    for rem in &r.remediations {
        line(String::new());
        line(format!(
            "### Run {} ({})",
            md(&rem.run_id),
            opt(rem.playbook.as_ref())
        ));
        line(String::new());
        if let Some(e) = &rem.event {
            line(format!(
                "- Event: {} from {} at {}: {}",
                md(&e.id),
                opt(e.source.as_ref()),
                md(&e.time),
                opt(e.title.as_ref())
            ));
        }
        line(format!(
            "- Playbook {}, run {}, started {}, outcome {}{}",
            opt(rem.playbook.as_ref()),
            md(&rem.run_id),
            md(&rem.time),
            md(&rem.outcome),
            if rem.dry_run { " (dry run)" } else { "" }
        ));
        if !rem.revoked.is_empty() {
            line(format!("- Revoked: {}", md(&rem.revoked.join(", "))));
        }
        line(String::new());
        line("| Time | Step | Action | Outcome | Result |".into());
        line("|---|---|---|---|---|".into());
        for st in &rem.steps {
            let result = match &st.reason {
                Some(reason) if st.summary.is_empty() => reason.clone(),
                Some(reason) => format!("{reason}: {}", st.summary),
                None => st.summary.clone(),
            };
            line(format!(
                "| {} | {} | {} | {} | {} |",
                md(&st.time),
                opt(st.step.as_ref()),
                opt(st.action.as_ref()),
                md(&st.outcome),
                md(&result)
            ));
        }
    }
    if r.remediations_omitted > 0 {
        line(format!(
            "\n{} further remediations are not listed.",
            r.remediations_omitted
        ));
    }
    line(String::new());
    line("## Revocation list now".into());
    line(String::new());
    line("| Image | State | Reason | Findings | Revoked | Reinstated |".into());
    line("|---|---|---|---|---|---|".into());
    for e in &r.revocation_list.entries {
        line(format!(
            "| {} | {} | {} | {} | {} by {} | {} |",
            md(&entry_name(e)),
            if e.state == State::Revoked {
                "revoked"
            } else {
                "reinstated"
            },
            md(&e.reason),
            md(&e.findings.join(", ")),
            md(&e.revoked.at),
            md(&e.revoked.by),
            e.reinstated
                .as_ref()
                .map_or_else(|| "-".to_owned(), |d| md(&format!("{} by {}", d.at, d.by)))
        ));
    }
    s
}
