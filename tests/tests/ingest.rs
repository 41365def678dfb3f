//! End-to-end tests of the ingest gateway: the real `riposte` binary (`run` with an `ingest:`
//! section, and `ingest` alone) against a real nats-server, driven over HTTP and HTTPS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use riposte::audit::RecordKind;
use riposte_tests::*;
use serde_json::Value;
use sha2::Sha256;

const TOKEN: &str = "sidekick-7Hq2vR9xKp4mW8zL";
const OTHER_TOKEN: &str = "harbor-3Nf6tY1uJc5eB0sD";
const HMAC_KEY: &str = "ci-hmac-Zr8pQ3wX6yV1nM4k";

const PLAYBOOK: &str = r#"
apiVersion: riposte/v1
kind: Playbook
metadata:
  name: shell-in-container
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container"
  steps:
    - id: record
      action: log.warn
      with: { message: 'shell in ${{ event.resource.container.id }} from ${{ label(event.labels, "ingest.source") }}' }
"#;

/// Every secret the tests use, to check none of them is ever printed.
const SECRETS: [&str; 3] = [TOKEN, OTHER_TOKEN, HMAC_KEY];

/// A work directory with the playbook, the credential files and a config whose `ingest:`
/// section is `ingest` plus the credential files.
struct Setup {
    work: tempfile::TempDir,
    config: PathBuf,
    gateway: String,
}

impl Setup {
    fn new(ingest_extra: &str) -> Setup {
        let work = tempfile::tempdir().unwrap();
        write(&work.path().join("pb/shell.yaml"), PLAYBOOK);
        let tokens = work.path().join("secrets/ingest-tokens");
        write(
            &tokens,
            &format!("# who may post\nfalcosidekick:{TOKEN}\nharbor:{OTHER_TOKEN}\n"),
        );
        let keys = work.path().join("secrets/ingest-hmac");
        write(&keys, &format!("ci:{HMAC_KEY}\n"));
        let gateway = format!("127.0.0.1:{}", free_port());
        let config = work.path().join("riposte.yaml");
        write(
            &config,
            &format!(
                "engine:\n  max_payload_bytes: 8192\ningest:\n  listen: {gateway}\n  tokens_file: {}\n  hmac_keys_file: {}\n  max_body_bytes: 4096\n  replay_window: 5m\n{ingest_extra}",
                tokens.display(),
                keys.display()
            ),
        );
        Setup {
            work,
            config,
            gateway,
        }
    }

    fn path(&self) -> &Path {
        self.work.path()
    }

    fn engine(&self, nats: &NatsServer) -> Engine {
        Engine::start(
            &nats.url,
            &self.path().join("pb"),
            Some(&self.config),
            self.path(),
        )
    }

