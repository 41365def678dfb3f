//! Property test: no event makes the matcher or the runner panic. Events built from arbitrary
//! values of the fields playbooks read (titles, severities, labels, namespaces, findings) go
//! through the shipped playbooks and a few written to provoke the sandbox, with every
//! connector in plan mode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use riposte::clock::SystemClock;
use riposte::config::Config;
use riposte::event::Source;
use riposte::script::Sandbox;
use riposte::testing::Simulator;
use serde_json::{json, Value};

const PROVOKING: &[&str] = &[
    "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: p-index }\nspec:\n  match: { when: 'event.findings[0].id.len() > 0 && event.labels[\"x\"] == \"y\"' }\n  steps: [ { id: s, action: log.info, with: { message: '${{ event.findings[7][\"package\"] }} ${{ event.data.a.b.c }}' } } ]\n",
    "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: p-regex }\nspec:\n  match: { when: 'matches(event.title, event.summary) || in_cidr(event.title, event.summary)' }\n  steps: [ { id: s, action: log.info, with: { message: '${{ timestamp(event.time) }}' } } ]\n",
    "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: p-heavy }\nspec:\n  match: { when: 'let s = event.title; for i in 0..1000 { s += s; } s.len() > 0' }\n  vars: { n: 'event.findings.map(|f| f.severity).len() / (event.labels.len() - event.labels.len())' }\n  steps: [ { id: s, action: nats.publish, with: { subject: '${{ event.title }}', payload: '${{ vars.n }}' } } ]\n",
];

fn simulator() -> &'static Simulator {
    static SIM: OnceLock<Simulator> = OnceLock::new();
    SIM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("matcher-fuzz-playbooks");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, text) in PROVOKING.iter().enumerate() {
            std::fs::write(dir.join(format!("p{i}.yaml")), text).unwrap();
        }
        let sandbox = Sandbox::new(Arc::new(SystemClock));
        let config = Config::default_with_bindings();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks");
        let mut playbooks = riposte::engine::load_playbooks(&shipped, &config, &sandbox).unwrap();
        playbooks.extend(riposte::engine::load_playbooks(&dir, &config, &sandbox).unwrap());
        Simulator::new(playbooks, &config, sandbox).unwrap()
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("Terminal shell in container".to_owned()),
        Just("kube-system".to_owned()),
        Just("critical".to_owned()),
        Just("10.0.0.0/8".to_owned()),
        Just("(((".to_owned()),
        "\\PC{0,40}",
    ]
}

fn generic_event() -> impl Strategy<Value = Value> {
    (
        text(),
        text(),
        text(),
        prop::collection::btree_map("[a-z._]{1,12}", text(), 0..6),
        prop::collection::vec((text(), text()), 0..4),
    )
        .prop_map(|(title, severity, summary, labels, findings)| {
            json!({
                "title": title,
                "severity": severity,
                "summary": summary,
                "labels": labels,
                "namespace": labels.values().next(),
                "findings": findings.iter().map(|(id, s)| json!({"id": id, "severity": s})).collect::<Vec<_>>(),
                "time": summary,
            })
        })
}

fn falco_alert() -> impl Strategy<Value = Value> {
    (text(), text(), text(), text()).prop_map(|(rule, ns, container, output)| {
        json!({
            "rule": rule,
            "priority": "Critical",
            "output": output,
            "time": "2026-01-01T00:00:00Z",
            "output_fields": { "k8s.ns.name": ns, "container.id": container, "proc.cmdline": output }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_generic_event_makes_the_matcher_or_runner_panic(event in generic_event()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let payload = event.to_string().into_bytes();
        let _ = runtime.block_on(simulator().simulate(Source::Generic, &payload));
    }

    #[test]
    fn no_falco_alert_makes_the_matcher_or_runner_panic(alert in falco_alert()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let payload = alert.to_string().into_bytes();
        let _ = runtime.block_on(simulator().simulate(Source::Falco, &payload));
    }
}
