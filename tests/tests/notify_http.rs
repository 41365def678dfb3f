//! End-to-end tests of the HTTP notification connectors (`pagerduty`, `opsgenie`, `slack`,
//! `msteams`, `webhook`): the real binary and a real nats-server, with local receivers playing
//! each service. Every receiver checks what it gets against the service's documented
//! requirements and answers as the service does (an invalid request is refused, so the step
//! fails and the test sees why); the tests then read what each one received: what happened,
//! where, and what riposte did.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::docker::{state_of, Scene};
use riposte_tests::receiver::{resend, Receiver, Reply, Request};
use riposte_tests::*;
use serde_json::{json, Value};

/// The secrets of the test's instances; none may show in the engine's log or audit records.
const PD_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";
const OG_KEY: &str = "eb243592-faa2-4ba2-a551-1afdf565c889";
const SLACK_PATH: &str = "/services/T0RIPOSTE/B0RIPOSTE/sl4ckH00kS3cr3t";
const TEAMS_PATH: &str = "/webhookb2/riposte@tenant/IncomingWebhook/t34msS3cr3t/owner";
const HOOK_SECRET: &str = "wh00k-s3cr3t-shared-with-the-receiver";

fn secrets() -> [&'static str; 5] {
    [
        PD_KEY,
        OG_KEY,
        "sl4ckH00kS3cr3t",
        "t34msS3cr3t",
        HOOK_SECRET,
    ]
}

fn reply(status: u16, body: Value) -> Reply {
    (status, body.to_string())
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn chars(v: &Value, key: &str) -> usize {
    text(v, key).chars().count()
}

/// PagerDuty Events API v2: what `POST /v2/enqueue` requires.
fn pagerduty_problems(r: &Request) -> Vec<String> {
    let mut p = Vec::new();
    let b = r.json();
    if r.method != "POST" || r.path() != "/v2/enqueue" {
        p.push(format!("{} {} is not POST /v2/enqueue", r.method, r.path()));
    }
    if !r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json")
    {
        p.push("content type is not JSON".into());
    }
    // Compared, never quoted: a failing test must not print the key.
    if text(&b, "routing_key") != PD_KEY || chars(&b, "routing_key") != 32 {
        p.push("routing_key is not the 32-character key of routing_key_file".into());
    }
    let action = text(&b, "event_action");
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        p.push(format!("event_action `{action}`"));
    }
    if chars(&b, "dedup_key") > 255 || (action != "trigger" && chars(&b, "dedup_key") == 0) {
        p.push("dedup_key missing or over 255 characters".into());
    }
    if action == "trigger" {
        let pl = &b["payload"];
        let n = chars(pl, "summary");
        if n == 0 || n > 1024 {
            p.push(format!("payload.summary has {n} characters"));
        }
        if chars(pl, "source") == 0 {
            p.push("payload.source is empty".into());
        }
        if !["critical", "error", "warning", "info"].contains(&text(pl, "severity")) {
            p.push(format!("payload.severity `{}`", text(pl, "severity")));
        }
        if let Some(t) = pl.get("timestamp") {
            if chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap_or_default()).is_err() {
                p.push(format!("payload.timestamp `{t}` is not ISO 8601"));
            }
        }
        if !pl["custom_details"].is_object() {
            p.push("payload.custom_details is not an object".into());
        }
        for l in b["links"].as_array().into_iter().flatten() {
            if !text(l, "href").starts_with("http") {
                p.push("a link without href".into());
            }
        }
    }
    p
}

fn pagerduty(r: &Request, _: usize) -> Reply {
    let problems = pagerduty_problems(r);
    if problems.is_empty() {
        let key = text(&r.json(), "dedup_key").to_owned();
        reply(
            202,
            json!({ "status": "success", "message": "Event processed", "dedup_key": key }),
        )
    } else {
        reply(
            400,
            json!({ "status": "invalid event", "message": "Event object is invalid", "errors": problems }),
        )
    }
}

