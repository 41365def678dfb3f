//! Trivy reports: `trivy image --format json` (SchemaVersion 2) and Trivy Operator
//! `VulnerabilityReport` custom resources (JSON or YAML, alone, in a `List`, or as several YAML
//! documents). One report gives one vulnerability [`Event`] holding all its findings (even none),
//! plus one secret event when it found secrets and one misconfiguration event when a check
//! failed.
//!
//! Every optional part may be missing: `Results` (OS detection skipped), a Result's
//! `Vulnerabilities` (not an empty list: no key at all), `FixedVersion` (no fix; the operator
//! writes `''` instead). YAML timestamps stay strings. Findings are de-duplicated on (id, package,
//! installed version): the same CVE in two packages stays two findings. Must never guess a
//! finding that the report does not list.
//!
//! | field | rule |
//! |---|---|
//! | id | `ReportID`, else the payload hash (`#<index>` when one payload holds several reports); the secret and misconfiguration events add `#secret` / `#misconfiguration`. Operator CRs use the payload hash: their `metadata.uid` names the object, which is updated in place on every rescan |
//! | kind | `vulnerability`; `secret`; `misconfiguration` |
//! | severity | the highest finding: CRITICAL → critical, HIGH → high, MEDIUM → medium, LOW → low, UNKNOWN and anything else → info (a vulnerability without `Severity`, in older reports: its `VendorSeverity` score from `SeveritySource`, 4 → critical ... 1 → low, 0 → info); info when there are no findings |
//! | time | `CreatedAt` (CR: `report.updateTimestamp`, else `metadata.creationTimestamp`) when valid RFC 3339, else the received time (label `riposte.time` = `received`) |
//! | title | `<N> vulnerabilities in <artifact>` (`1 vulnerability`, `no vulnerabilities`), `<N> secrets in <artifact>`, `<N> misconfigurations in <artifact>`; artifact = first `Metadata.RepoTags`, else `ArtifactName` (CR: `registry/repository:tag`) |
//! | summary | the title with the count per severity and how many have a fix |
//! | findings | vulnerabilities {`VulnerabilityID`, `PkgName`, `InstalledVersion`, `FixedVersion`, `Title`}; secrets {`RuleID`, file, `Title`}; misconfigurations that did not pass {`ID`/`AVDID`, file, `Title`} |
//! | resource | image {artifact, digest from `RepoDigests`} for container images; CR: image {registry + repository, tag, digest} and container {name from the `trivy-operator.container.name` label}, pod when the scanned workload is a Pod |
//! | labels | `os` (family and version, unless detection was skipped), `trivy.artifact_type`; CR: `namespace`, `trivy.workload` (`<kind>/<name>`), `trivy.report` |

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Container, Event, Finding, Image, Kind, Pod, Severity, Source};

const FORMAT: Source = Source::Trivy;

/// Normalizes a Trivy payload: per report, a vulnerability event, and secret and
/// misconfiguration events when there are such findings.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    let text = util::text(payload)?;
    let docs = match util::json_docs_of(text) {
        Ok(docs) => docs,
        Err(FormatError::Malformed(json_error)) => yaml_docs(text, json_error)?,
        Err(other) => return Err(other),
    };

    let count = docs.len();
    let mut reports: Vec<(&Value, &str)> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let found = reports_in(&doc.value).map_err(|e| util::at_doc(i, count, e))?;
        reports.extend(found.into_iter().map(|report| (report, doc.raw)));
    }

    let mut per_raw: HashMap<&str, usize> = HashMap::new();
    for (_, raw) in &reports {
        *per_raw.entry(raw).or_default() += 1;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut events = Vec::new();
    for (report, raw) in reports {
        let index = seen.entry(raw).or_default();
        let hash = util::nth(
            util::hash_id(raw.as_bytes()),
            *index,
            per_raw.get(raw).copied().unwrap_or(1),
        );
        *index += 1;
        if is_custom_resource(report) {
            events.push(custom_resource(report, hash, received)?);
        } else {
            events.extend(json_report(report, hash, received)?);
        }
    }
    Ok(events)
}

