//! Helpers shared by the normalizers: payload decoding, payload-hash ids, times, severity words,
//! image references, findings and small JSON accessors.
//!
//! Decoding strips a UTF-8 byte order mark, rejects empty and non-UTF-8 payloads, and reads one
//! JSON value, a concatenated JSON stream or JSON Lines (where plain-text log lines between the
//! objects are skipped); YAML is read only for the formats that ask for it. Every helper is
//! total: none panics, indexes out of bounds or parses numbers as floats, whatever the input.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::FormatError;
use crate::event::{Event, Finding, Image, Kind, Resource, Severity, Source};

/// Label set when an event's time is the time riposte received the payload.
pub(crate) const TIME_LABEL: &str = "riposte.time";

/// One JSON value of a payload and the exact (trimmed) text it was read from.
#[derive(Debug)]
pub(crate) struct Doc<'a> {
    /// The parsed value.
    pub(crate) value: Value,
    /// The text of this value in the payload, surrounding white space removed.
    pub(crate) raw: &'a str,
}

impl Doc<'_> {
    /// The payload-hash id of this document.
    pub(crate) fn hash_id(&self) -> String {
        hash_id(self.raw.as_bytes())
    }

    /// The payload-hash id of the `index`th of `count` events this document gives: `#index` is
    /// appended only when there are several.
    pub(crate) fn nth_id(&self, index: usize, count: usize) -> String {
        nth(self.hash_id(), index, count)
    }
}

/// `sha256:` and the hex SHA-256 of `bytes`.
pub(crate) fn hash_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `base`, with `#index` appended when one document gives several (`count` > 1) events.
pub(crate) fn nth(base: String, index: usize, count: usize) -> String {
    if count > 1 {
        format!("{base}#{index}")
    } else {
        base
    }
}

/// The payload as text: UTF-8 byte order mark stripped, not empty.
pub(crate) fn text(payload: &[u8]) -> Result<&str, FormatError> {
    let bytes = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    let text = std::str::from_utf8(bytes).map_err(|e| FormatError::NotText(e.to_string()))?;
    if text.trim().is_empty() {
        return Err(FormatError::Empty);
    }
    Ok(text)
}

/// Normalizes every JSON document of a payload with `f`, naming the document in errors when
/// there are several.
pub(crate) fn per_doc(
    payload: &[u8],
    mut f: impl FnMut(&Doc<'_>) -> Result<Vec<Event>, FormatError>,
) -> Result<Vec<Event>, FormatError> {
    let docs = json_docs(payload)?;
    let count = docs.len();
    let mut events = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        events.extend(f(doc).map_err(|e| at_doc(i, count, e))?);
    }
    Ok(events)
}

/// The receive time unit tests use.
#[cfg(test)]
pub(crate) fn test_received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// Every JSON value of a payload: one value, a concatenated stream, or JSON Lines.
pub(crate) fn json_docs(payload: &[u8]) -> Result<Vec<Doc<'_>>, FormatError> {
    json_docs_of(text(payload)?)
}

/// Like [`json_docs`], on text already decoded.
pub(crate) fn json_docs_of(text: &str) -> Result<Vec<Doc<'_>>, FormatError> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    loop {
        match stream.next() {
            None => return Ok(docs),
            Some(Ok(value)) => {
                let end = stream.byte_offset();
                let raw = text.get(start..end).unwrap_or(text).trim();
                docs.push(Doc { value, raw });
                start = end;
            }
            Some(Err(err)) => {
                return json_lines(text).ok_or_else(|| FormatError::Malformed(err.to_string()))
            }
        }
    }
}

/// JSON Lines with plain-text log lines mixed in (Falco's stdout): lines that start with `{` must
/// be JSON; other lines that are not JSON are skipped. `None` when a `{` line is broken or no
/// line is JSON at all.
fn json_lines(text: &str) -> Option<Vec<Doc<'_>>> {
    let mut docs = Vec::new();
    for line in text.lines() {
        let raw = line.trim();
        if raw.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(raw) {
            Ok(value) if value.is_object() || value.is_array() => docs.push(Doc { value, raw }),
            Ok(_) => {}
            Err(_) if raw.starts_with('{') => return None,
            Err(_) => {}
        }
    }
    (!docs.is_empty()).then_some(docs)
}

/// How deep YAML flow collections (`[...]`, `{...}`) may nest: the parser's time grows with the
/// square of the depth, so deeper input is refused before it is parsed (serde_yaml would refuse
/// it after 128 levels anyway).
const YAML_MAX_FLOW_DEPTH: usize = 128;