/// Opsgenie Alert API: create, close and notes.
fn opsgenie_problems(r: &Request) -> Vec<String> {
    let mut p = Vec::new();
    let b = r.json();
    if r.header("authorization") != Some(format!("GenieKey {OG_KEY}").as_str()) {
        p.push("Authorization is not `GenieKey <the key of api_key_file>`".into());
    }
    let segments: Vec<&str> = r.path().trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v2", "alerts"] => {
            let n = chars(&b, "message");
            if n == 0 || n > 130 {
                p.push(format!("message has {n} characters"));
            }
            if chars(&b, "alias") > 512 {
                p.push("alias over 512 characters".into());
            }
            if chars(&b, "description") > 15_000 {
                p.push("description over 15000 characters".into());
            }
            if !["P1", "P2", "P3", "P4", "P5"].contains(&text(&b, "priority")) {
                p.push(format!("priority `{}`", text(&b, "priority")));
            }
            let tags = b["tags"].as_array().cloned().unwrap_or_default();
            if tags.len() > 20
                || tags
                    .iter()
                    .any(|t| t.as_str().is_none_or(|t| t.chars().count() > 50))
            {
                p.push("tags: more than 20, or one over 50 characters".into());
            }
            let details = b["details"].as_object().cloned().unwrap_or_default();
            let total: usize = details
                .iter()
                .map(|(k, v)| {
                    k.chars().count() + v.as_str().map_or(usize::MAX / 2, |v| v.chars().count())
                })
                .sum();
            if total > 8000 {
                p.push("details: not strings, or over 8000 characters".into());
            }
            if chars(&b, "entity") > 512 || chars(&b, "source") > 100 {
                p.push("entity over 512 or source over 100 characters".into());
            }
            for who in b["responders"].as_array().into_iter().flatten() {
                let kind = text(who, "type");
                let named = ["id", "name", "username"]
                    .iter()
                    .any(|k| who.get(*k).is_some());
                if !["team", "user", "escalation", "schedule"].contains(&kind) || !named {
                    p.push(format!("responder {who}"));
                }
            }
        }
        ["v2", "alerts", alias, "close" | "notes"] => {
            if alias.is_empty() || r.query() != Some("identifierType=alias") {
                p.push(format!("{} does not name the alert by alias", r.target));
            }
            if segments[3] == "notes" && chars(&b, "note") == 0 {
                p.push("a note without `note`".into());
            }
        }
        _ => p.push(format!("unknown endpoint {}", r.path())),
    }
    p
}

fn opsgenie(r: &Request, i: usize) -> Reply {
    let problems = opsgenie_problems(r);
    if problems.is_empty() {
        reply(
            202,
            json!({ "result": "Request will be processed", "took": 0.01, "requestId": format!("req-{i}") }),
        )
    } else {
        reply(
            422,
            json!({ "message": problems.join("; "), "took": 0.0, "requestId": format!("req-{i}") }),
        )
    }
}

/// Slack incoming webhook with Block Kit.
fn slack_problems(r: &Request) -> Vec<String> {
    let mut p = Vec::new();
    let b = r.json();
    if r.path() != SLACK_PATH {
        p.push("not the webhook's path".into());
    }
    if chars(&b, "text") == 0 {
        p.push("no `text` fallback".into());
    }
    let blocks = b["blocks"].as_array().cloned().unwrap_or_default();
    if blocks.len() > 50 {
        p.push(format!("{} blocks", blocks.len()));
    }
    for block in &blocks {
        match text(block, "type") {
            "header" => {
                let t = &block["text"];
                if text(t, "type") != "plain_text"
                    || chars(t, "text") == 0
                    || chars(t, "text") > 150
                {
                    p.push("a header that is not plain_text of 1 to 150 characters".into());
                }
            }
            "section" => {
                let t = chars(&block["text"], "text");
                let fields = block["fields"].as_array().cloned().unwrap_or_default();
                if (t == 0 && fields.is_empty()) || t > 3000 || fields.len() > 10 {
                    p.push(
                        "a section without text and fields, over 3000 characters or 10 fields"
                            .into(),
                    );
                }
                if fields.iter().any(|f| chars(f, "text") > 2000) {
                    p.push("a field over 2000 characters".into());
                }
            }
            "context" => {
                let n = block["elements"].as_array().map_or(0, Vec::len);
                if n == 0 || n > 10 {
                    p.push(format!("a context block with {n} elements"));
                }
            }
            "divider" => {}
            other => p.push(format!("block type `{other}`")),
        }
    }
    p
}

fn slack(r: &Request, _: usize) -> Reply {
    let problems = slack_problems(r);
    if problems.is_empty() {
        (200, "ok".into())
    } else {
        (400, format!("invalid_blocks: {}", problems.join("; ")))
    }
}