    fn url(&self, format: &str) -> String {
        format!("http://{}/v1/events/{format}", self.gateway)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Posts `len` bytes to the falco route over a raw connection, pausing after the first 4097,
/// then reads the whole answer.
async fn slow_oversized_post(gateway: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let head = format!(
        "POST /v1/events/falco HTTP/1.1\r\nHost: {gateway}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&vec![b' '; 4097]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(&vec![b' '; len - 4097])
        .await
        .expect("the gateway still reads the body it refuses");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .await
        .expect("the gateway answers before it closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `sha256=<hex of HMAC-SHA256(key, "<ts>.<body>")>`.
fn sign(key: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn shell_fixture() -> Vec<u8> {
    std::fs::read(repo_root().join("playbooks/fixtures/falco-shell-in-container.json")).unwrap()
}

async fn stored_messages(nats: &NatsServer) -> u64 {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("RIPOSTE_EVENTS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn metric(metrics_addr: &str, line: &str) -> bool {
    http_get(metrics_addr, "/metrics").is_some_and(|(_, m)| m.lines().any(|l| l == line))
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "a secret leaked into {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_valid_credentials_are_refused_with_401_and_counted() {
    let nats = NatsServer::start();
    let setup = Setup::new("");
    let engine = setup.engine(&nats);
    let http = client();
    let body = falco_alert(
        "auth-1",
        "Terminal shell in container",
        "Critical",
        "a1",
        "shop",
    );
    let url = setup.url("falco");

    // No credentials at all.
    let (code, headers, answer) = post(http.post(&url).body(body.clone())).await;
    assert_eq!(code, 401, "{answer}");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"riposte\"");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .starts_with("missing credentials"));

    // A wrong token.
    let (code, headers, _) = post(
        http.post(&url)
            .bearer_auth("sidekick-7Hq2vR9xKp4mW8zX")
            .body(body.clone()),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"riposte\", error=\"invalid_token\""
    );

    // A signature made with another key.
    let ts = now();
    let (code, _, answer) = post(
        http.post(&url)
            .header("X-Riposte-Timestamp", ts.to_string())
            .header(
                "X-Riposte-Signature",
                sign("not-the-key-0123456789", ts, &body),
            )
            .body(body.clone()),
    )
    .await;
    assert_eq!(code, 401);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid signature"));

    // A valid signature is accepted once; the same request again is a replay.
    let signed = || {
        http.post(&url)
            .header("X-Riposte-Timestamp", ts.to_string())
            .header("X-Riposte-Signature", sign(HMAC_KEY, ts, &body))
            .body(body.clone())
    };
    let (code, _, answer) = post(signed()).await;
    assert_eq!(code, 202, "{answer}");
    let (code, _, answer) = post(signed()).await;
    assert_eq!(code, 401);
    assert_eq!(answer["error"], "this signature was used before (replay)");

    // A correctly signed request whose timestamp is outside the 5-minute window.
    let old = now() - 301;
    let (code, _, answer) = post(
        http.post(&url)
            .header("X-Riposte-Timestamp", old.to_string())
            .header("X-Riposte-Signature", sign(HMAC_KEY, old, &body))
            .body(body.clone()),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        answer["error"],
        "the request's timestamp is outside the replay window"
    );

    // Health endpoints need nothing.
    assert_eq!(http_get(&setup.gateway, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&setup.gateway, "/readyz").unwrap().0, 200);

    // Only the one valid request was published; every refusal is counted by reason.
    assert_eq!(stored_messages(&nats).await, 1);
    for line in [
        "riposte_ingest_auth_failures_total{reason=\"missing\"} 1",
        "riposte_ingest_auth_failures_total{reason=\"bad_token\"} 1",
        "riposte_ingest_auth_failures_total{reason=\"bad_signature\"} 1",
        "riposte_ingest_auth_failures_total{reason=\"replayed\"} 1",
        "riposte_ingest_auth_failures_total{reason=\"stale_timestamp\"} 1",
        "riposte_ingest_requests_total{format=\"falco\",code=\"401\"} 5",
        "riposte_ingest_requests_total{format=\"falco\",code=\"202\"} 1",
    ] {
        assert!(
            metric(&engine.metrics, line),
            "{line} missing in\n{}",
            http_get(&engine.metrics, "/metrics").unwrap().1
        );
    }
    assert_no_secret("the engine's log", &engine.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_unknown_and_malformed_payloads_are_refused_and_never_published() {
    let nats = NatsServer::start();
    let setup = Setup::new("");
    let engine = setup.engine(&nats);
    let http = client();

    let oversize = falco_alert(
        &"x".repeat(5000),
        "Terminal shell in container",
        "Critical",
        "big",
        "shop",
    );
    let (code, _, answer) = post(
        http.post(setup.url("falco"))
            .bearer_auth(TOKEN)
            .body(oversize),
    )
    .await;
    assert_eq!(code, 413, "{answer}");
    assert_eq!(answer["error"], "the body is over the limit of 4096 bytes");

    // A sender still writing an oversized body gets the 413, not a connection closed under it.
    let answer = slow_oversized_post(&setup.gateway, 6000).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("over the limit of 4096 bytes"), "{answer}");

    let (code, _, answer) = post(
        http.post(setup.url("splunk"))
            .bearer_auth(TOKEN)
            .body("{}".to_owned()),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        answer["error"],
        "unknown format `splunk`: POST to /v1/events/<format>"
    );
    assert_eq!(
        answer["formats"],
        serde_json::json!([
            "falco",
            "tetragon",
            "trivy",
            "grype",
            "k8s-audit",
            "alertmanager",
            "harbor",
            "cloudevents",
            "generic"
        ])
    );

    let (code, _, answer) = post(
        http.post(setup.url("falco"))
            .bearer_auth(TOKEN)
            .body("{\"rule\": \"Terminal shell in container\", \"priority\": "),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(answer["code"], "malformed");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON: EOF while parsing a value at line 1 column 52"),
        "{answer}"
    );

    let grype = std::fs::read(
        repo_root().join("engine/tests/fixtures/corpus/grype/grype_snapshot_empty.json"),
    )
    .unwrap();
    let (code, _, answer) =
        post(http.post(setup.url("falco")).bearer_auth(TOKEN).body(grype)).await;
    assert_eq!(code, 400);
    assert_eq!(answer["error"], "not a falco payload: `rule` is missing");

    assert_eq!(stored_messages(&nats).await, 0, "nothing was published");
    for line in [
        "riposte_ingest_requests_total{format=\"falco\",code=\"413\"} 2",
        "riposte_ingest_requests_total{format=\"unknown\",code=\"404\"} 1",
        "riposte_ingest_requests_total{format=\"falco\",code=\"400\"} 2",
        "riposte_ingest_invalid_payloads_total{format=\"falco\",reason=\"malformed\"} 1",
        "riposte_ingest_invalid_payloads_total{format=\"falco\",reason=\"wrong_shape\"} 1",
    ] {
        assert!(metric(&engine.metrics, line), "{line} missing");
    }
    assert!(
        http_get(&engine.metrics, "/metrics")
            .unwrap()
            .1
            .contains("riposte_ingest_request_duration_seconds_count 5"),
        "the latency histogram counts every request:\n{}",
        http_get(&engine.metrics, "/metrics").unwrap().1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_falcosidekick_post_reaches_a_playbook_run_that_knows_its_sender_and_a_retry_is_stored_once(
) {
    let nats = NatsServer::start();
    let setup = Setup::new("");
    let engine = setup.engine(&nats);
    let http = client();
    let body = shell_fixture();
    // The way Falcosidekick's webhook output posts, with `webhook.customHeaders`.
    let falcosidekick = || {
        http.post(setup.url("falco"))
            .header("Content-Type", "application/json")
            .header("User-Agent", "Falcosidekick")
            .bearer_auth(TOKEN)
            .body(body.clone())
    };

    let (code, _, first) = post(falcosidekick()).await;
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["duplicate"], false);
    let ids = first["event_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    let event_id = ids[0].as_str().unwrap().to_owned();
    assert!(event_id.starts_with("sha256:"), "{event_id}");

    // The sender did not see the answer and retries: stored once.
    let (code, _, again) = post(falcosidekick()).await;
    assert_eq!(code, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["stream_seq"], first["stream_seq"]);
    assert_eq!(again["event_ids"], first["event_ids"]);

    // A sender naming its deliveries: another body under the same key is the same delivery.
    let keyed = |uuid: &str| {
        http.post(setup.url("falco"))
            .bearer_auth(OTHER_TOKEN)
            .header("Idempotency-Key", "delivery-42")
            .body(falco_alert(
                uuid,
                "Terminal shell in container",
                "Critical",
                "k1",
                "shop",
            ))
    };
    let (code, _, keyed_first) = post(keyed("keyed-1")).await;
    assert_eq!(
        (code, &keyed_first["duplicate"]),
        (202, &Value::Bool(false))
    );
    let (code, _, keyed_again) = post(keyed("keyed-2")).await;
    assert_eq!((code, &keyed_again["duplicate"]), (202, &Value::Bool(true)));
    assert_eq!(keyed_again["stream_seq"], keyed_first["stream_seq"]);

    let records = wait_for(&nats.url, Duration::from_secs(20), "the two runs", |r| {
        r.iter().filter(|x| x.record == RecordKind::Run).count() >= 2
    });
    let step = |id: &str| {
        records
            .iter()
            .find(|r| r.record == RecordKind::Step && r.event_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no step for {id}"))
    };
    let sidekick_step = step(&event_id);
    assert_eq!(sidekick_step.outcome, "ok");
    assert_eq!(
        sidekick_step.args.as_ref().unwrap()["message"],
        "shell in ee97d9c4186f from falcosidekick"
    );
    assert_eq!(
        step("keyed-1").args.as_ref().unwrap()["message"],
        "shell in k1 from harbor"
    );
    let event = records
        .iter()
        .find(|r| r.record == RecordKind::Event && r.event_id.as_deref() == Some(&event_id))
        .unwrap();
    assert_eq!(event.event.as_ref().unwrap().subject, "riposte.in.falco");

    // Give a duplicate run the chance to show up: there is none.
    std::thread::sleep(Duration::from_secs(1));
    let runs = audit_records(&nats.url)
        .iter()
        .filter(|r| r.record == RecordKind::Run)
        .count();
    assert_eq!(runs, 2);
    assert_eq!(stored_messages(&nats).await, 2);
    assert_no_secret("the engine's log", &engine.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_nats_is_down_senders_get_503_with_retry_after() {
    let nats = NatsServer::start();
    let setup = Setup::new("  publish_timeout: 2s\n");
    let engine = setup.engine(&nats);
    let http = client();
    let body = shell_fixture();
    let (code, _, _) = post(
        http.post(setup.url("falco"))
            .bearer_auth(TOKEN)
            .body(body.clone()),
    )
    .await;
    assert_eq!(code, 202);

    drop(nats);
    let started = Instant::now();
    let (code, headers, answer) =
        post(http.post(setup.url("falco")).bearer_auth(TOKEN).body(body)).await;
    assert_eq!(code, 503, "{answer}");
    assert_eq!(headers["retry-after"], "5");
    assert!(answer["error"].as_str().unwrap().contains("retry later"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered within the publish timeout"
    );
    assert_eq!(http_get(&setup.gateway, "/readyz").unwrap().0, 503);
    assert!(metric(
        &engine.metrics,
        "riposte_ingest_requests_total{format=\"falco\",code=\"503\"} 1"
    ));
}

fn https_client(dir: &Path, with_client_cert: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca);
    if with_client_cert {
        let mut pem = std::fs::read(dir.join("client.pem")).unwrap();
        pem.extend(std::fs::read(dir.join("client.key")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_over_https_with_certificates_from_files_is_accepted() {
    let nats = NatsServer::start();
    let setup = Setup::new("");
    certificates(setup.path());
    let dir = setup.path().display().to_string();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "  tls: {{ cert_file: {dir}/server.pem, key_file: {dir}/server.key }}\n"
    ));
    std::fs::write(&setup.config, text).unwrap();
    let engine = setup.engine(&nats);

    let url = format!("https://{}/v1/events/falco", setup.gateway);
    let (code, _, answer) = post(
        https_client(setup.path(), false)
            .post(&url)
            .bearer_auth(TOKEN)
            .body(shell_fixture()),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["duplicate"], false);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(client().post(setup.url("falco")).send().await.is_err());
    wait_for(&nats.url, Duration::from_secs(20), "the run", |r| {
        r.iter().any(|x| x.record == RecordKind::Run)
    });
    assert_no_secret("the engine's log", &engine.log_text());
}

/// `riposte ingest` as a child process, killed when dropped.
struct Standalone {
    child: Child,
    log: PathBuf,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn riposte_ingest_alone_serves_mutual_tls_and_names_the_sender_by_its_certificate() {
    let nats = NatsServer::start();
    let setup = Setup::new("");
    certificates(setup.path());
    let dir = setup.path().display().to_string();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "  tls: {{ cert_file: {dir}/server.pem, key_file: {dir}/server.key, client_ca_file: {dir}/ca.pem }}\n"
    ));
    std::fs::write(&setup.config, text).unwrap();
    let log = setup.path().join("ingest.log");
    let metrics = format!("127.0.0.1:{}", free_port());
    let gateway = Standalone {
        child: Command::new(riposte_bin())
            .arg("ingest")
            .arg("--config")
            .arg(&setup.config)
            .args(["--nats", &nats.url, "--metrics-listen", &metrics])
            .env(
                "RIPOSTE_LOG",
                "debug,async_nats=warn,hyper=info,rustls=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&metrics, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "riposte ingest did not start:\n{}",
            std::fs::read_to_string(&gateway.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://{}/v1/events/falco", setup.gateway);
    let body = falco_alert(
        "mtls-1",
        "Terminal shell in container",
        "Critical",
        "m1",
        "shop",
    );

    // Falco's http_output cannot add headers: its client certificate is its credential.
    let (code, _, answer) = post(
        https_client(setup.path(), true)
            .post(&url)
            .body(body.clone()),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["event_ids"], serde_json::json!(["mtls-1"]));
    // A token, when given, names the sender instead.
    let (code, _, _) = post(
        https_client(setup.path(), true)
            .post(&url)
            .bearer_auth(OTHER_TOKEN)
            .body(falco_alert("mtls-2", "x", "Critical", "m2", "shop")),
    )
    .await;
    assert_eq!(code, 202);
    // Without a client certificate there is no connection.
    let refused = https_client(setup.path(), false)
        .post(&url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // Published for the engine, with the sender's name in a header.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("RIPOSTE_EVENTS").await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    assert_eq!(first.subject.as_str(), "riposte.in.falco");
    assert_eq!(
        first.headers.get("Riposte-Ingest-Source").unwrap().as_str(),
        "falco-node-1"
    );
    let second = stream.get_raw_message(2).await.unwrap();
    assert_eq!(
        second
            .headers
            .get("Riposte-Ingest-Source")
            .unwrap()
            .as_str(),
        "harbor"
    );
    assert!(metric(
        &metrics,
        "riposte_ingest_auth_failures_total{reason=\"tls_handshake\"} 1"
    ));
    drop(gateway);
    assert_no_secret(
        "the gateway's log",
        &std::fs::read_to_string(setup.path().join("ingest.log")).unwrap(),
    );
}
