//! The conformance corpus: every sample under `tests/fixtures/corpus` (a byte-identical copy of
//! the shared corpus, see its README) is normalized with the format it belongs to and checked
//! against one explicit table entry, so adding a sample without saying what it must become fails.
//!
//! Samples of producers riposte has no dedicated format for (tracee, policyreport, docker,
//! distribution, falcosidekick) are checked against what `generic` makes of them; every dedicated
//! format must reject every sample that is not its own. Must never depend on the wall clock: the
//! received time is fixed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use riposte::event::{Event, Kind, Severity, Source};
use riposte::formats::{normalize, FormatError};
use serde_json::Value;

const RECEIVED: &str = "2030-01-02T03:04:05.123456789Z";

fn received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(RECEIVED)
        .unwrap()
        .with_timezone(&Utc)
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus")
}

/// Every data file of the corpus, as a path relative to it (`falco/x.json`).
fn corpus_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.file_name().unwrap() != "README.md" {
                let relative = path.strip_prefix(root).unwrap();
                out.push(relative.to_str().unwrap().replace('\\', "/"));
            }
        }
    }
    let root = corpus_dir();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(file)).unwrap()
}

fn run(format: Source, file: &str) -> Result<Vec<Event>, FormatError> {
    normalize(format, &read(file), received())
}

fn events(format: Source, file: &str) -> Vec<Event> {
    run(format, file).unwrap_or_else(|e| panic!("{file} as {format}: {e}"))
}

/// The dedicated format of a corpus folder; `None` for producers only `generic` reads.
fn folder_format(file: &str) -> Option<Source> {
    match file.split('/').next().unwrap() {
        "falco" => Some(Source::Falco),
        "tetragon" => Some(Source::Tetragon),
        "trivy" | "trivy-operator" => Some(Source::Trivy),
        "grype" => Some(Source::Grype),
        "k8s-audit" => Some(Source::K8sAudit),
        "alertmanager" => Some(Source::Alertmanager),
        "harbor" => Some(Source::Harbor),
        _ => None,
    }
}

/// The resource parts an event has, in the order of `Resource`'s fields.
fn parts(event: &Event) -> String {
    let r = &event.resource;
    [
        ("container", r.container.is_some()),
        ("pod", r.pod.is_some()),
        ("node", r.node.is_some()),
        ("image", r.image.is_some()),
        ("host", r.host.is_some()),
        ("process", r.process.is_some()),
    ]
    .iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| *name)
    .collect::<Vec<_>>()
    .join(" ")
}

/// What one event of a sample must look like.
struct Check {
    index: usize,
    kind: Kind,
    severity: Severity,
    title: &'static str,
    /// Resource parts present, space-separated, in `Resource` order ("" for none).
    parts: &'static str,
    findings: usize,
    /// JSON pointers into the serialized event, and the value (as text) found there.
    fields: Vec<(&'static str, &'static str)>,
}

fn ev(
    index: usize,
    kind: Kind,
    severity: Severity,
    title: &'static str,
    parts: &'static str,
) -> Check {
    Check {
        index,
        kind,
        severity,
        title,
        parts,
        findings: 0,
        fields: Vec::new(),
    }
}

impl Check {
    fn findings(mut self, n: usize) -> Self {
        self.findings = n;
        self
    }

    fn has(mut self, pointer: &'static str, value: &'static str) -> Self {
        self.fields.push((pointer, value));
        self
    }
}

/// What a sample must give.
enum Expect {
    /// This many events, and these checks on some of them.
    Events(usize, Vec<Check>),
    /// This rejection: the error code and a piece of its message.
    Rejected(&'static str, &'static str),
}

struct Case {
    file: &'static str,
    format: Source,
    expect: Expect,
}

fn ok(file: &'static str, format: Source, count: usize, checks: Vec<Check>) -> Case {
    Case {
        file,
        format,
        expect: Expect::Events(count, checks),
    }
}

fn rejected(file: &'static str, format: Source, code: &'static str, reason: &'static str) -> Case {
    Case {
        file,
        format,
        expect: Expect::Rejected(code, reason),
    }
}