/// Teams incoming webhook with an Adaptive Card.
fn teams_problems(r: &Request) -> Vec<String> {
    let mut p = Vec::new();
    let b = r.json();
    if r.path() != TEAMS_PATH {
        p.push("not the webhook's path".into());
    }
    if r.body.len() > 28 * 1024 {
        p.push("over 28 KB".into());
    }
    if text(&b, "type") != "message" {
        p.push("type is not message".into());
    }
    let attachments = b["attachments"].as_array().cloned().unwrap_or_default();
    if attachments.len() != 1
        || text(&attachments[0], "contentType") != "application/vnd.microsoft.card.adaptive"
    {
        p.push("not one Adaptive Card attachment".into());
        return p;
    }
    let card = &attachments[0]["content"];
    if text(card, "type") != "AdaptiveCard"
        || text(card, "version") != "1.4"
        || text(card, "$schema") != "http://adaptivecards.io/schemas/adaptive-card.json"
    {
        p.push("content is not an AdaptiveCard 1.4 with its $schema".into());
    }
    let body = card["body"].as_array().cloned().unwrap_or_default();
    if body.is_empty() {
        p.push("empty card body".into());
    }
    for e in &body {
        match text(e, "type") {
            "TextBlock" if chars(e, "text") > 0 => {}
            "FactSet" => {
                let facts = e["facts"].as_array().cloned().unwrap_or_default();
                if facts.is_empty()
                    || facts
                        .iter()
                        .any(|f| !f["title"].is_string() || !f["value"].is_string())
                {
                    p.push("a FactSet whose facts are not title/value strings".into());
                }
            }
            other => p.push(format!("body element `{other}`")),
        }
    }
    for a in card["actions"].as_array().into_iter().flatten() {
        if text(a, "type") != "Action.OpenUrl"
            || !text(a, "url").starts_with("http")
            || chars(a, "title") == 0
        {
            p.push(format!("action {a}"));
        }
    }
    p
}

fn teams(r: &Request, _: usize) -> Reply {
    let problems = teams_problems(r);
    if problems.is_empty() {
        (200, "1".into())
    } else {
        (400, format!("Bad payload: {}", problems.join("; ")))
    }
}

/// HMAC-SHA256 by an independent implementation (the openssl command), lowercase hex.
fn openssl_hmac(key: &str, data: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): run `bash scripts/setup`"));
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// A receiver of signed webhooks as the webhook connector's documentation tells one to be:
/// timestamp within 5 minutes, HMAC over `"<timestamp>.<body>"`, each signature once.
fn verifier() -> impl Fn(&Request, usize) -> Reply + Send + Sync + 'static {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    move |r: &Request, _| {
        let ts = r.header("x-riposte-timestamp").unwrap_or_default();
        let Ok(at) = ts.parse::<i64>() else {
            return reply(401, json!({ "error": "no timestamp" }));
        };
        if (chrono::Utc::now().timestamp() - at).abs() > 300 {
            return reply(401, json!({ "error": "stale timestamp" }));
        }
        let mut signed = format!("{ts}.").into_bytes();
        signed.extend_from_slice(&r.body);
        let expected = format!("sha256={}", openssl_hmac(HOOK_SECRET, &signed));
        let given = r.header("x-riposte-signature").unwrap_or_default();
        if given != expected {
            return reply(401, json!({ "error": "bad signature" }));
        }
        if !seen.lock().unwrap().insert(given.to_owned()) {
            return reply(401, json!({ "error": "replayed" }));
        }
        if !r
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json")
            || serde_json::from_slice::<Value>(&r.body).is_err()
        {
            return reply(400, json!({ "error": "not JSON" }));
        }
        reply(200, json!({ "accepted": true }))
    }
}

/// Writes a secret file.
fn secret(work: &Path, name: &str, value: &str) -> String {
    let path = work.join("secrets").join(name);
    write(&path, &format!("{value}\n"));
    path.display().to_string()
}

/// A playbook for Falco's "Terminal shell in container" with `body` (YAML under `spec:`).
fn playbook(name: &str, body: &str) -> String {
    format!(
        r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: {name}
  runbook: https://wiki.example/runbooks/{name}
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container"
{body}"#
    )
}