/// Every document of a YAML payload, as JSON values (empty documents skipped). Timestamps stay
/// strings: serde_yaml has no timestamp type.
pub(crate) fn yaml_values(text: &str) -> Result<Vec<Value>, String> {
    let mut depth: usize = 0;
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => depth = depth.saturating_add(1),
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth > YAML_MAX_FLOW_DEPTH {
            return Err(format!(
                "flow collections nested deeper than {YAML_MAX_FLOW_DEPTH} levels"
            ));
        }
    }
    let mut values = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            values.push(value);
        }
    }
    Ok(values)
}

/// A [`FormatError::WrongShape`] for `format`.
pub(crate) fn wrong(format: Source, reason: impl Into<String>) -> FormatError {
    FormatError::WrongShape {
        format,
        reason: reason.into(),
    }
}

/// Prefixes a reason with the position of the document when the payload has several.
pub(crate) fn at_doc(index: usize, count: usize, err: FormatError) -> FormatError {
    match err {
        FormatError::WrongShape { format, reason } if count > 1 => FormatError::WrongShape {
            format,
            reason: format!("object {} of {count}: {reason}", index.saturating_add(1)),
        },
        other => other,
    }
}

/// The value as an object, or a wrong-shape error naming what it should have been.
pub(crate) fn object<'a>(
    format: Source,
    value: &'a Value,
    what: &str,
) -> Result<&'a Map<String, Value>, FormatError> {
    value.as_object().ok_or_else(|| {
        wrong(
            format,
            format!("expected {what} (a JSON object), got {}", kind_of(value)),
        )
    })
}

/// A short name of a JSON value's type, for error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A new event with the given source, kind and data; every other field empty, to be filled in.
pub(crate) fn blank(source: Source, kind: Kind, data: Value) -> Event {
    Event {
        id: String::new(),
        source,
        kind,
        time: String::new(),
        severity: Severity::Info,
        title: String::new(),
        summary: String::new(),
        resource: Resource::default(),
        findings: Vec::new(),
        labels: BTreeMap::new(),
        data,
        enrichment: BTreeMap::new(),
    }
}

/// Walks `path` through nested objects.
pub(crate) fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_object()?.get(*key))
}

/// The non-empty string at `path`.
pub(crate) fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(value, path).and_then(non_empty)
}

/// The value as a non-empty string.
pub(crate) fn non_empty(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !s.is_empty())
}

/// A scalar as text: a non-empty string, an integer or a boolean (never a float parse).
pub(crate) fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An integer, or a string holding one.
pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `Some(s)` when `s` is not empty.
pub(crate) fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The producer's time string, kept as is when it is valid RFC 3339.
pub(crate) fn rfc3339(s: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(s).ok().map(|_| s.to_string())
}

/// True for Go's zero time (`0001-01-01T00:00:00Z`), which is not a real date.
pub(crate) fn is_zero_time(s: &str) -> bool {
    DateTime::parse_from_rfc3339(s).is_ok_and(|t| t.timestamp() <= -62_135_596_800)
}

