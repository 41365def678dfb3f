//! Grype reports (`grype -o json`): one vulnerability [`Event`] per report, holding all its
//! findings (none for an empty report).
//!
//! Grype may match one vulnerability to one package several times (different matchers, or a
//! GHSA advisory whose `relatedVulnerabilities` holds the CVE next to a match on the CVE itself):
//! findings are keyed on the CVE id when one is known, then de-duplicated on (id, package,
//! installed version), keeping the highest severity and the first known fix. `source.target` is
//! an object for images but may be a plain string (`"unknown"`), and `descriptor.timestamp` may
//! be empty. Must never drop a match silently: a match without a vulnerability id is rejected.
//!
//! | field | rule |
//! |---|---|
//! | id | the payload hash (Grype reports carry no id) |
//! | kind | `vulnerability` |
//! | severity | the highest finding: Critical → critical, High → high, Medium → medium, Low → low, Negligible, Unknown and anything else → info; info when there are no findings |
//! | time | `descriptor.timestamp` when valid RFC 3339, else the received time (label `riposte.time` = `received`) |
//! | title | `<N> vulnerabilities in <target>` (`1 vulnerability`, `no vulnerabilities`); target = `source.target.userInput`, else its `path`, else the string target |
//! | summary | the title with the count per severity and how many have a fix |
//! | findings | {CVE id (the match's id, else the first CVE among its related vulnerabilities, else the match's id), `vulnerability.severity`, `artifact.name`, `artifact.version`, `fix.versions` comma-joined, the first sentence of `vulnerability.description`} |
//! | resource | image {`userInput`, digest from it, else `repoDigests`, else `manifestDigest`} when `source.type` is `image` |
//! | labels | `grype.source_type`, `distro` (name and version) |

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Event, Finding, Kind, Source};

const FORMAT: Source = Source::Grype;

/// Normalizes a Grype payload: one event per report.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| report(doc, received).map(|e| vec![e]))
}

