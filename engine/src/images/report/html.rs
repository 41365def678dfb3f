//! The compliance report as one self-contained HTML page: inline CSS, no script, no external
//! resource, so it can be attached to a ticket or archived and opened anywhere.
//!
//! Every value comes from audit records, whose text (event titles, reasons, outputs) is chosen
//! by whoever sent the event: all of it goes through [`escape`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use riposte_connectors::revocation::State;

use super::{severities, Report};
use crate::images::check::entry_name;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d232a;margin:2rem auto;max-width:1200px;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:2px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1rem;margin:1.2rem 0 .3rem}p.meta{color:#57606a;margin-top:0}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .8rem;min-width:9rem}
.card b{display:block;font-size:1.4rem}.critical{color:#a40e26;font-weight:600}.high{color:#bc4c00;font-weight:600}
.revoked{color:#a40e26}.reinstated{color:#1a7f37}.failed{color:#a40e26}ul.ev{margin:.2rem 0 .4rem;padding-left:1.2rem}
@media print{body{margin:0;max-width:none}}
";

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    riposte_connectors::notice::escape_html(text)
}

fn opt(v: Option<&String>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| escape(s))
}

fn counts(c: &BTreeMap<String, u64>) -> String {
    severities(c)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("<span class=\"{0}\">{0} {n}</span>", escape(&s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table: an id, header cells, and rows of already escaped cells.
fn table(out: &mut String, id: &str, head: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\">none</td></tr>", head.len());
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let class = if !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit()) {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

/// The page.
pub fn html(r: &Report) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Compliance report {} to {}</title><style>{STYLE}</style></head><body>\n",
        escape(&r.since),
        escape(&r.until)
    );
    let _ = writeln!(
        o,
        "<h1>Compliance report</h1><p class=\"meta\">Period {} to {}; generated {} from {} audit records.</p>",
        escape(&r.since),
        escape(&r.until),
        escape(&r.generated),
        r.records
    );
    o.push_str("<div class=\"cards\" id=\"summary\">");
    let remediations = r.remediations.len() as u64 + r.remediations_omitted;
    let mut cards: Vec<(String, String, u64)> = vec![
        (
            "images-scanned".into(),
            "Images scanned".into(),
            r.scans.images as u64,
        ),
        ("scans".into(), "Scans".into(), r.scans.scans),
    ];
    for (sev, n) in severities(&r.findings) {
        cards.push((format!("findings-{sev}"), format!("Findings: {sev}"), n));
    }
    cards.extend([
        (
            "revoked".into(),
            "Images revoked".into(),
            r.revocations.revoked as u64,
        ),
        (
            "reinstated".into(),
            "Images reinstated".into(),
            r.revocations.reinstated as u64,
        ),
        ("blocked".into(), "Blocked attempts".into(), r.blocked.total),
        (
            "blocked-admission".into(),
            "Blocked at admission".into(),
            r.blocked.admission,
        ),
        (
            "blocked-authz".into(),
            "Blocked by AuthZ".into(),
            r.blocked.authz,
        ),
        ("remediations".into(), "Remediations".into(), remediations),
        (
            "list-revoked".into(),
            "Revoked now".into(),
            r.revocation_list.revoked as u64,
        ),
    ]);
    for (id, label, n) in cards {
        let _ = write!(
            o,
            "<div class=\"card\" id=\"card-{}\"><b>{n}</b>{}</div>",
            escape(&id),
            escape(&label)
        );
    }
    o.push_str("</div>\n");

    o.push_str("<h2>Findings by severity</h2>\n");
    let rows: Vec<Vec<String>> = severities(&r.findings)
        .into_iter()
        .map(|(s, n)| {
            vec![
                format!("<span class=\"{0}\">{0}</span>", escape(&s)),
                n.to_string(),
            ]
        })
        .collect();
    table(&mut o, "findings", &["Severity", "Findings"], &rows);

    o.push_str("<h2>Images scanned</h2>\n");
    let rows: Vec<Vec<String>> = r
        .images
        .iter()
        .map(|i| {
            vec![
                format!("<span class=\"mono\">{}</span>", escape(&i.image)),
                format!("<span class=\"mono\">{}</span>", opt(i.digest.as_ref())),
                i.scans.to_string(),
                escape(&i.last),
                counts(&i.latest),
                counts(&i.findings),
            ]
        })
        .collect();
    table(
        &mut o,
        "images",
        &[
            "Image",
            "Digest",
            "Scans",
            "Last scan",
            "Latest findings",
            "All findings",
        ],
        &rows,
    );
    if r.scans.images_omitted > 0 {
        let _ = write!(
            o,
            "<p>{} scans of further images are counted above but not listed.</p>",
            r.scans.images_omitted
        );
    }

    o.push_str("<h2>Images revoked and reinstated</h2>\n");
    let rows: Vec<Vec<String>> = r
        .revocations
        .changes
        .iter()
        .map(|c| {
            vec![
                escape(&c.time),
                format!("<span class=\"{0}\">{0}</span>", escape(&c.change)),
                format!("<span class=\"mono\">{}</span>", escape(&c.image)),
                escape(&c.reason),
                escape(&c.findings.join(", ")),
                escape(&c.by),
                opt(c.playbook.as_ref()),
                opt(c.run_id.as_ref()),
            ]
        })
        .collect();
    table(
        &mut o,
        "revocations",
        &[
            "Time", "Change", "Image", "Reason", "Findings", "By", "Playbook", "Run",
        ],
        &rows,
    );

    o.push_str("<h2>Blocked attempts</h2>\n");
    let rows: Vec<Vec<String>> = r
        .blocked
        .by_image
        .iter()
        .map(|b| {
            let last = b.attempts.back();
            vec![
                format!("<span class=\"mono\">{}</span>", escape(&b.image)),
                b.admission.to_string(),
                b.authz.to_string(),
                escape(&b.last),
                opt(last.and_then(|a| a.object.as_ref())),
                opt(last.and_then(|a| a.user.as_ref())),
                opt(last.and_then(|a| a.reason.as_ref())),
            ]
        })
        .collect();
    table(
        &mut o,
        "blocked",
        &[
            "Image",
            "Admission",
            "AuthZ",
            "Last",
            "Latest object",
            "User",
            "Reason",
        ],
        &rows,
    );

    o.push_str("<h2>Remediations</h2>\n");
    if r.remediations.is_empty() {
        o.push_str("<p>none</p>\n");
    }
    for rem in &r.remediations {
        let _ = write!(
            o,
            "<section class=\"remediation\" id=\"run-{}\"><h3>Run <code>{}</code> ({})</h3><ul class=\"ev\">",
            escape(&rem.run_id),
            escape(&rem.run_id),
            opt(rem.playbook.as_ref())
        );
        if let Some(e) = &rem.event {
            let _ = write!(
                o,
                "<li>Event <code>{}</code> from {} at {}: <span class=\"event-title\">{}</span></li>",
                escape(&e.id),
                opt(e.source.as_ref()),
                escape(&e.time),
                opt(e.title.as_ref())
            );
        }
        let _ = write!(
            o,
            "<li>Playbook {}, started {}, outcome <span class=\"{2}\">{2}</span>{3}</li>",
            opt(rem.playbook.as_ref()),
            escape(&rem.time),
            escape(&rem.outcome),
            if rem.dry_run { " (dry run)" } else { "" }
        );
        if !rem.revoked.is_empty() {
            let _ = write!(
                o,
                "<li>Revoked <span class=\"mono\">{}</span></li>",
                escape(&rem.revoked.join(", "))
            );
        }
        o.push_str("</ul>");
        let rows: Vec<Vec<String>> = rem
            .steps
            .iter()
            .map(|st| {
                let result = match &st.reason {
                    Some(reason) if st.summary.is_empty() => escape(reason),
                    Some(reason) => format!("{}: {}", escape(reason), escape(&st.summary)),
                    None => escape(&st.summary),
                };
                vec![
                    escape(&st.time),
                    opt(st.step.as_ref()),
                    opt(st.action.as_ref()),
                    format!("<span class=\"{0}\">{0}</span>", escape(&st.outcome)),
                    result,
                ]
            })
            .collect();
        table(
            &mut o,
            &format!("steps-{}", escape(&rem.run_id)),
            &["Time", "Step", "Action", "Outcome", "Result"],
            &rows,
        );
        o.push_str("</section>\n");
    }
    if r.remediations_omitted > 0 {
        let _ = write!(
            o,
            "<p>{} further remediations are not listed.</p>",
            r.remediations_omitted
        );
    }

    o.push_str("<h2>Revocation list now</h2>\n");
    let rows: Vec<Vec<String>> = r
        .revocation_list
        .entries
        .iter()
        .map(|e| {
            let state = if e.state == State::Revoked {
                "revoked"
            } else {
                "reinstated"
            };
            vec![
                format!("<span class=\"mono\">{}</span>", escape(&entry_name(e))),
                format!("<span class=\"{state}\">{state}</span>"),
                escape(&e.reason),
                escape(&e.findings.join(", ")),
                escape(&format!("{} by {}", e.revoked.at, e.revoked.by)),
                e.reinstated.as_ref().map_or_else(
                    || "-".to_owned(),
                    |d| escape(&format!("{} by {}", d.at, d.by)),
                ),
            ]
        })
        .collect();
    table(
        &mut o,
        "list",
        &[
            "Image",
            "State",
            "Reason",
            "Findings",
            "Revoked",
            "Reinstated",
        ],
        &rows,
    );
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\"\u{0}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(
            super::super::markdown::md("a | b\n<img src=x> `c` *d*"),
            "a \\| b &lt;img src=x&gt; \\`c\\` \\*d\\*"
        );
    }
}