/// The table: one entry per corpus file.
fn cases() -> Vec<Case> {
    use Kind::*;
    use Severity::*;
    use Source::*;
    vec![
        // Alertmanager webhooks (version "4", 2018 captures without fingerprint or status).
        ok("alertmanager/msteams-test_webhook-v4_2-alerts.json", Alertmanager, 2, vec![
            ev(0, Alert, Medium, "high_memory_load", "")
                .has("/summary", "Server High Memory usage")
                .has("/time", "2018-03-07T06:33:21.873077559-05:00")
                .has("/labels/severity", "warning")
                .has("/labels/monitor", "master")
                .has("/labels/status", "firing"),
            ev(1, Alert, Medium, "high_memory_load2", "")
                .has("/labels/alertname", "high_memory_load2"),
        ]),
        ok("alertmanager/msteams-test_webhook-v4_high-memory-load.json", Alertmanager, 1, vec![
            ev(0, Alert, Medium, "high_memory_load", "host")
                .has("/resource/host/name", "instance-with-hyphen_and_underscore")
                .has("/labels/job", "docker_nodes")
                .has("/summary", "Server High Memory usage"),
        ]),
        // Registry notifications: generic, one event per envelope.
        ok("distribution/distribution-docs_pull-manifest-envelope.json", Generic, 1, vec![
            ev(0, Alert, Info, "event", "").has("/labels/riposte.time", "received"),
        ]),
        ok("distribution/distribution-docs_push-envelope-3-events.json", Generic, 1, vec![
            ev(0, Alert, Info, "event", "").has("/time", RECEIVED),
        ]),
        ok("distribution/distribution-test_push-envelope-golden.json", Generic, 1, vec![
            ev(0, Alert, Info, "event", ""),
        ]),
        // Docker events: generic, one event per object, timeNano kept to the nanosecond.
        ok("docker/moby-api-v1.21-docs_events-legacy.jsonl", Generic, 4, vec![
            ev(0, Alert, Info, "event", "").has("/time", "2015-09-16T16:41:40.598988358Z"),
        ]),
        ok("docker/moby-api-v1.24-docs_events-stream.jsonstream", Generic, 9, vec![
            ev(0, Alert, Info, "image pull", "").has("/time", "2016-04-29T15:18:21.301854122Z"),
            ev(1, Alert, Info, "container create", ""),
            ev(8, Alert, Info, "container destroy", "").has("/time", "2016-04-29T15:18:25.338056026Z"),
        ]),
        // Falco.
        ok("falco/falco-talon-examples_test-networkpolicy.json", Falco, 1, vec![
            ev(0, Runtime, Critical, "Test NetworkPolicy", "pod")
                .has("/resource/pod/name", "static-web")
                .has("/resource/pod/namespace", "default")
                .has("/summary", "Test")
                .has("/time", "2019-05-17T15:31:56.746609046Z")
                .has("/data/output_fields/fd.rport", "8888"),
        ]),
        ok("falco/falco-website_fission_shell-and-k8s-api-contact.jsonl", Falco, 2, vec![
            ev(0, Runtime, Low, "Terminal shell in container", "container pod image process")
                .has("/resource/container/id", "cbd3133ccac6")
                .has("/resource/container/image", "alpine")
                .has("/resource/pod/name", "alpine")
                .has("/resource/process/cmdline", "sh -c uptime")
                .has("/resource/process/user", "root")
                .has("/labels/falco.source", "syscall"),
            ev(1, Runtime, Low, "Contact K8S API Server From Container", "container pod image process")
                .has("/resource/image/ref", "fission/fetcher:1.13.1")
                .has("/resource/image/tag", "1.13.1")
                .has("/resource/pod/namespace", "fission-function"),
        ]),
        ok("falco/falco-website_internal-metrics-snapshot.json", Falco, 1, vec![
            ev(0, Internal, Info, "Falco internal: metrics snapshot", "host")
                .has("/labels/falco.source", "internal")
                .has("/data/output_fields/falco.rules.Read_sensitive_file_untrusted", "18"),
        ]),
        ok("falco/falco-website_k8saudit-eks_attach-exec-pod.json", Falco, 1, vec![
            ev(0, Audit, Low, "Attach/Exec Pod", "pod host")
                .has("/resource/pod/name", "kubecon")
                .has("/labels/tags", "k8s")
                .has("/labels/tag:k8s", "true")
                .has("/time", "2023-05-10T14:09:24.046826000Z")
                .has("/summary", "Attach/Exec to pod (user=kubernetes-admin pod=kubecon resource=pods ns=default action=exec command=sh)"),
        ]),
        ok("falco/falco-website_k8saudit-eks_serviceaccount-created.json", Falco, 1, vec![
            ev(0, Audit, Info, "K8s Serviceaccount Created", "host")
                .has("/labels/falco.source", "k8s_audit"),
        ]),
        ok("falco/falco-website_k8saudit-ovh_disallowed-k8s-user.jsonl", Falco, 3, vec![
            ev(0, Audit, Medium, "Disallowed K8s User", "host")
                .has("/resource/host/name", "my-pool-1-node-921b61"),
            ev(2, Audit, Medium, "Disallowed K8s User", "host")
                .has("/time", "2025-02-10T09:15:57.807013000Z"),
        ]),
        ok("falco/falco-website_sidekick-test_invalid-time.json", Falco, 1, vec![
            ev(0, Runtime, High, "Fake rule", "process")
                .has("/time", RECEIVED)
                .has("/labels/riposte.time", "received")
                .has("/resource/process/cmdline", "touch /bin/hack"),
        ]),
        ok("falco/falco-website_terminal-shell-in-container.json", Falco, 1, vec![
            ev(0, Runtime, Critical, "Terminal shell in container", "container pod image host process")
                .has("/resource/container/id", "ee97d9c4186f")
                .has("/resource/image/ref", "docker.io/library/alpine")
                .has("/resource/pod/name", "kubecon")
                .has("/resource/pod/namespace", "default")
                .has("/resource/host/name", "falco-xczjd")
                .has("/resource/process/name", "sh")
                .has("/labels/tags", "container,mitre_execution,shell")
                .has("/labels/tag:mitre_execution", "true")
                .has("/data/output_fields/evt.time", "1685022245478445995")
                .has("/data/output_fields/user.loginuid", "-1"),
        ]),
        ok("falco/falcosidekick-readme_write-below-binary-dir.json", Falco, 1, vec![
            ev(0, Runtime, High, "Write below binary dir", "host process")
                .has("/resource/host/name", "localhost")
                .has("/summary", "File below a known binary directory opened for writing (user=root command=touch /bin/hack file=/bin/hack)"),
        ]),
        ok("falco/falcosidekick-test_syscall-event-drop.json", Falco, 1, vec![
            ev(0, Internal, Info, "Falco internal: syscall event drop", "host")
                .has("/data/output_fields/n_drops", "815508")
                .has("/time", "2023-03-03T03:03:03.000000003Z"),
        ]),
        ok("falco/plugins-collector_read-sensitive-file-untrusted.json", Falco, 1, vec![
            // container.id "host": a host event, no container part.
            ev(0, Runtime, Medium, "Read sensitive file untrusted", "host process")
                .has("/resource/host/name", "x86")
                .has("/resource/process/cmdline", "cat /etc/shadow")
                .has("/labels/tag:T1555", "true")
                .has("/data/output_fields/proc.aname[2]", "sudo"),
        ]),
        ok("falco/plugins-gcpaudit_bucket-public.json", Falco, 1, vec![
            ev(0, Audit, Critical, "GCP Bucket configured to be public", "host")
                .has("/labels/falco.source", "gcp_auditlog"),
        ]),
        ok("falco/testing_open-from-cat.jsonl", Falco, 8, vec![
            ev(0, Runtime, Medium, "open_from_cat", "host process")
                .has("/summary", "An open was seen (command=cat /dev/null)")
                .has("/time", "2016-08-04T16:17:57.881781397Z"),
            ev(7, Runtime, Medium, "open_from_cat", "host process")
                .has("/data/output_fields/evt.time.iso8601", "1470327477882054739"),
        ]),
        // Falcosidekick's Alertmanager body (an array of alerts without envelope): generic.
        ok("falcosidekick/falcosidekick-test_alertmanager-postable-alerts.json", Generic, 1, vec![
            ev(0, Alert, Info, "event", "").has("/data/labels/rule", "Test rule"),
        ]),
        // Grype.
        ok("grype/grype_image_chainguard-ruby.json", Grype, 1, vec![
            ev(0, Vulnerability, High, "2 vulnerabilities in cgr.dev/chainguard/ruby:latest-3.0", "image")
                .findings(2)
                .has("/resource/image/repository", "cgr.dev/chainguard/ruby")
                .has("/resource/image/tag", "latest-3.0")
                .has("/findings/1/id", "CVE-2023-28755")
                .has("/findings/1/package", "uri")
                .has("/findings/1/fixed", "0.10.2")
                .has("/time", "2023-05-17T21:00:56.783213-04:00"),
        ]),
        ok("grype/grype_image_keycloak-21.0.2.json", Grype, 1, vec![
            ev(0, Vulnerability, Low, "6 vulnerabilities in docker.io/keycloak/keycloak:21.0.2@sha256:347a0d748d05a050dc64b92de2246d2240db6eb38afbc17c3c08d0acb0db1b50", "image")
                .findings(6)
                .has("/resource/image/digest", "sha256:347a0d748d05a050dc64b92de2246d2240db6eb38afbc17c3c08d0acb0db1b50")
                .has("/findings/0/title", "A flaw was found in Mozilla nss."),
        ]),
        ok("grype/grype_snapshot_empty.json", Grype, 1, vec![
            ev(0, Vulnerability, Info, "no vulnerabilities in unknown", "")
                .has("/labels/riposte.time", "received"),
        ]),
        ok("grype/grype_snapshot_image-presenter.json", Grype, 1, vec![
            ev(0, Vulnerability, Critical, "2 vulnerabilities in user-input", "image")
                .findings(2)
                .has("/findings/0/fixed", "1.2.1, 2.1.3, 3.4.0")
                .has("/resource/image/digest", "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5"),
        ]),
        // Harbor.
        ok("harbor/harbor-docs_push-artifact_default.json", Harbor, 1, vec![
            ev(0, Registry, Info, "artifact pushed: localhost/harbor/alpine@sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4", "image")
                .has("/resource/image/repository", "localhost/harbor/alpine")
                .has("/resource/image/digest", "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4")
                .has("/time", "2023-04-03T06:04:53Z")
                .has("/labels/operator", "harbor-jobservice"),
        ]),
        ok("harbor/harbor-docs_scanning-completed_cloudevents.json", Harbor, 1, vec![
            ev(0, Vulnerability, Info, "no vulnerabilities in localhost/harbor/alpine@sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4", "image")
                .has("/id", "64bce2fe-6159-454d-8389-852d01ef1e9d")
                .has("/time", "2023-04-03T06:12:55Z")
                .has("/labels/scan.total", "0")
                .has("/labels/scan.scanner", "Trivy v0.37.2")
                .has("/labels/harbor.event", "harbor.scan.completed"),
        ]),
        ok("harbor/harbor-docs_scanning-completed_default.json", Harbor, 1, vec![
            ev(0, Vulnerability, Info, "no vulnerabilities in localhost/harbor/alpine@sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4", "image")
                .has("/labels/scan.status", "Success")
                .has("/time", "2023-04-03T06:12:55Z"),
        ]),
        ok("harbor/harbor-docs_scanning-failed_default.json", Harbor, 1, vec![
            ev(0, Registry, Low, "scan failed: localhost/harbor/alpine@sha256:dabea2944dcc2b86482b4f0b0fb62da80e0673e900c46c0e03b45919881a5d84", "image")
                .has("/labels/scan.status", "Error"),
        ]),
        ok("harbor/zulip-fixture_push-artifact.json", Harbor, 1, vec![
            ev(0, Registry, Info, "artifact pushed: harbor.example.com/example/test:latest", "image")
                .has("/resource/image/repository", "harbor.example.com/example/test")
                .has("/resource/image/tag", "latest")
                .has("/labels/operator", "admin"),
        ]),
        ok("harbor/zulip-fixture_scanning-completed_high.json", Harbor, 1, vec![
            ev(0, Vulnerability, High, "5 vulnerabilities in harbor.xxx.xxxx.com/test/alpine/helm:3.8.1", "image")
                .has("/resource/image/repository", "harbor.xxx.xxxx.com/test/alpine/helm")
                .has("/resource/image/tag", "3.8.1")
                .has("/labels/scan.total", "5")
                .has("/labels/scan.fixable", "5")
                .has("/labels/scan.high", "4")
                .has("/labels/scan.unknown", "1"),
        ]),
        // Kubernetes audit.
        ok("k8s-audit/falco-test_attach-cluster-admin-role.json", K8sAudit, 1, vec![
            ev(0, Audit, Info, "create clusterrolebindings", "")
                .has("/id", "c97244c7-4aec-4714-946a-8204d00ecdca")
                .has("/labels/user", "minikube-user")
                .has("/labels/response_code", "201")
                .has("/time", "2018-10-26T14:26:34.238974Z"),
        ]),
        ok("k8s-audit/falco-test_create-kube-system-secret.json", K8sAudit, 1, vec![
            ev(0, Audit, Info, "create secrets", "")
                .has("/labels/namespace", "kube-system")
                .has("/summary", "admin: create secrets bootstrap-token-ne7bxu in namespace kube-system (decision allow, response 201)"),
        ]),
        ok("k8s-audit/falco-test_create-privileged-pod.json", K8sAudit, 1, vec![
            ev(0, Audit, Info, "create pods", "pod")
                .has("/resource/pod/name", "nginx-deployment-5cdcc99dbf-rgw6z")
                .has("/resource/pod/namespace", "default")
                .has("/resource/pod/uid", "8c845395-d85f-11e8-88b6-080027728ac4")
                .has("/resource/pod/labels/app", "nginx"),
        ]),
        ok("k8s-audit/falco-test_create-secret.json", K8sAudit, 1, vec![
            ev(0, Audit, Info, "create secrets", "").has("/labels/decision", "allow"),
        ]),
        ok("k8s-audit/falco-test_exec-pod.json", K8sAudit, 1, vec![
            ev(0, Audit, Medium, "create pods/exec", "container pod process")
                .has("/id", "ca1ed9f4-7bf4-4c85-81a8-1b11253d1ba6")
                .has("/resource/pod/name", "nginx-deployment-7998647bdf-phvq7")
                .has("/resource/pod/namespace", "default")
                .has("/resource/container/name", "nginx1")
                .has("/resource/process/cmdline", "bash")
                .has("/labels/subresource", "exec")
                .has("/labels/response_code", "101")
                .has("/summary", "minikube-user: create pods/exec nginx-deployment-7998647bdf-phvq7 in namespace default (decision allow, response 101)"),
        ]),
        rejected("k8s-audit/falco-test_malformed-fal_01_003.json", K8sAudit, "wrong_shape",
            "`kind` must be \"Event\" or \"EventList\", got 0"),
        // PolicyReports are YAML: generic reads JSON only.
        rejected("policyreport/wgpolicy_kubearmor-adapter-list.yaml", Generic, "malformed", "line 1 column 1"),
        rejected("policyreport/wgpolicy_sample-falco-policyreport.yaml", Generic, "malformed", "expected value"),
        rejected("policyreport/wgpolicy_sample-kyverno-reports-x-k8s-io.yaml", Generic, "malformed", "expected value"),
        rejected("policyreport/wgpolicy_trivy-adapter-policyreport.yaml", Generic, "malformed", "expected value"),
        // Tetragon.
        ok("tetragon/tetragon_docs-credentials-change_process-kprobe.json", Tetragon, 1, vec![
            ev(0, Runtime, Medium, "commit_creds: /tmp/su", "container pod node image process")
                .has("/resource/container/id", "2e58c8357465961fd96f758e87d0269dfb5f97c536847485de9d7ec62be34a64")
                .has("/resource/pod/name", "xwing")
                .has("/resource/pod/labels/org", "alliance")
                .has("/resource/process/pid", "22386")
                .has("/labels/tetragon.function", "commit_creds")
                .has("/id", "a2luZC1jb250cm9sLXBsYW5lOjE0MDczMDQyODk3MTc6MjIzODY=:process_kprobe:2023-07-25T12:05:01.410834172Z"),
        ]),
        ok("tetragon/tetragon_docs-filename-access_process-kprobe.json", Tetragon, 1, vec![
            ev(0, Runtime, Medium, "file-monitoring: /bin/vi", "container pod node image process")
                .has("/summary", "security_file_permission(/etc/passwd, 2) by /bin/vi /etc/passwd (pid 64746) in pod default/file-access")
                .has("/resource/node/name", "tetragon-dev-control-plane")
                .has("/labels/tetragon.policy", "file-monitoring"),
        ]),
        ok("tetragon/tetragon_docs-namespace-access_process-kprobe.json", Tetragon, 1, vec![
            ev(0, Runtime, Medium, "namespace-access: /usr/bin/nsenter", "container pod node image process")
                .has("/resource/process/cmdline", "/usr/bin/nsenter -t 1 -m -u -n -i -p")
                .has("/resource/image/repository", "quay.io/cilium/json-mock"),
        ]),
        ok("tetragon/tetragon_docs-process-execution_process-exec.json", Tetragon, 1, vec![
            ev(0, Runtime, Info, "Process executed: /usr/bin/whoami", "container pod node image process")
                .has("/resource/container/id", "1fb931d2f6e5e4cfdbaf30fdb8e2fdd81320bdb3047ded50120a4f82838209ce")
                .has("/resource/container/name", "spaceship")
                .has("/resource/container/image", "docker.io/tgraf/netperf:latest")
                .has("/resource/image/digest", "sha256:8e86f744bfea165fd4ce68caa05abc96500f40130b857773186401926af7e9e6")
                .has("/resource/pod/namespace", "default")
                .has("/time", "2022-05-11T12:54:45.615Z"),
        ]),
        ok("tetragon/tetragon_docs-process-execution_process-exit.json", Tetragon, 1, vec![
            ev(0, Runtime, Info, "Process exited: /usr/bin/whoami", "container pod node image process")
                .has("/summary", "/usr/bin/whoami --version (pid 51583) exited with status 0 in pod default/xwing"),
        ]),
        ok("tetragon/tetragon_testdata_events.jsonl", Tetragon, 3, vec![
            ev(0, Runtime, Info, "Process executed: /usr/bin/netserver", "container pod node image process")
                .has("/labels/riposte.time", "received")
                .has("/resource/node/name", "my-node"),
            ev(2, Runtime, Info, "Process executed: /starwars-docker", "container pod node image process")
                .has("/resource/pod/name", "deathstar-6f87496b94-gjf74")
                .has("/time", "2022-10-18T03:16:22.225264791Z"),
        ]),
        // Tracee: generic.
        ok("tracee/tracee-docs_k8s-execve.json", Generic, 1, vec![
            ev(0, Alert, Info, "execve", "host process")
                .has("/time", "2023-05-21T16:57:30.477166817Z")
                .has("/resource/host/name", "minikube")
                .has("/resource/process/name", "cri-dockerd"),
        ]),
        ok("tracee/tracee-docs_new-structure_sched-process-exec.json", Generic, 1, vec![
            ev(0, Alert, Info, "sched_process_exec", "").has("/labels/riposte.time", "received"),
        ]),
        ok("tracee/tracee-docs_security-file-open.jsonl", Generic, 2, vec![
            ev(0, Alert, Info, "security_file_open", "host process")
                .has("/time", "2022-07-08T22:59:27.356748797Z"),
            ev(1, Alert, Info, "openat", "host process"),
        ]),
        ok("tracee/tracee-helm-notes_signature-new-executable-dropped.json", Generic, 1, vec![
            ev(0, Alert, Info, "New executable dropped", "container pod image host process")
                .has("/resource/container/id", "ae95a93ce0c2f1b824ac4b205e4d1a3c8f724d663626c1ad23576efec64318de")
                .has("/resource/pod/name", "app-75ff449bcd-hfwnz")
                .has("/resource/image/ref", "docker.io/library/ubuntu:latest")
                .has("/time", "2023-03-01T13:09:57.900822209Z"),
        ]),
        // Trivy Operator VulnerabilityReports (YAML).
        ok("trivy-operator/trivy-operator_vulnerabilityreport_coredns.yaml", Trivy, 1, vec![
            ev(0, Vulnerability, High, "1 vulnerability in k8s.gcr.io/coredns/coredns:v1.8.0", "container image")
                .findings(1)
                .has("/time", "2022-12-08T15:50:37Z")
                .has("/resource/container/name", "coredns")
                .has("/resource/image/repository", "k8s.gcr.io/coredns/coredns")
                .has("/labels/namespace", "kube-system")
                .has("/labels/trivy.workload", "ReplicaSet/coredns-558bd4d5db")
                .has("/data/metadata/creationTimestamp", "2022-12-08T15:50:37Z"),
        ]),
        ok("trivy-operator/trivy-operator_vulnerabilityreport_docs-nginx.yaml", Trivy, 1, vec![
            ev(0, Vulnerability, Critical, "2 vulnerabilities in index.docker.io/library/nginx:1.16", "container image")
                .findings(2)
                .has("/resource/image/tag", "1.16")
                .has("/findings/0/fixed", "0.9.1-2+deb10u1")
                .has("/findings/1/title", "libwebp: out-of-bounds read in WebPMuxCreateInternal")
                .has("/labels/riposte.time", "received"),
        ]),
        // Trivy JSON reports.
        ok("trivy/trivy-operator-fixture_image-alpine-3.10.2.json", Trivy, 1, vec![
            // No `Severity` in this older layout: the NVD vendor score decides.
            ev(0, Vulnerability, Medium, "2 vulnerabilities in alpine:3.10.2", "image")
                .findings(2)
                .has("/findings/0/severity", "medium")
                .has("/findings/1/severity", "low")
                .has("/resource/image/digest", "sha256:72c42ed48c3a2db31b7dafe17d275b634664a708d901ec9fd57b1529280f01fb"),
        ]),
        ok("trivy/trivy-operator-fixture_image-exposed-secrets.json", Trivy, 2, vec![
            ev(0, Vulnerability, Info, "no vulnerabilities in alpine:3.10.2", "image"),
            ev(1, Secret, Critical, "4 secrets in alpine:3.10.2", "image")
                .findings(4)
                .has("/findings/0/id", "stripe-publishable-token")
                .has("/findings/0/package", "/app/config/secret.yaml"),
        ]),
        ok("trivy/trivy_image_alpine-39-skip-no-results.json", Trivy, 1, vec![
            ev(0, Vulnerability, Info, "no vulnerabilities in ghcr.io/aquasecurity/trivy-test-images:alpine-39", "image")
                .has("/id", "017b7d41-e09f-7000-80ea-000000000001")
                .has("/time", "2021-08-25T12:20:30.000000005Z"),
        ]),
        ok("trivy/trivy_image_alpine-39.json", Trivy, 1, vec![
            ev(0, Vulnerability, Critical, "6 vulnerabilities in ghcr.io/aquasecurity/trivy-test-images:alpine-39", "image")
                .findings(6)
                .has("/resource/image/tag", "alpine-39")
                .has("/labels/os", "alpine 3.9.4"),
        ]),
        ok("trivy/trivy_image_centos-7.json", Trivy, 1, vec![
            ev(0, Vulnerability, Medium, "3 vulnerabilities in ghcr.io/aquasecurity/trivy-test-images:centos-7", "image")
                .findings(3)
                .has("/findings/1/installed", "1:1.0.2k-16.el7")
                .has("/findings/1/fixed", "1:1.0.2k-19.el7"),
        ]),
        ok("trivy/trivy_image_fluentd-gems.json", Trivy, 1, vec![
            ev(0, Vulnerability, Critical, "2 vulnerabilities in ghcr.io/aquasecurity/trivy-test-images:fluentd-multiple-lockfiles", "image")
                .findings(2)
                .has("/findings/1/fixed", "6.0.3.1, 5.2.4.3"),
        ]),
        ok("trivy/trivy_image_spring4shell-jre11.json", Trivy, 1, vec![
            ev(0, Vulnerability, Critical, "1 vulnerability in ghcr.io/aquasecurity/trivy-test-images:spring4shell-jre11", "image")
                .findings(1)
                .has("/findings/0/id", "CVE-2022-22965"),
        ]),
    ]
}