/// A payload that is not JSON, read as YAML (Trivy Operator resources as `kubectl` prints them).
fn yaml_docs(text: &str, json_error: String) -> Result<Vec<Doc<'_>>, FormatError> {
    let start = text.trim_start();
    if start.starts_with('{') || start.starts_with('[') {
        return Err(FormatError::Malformed(json_error));
    }
    match util::yaml_values(text) {
        Ok(values) if values.iter().any(Value::is_object) => Ok(values
            .into_iter()
            .map(|value| Doc {
                value,
                raw: text.trim(),
            })
            .collect()),
        Ok(_) => Err(FormatError::Malformed(json_error)),
        Err(yaml_error) => Err(FormatError::Malformed(format!(
            "{json_error}; read as YAML: {yaml_error}"
        ))),
    }
}

fn is_custom_resource(report: &Value) -> bool {
    report.get("kind").and_then(Value::as_str) == Some("VulnerabilityReport")
}

/// The reports of one document: a JSON report, a VulnerabilityReport, or a `List` of them.
fn reports_in(value: &Value) -> Result<Vec<&Value>, FormatError> {
    let object = util::object(
        FORMAT,
        value,
        "a Trivy JSON report or a Trivy Operator VulnerabilityReport",
    )?;
    if object.contains_key("SchemaVersion") {
        return Ok(vec![value]);
    }
    match object.get("kind") {
        Some(Value::String(kind)) if kind == "VulnerabilityReport" => Ok(vec![value]),
        Some(Value::String(kind)) if kind == "List" || kind == "VulnerabilityReportList" => {
            let items = object.get("items").and_then(Value::as_array).ok_or_else(|| {
                util::wrong(FORMAT, format!("`{kind}` has no `items` array"))
            })?;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item.get("kind").and_then(Value::as_str) {
                    Some("VulnerabilityReport") => Ok(item),
                    Some(other) => Err(util::wrong(
                        FORMAT,
                        format!("`items[{i}]` is a `{other}`, not a VulnerabilityReport"),
                    )),
                    None => Err(util::wrong(
                        FORMAT,
                        format!("`items[{i}].kind` is missing"),
                    )),
                })
                .collect()
        }
        Some(Value::String(kind)) => Err(util::wrong(
            FORMAT,
            format!("`kind` `{kind}` is not a VulnerabilityReport"),
        )),
        _ => Err(util::wrong(
            FORMAT,
            "neither `SchemaVersion` (a Trivy JSON report) nor `kind: VulnerabilityReport` (Trivy Operator)",
        )),
    }
}

/// An optional array field: missing and `null` are empty.
fn array<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a [Value], FormatError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items.as_slice()),
        Some(other) => Err(util::wrong(
            FORMAT,
            format!("`{at}{key}` must be an array, got {}", util::kind_of(other)),
        )),
    }
}

/// A required, non-empty string id of a finding.
fn finding_id<'a>(item: &'a Value, key: &str, at: &str) -> Result<&'a str, FormatError> {
    util::str_at(item, &[key])
        .ok_or_else(|| util::wrong(FORMAT, format!("`{at}.{key}` is missing or empty")))
}

/// `Severity`, else (older reports) the vendor score of `SeveritySource` in `VendorSeverity`.
fn vulnerability_severity(item: &Value) -> Severity {
    if let Some(severity) = util::str_at(item, &["Severity"]) {
        return util::scanner_severity(severity);
    }
    let vendor = util::str_at(item, &["SeveritySource"])
        .and_then(|source| util::get(item, &["VendorSeverity", source]))
        .and_then(util::int);
    match vendor {
        Some(4) => Severity::Critical,
        Some(3) => Severity::High,
        Some(2) => Severity::Medium,
        Some(1) => Severity::Low,
        _ => Severity::Info,
    }
}

fn text(item: &Value, key: &str) -> Option<String> {
    item.get(key).and_then(util::scalar)
}