/// Epoch seconds as RFC 3339 UTC.
pub(crate) fn epoch_seconds(secs: i64) -> Option<String> {
    DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Epoch nanoseconds as RFC 3339 UTC with nanoseconds.
pub(crate) fn epoch_nanos(nanos: i64) -> String {
    DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// An epoch integer of unknown unit, guessed from its magnitude (s, ms, µs or ns), as RFC 3339
/// UTC with the precision of that unit.
pub(crate) fn epoch_guess(n: i64) -> Option<String> {
    let magnitude = n.unsigned_abs();
    if magnitude < 100_000_000_000 {
        epoch_seconds(n)
    } else if magnitude < 100_000_000_000_000 {
        DateTime::from_timestamp_millis(n).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
    } else if magnitude < 100_000_000_000_000_000 {
        DateTime::from_timestamp_micros(n).map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
    } else {
        Some(epoch_nanos(n))
    }
}

/// The event time: the producer's when it has one, else `received` (with nanoseconds) and the
/// label [`TIME_LABEL`] = `received`.
pub(crate) fn settle_time(
    producer: Option<String>,
    received: DateTime<Utc>,
    labels: &mut BTreeMap<String, String>,
) -> String {
    producer.unwrap_or_else(|| {
        labels.insert(TIME_LABEL.to_string(), "received".to_string());
        received.to_rfc3339_opts(SecondsFormat::Nanos, true)
    })
}

/// A severity word of monitoring and logging tools (Alertmanager labels, syslog levels, generic
/// JSON), case-insensitive; `None` when the word is not known.
pub(crate) fn severity_word(word: &str) -> Option<Severity> {
    let severity = match word.trim().to_ascii_lowercase().as_str() {
        "critical" | "crit" | "emergency" | "emerg" | "alert" | "fatal" | "page" | "disaster" => {
            Severity::Critical
        }
        "high" | "error" | "err" | "major" | "severe" => Severity::High,
        "medium" | "moderate" | "warning" | "warn" | "average" => Severity::Medium,
        "low" | "minor" | "notice" => Severity::Low,
        "info" | "informational" | "information" | "debug" | "trace" | "none" | "ok"
        | "negligible" | "unknown" => Severity::Info,
        _ => return None,
    };
    Some(severity)
}

/// A scanner severity (Trivy's upper case, Grype's and Harbor's title case): the four named
/// levels, and info for everything else (`Negligible`, `UNKNOWN`, `None`, empty).
pub(crate) fn scanner_severity(word: &str) -> Severity {
    match word.trim().to_ascii_lowercase().as_str() {
        "critical" => Severity::Critical,
        "high" => Severity::High,
        "medium" => Severity::Medium,
        "low" => Severity::Low,
        _ => Severity::Info,
    }
}

/// The highest severity of the findings, info when there are none.
pub(crate) fn max_severity(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Info)
}

/// Collapses findings with the same (id, package, installed): the first keeps its place, takes
/// the highest severity, and fills a missing fixed version or title from the later ones.
pub(crate) fn merge_findings(findings: Vec<Finding>) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::with_capacity(findings.len());
    let mut seen: HashMap<(String, Option<String>, Option<String>), usize> = HashMap::new();
    for finding in findings {
        let key = (
            finding.id.clone(),
            finding.package.clone(),
            finding.installed.clone(),
        );
        match seen.get(&key).and_then(|i| out.get_mut(*i)) {
            Some(kept) => {
                kept.severity = kept.severity.max(finding.severity);
                if kept.fixed.is_none() {
                    kept.fixed = finding.fixed;
                }
                if kept.title.is_none() {
                    kept.title = finding.title;
                }
            }
            None => {
                seen.insert(key, out.len());
                out.push(finding);
            }
        }
    }
    out
}

/// "no vulnerabilities", "1 vulnerability", "3 vulnerabilities".
pub(crate) fn count_of(n: usize, one: &str, many: &str) -> String {
    match n {
        0 => format!("no {many}"),
        1 => format!("1 {one}"),
        _ => format!("{n} {many}"),
    }
}

