//! Property tests: no input makes any normalizer panic. Arbitrary bytes, JSON-ish text, JSON
//! documents built from the field names the formats look for, and corpus samples truncated,
//! bit-flipped or with random parts of their structure replaced, go through every format.
//!
//! A test here only fails by panicking (or by a normalizer answering differently for the same
//! input); what the normalizers return is checked elsewhere.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use riposte::event::Source;
use riposte::formats::normalize;
use serde_json::{Map, Value};

fn received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-02T03:04:05.123456789Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Runs every format on the payload; each must answer, and answer the same way twice.
fn all_formats(payload: &[u8]) {
    for format in Source::ALL {
        let first = normalize(format, payload, received());
        let second = normalize(format, payload, received());
        assert_eq!(first, second, "{format}");
    }
}

/// The corpus samples (path, bytes), read once.
fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.file_name().unwrap() != "README.md" {
                    out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus"),
            &mut files,
        );
        files.sort();
        files
    })
}

/// The corpus samples that are one JSON document, parsed.
fn corpus_documents() -> &'static [Value] {
    static DOCUMENTS: OnceLock<Vec<Value>> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        corpus()
            .iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(bytes).ok())
            .collect()
    })
}

/// Names the normalizers look for, so generated objects reach past the first check.
const KEYS: &[&str] = &[
    "rule",
    "Rule",
    "priority",
    "output",
    "output_fields",
    "time",
    "source",
    "tags",
    "hostname",
    "uuid",
    "evt.time",
    "container.id",
    "container.name",
    "container.image.repository",
    "container.image.tag",
    "k8s.pod.name",
    "k8s.ns.name",
    "ka.target.resource",
    "ka.target.name",
    "proc.pid",
    "proc.cmdline",
    "process_exec",
    "process_exit",
    "process_kprobe",
    "process",
    "parent",
    "binary",
    "arguments",
    "pid",
    "uid",
    "exec_id",
    "pod",
    "pod_labels",
    "container",
    "id",
    "image",
    "name",
    "node_name",
    "function_name",
    "policy_name",
    "args",
    "file_arg",
    "int_arg",
    "status",
    "signal",
    "SchemaVersion",
    "ReportID",
    "CreatedAt",
    "ArtifactName",
    "ArtifactType",
    "Metadata",
    "RepoTags",
    "RepoDigests",
    "Results",
    "Target",
    "Vulnerabilities",
    "VulnerabilityID",
    "PkgName",
    "InstalledVersion",
    "FixedVersion",
    "Severity",
    "SeveritySource",
    "VendorSeverity",
    "Secrets",
    "RuleID",
    "Misconfigurations",
    "Status",
    "kind",
    "apiVersion",
    "items",
    "metadata",
    "labels",
    "report",
    "vulnerabilities",
    "vulnerabilityID",
    "artifact",
    "registry",
    "server",
    "repository",
    "tag",
    "matches",
    "vulnerability",
    "severity",
    "fix",
    "versions",
    "relatedVulnerabilities",
    "descriptor",
    "timestamp",
    "target",
    "userInput",
    "type",
    "verb",
    "auditID",
    "objectRef",
    "resource",
    "subresource",
    "namespace",
    "requestURI",
    "responseStatus",
    "code",
    "annotations",
    "user",
    "username",
    "responseObject",
    "alerts",
    "groupLabels",
    "commonLabels",
    "startsAt",
    "endsAt",
    "fingerprint",
    "instance",
    "event_data",
    "occur_at",
    "resources",
    "resource_url",
    "digest",
    "scan_overview",
    "summary",
    "total",
    "specversion",
    "data",
    "level",
    "message",
    "containerId",
    "podName",
    "timeNano",
];

