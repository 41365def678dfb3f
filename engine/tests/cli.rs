//! The offline commands, run as a user would: `check`, `test`, `explain`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

fn riposte(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_riposte"))
        .args(args)
        .env("RIPOSTE_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

const BROKEN: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: Broken_Name
spec:
  match:
    sources: [falco]
    when: |
      event.title == "x"
        && evnt.severity == "high"
  vars:
    target: event.resource.container.id +
  steps:
    - id: first
      action: log.info
      with:
        message: "${{ event.title }"
        colour: red
    - id: first
      action: firewall.block
    - id: third
      action: log.shout
      with: { message: hi }
    - id: fourth
      action: nats.publish
      with: { subject: 42 }
      retry: { attempts: 99 }
  notify:
    - action: nats.publish
"#;

#[test]
fn check_names_every_problem_with_its_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), BROKEN).unwrap();
    std::fs::write(dir.path().join("unknown-key.yaml"), "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: k, ownr: me }\nspec:\n  match: {}\n  stepz: []\n").unwrap();
    let (code, out, _) = riposte(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = dir.path().join("broken.yaml").display().to_string();
    let expected = [
        format!(
            "{f}:4:9: name `Broken_Name` must be lower-case letters, digits and `-` (at most 63)"
        ),
        format!("{f}:10:12: in `when`: Undefined variable: evnt"),
        format!("{f}:12:42: in var `target`: Script is incomplete"),
        format!("{f}:17:19: in template: `${{{{` without its closing `}}}}`"),
        format!("{f}:18:17: `log.info` has no parameter `colour` (it has: message)"),
        format!("{f}:19:11: step id `first` is used twice"),
        format!(
            "{f}:20:15: unknown connector `firewall` (configured: docker, kubernetes, log, nats, registry)"
        ),
        format!("{f}:22:15: connector `log` (log) has no action `shout` (it has: info, warn)"),
        format!(
            "{f}:26:24: parameter `subject` of `nats.publish` must be of type string, got integer"
        ),
        format!("{f}:26:13: `nats.publish` needs parameter `payload`"),
        format!("{f}:27:26: retry attempts must be 1 to 10, not 99"),
        format!("{f}:29:15: `nats.publish` has no default message: give its arguments in `with`"),
    ];
    for e in &expected {
        assert!(
            out.lines().any(|l| l.starts_with(e.as_str())),
            "missing `{e}` in:\n{out}"
        );
    }
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with(&format!("{f}:29:")))
            .count(),
        1,
        "{out}"
    );
    let u = dir.path().join("unknown-key.yaml").display().to_string();
    assert!(
        out.contains(&format!("{u}:3:22: unknown field `ownr`, expected one of")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{u}:6:3: unknown field `stepz`, expected one of `dedup`"
        )),
        "{out}"
    );
}

#[test]
fn check_accepts_the_shipped_playbooks() {
    let (code, out, err) = riposte(&["check", &repo("playbooks")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("playbook(s) OK"), "{out}");
}

#[test]
fn test_runs_the_shipped_playbook_cases_and_prints_a_summary() {
    let (code, out, err) = riposte(&["test", &repo("playbooks")]);
    assert_eq!(code, 0, "{out}{err}");
    let summary = out.lines().last().unwrap();
    assert!(summary.ends_with(" passed, 0 failed"), "{out}");
    assert!(!summary.starts_with("0 passed"), "{out}");
}

#[test]
fn test_reports_a_failing_case_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: p }\nspec:\n  match: { sources: [generic], when: 'event.title == \"a\"' }\n  steps:\n    - { id: s, action: log.info, with: { message: 'got ${{ event.title }}' } }\n  tests:\n    - name: matches a\n      format: generic\n      event: { title: a }\n      expect: { match: true, actions: [log.info], args: { s: { message: got a } } }\n    - name: wrongly expects b to match\n      format: generic\n      event: { title: b }\n      expect: { match: true }\n",
    )
    .unwrap();
    let (code, out, _) = riposte(&["test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PASS p :: matches a"), "{out}");
    assert!(
        out.contains("FAIL p :: wrongly expects b to match"),
        "{out}"
    );
    assert!(out.contains("expected match: true, got false (no match: clause is false: event.title is \"b\", not \"a\")"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");
}

#[test]
fn explain_names_the_real_targets_and_the_reason_for_each_non_match() {
    let (code, out, err) = riposte(&[
        "explain",
        &repo("playbooks/fixtures/falco-shell-in-container-docker.json"),
        "--format",
        "falco",
        "--playbooks",
        &repo("playbooks"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\"title\": \"Terminal shell in container\""),
        "{out}"
    );
    assert!(out.contains("-- shell-in-container: match"), "{out}");
    assert!(out.contains("pause container `ee97d9c4186f`"), "{out}");
    assert!(
        out.contains("no match: source `falco` is not in its sources"),
        "{out}"
    );
}

#[test]
fn explain_says_why_a_payload_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(&f, "{\"kind\": 0}").unwrap();
    let (code, out, _) = riposte(&[
        "explain",
        f.to_str().unwrap(),
        "-f",
        "k8s-audit",
        "-p",
        &repo("playbooks"),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("rejected (wrong_shape): not a k8s-audit payload"),
        "{out}"
    );
}

#[test]
fn the_deployment_config_is_valid_for_the_shipped_playbooks() {
    let (code, out, err) = riposte(&[
        "check",
        &repo("playbooks"),
        "--config",
        &repo("deploy/riposte.yaml"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}