/// "2 critical, 4 medium" for the findings (highest first), "none" when there are none.
pub(crate) fn breakdown(findings: &[Finding]) -> String {
    let mut parts = Vec::new();
    for severity in Severity::ALL.iter().rev() {
        let n = findings.iter().filter(|f| f.severity == *severity).count();
        if n > 0 {
            parts.push(format!("{n} {severity}"));
        }
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// The summary of a vulnerability scan: `<title>: 2 critical, 4 medium; 6 with a fix`, or
/// `no vulnerabilities found in <artifact>`.
pub(crate) fn vulnerability_summary(findings: &[Finding], title: &str, artifact: &str) -> String {
    if findings.is_empty() {
        return format!("no vulnerabilities found in {artifact}");
    }
    let fixable = findings.iter().filter(|f| f.fixed.is_some()).count();
    format!("{title}: {}; {fixable} with a fix", breakdown(findings))
}

/// The first sentence of a description (at most 200 characters), for a finding's title.
pub(crate) fn first_sentence(text: &str) -> String {
    let text = text.trim();
    let sentence = text
        .find(". ")
        .and_then(|end| text.get(..=end))
        .unwrap_or(text);
    match sentence.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", sentence.get(..cut).unwrap_or(sentence)),
        None => sentence.to_string(),
    }
}

/// An image reference split into its parts: `registry/repo:tag@sha256:...`.
pub(crate) fn image_from_ref(reference: &str) -> Image {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let last_part = name.rfind('/').map_or(0, |i| i.saturating_add(1));
    let colon = name
        .get(last_part..)
        .and_then(|last| last.rfind(':'))
        .map(|i| i.saturating_add(last_part));
    let (repository, tag) = match colon {
        Some(i) => (name.get(..i), name.get(i.saturating_add(1)..)),
        None => (Some(name), None),
    };
    Image {
        r#ref: some(reference),
        repository: repository.and_then(some),
        tag: tag.and_then(some),
        digest: digest.and_then(some),
    }
}

/// Decodes `%XX` escapes and `+` of a URL query component (invalid escapes are kept as they are,
/// invalid UTF-8 is replaced).
pub(crate) fn percent_decode(s: &str) -> String {
    fn hex_digit(b: &u8) -> Option<u8> {
        (*b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escape = (b == b'%')
            .then(|| {
                let high = bytes.get(i.saturating_add(1)).and_then(hex_digit)?;
                let low = bytes.get(i.saturating_add(2)).and_then(hex_digit)?;
                Some(high.wrapping_mul(16).wrapping_add(low))
            })
            .flatten();
        match (b, escape) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i = i.saturating_add(3);
            }
            (b'+', None) => {
                out.push(b' ');
                i = i.saturating_add(1);
            }
            (other, None) => {
                out.push(other);
                i = i.saturating_add(1);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query parameters of a request URI, decoded, in order (repeated names kept).
pub(crate) fn query_params(uri: &str) -> Vec<(String, String)> {
    let Some((_, query)) = uri.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Looks a key up in an object: exactly, else ignoring ASCII case.
pub(crate) fn get_ci<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// An object's keys folded once (lower case, without `_`, `-`, `.` and `@`), for loose lookups:
/// `eventName`, `event_name` and `EVENT-NAME` are all `eventname`.
pub(crate) struct Loose<'a>(Vec<(String, &'a Value)>);

impl<'a> Loose<'a> {
    /// Folds the keys of `object`.
    pub(crate) fn new(object: &'a Map<String, Value>) -> Self {
        Loose(
            object
                .iter()
                .map(|(k, v)| {
                    let key: String = k
                        .chars()
                        .filter(|c| !matches!(c, '_' | '-' | '.' | '@'))
                        .flat_map(char::to_lowercase)
                        .collect();
                    (key, v)
                })
                .collect(),
        )
    }

    /// The value of the first key equal to `name` (already folded) that is not null.
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(key, v)| key == name && !v.is_null())
            .map(|(_, v)| *v)
    }

    /// The first of `names` that holds a non-empty string.
    pub(crate) fn text(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find_map(|name| self.get(name).and_then(non_empty).map(str::to_string))
    }
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

    #[test]
    fn strips_a_byte_order_mark_and_rejects_blank_and_binary_payloads() {
        assert_eq!(text(b"\xEF\xBB\xBF{}").unwrap(), "{}");
        assert_eq!(text(b" \n\t"), Err(FormatError::Empty));
        assert_eq!(text(b""), Err(FormatError::Empty));
        assert!(matches!(text(b"\xff\xfe{"), Err(FormatError::NotText(_))));
    }

    #[test]
    fn reads_one_value_a_stream_and_json_lines_with_log_lines() {
        let docs = json_docs(b" {\"a\":1}\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].raw, "{\"a\":1}");

        let docs = json_docs(b"{\"a\":1}{\"b\":2}\n\n{\n \"c\": 3\n}").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].raw, "{\"b\":2}");

        let log = b"Wed May 10 14:07:18 2023: Starting health webserver\n{\"a\":1}\n\n[INFO] x\n{\"b\":2}\n";
        let docs = json_docs(log).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].raw, "{\"b\":2}");
    }

    #[test]
    fn malformed_json_reports_serdes_position() {
        let err = json_docs(b"{\"a\": 1,}").unwrap_err();
        assert!(
            matches!(&err, FormatError::Malformed(m) if m.contains("line 1 column")),
            "{err}"
        );
        let err = json_docs(b"Wed May 10 14:07:18 2023: Starting\nno json here").unwrap_err();
        assert!(matches!(err, FormatError::Malformed(_)));
        let err = json_docs(b"{\"a\":1}\n{\"b\":").unwrap_err();
        assert!(matches!(err, FormatError::Malformed(_)));
    }

    #[test]
    fn yaml_timestamps_stay_strings() {
        let values = yaml_values("---\na: 2022-12-08T15:50:37Z\nb: '1.16'\n---\n").unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0]["a"], "2022-12-08T15:50:37Z");
    }

    #[test]
    fn deeply_nested_yaml_is_refused_before_parsing() {
        let deep = format!("a: {}1{}", "[".repeat(129), "]".repeat(129));
        assert!(yaml_values(&deep).unwrap_err().contains("deeper than 128"));
        let fine = format!("a: {}1{}", "[".repeat(100), "]".repeat(100));
        assert!(yaml_values(&fine).is_ok());
    }

    #[test]
    fn times_keep_the_producers_precision() {
        assert_eq!(
            rfc3339("2023-05-25T13:44:05.478445995Z").as_deref(),
            Some("2023-05-25T13:44:05.478445995Z")
        );
        assert_eq!(rfc3339("2021-04-13T20:58:00.746609046Z+2"), None);
        assert_eq!(rfc3339(""), None);
        assert!(is_zero_time("0001-01-01T00:00:00Z"));
        assert!(!is_zero_time("2018-03-07T06:33:21.873077559-05:00"));
        assert_eq!(
            epoch_seconds(1680501893).as_deref(),
            Some("2023-04-03T06:04:53Z")
        );
        assert_eq!(
            epoch_nanos(1685022245478445995),
            "2023-05-25T13:44:05.478445995Z"
        );
        assert_eq!(
            epoch_guess(1461943101).as_deref(),
            Some("2016-04-29T15:18:21Z")
        );
        assert_eq!(
            epoch_guess(1618347519000000).as_deref(),
            Some("2021-04-13T20:58:39.000000Z")
        );
        assert_eq!(
            epoch_guess(i64::MAX).as_deref(),
            Some("2262-04-11T23:47:16.854775807Z")
        );
        assert_eq!(
            epoch_guess(i64::MIN).as_deref(),
            Some("1677-09-21T00:12:43.145224192Z")
        );
        assert_eq!(epoch_seconds(i64::MAX), None);
    }

    #[test]
    fn splits_image_references() {
        let image = image_from_ref("localhost:5000/harbor/alpine:3.9@sha256:abc");
        assert_eq!(
            image.repository.as_deref(),
            Some("localhost:5000/harbor/alpine")
        );
        assert_eq!(image.tag.as_deref(), Some("3.9"));
        assert_eq!(image.digest.as_deref(), Some("sha256:abc"));
        let image = image_from_ref("localhost:5000/alpine");
        assert_eq!(image.repository.as_deref(), Some("localhost:5000/alpine"));
        assert_eq!(image.tag, None);
        let image = image_from_ref(":");
        assert_eq!(image.repository, None);
        assert_eq!(image.tag, None);
    }

    #[test]
    fn decodes_query_parameters() {
        let params =
            query_params("/x/exec?command=ls&command=-la%20%2Ftmp&container=a+b&bad=%zz%4");
        assert_eq!(params[0], ("command".to_string(), "ls".to_string()));
        assert_eq!(params[1].1, "-la /tmp");
        assert_eq!(params[2].1, "a b");
        assert_eq!(params[3].1, "%zz%4");
        assert!(query_params("/no/query").is_empty());
    }

    #[test]
    fn merges_findings_on_id_package_and_installed_version() {
        let f = |id: &str, pkg: &str, sev, fixed: Option<&str>| Finding {
            id: id.into(),
            severity: sev,
            package: Some(pkg.into()),
            installed: Some("1".into()),
            fixed: fixed.map(String::from),
            title: None,
        };
        let merged = merge_findings(vec![
            f("CVE-1", "a", Severity::Low, None),
            f("CVE-1", "b", Severity::Low, None),
            f("CVE-1", "a", Severity::High, Some("2")),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].severity, Severity::High);
        assert_eq!(merged[0].fixed.as_deref(), Some("2"));
        assert_eq!(max_severity(&merged), Severity::High);
        assert_eq!(max_severity(&[]), Severity::Info);
    }

    #[test]
    fn titles_from_descriptions_keep_the_first_sentence() {
        assert_eq!(first_sentence("A flaw. More text."), "A flaw.");
        assert_eq!(first_sentence(" One line "), "One line");
        assert_eq!(first_sentence(&"é".repeat(300)).chars().count(), 203);
    }

    #[test]
    fn severity_words_are_case_insensitive() {
        assert_eq!(severity_word("WARNING"), Some(Severity::Medium));
        assert_eq!(severity_word("page"), Some(Severity::Critical));
        assert_eq!(severity_word("information"), Some(Severity::Info));
        assert_eq!(severity_word("purple"), None);
        assert_eq!(scanner_severity("Negligible"), Severity::Info);
        assert_eq!(scanner_severity("CRITICAL"), Severity::Critical);
    }
}