/// String values the normalizers give meaning to, plus odd ones.
const WORDS: &[&str] = &[
    "",
    "Event",
    "EventList",
    "VulnerabilityReport",
    "List",
    "pods",
    "exec",
    "attach",
    "create",
    "Critical",
    "CRITICAL",
    "NOTICE",
    "Informational",
    "internal",
    "k8s_audit",
    "host",
    "1.0",
    "0.3",
    "harbor.scan.completed",
    "harbor.quota.exceeded",
    "SCANNING_COMPLETED",
    "PUSH_ARTIFACT",
    "container_image",
    "image",
    "containerd://abc",
    "Falco internal: x",
    "/api/v1/namespaces/a/pods/b/exec?command=%&command=%zz&command=%e2%82&container=",
    "0001-01-01T00:00:00Z",
    "2023-05-25T13:44:05.478445995Z",
    "2021-04-13T20:58:00Z+2",
    "application/vnd.security.vulnerability.report; version=1.1",
    "a@b:c/d:e@",
    ":",
    "@",
    "/",
    "13:44:05.478445995: Critical x",
    "9223372036854775808",
    "-1",
    "é\u{0}\u{feff}",
    "audit.k8s.io/v1",
    "CVE-1",
    "GHSA-1",
    "[::1]:9100",
    "10.0.0.1:",
    "unknown",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from(1_685_022_245_478_445_995_i64)),
        Just(Value::from(i64::MIN)),
        select(WORDS).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((select(KEYS), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<String, Value>>(),
                )
            }),
        ]
    })
}

/// Every node of a JSON value, as JSON pointers.
fn pointers(value: &Value, here: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{here}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(here);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        all_formats(&bytes);
    }

    #[test]
    fn json_ish_text_never_panics(text in r#"[\[\]{}":,0-9a-zA-Z_.@+\- \n\t\\/-]{0,300}"#) {
        all_formats(text.as_bytes());
    }

    #[test]
    fn json_ish_yaml_never_panics(text in r#"(---\n|[a-z]{1,6}: |- |  |&a |\*a |!!binary |\[|\]|\{|\}|'|"|[0-9.:TZ-]{1,12}|\n){0,60}"#) {
        all_formats(text.as_bytes());
    }

    #[test]
    fn documents_made_of_known_fields_never_panic(value in json(), lines in 1usize..4) {
        let one = serde_json::to_string(&value).unwrap();
        all_formats(one.as_bytes());
        let many = vec![one; lines].join("\n");
        all_formats(many.as_bytes());
    }

    #[test]
    fn truncated_corpus_samples_never_panic(file in any::<Index>(), cut in any::<Index>()) {
        let (_, bytes) = file.get(corpus());
        let end = cut.index(bytes.len() + 1);
        all_formats(&bytes[..end]);
    }

    #[test]
    fn corpus_samples_with_flipped_bytes_never_panic(
        file in any::<Index>(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..12),
    ) {
        let (_, bytes) = file.get(corpus());
        let mut bytes = bytes.clone();
        if !bytes.is_empty() {
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= byte;
            }
        }
        all_formats(&bytes);
    }

    #[test]
    fn corpus_samples_with_replaced_parts_never_panic(
        document in any::<Index>(),
        swaps in prop::collection::vec((any::<Index>(), leaf()), 1..6),
    ) {
        let mut value = document.get(corpus_documents()).clone();
        for (at, replacement) in swaps {
            let mut all = Vec::new();
            pointers(&value, String::new(), &mut all);
            let pointer = at.get(&all).clone();
            if let Some(node) = value.pointer_mut(&pointer) {
                *node = replacement;
            }
        }
        all_formats(&serde_json::to_vec(&value).unwrap());
    }
}

#[test]
fn deeply_nested_input_is_rejected_quickly_not_overflowed() {
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    all_formats(deep_json.as_bytes());
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    all_formats(deep_object.as_bytes());
    let deep_yaml = format!("a: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    all_formats(deep_yaml.as_bytes());
    let deep_block_yaml = format!("{}1", "- ".repeat(100_000));
    all_formats(deep_block_yaml.as_bytes());
    let deep_keys_yaml = format!("{}1", "? ".repeat(100_000));
    all_formats(deep_keys_yaml.as_bytes());
    let deep_flow_map = format!("a: {}1{}", "{a: ".repeat(50_000), "}".repeat(50_000));
    all_formats(deep_flow_map.as_bytes());
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    all_formats(laughs.as_bytes());
}