/// The value at `pointer` as text (strings as they are, other values as JSON).
fn at(event: &Event, pointer: &str) -> Option<String> {
    let value = serde_json::to_value(event).unwrap();
    value.pointer(pointer).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn check_events(case: &Case, events: &[Event], count: usize, checks: &[Check]) -> Vec<String> {
    let mut problems = Vec::new();
    let name = format!("{} as {}", case.file, case.format);
    if events.len() != count {
        problems.push(format!("{name}: {} events, expected {count}", events.len()));
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    if ids.len() != events.len() {
        problems.push(format!("{name}: ids are not unique"));
    }
    for event in events {
        if event.source != case.format {
            problems.push(format!("{name}: source {}", event.source));
        }
        if DateTime::parse_from_rfc3339(&event.time).is_err() {
            problems.push(format!("{name}: time `{}` is not RFC 3339", event.time));
        }
        if event.id.is_empty() || event.title.is_empty() || event.data.is_null() {
            problems.push(format!("{name}: empty id, title or data in {}", event.id));
        }
    }
    for check in checks {
        let Some(event) = events.get(check.index) else {
            problems.push(format!("{name}: no event {}", check.index));
            continue;
        };
        let here = format!("{name} event {}", check.index);
        if event.kind != check.kind {
            problems.push(format!("{here}: kind {} != {}", event.kind, check.kind));
        }
        if event.severity != check.severity {
            problems.push(format!(
                "{here}: severity {} != {}",
                event.severity, check.severity
            ));
        }
        if event.title != check.title {
            problems.push(format!(
                "{here}: title `{}` != `{}`",
                event.title, check.title
            ));
        }
        if parts(event) != check.parts {
            problems.push(format!(
                "{here}: parts `{}` != `{}`",
                parts(event),
                check.parts
            ));
        }
        if event.findings.len() != check.findings {
            problems.push(format!(
                "{here}: {} findings != {}",
                event.findings.len(),
                check.findings
            ));
        }
        for (pointer, expected) in &check.fields {
            let found = at(event, pointer);
            if found.as_deref() != Some(*expected) {
                problems.push(format!(
                    "{here}: {pointer} = {found:?}, expected `{expected}`"
                ));
            }
        }
    }
    problems
}

#[test]
fn every_corpus_file_has_a_table_entry_and_normalizes_as_it_says() {
    let cases = cases();
    let files: BTreeSet<String> = corpus_files().into_iter().collect();
    let mut entries: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        *entries.entry(case.file).or_default() += 1;
    }
    let mut problems = Vec::new();
    for file in &files {
        if !entries.contains_key(file.as_str()) {
            problems.push(format!("{file}: no table entry"));
        }
    }
    for (file, n) in &entries {
        if !files.contains(*file) {
            problems.push(format!(
                "{file}: table entry for a file that is not in the corpus"
            ));
        }
        if *n > 1 {
            problems.push(format!("{file}: {n} table entries"));
        }
    }
    assert_eq!(files.len(), 60, "the corpus README lists 60 data files");

    for case in &cases {
        if let Some(format) = folder_format(case.file) {
            assert_eq!(format, case.format, "{}: its folder's format", case.file);
        }
        let result = run(case.format, case.file);
        match (&case.expect, result) {
            (Expect::Events(count, checks), Ok(events)) => {
                problems.extend(check_events(case, &events, *count, checks));
                let again = run(case.format, case.file).unwrap();
                if again != events {
                    problems.push(format!("{}: not the same events twice", case.file));
                }
            }
            (Expect::Events(..), Err(err)) => {
                problems.push(format!("{}: rejected: {err}", case.file))
            }
            (Expect::Rejected(code, reason), Err(err)) => {
                if err.code() != *code || !err.to_string().contains(reason) {
                    problems.push(format!(
                        "{}: rejected as {} `{err}`, expected {code} with `{reason}`",
                        case.file,
                        err.code()
                    ));
                }
            }
            (Expect::Rejected(..), Ok(events)) => {
                problems.push(format!("{}: accepted ({} events)", case.file, events.len()))
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn dedicated_formats_reject_every_sample_of_another_format() {
    let mut problems = Vec::new();
    for file in corpus_files() {
        let own = folder_format(&file);
        let yaml = file.ends_with(".yaml");
        for format in Source::ALL {
            if format == Source::Generic || Some(format) == own {
                continue;
            }
            let result = run(format, &file);
            // Harbor's CloudEvents notification is a valid CloudEvent too.
            if format == Source::Cloudevents
                && file == "harbor/harbor-docs_scanning-completed_cloudevents.json"
            {
                let events = result.unwrap();
                assert_eq!(events[0].title, "harbor.scan.completed");
                assert_eq!(events[0].id, "64bce2fe-6159-454d-8389-852d01ef1e9d");
                continue;
            }
            let expected = if yaml && format != Source::Trivy {
                "malformed"
            } else {
                "wrong_shape"
            };
            match result {
                Err(err) if err.code() == expected => {}
                Err(err) => problems.push(format!(
                    "{file} as {format}: {} `{err}`, expected {expected}",
                    err.code()
                )),
                Ok(events) => problems.push(format!(
                    "{file} as {format}: accepted ({} events)",
                    events.len()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn a_grype_report_given_to_falco_is_the_wrong_shape() {
    let err = run(Source::Falco, "grype/grype_image_chainguard-ruby.json").unwrap_err();
    assert_eq!(
        err,
        FormatError::WrongShape {
            format: Source::Falco,
            reason: "`rule` is missing".to_string()
        }
    );
    assert_eq!(err.to_string(), "not a falco payload: `rule` is missing");
}

#[test]
fn the_malformed_audit_event_is_rejected_with_its_reason() {
    let err = run(
        Source::K8sAudit,
        "k8s-audit/falco-test_malformed-fal_01_003.json",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a k8s-audit payload: `kind` must be \"Event\" or \"EventList\", got 0"
    );
}

#[test]
fn falco_evt_time_keeps_every_nanosecond() {
    let file = "falco/falco-website_terminal-shell-in-container.json";
    let mut alert: Value = serde_json::from_slice(&read(file)).unwrap();
    alert.as_object_mut().unwrap().remove("time");
    let payload = serde_json::to_vec(&alert).unwrap();
    let event = normalize(Source::Falco, &payload, received())
        .unwrap()
        .remove(0);
    // 1685022245478445995 is above 2^53: a float would have rounded it.
    assert_eq!(event.time, "2023-05-25T13:44:05.478445995Z");
    assert!(!event.labels.contains_key("riposte.time"));
    assert_eq!(
        event.data["output_fields"]["evt.time"].as_i64(),
        Some(1_685_022_245_478_445_995)
    );
    let original = events(Source::Falco, file).remove(0);
    assert!(serde_json::to_string(&original.data)
        .unwrap()
        .contains("1685022245478445995"));
}

#[test]
fn falco_reads_rule_with_a_capital_r() {
    let event = events(
        Source::Falco,
        "falco/falco-talon-examples_test-networkpolicy.json",
    )
    .remove(0);
    assert_eq!(event.title, "Test NetworkPolicy");
    assert_eq!(event.severity, Severity::Critical);
}

#[test]
fn falco_invalid_time_falls_back_to_the_received_time() {
    let event = events(
        Source::Falco,
        "falco/falco-website_sidekick-test_invalid-time.json",
    )
    .remove(0);
    assert_eq!(event.time, RECEIVED);
    assert_eq!(event.labels["riposte.time"], "received");
    assert_eq!(event.data["time"], "2021-04-13T20:58:00.746609046Z+2");
}

#[test]
fn falco_json_lines_skip_plain_text_log_lines() {
    let file = "falco/testing_open-from-cat.jsonl";
    let plain = events(Source::Falco, file);
    let mut noisy = b"Wed May 10 14:07:18 2023: Falco version: 0.35.0\nWed May 10 14:07:18 2023: Starting health webserver with threadiness 8\n\n".to_vec();
    noisy.extend(read(file));
    noisy.extend(b"Wed May 10 14:09:00 2023: SIGINT received, exiting...\n");
    let with_logs = normalize(Source::Falco, &noisy, received()).unwrap();
    assert_eq!(with_logs, plain);
    assert_eq!(with_logs.len(), 8);

    let only_logs = b"Wed May 10 14:07:18 2023: Starting health webserver\n";
    assert!(matches!(
        normalize(Source::Falco, only_logs, received()),
        Err(FormatError::Malformed(_))
    ));
}

#[test]
fn falco_internal_events_are_never_security_alerts() {
    for file in [
        "falco/falco-website_internal-metrics-snapshot.json",
        "falco/falcosidekick-test_syscall-event-drop.json",
    ] {
        let event = events(Source::Falco, file).remove(0);
        assert_eq!(event.kind, Kind::Internal, "{file}");
        assert_eq!(event.severity, Severity::Info, "{file}");
    }
}

#[test]
fn trivy_keeps_one_cve_on_two_packages_and_collapses_identical_findings() {
    let file = "trivy/trivy_image_alpine-39.json";
    let event = events(Source::Trivy, file).remove(0);
    let cve_1549: Vec<&str> = event
        .findings
        .iter()
        .filter(|f| f.id == "CVE-2019-1549")
        .map(|f| f.package.as_deref().unwrap())
        .collect();
    assert_eq!(cve_1549, ["libcrypto1.1", "libssl1.1"]);

    // The same report with every vulnerability listed twice (and once more in a second Result).
    let mut report: Value = serde_json::from_slice(&read(file)).unwrap();
    let vulnerabilities = report["Results"][0]["Vulnerabilities"]
        .as_array()
        .unwrap()
        .clone();
    let doubled: Vec<Value> = vulnerabilities
        .iter()
        .chain(vulnerabilities.iter())
        .cloned()
        .collect();
    report["Results"][0]["Vulnerabilities"] = Value::Array(doubled);
    let extra = serde_json::json!({"Target": "again", "Vulnerabilities": vulnerabilities});
    report["Results"].as_array_mut().unwrap().push(extra);
    let payload = serde_json::to_vec(&report).unwrap();
    let doubled_event = normalize(Source::Trivy, &payload, received())
        .unwrap()
        .remove(0);
    assert_eq!(doubled_event.findings, event.findings);
    assert_eq!(
        doubled_event.title,
        "6 vulnerabilities in ghcr.io/aquasecurity/trivy-test-images:alpine-39"
    );
}

#[test]
fn grype_collapses_one_cve_matched_twice_for_one_package() {
    let event = events(Source::Grype, "grype/grype_image_chainguard-ruby.json").remove(0);
    let matches = event.data["matches"].as_array().unwrap().len();
    assert_eq!(matches, 3);
    let uri: Vec<_> = event
        .findings
        .iter()
        .filter(|f| f.package.as_deref() == Some("uri"))
        .collect();
    assert_eq!(uri.len(), 1, "{uri:?}");
    assert_eq!(uri[0].id, "CVE-2023-28755");
    assert_eq!(uri[0].installed.as_deref(), Some("0.10.1"));
    assert_eq!(uri[0].fixed.as_deref(), Some("0.10.2"));
}

#[test]
fn harbor_reads_the_scan_overview_keyed_by_a_mime_type_with_spaces() {
    let event = events(
        Source::Harbor,
        "harbor/zulip-fixture_scanning-completed_high.json",
    )
    .remove(0);
    assert!(event.data["event_data"]["resources"][0]["scan_overview"]
        .get("application/vnd.security.vulnerability.report; version=1.1")
        .is_some());
    assert_eq!(event.kind, Kind::Vulnerability);
    assert_eq!(event.severity, Severity::High);
    assert!(event.findings.is_empty());
    assert_eq!(event.labels["scan.total"], "5");
    assert_eq!(event.labels["scan.high"], "4");
    assert_eq!(event.labels["scan.scanner"], "Trivy v0.20.1");
}

#[test]
fn a_byte_order_mark_is_stripped_before_parsing() {
    let file = "policyreport/wgpolicy_kubearmor-adapter-list.yaml";
    let bytes = read(file);
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"));
    // Read as YAML by trivy: the List is understood (so the mark is gone) and refused for holding
    // PolicyReports, not VulnerabilityReports.
    match run(Source::Trivy, file) {
        Err(FormatError::WrongShape { reason, .. }) => {
            assert_eq!(
                reason,
                "`items[0]` is a `PolicyReport`, not a VulnerabilityReport"
            )
        }
        other => panic!("{other:?}"),
    }
    // And a JSON payload with a mark reads exactly as without one, same id.
    let alert = read("falco/falcosidekick-readme_write-below-binary-dir.json");
    let mut marked = b"\xEF\xBB\xBF".to_vec();
    marked.extend(&alert);
    assert_eq!(
        normalize(Source::Falco, &marked, received()).unwrap(),
        normalize(Source::Falco, &alert, received()).unwrap()
    );
}

#[test]
fn generic_reads_the_docker_json_stream_as_nine_events() {
    let events = events(
        Source::Generic,
        "docker/moby-api-v1.24-docs_events-stream.jsonstream",
    );
    let titles: Vec<&str> = events.iter().map(|e| e.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "image pull",
            "container create",
            "container attach",
            "network connect",
            "container start",
            "container resize",
            "container die",
            "network disconnect",
            "container destroy"
        ]
    );
    assert!(events
        .iter()
        .all(|e| e.id.starts_with("sha256:") && !e.id.contains('#')));
}

#[test]
fn payload_hash_ids_are_stable_and_indexed_within_one_object() {
    let file = "alertmanager/msteams-test_webhook-v4_2-alerts.json";
    let first = events(Source::Alertmanager, file);
    assert_eq!(
        first[0].id,
        format!("{}#0", first[0].id.trim_end_matches("#0"))
    );
    assert!(first[1].id.ends_with("#1"));
    assert_eq!(
        first[0].id.trim_end_matches("#0"),
        first[1].id.trim_end_matches("#1")
    );
    assert_eq!(events(Source::Alertmanager, file), first);
}

#[test]
fn empty_and_binary_payloads_are_rejected_by_every_format() {
    for format in Source::ALL {
        assert_eq!(normalize(format, b"", received()), Err(FormatError::Empty));
        assert_eq!(
            normalize(format, b" \r\n\t ", received()),
            Err(FormatError::Empty)
        );
        assert_eq!(
            normalize(format, b"\xEF\xBB\xBF\n", received()),
            Err(FormatError::Empty)
        );
        assert!(matches!(
            normalize(format, b"{\"rule\": \"\xff\"}", received()),
            Err(FormatError::NotText(_))
        ));
        match normalize(format, b"{\"rule\": \"x\",\n \"priority\": }", received()) {
            Err(FormatError::Malformed(message)) => {
                assert!(message.contains("line 2 column"), "{format}: {message}")
            }
            other => panic!("{format}: {other:?}"),
        }
    }
}