/// The records of the finished run of `playbook` for `event_id`.
fn finished_run(nats: &str, playbook: &str, event_id: &str) -> (String, Vec<AuditRecord>) {
    let is_run = |x: &AuditRecord| {
        x.record == RecordKind::Run
            && x.playbook.as_deref() == Some(playbook)
            && x.event_id.as_deref() == Some(event_id)
    };
    let records = wait_for(
        nats,
        Duration::from_secs(60),
        &format!("a run of {playbook}"),
        |r| r.iter().any(is_run),
    );
    let run = records
        .iter()
        .find(|x| is_run(x))
        .unwrap()
        .run_id
        .clone()
        .unwrap();
    let of_run = records
        .into_iter()
        .filter(|r| r.run_id.as_deref() == Some(run.as_str()))
        .collect();
    (run, of_run)
}

/// `(step, action, outcome, reason)` of a run's notify records.
fn notifications(records: &[AuditRecord]) -> Vec<(String, String, String, String)> {
    records
        .iter()
        .filter(|r| r.record == RecordKind::Notify)
        .map(|r| {
            (
                r.step.clone().unwrap_or_default(),
                r.action.clone().unwrap_or_default(),
                r.outcome.clone(),
                r.reason.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Fails if any secret shows in `what`, without printing it.
#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for (i, s) in secrets().iter().enumerate() {
        assert!(!text.contains(s), "secret #{i} appears in {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_gets_the_notice_in_its_own_format_and_playbook_arguments_override_it() {
    let mut scene = Scene::new("notify");
    let web = scene.container("web", &[]);
    let pd = Receiver::start(pagerduty);
    let og = Receiver::start(opsgenie);
    let chat = Receiver::start(slack);
    let ms = Receiver::start(teams);
    let hook = Receiver::start(verifier());

    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let config = w.join("riposte.yaml");
    write(
        &config,
        &format!(
            r#"connectors:
  pd: {{ type: pagerduty, routing_key_file: {pd_key}, url: "{pd_url}", timeout: 5s }}
  og: {{ type: opsgenie, api_key_file: {og_key}, url: "{og_url}" }}
  chat: {{ type: slack, url_file: {slack_url} }}
  teams: {{ type: msteams, url_file: {teams_url} }}
  hook:
    type: webhook
    url: "{hook_url}/v1/events/generic"
    secret_file: {hook_secret}
    headers: {{ X-Team: soc }}
"#,
            pd_key = secret(w, "pd.key", PD_KEY),
            pd_url = pd.url(),
            og_key = secret(w, "og.key", OG_KEY),
            og_url = og.url(),
            slack_url = secret(w, "slack.url", &format!("{}{SLACK_PATH}", chat.url())),
            teams_url = secret(w, "teams.url", &format!("{}{TEAMS_PATH}", ms.url())),
            hook_url = hook.url(),
            hook_secret = secret(w, "hook.secret", HOOK_SECRET),
        ),
    );
    write(
        &w.join("pb/shell.yaml"),
        &playbook(
            "shell-in-container",
            r#"  steps:
    - id: record
      action: log.warn
      with: { message: "shell in ${{ event.resource.container.id }}" }
    - id: freeze
      action: docker.pause
      with: { container: "${{ event.resource.container.id }}" }
      revert_after: 1h
  notify:                 # each sent by its run, not grouped into a page (see notify_groups)
    - action: pd.trigger
      group: false
    - action: og.create
      group: false
    - action: chat.post
      group: false
    - action: teams.post
      group: false
    - action: hook.post
      group: false
"#,
        ),
    );
    write(
        &w.join("pb/overrides.yaml"),
        &playbook(
            "shell-overrides",
            r#"  notify:
    - action: pd.trigger
      group: false
      with:
        summary: "Shell in ${{ event.resource.container.name }}"
        severity: info
        dedup_key: "shell-${{ event.id }}"
        source: edge-gw
        group: shop-team
    - action: og.create
      group: false
      with:
        message: "Shell in ${{ event.resource.container.name }}"
        alias: "shell-${{ event.id }}"
        priority: P2
        tags: [soc, shell]
        responders: ["team:soc", "user:ana@example.com"]
    - action: og.close
      group: false
      with: { alias: "shell-${{ event.id }}", note: "contained by riposte" }
    - action: chat.post
      group: false
      with: { text: "Shell in ${{ event.resource.container.name }} <!channel>" }
    - action: teams.post
      group: false
      with: { title: "Shell in ${{ event.resource.container.name }}" }
    - action: hook.post
      group: false
      with: { payload: { container: "${{ event.resource.container.id }}", verdict: contain } }
"#,
        ),
    );
    let engine = Engine::start(&nats.url, &w.join("pb"), Some(&config), w);
    let client = nats.client().await;
    publish(
        &client,
        "falco.critical.terminal_shell_in_container",
        &[falco_alert(
            "n-1",
            "Terminal shell in container",
            "Critical",
            web.short_id(),
            "shop",
        )],
    )
    .await;

    let (run, records) = finished_run(&nats.url, "shell-in-container", "n-1");
    let ok = |action: &str| (action.to_owned(), "ok".to_owned(), String::new());
    let got: Vec<_> = notifications(&records)
        .into_iter()
        .map(|(_, a, o, r)| (a, o, r))
        .collect();
    assert_eq!(
        got,
        vec![
            ok("pd.trigger"),
            ok("og.create"),
            ok("chat.post"),
            ok("teams.post"),
            ok("hook.post")
        ]
    );
    assert!(
        state_of(&scene.inspect(&web.id)).1,
        "the container is not paused"
    );
    let (over_run, over_records) = finished_run(&nats.url, "shell-overrides", "n-1");
    let got: Vec<_> = notifications(&over_records)
        .into_iter()
        .map(|(_, a, o, r)| (a, o, r))
        .collect();
    assert_eq!(
        got,
        vec![
            ok("pd.trigger"),
            ok("og.create"),
            ok("og.close"),
            ok("chat.post"),
            ok("teams.post"),
            ok("hook.post")
        ]
    );
    let undo = format!("riposte revert {run} --step freeze");
    let of = |r: &Receiver, run_marker: &dyn Fn(&Request) -> bool| {
        r.requests().into_iter().find(|q| run_marker(q)).unwrap()
    };

    // PagerDuty: the default trigger speaks of the notice; the other one takes the overrides.
    let pd_got = pd.wait_for(2, Duration::from_secs(5));
    let default = of(&pd, &|q| {
        text(&q.json(), "dedup_key").starts_with("riposte:")
    });
    let e = default.json();
    assert_eq!(
        text(&e, "dedup_key"),
        format!("riposte:shell-in-container:{}", web.short_id())
    );
    assert_eq!(
        (text(&e, "event_action"), text(&e, "client")),
        ("trigger", "riposte")
    );
    let p = &e["payload"];
    assert_eq!(text(p, "severity"), "critical");
    assert!(text(p, "summary").starts_with(&format!(
        "[critical] Terminal shell in container on container app-{}",
        web.short_id()
    )));
    assert!(
        text(p, "summary").contains("pod shop/app-"),
        "{}",
        text(p, "summary")
    );
    assert_eq!(text(p, "group"), "shop");
    assert_eq!(text(p, "class"), "Terminal shell in container");
    let details = &p["custom_details"];
    assert_eq!(text(details, "run_id"), run);
    assert_eq!(text(details, "playbook"), "shell-in-container");
    let freeze = details["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| text(a, "step") == "freeze")
        .unwrap();
    assert_eq!(
        (text(freeze, "action"), text(freeze, "outcome")),
        ("docker.pause", "ok")
    );
    assert_eq!(text(freeze, "revert_command"), undo);
    assert_eq!(
        e["links"],
        json!([{ "href": "https://wiki.example/runbooks/shell-in-container", "text": "Runbook" }])
    );
    let over = of(&pd, &|q| text(&q.json(), "dedup_key") == "shell-n-1").json();
    assert_eq!(
        text(&over["payload"], "summary"),
        format!("Shell in app-{}", web.short_id())
    );
    assert_eq!(text(&over["payload"], "severity"), "info");
    assert_eq!(text(&over["payload"], "source"), "edge-gw");
    assert_eq!(text(&over["payload"], "group"), "shop-team");
    assert_eq!(text(&over["payload"]["custom_details"], "run_id"), over_run);
    assert_eq!(pd_got.len(), 2);
    let pd_step = over_records
        .iter()
        .find(|r| r.action.as_deref() == Some("pd.trigger"))
        .unwrap();
    assert_eq!(
        pd_step.output,
        Some(
            json!({ "status": "success", "message": "Event processed", "dedup_key": "shell-n-1" })
        )
    );

    // Opsgenie: one alert from the notice, one from the overrides, then its close by alias.
    og.wait_for(3, Duration::from_secs(5));
    let created = of(&og, &|q| {
        q.path() == "/v2/alerts" && text(&q.json(), "alias").starts_with("riposte:")
    })
    .json();
    assert_eq!(text(&created, "priority"), "P1");
    assert!(text(&created, "message").starts_with("[critical] Terminal shell in container"));
    assert!(
        text(&created, "description").contains(&undo),
        "{}",
        text(&created, "description")
    );
    assert_eq!(text(&created["details"], "playbook"), "shell-in-container");
    assert_eq!(text(&created["details"], "namespace"), "shop");
    assert!(text(&created["details"], "what riposte did").contains("docker.pause (freeze) ok"));
    let over = of(&og, &|q| {
        q.path() == "/v2/alerts" && text(&q.json(), "alias") == "shell-n-1"
    })
    .json();
    assert_eq!(text(&over, "priority"), "P2");
    assert_eq!(over["tags"], json!(["soc", "shell"]));
    assert_eq!(
        over["responders"],
        json!([{ "type": "team", "name": "soc" }, { "type": "user", "username": "ana@example.com" }])
    );
    let close = of(&og, &|q| q.path().ends_with("/close"));
    assert_eq!(
        close.target,
        "/v2/alerts/shell-n-1/close?identifierType=alias"
    );
    assert_eq!(text(&close.json(), "note"), "contained by riposte");

    // Slack: Block Kit that says what, where, whose and what was done, with the undo command.
    chat.wait_for(2, Duration::from_secs(5));
    let msg = of(&chat, &|q| {
        q.json().to_string().contains(&format!("run `{run}`"))
    })
    .json();
    let all = msg.to_string();
    assert_eq!(text(&msg["blocks"][0], "type"), "header");
    for needle in [
        "Terminal shell in container".to_owned(),
        "*Where*\\ncontainer app-".to_owned(),
        "pod shop/app-".to_owned(),
        "*Playbook*\\nshell-in-container: ok".to_owned(),
        format!("undo: `{undo}`"),
        format!("audit: `riposte audit --run {run}`"),
        "<https://wiki.example/runbooks/shell-in-container|Runbook>".to_owned(),
    ] {
        assert!(
            all.contains(&needle),
            "`{needle}` not in the Slack message {all}"
        );
    }
    let over = of(&chat, &|q| text(&q.json(), "text").starts_with("Shell in")).json();
    assert_eq!(
        text(&over, "text"),
        format!("Shell in app-{} &lt;!channel&gt;", web.short_id())
    );

    // Teams: an Adaptive Card with the facts, the steps and the runbook button.
    ms.wait_for(2, Duration::from_secs(5));
    let card = of(&ms, &|q| {
        q.json()
            .to_string()
            .contains(&format!("riposte audit --run {run}"))
    })
    .json();
    let content = &card["attachments"][0]["content"];
    let all = content.to_string();
    assert!(all.contains(&format!("(undo: `{undo}`")), "{all}");
    let facts = content["body"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| text(b, "type") == "FactSet")
        .unwrap();
    assert!(facts["facts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| text(f, "title") == "namespace" && text(f, "value") == "shop"));
    assert_eq!(
        content["actions"],
        json!([{ "type": "Action.OpenUrl", "title": "Runbook", "url": "https://wiki.example/runbooks/shell-in-container" }])
    );
    let over = of(&ms, &|q| q.json().to_string().contains("\"Shell in app-")).json();
    assert_eq!(
        text(&over["attachments"][0]["content"]["body"][0], "text"),
        format!("Shell in app-{}", web.short_id())
    );

    // Webhook: signed, verified, and a replay of the same request is refused.
    let sent = hook.wait_for(2, Duration::from_secs(5));
    let notice = of(&hook, &|q| q.header("x-riposte-run") == Some(run.as_str()));
    assert_eq!(notice.path(), "/v1/events/generic");
    assert_eq!(notice.header("x-riposte-event"), Some("n-1"));
    assert_eq!(notice.header("x-team"), Some("soc"));
    let body = notice.json();
    assert_eq!(text(&body, "run_id"), run);
    assert!(body.to_string().contains(&undo));
    let payload = of(&hook, &|q| {
        q.header("x-riposte-run") == Some(over_run.as_str())
    });
    assert_eq!(
        payload.json(),
        json!({ "container": web.short_id(), "verdict": "contain" })
    );
    for r in &over_records {
        if r.action.as_deref() == Some("hook.post") {
            assert_eq!(
                r.output.as_ref().unwrap()["response"],
                json!({ "accepted": true })
            );
        }
    }
    let (status, answer) = resend(&hook.url(), &notice, &notice.body);
    assert_eq!((status, answer.as_str()), (401, r#"{"error":"replayed"}"#));
    let mut tampered = payload.body.clone();
    tampered.extend_from_slice(b" ");
    let (status, answer) = resend(&hook.url(), &payload, &tampered);
    assert_eq!(
        (status, answer.as_str()),
        (401, r#"{"error":"bad signature"}"#)
    );
    assert_eq!(sent.len(), 2);

    // No secret in the engine's log or the audit trail.
    assert_no_secret("the engine log", &engine.log_text());
    let trail = serde_json::to_string(&audit_records(&nats.url)).unwrap();
    assert_no_secret("the audit records", &trail);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_service_is_retried_with_each_attempt_audited_and_a_refusal_is_not() {
    // 503 twice, then accepted.
    let busy = Receiver::start(|r: &Request, i| {
        if i < 2 {
            (503, "upstream busy".to_owned())
        } else {
            pagerduty(r, i)
        }
    });
    // A request PagerDuty refuses.
    let refusing = Receiver::start(|_: &Request, _| {
        reply(
            400,
            json!({ "status": "invalid event", "message": "Event object is invalid", "errors": ["'routing_key' is invalid"] }),
        )
    });
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let key = secret(w, "pd.key", PD_KEY);
    let config = w.join("riposte.yaml");
    write(
        &config,
        &format!(
            "connectors:\n  pd-busy: {{ type: pagerduty, routing_key_file: {key}, url: \"{}\" }}\n  pd-refusing: {{ type: pagerduty, routing_key_file: {key}, url: \"{}\" }}\n",
            busy.url(),
            refusing.url()
        ),
    );
    write(
        &w.join("pb/page.yaml"),
        &playbook(
            "page-oncall",
            r#"  notify:
    - action: pd-busy.trigger
      retry: { attempts: 4, backoff: 100ms }
      group: false
    - action: pd-refusing.trigger
      retry: { attempts: 4, backoff: 100ms }
      group: false
"#,
        ),
    );
    let engine = Engine::start(&nats.url, &w.join("pb"), Some(&config), w);
    let client = nats.client().await;
    publish(
        &client,
        "falco.critical.terminal_shell_in_container",
        &[falco_alert(
            "b-1",
            "Terminal shell in container",
            "Critical",
            "c0ffee",
            "shop",
        )],
    )
    .await;
    let (_, records) = finished_run(&nats.url, "page-oncall", "b-1");

    let busy_step = records
        .iter()
        .find(|r| r.record == RecordKind::Notify && r.step.as_deref() == Some("notify-1"))
        .unwrap();
    assert_eq!(busy_step.outcome, "ok");
    assert_eq!(busy_step.attempts, Some(3));
    let attempts: Vec<(Option<u32>, &str, &str)> = records
        .iter()
        .filter(|r| r.record == RecordKind::Attempt)
        .map(|r| {
            (
                r.attempts,
                r.outcome.as_str(),
                r.step.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (Some(1), "retrying", "notify-1"),
            (Some(2), "retrying", "notify-1")
        ]
    );
    for r in records.iter().filter(|r| r.record == RecordKind::Attempt) {
        let why = r.reason.as_deref().unwrap_or_default();
        assert!(why.contains("answered 503: upstream busy"), "{why}");
        assert!(why.starts_with(&busy.url()), "{why}");
    }
    assert_eq!(busy.requests().len(), 3);

    let refused = records
        .iter()
        .find(|r| r.record == RecordKind::Notify && r.step.as_deref() == Some("notify-2"))
        .unwrap();
    assert_eq!(refused.outcome, "failed");
    assert_eq!(refused.attempts, Some(1));
    let why = refused.reason.as_deref().unwrap_or_default();
    assert!(
        why.contains("answered 400") && why.contains("Event object is invalid"),
        "{why}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        refusing.requests().len(),
        1,
        "a permanent failure was retried"
    );

    assert_no_secret("the engine log", &engine.log_text());
    let trail = serde_json::to_string(&audit_records(&nats.url)).unwrap();
    assert_no_secret("the audit records", &trail);
}