fn json_report(
    report: &Value,
    hash: String,
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    let object = util::object(FORMAT, report, "a Trivy JSON report")?;
    let mut vulnerabilities = Vec::new();
    let mut secrets = Vec::new();
    let mut misconfigurations = Vec::new();
    for (r, result) in array(object, "Results", "")?.iter().enumerate() {
        let at = format!("Results[{r}]");
        let result_object = util::object(FORMAT, result, &format!("`{at}`"))?;
        let target = text(result, "Target");
        for (v, item) in array(result_object, "Vulnerabilities", &format!("{at}."))?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.Vulnerabilities[{v}]");
            vulnerabilities.push(Finding {
                id: finding_id(item, "VulnerabilityID", &at)?.to_string(),
                severity: vulnerability_severity(item),
                package: text(item, "PkgName").or_else(|| text(item, "PkgID")),
                installed: text(item, "InstalledVersion"),
                fixed: text(item, "FixedVersion"),
                title: text(item, "Title"),
            });
        }
        for (s, item) in array(result_object, "Secrets", &format!("{at}."))?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.Secrets[{s}]");
            secrets.push(Finding {
                id: finding_id(item, "RuleID", &at)?.to_string(),
                severity: util::scanner_severity(util::str_at(item, &["Severity"]).unwrap_or("")),
                package: target.clone(),
                installed: None,
                fixed: None,
                title: text(item, "Title").or_else(|| text(item, "Category")),
            });
        }
        for (m, item) in array(result_object, "Misconfigurations", &format!("{at}."))?
            .iter()
            .enumerate()
        {
            let status = util::str_at(item, &["Status"]).unwrap_or("FAIL");
            if !status.eq_ignore_ascii_case("FAIL") {
                continue;
            }
            let at = format!("{at}.Misconfigurations[{m}]");
            let id = util::str_at(item, &["ID"])
                .or_else(|| util::str_at(item, &["AVDID"]))
                .ok_or_else(|| util::wrong(FORMAT, format!("`{at}.ID` is missing or empty")))?;
            misconfigurations.push(Finding {
                id: id.to_string(),
                severity: util::scanner_severity(util::str_at(item, &["Severity"]).unwrap_or("")),
                package: target.clone(),
                installed: None,
                fixed: None,
                title: text(item, "Title"),
            });
        }
    }

    let repo_tag = util::get(report, &["Metadata", "RepoTags"])
        .and_then(Value::as_array)
        .and_then(|tags| tags.iter().find_map(util::non_empty));
    let artifact = repo_tag
        .or_else(|| util::str_at(report, &["ArtifactName"]))
        .unwrap_or("unknown artifact");
    let artifact_type = util::str_at(report, &["ArtifactType"]);
    let is_image = match artifact_type {
        Some(kind) => kind == "container_image",
        None => util::get(report, &["Metadata", "ImageID"]).is_some() || repo_tag.is_some(),
    };
    let image = is_image.then(|| {
        let mut image = util::image_from_ref(artifact);
        if image.digest.is_none() {
            image.digest = util::get(report, &["Metadata", "RepoDigests"])
                .and_then(Value::as_array)
                .and_then(|digests| digests.iter().find_map(util::non_empty))
                .and_then(|reference| reference.split_once('@'))
                .and_then(|(_, digest)| util::some(digest));
        }
        image
    });
    let time = util::str_at(report, &["CreatedAt"]).and_then(util::rfc3339);
    let id = util::str_at(report, &["ReportID"])
        .map(str::to_string)
        .unwrap_or(hash);
    let os = [
        util::str_at(report, &["Metadata", "OS", "Family"]).filter(|family| *family != "none"),
        util::str_at(report, &["Metadata", "OS", "Name"]),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");

    let base = |kind: Kind, id: String, findings: Vec<Finding>| {
        let mut event = util::blank(FORMAT, kind, report.clone());
        event.id = id;
        event.time = util::settle_time(time.clone(), received, &mut event.labels);
        event.findings = util::merge_findings(findings);
        event.severity = util::max_severity(&event.findings);
        event.resource.image = image.clone();
        if !os.is_empty() {
            event.labels.insert("os".to_string(), os.clone());
        }
        if let Some(kind) = artifact_type {
            event
                .labels
                .insert("trivy.artifact_type".to_string(), kind.to_string());
        }
        event
    };

    let mut vulnerability = base(Kind::Vulnerability, id.clone(), vulnerabilities);
    vulnerability.title = format!(
        "{} in {artifact}",
        util::count_of(
            vulnerability.findings.len(),
            "vulnerability",
            "vulnerabilities"
        )
    );
    vulnerability.summary =
        util::vulnerability_summary(&vulnerability.findings, &vulnerability.title, artifact);
    let mut events = vec![vulnerability];

    for (kind, findings, one, many, suffix) in [
        (Kind::Secret, secrets, "secret", "secrets", "secret"),
        (
            Kind::Misconfiguration,
            misconfigurations,
            "misconfiguration",
            "misconfigurations",
            "misconfiguration",
        ),
    ] {
        if findings.is_empty() {
            continue;
        }
        let mut event = base(kind, format!("{id}#{suffix}"), findings);
        event.title = format!(
            "{} in {artifact}",
            util::count_of(event.findings.len(), one, many)
        );
        event.summary = format!("{}: {}", event.title, util::breakdown(&event.findings));
        events.push(event);
    }
    Ok(events)
}