fn report(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Event, FormatError> {
    let object = util::object(FORMAT, &doc.value, "a Grype JSON report")?;
    let matches = match object.get("matches") {
        Some(Value::Array(matches)) => matches.as_slice(),
        Some(other) => {
            return Err(util::wrong(
                FORMAT,
                format!("`matches` must be an array, got {}", util::kind_of(other)),
            ))
        }
        None => return Err(util::wrong(FORMAT, "`matches` is missing")),
    };
    let mut findings = Vec::with_capacity(matches.len());
    for (i, found) in matches.iter().enumerate() {
        findings.push(finding(found, i)?);
    }

    let source_type = util::str_at(&doc.value, &["source", "type"]);
    let target = util::get(&doc.value, &["source", "target"]);
    let artifact = target
        .and_then(|target| {
            util::str_at(target, &["userInput"])
                .or_else(|| util::str_at(target, &["path"]))
                .or_else(|| util::non_empty(target))
        })
        .unwrap_or("unknown");

    let mut event = util::blank(FORMAT, Kind::Vulnerability, doc.value.clone());
    event.id = doc.hash_id();
    let time = util::str_at(&doc.value, &["descriptor", "timestamp"]).and_then(util::rfc3339);
    event.time = util::settle_time(time, received, &mut event.labels);
    event.findings = util::merge_findings(findings);
    event.severity = util::max_severity(&event.findings);
    event.title = format!(
        "{} in {artifact}",
        util::count_of(event.findings.len(), "vulnerability", "vulnerabilities")
    );
    event.summary = util::vulnerability_summary(&event.findings, &event.title, artifact);

    if source_type == Some("image") {
        let mut image = util::image_from_ref(artifact);
        if image.digest.is_none() {
            image.digest = target
                .and_then(|target| target.get("repoDigests"))
                .and_then(Value::as_array)
                .and_then(|digests| digests.iter().find_map(util::non_empty))
                .and_then(|reference| reference.split_once('@'))
                .and_then(|(_, digest)| util::some(digest))
                .or_else(|| {
                    target
                        .and_then(|target| util::str_at(target, &["manifestDigest"]))
                        .map(str::to_string)
                });
        }
        event.resource.image = Some(image);
    }
    if let Some(kind) = source_type {
        event
            .labels
            .insert("grype.source_type".to_string(), kind.to_string());
    }
    let distro = [
        util::str_at(&doc.value, &["distro", "name"]),
        util::str_at(&doc.value, &["distro", "version"]),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    if !distro.is_empty() {
        event.labels.insert("distro".to_string(), distro);
    }
    Ok(event)
}

fn finding(found: &Value, index: usize) -> Result<Finding, FormatError> {
    let at = format!("matches[{index}]");
    let vulnerability = found
        .get("vulnerability")
        .filter(|v| v.is_object())
        .ok_or_else(|| util::wrong(FORMAT, format!("`{at}.vulnerability` is missing")))?;
    let primary = util::str_at(vulnerability, &["id"]).ok_or_else(|| {
        util::wrong(
            FORMAT,
            format!("`{at}.vulnerability.id` is missing or empty"),
        )
    })?;
    let id = if primary.starts_with("CVE-") {
        primary
    } else {
        found
            .get("relatedVulnerabilities")
            .and_then(Value::as_array)
            .and_then(|related| {
                related
                    .iter()
                    .filter_map(|r| util::str_at(r, &["id"]))
                    .find(|id| id.starts_with("CVE-"))
            })
            .unwrap_or(primary)
    };
    let fixed: Vec<&str> = util::get(vulnerability, &["fix", "versions"])
        .and_then(Value::as_array)
        .map(|versions| versions.iter().filter_map(util::non_empty).collect())
        .unwrap_or_default();
    Ok(Finding {
        id: id.to_string(),
        severity: util::scanner_severity(util::str_at(vulnerability, &["severity"]).unwrap_or("")),
        package: util::str_at(found, &["artifact", "name"]).map(str::to_string),
        installed: util::str_at(found, &["artifact", "version"]).map(str::to_string),
        fixed: (!fixed.is_empty()).then(|| fixed.join(", ")),
        title: util::str_at(vulnerability, &["description"]).map(util::first_sentence),
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;
    use crate::event::Severity;

    use crate::formats::util::test_received as received;

    #[test]
    fn a_ghsa_match_and_its_cve_match_on_one_package_are_one_finding() {
        let payload = r#"{"matches":[
            {"vulnerability":{"id":"CVE-2023-1","severity":"High","fix":{"versions":[],"state":"unknown"}},"artifact":{"name":"uri","version":"0.10.1"}},
            {"vulnerability":{"id":"GHSA-x","severity":"Critical","fix":{"versions":["0.10.2"],"state":"fixed"}},"relatedVulnerabilities":[{"id":"CVE-2023-1"}],"artifact":{"name":"uri","version":"0.10.1"}},
            {"vulnerability":{"id":"GHSA-y","severity":"Negligible"},"artifact":{"name":"uri","version":"0.10.1"}}],
            "source":{"type":"directory","target":{"path":"/src"}}}"#;
        let event = normalize(payload.as_bytes(), received()).unwrap().remove(0);
        assert_eq!(event.findings.len(), 2);
        assert_eq!(event.findings[0].id, "CVE-2023-1");
        assert_eq!(event.findings[0].fixed.as_deref(), Some("0.10.2"));
        assert_eq!(event.findings[0].severity, Severity::Critical);
        assert_eq!(event.findings[1].id, "GHSA-y");
        assert_eq!(event.title, "2 vulnerabilities in /src");
        assert!(event.resource.image.is_none());
        assert_eq!(event.labels[util::TIME_LABEL], "received");
    }

    #[test]
    fn rejects_reports_without_matches_or_ids() {
        for (payload, reason) in [
            (r#"{"source":{}}"#, "`matches` is missing"),
            (r#"{"matches":{}}"#, "`matches` must be an array"),
            (
                r#"{"matches":[{}]}"#,
                "`matches[0].vulnerability` is missing",
            ),
            (
                r#"{"matches":[{"vulnerability":{"id":""}}]}"#,
                "`matches[0].vulnerability.id`",
            ),
        ] {
            match normalize(payload.as_bytes(), received()) {
                Err(FormatError::WrongShape { reason: got, .. }) => {
                    assert!(got.contains(reason), "{got}")
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }
}