fn custom_resource(
    resource: &Value,
    hash: String,
    received: DateTime<Utc>,
) -> Result<Event, FormatError> {
    let report = resource
        .get("report")
        .filter(|report| report.is_object())
        .ok_or_else(|| util::wrong(FORMAT, "VulnerabilityReport has no `report` object"))?;
    let report_object = util::object(FORMAT, report, "`report`")?;
    let mut findings = Vec::new();
    for (v, item) in array(report_object, "vulnerabilities", "report.")?
        .iter()
        .enumerate()
    {
        let at = format!("report.vulnerabilities[{v}]");
        findings.push(Finding {
            id: finding_id(item, "vulnerabilityID", &at)?.to_string(),
            severity: util::scanner_severity(util::str_at(item, &["severity"]).unwrap_or("")),
            package: text(item, "resource"),
            installed: text(item, "installedVersion"),
            fixed: text(item, "fixedVersion"),
            title: text(item, "title"),
        });
    }

    let registry = util::str_at(report, &["registry", "server"]);
    let repository =
        util::str_at(report, &["artifact", "repository"]).map(|repository| match registry {
            Some(registry) => format!("{registry}/{repository}"),
            None => repository.to_string(),
        });
    let tag = util::get(report, &["artifact", "tag"]).and_then(util::scalar);
    let digest = util::str_at(report, &["artifact", "digest"]).map(str::to_string);
    let reference = repository.as_ref().map(|repository| {
        let mut reference = repository.clone();
        if let Some(tag) = &tag {
            reference = format!("{reference}:{tag}");
        }
        if let Some(digest) = &digest {
            reference = format!("{reference}@{digest}");
        }
        reference
    });
    let artifact = reference
        .clone()
        .or_else(|| util::str_at(resource, &["metadata", "name"]).map(str::to_string))
        .unwrap_or_else(|| "unknown artifact".to_string());

    let mut event = util::blank(FORMAT, Kind::Vulnerability, resource.clone());
    event.id = hash;
    let time = util::str_at(report, &["updateTimestamp"])
        .or_else(|| util::str_at(resource, &["metadata", "creationTimestamp"]))
        .and_then(util::rfc3339);
    event.time = util::settle_time(time, received, &mut event.labels);
    event.findings = util::merge_findings(findings);
    event.severity = util::max_severity(&event.findings);
    event.title = format!(
        "{} in {artifact}",
        util::count_of(event.findings.len(), "vulnerability", "vulnerabilities")
    );
    event.summary = util::vulnerability_summary(&event.findings, &event.title, &artifact);

    if repository.is_some() {
        event.resource.image = Some(Image {
            r#ref: reference.clone(),
            repository,
            tag,
            digest,
        });
    }
    let label = |key: &str| util::str_at(resource, &["metadata", "labels", key]);
    let namespace = util::str_at(resource, &["metadata", "namespace"])
        .or_else(|| label("trivy-operator.resource.namespace"));
    let container = Container {
        name: label("trivy-operator.container.name").map(str::to_string),
        image: reference,
        ..Container::default()
    };
    if container.name.is_some() {
        event.resource.container = Some(container);
    }
    let workload_kind = label("trivy-operator.resource.kind");
    let workload_name = label("trivy-operator.resource.name");
    if workload_kind == Some("Pod") {
        event.resource.pod = Some(Pod {
            name: workload_name.map(str::to_string),
            namespace: namespace.map(str::to_string),
            ..Pod::default()
        });
    }
    if let Some(namespace) = namespace {
        event
            .labels
            .insert("namespace".to_string(), namespace.to_string());
    }
    if let (Some(kind), Some(name)) = (workload_kind, workload_name) {
        event
            .labels
            .insert("trivy.workload".to_string(), format!("{kind}/{name}"));
    }
    if let Some(name) = util::str_at(resource, &["metadata", "name"]) {
        event
            .labels
            .insert("trivy.report".to_string(), name.to_string());
    }
    Ok(event)
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

    use crate::formats::util::test_received as received;

    fn reason(payload: &str) -> String {
        match normalize(payload.as_bytes(), received()) {
            Err(FormatError::WrongShape { reason, .. }) => reason,
            other => panic!("{payload}: {other:?}"),
        }
    }

    #[test]
    fn identical_findings_collapse_but_the_same_cve_in_two_packages_stays_two() {
        let payload = r#"{"SchemaVersion":2,"ArtifactName":"app:1","ArtifactType":"container_image","Results":[
            {"Target":"a","Vulnerabilities":[
                {"VulnerabilityID":"CVE-1","PkgName":"libssl","InstalledVersion":"1","Severity":"LOW"},
                {"VulnerabilityID":"CVE-1","PkgName":"libcrypto","InstalledVersion":"1","Severity":"LOW"}]},
            {"Target":"b","Vulnerabilities":[
                {"VulnerabilityID":"CVE-1","PkgName":"libssl","InstalledVersion":"1","FixedVersion":"2","Severity":"HIGH"}]}]}"#;
        let events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.findings.len(), 2);
        assert_eq!(event.findings[0].fixed.as_deref(), Some("2"));
        assert_eq!(event.severity, Severity::High);
        assert_eq!(event.title, "2 vulnerabilities in app:1");
        assert_eq!(
            event.summary,
            "2 vulnerabilities in app:1: 1 high, 1 low; 1 with a fix"
        );
        assert_eq!(
            event.resource.image.as_ref().unwrap().tag.as_deref(),
            Some("1")
        );
    }

    #[test]
    fn failed_misconfigurations_make_their_own_event() {
        let payload = r#"{"SchemaVersion":2,"ArtifactName":".","ArtifactType":"filesystem","Results":[
            {"Target":"Dockerfile","Class":"config","Misconfigurations":[
                {"ID":"DS002","Title":"root user","Severity":"HIGH","Status":"FAIL"},
                {"AVDID":"AVD-DS-0001","Severity":"MEDIUM"},
                {"ID":"DS005","Severity":"LOW","Status":"PASS"}]}]}"#;
        let events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].title, "no vulnerabilities in .");
        assert!(events[0].resource.image.is_none());
        assert_eq!(events[1].kind, Kind::Misconfiguration);
        assert_eq!(events[1].title, "2 misconfigurations in .");
        assert_eq!(events[1].severity, Severity::High);
        assert!(events[1].id.ends_with("#misconfiguration"));
    }

    #[test]
    fn a_list_of_reports_gives_one_event_each_with_indexed_ids() {
        let payload = "apiVersion: v1\nkind: List\nitems:\n- kind: VulnerabilityReport\n  report: {}\n- kind: VulnerabilityReport\n  report:\n    artifact: {repository: app, tag: 1.10}\n";
        let events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[0].id.ends_with("#0"));
        assert!(events[1].id.ends_with("#1"));
        assert_eq!(events[1].title, "no vulnerabilities in app:1.1");
    }

    #[test]
    fn rejects_other_shapes_with_the_field_at_fault() {
        assert!(reason(r#"{"matches":[]}"#).contains("neither `SchemaVersion`"));
        assert!(
            reason(r#"{"SchemaVersion":2,"Results":{}}"#).contains("`Results` must be an array")
        );
        assert!(
            reason(r#"{"SchemaVersion":2,"Results":[{"Vulnerabilities":[{}]}]}"#)
                .contains("`Results[0].Vulnerabilities[0].VulnerabilityID` is missing")
        );
        assert!(reason("kind: PolicyReport\n").contains("`kind` `PolicyReport`"));
        assert!(reason("kind: List\nitems:\n- kind: PolicyReport\n")
            .contains("`items[0]` is a `PolicyReport`"));
        assert!(reason("kind: VulnerabilityReport\n").contains("no `report` object"));
        assert!(matches!(
            normalize(b"just words", received()),
            Err(FormatError::Malformed(_))
        ));
        assert!(matches!(
            normalize(b"{\"SchemaVersion\": ", received()),
            Err(FormatError::Malformed(_))
        ));
        assert!(matches!(
            normalize(b"a: [1, 2\n", received()),
            Err(FormatError::Malformed(m)) if m.contains("read as YAML")
        ));
    }
}
