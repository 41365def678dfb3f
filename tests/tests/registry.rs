//! The `registry` connector against a real registry (Debian's docker-registry on loopback,
//! deletes enabled), with images pushed by the real docker client and the revocation list in a
//! real JetStream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Instant;

use riposte::audit::RecordKind;
use riposte_connectors::context::{scope, RunContext};
use riposte_connectors::registry::RegistryConnector;
use riposte_connectors::revocation::{ImageRef, RevocationList, State};
use riposte_connectors::{
    check_args, Args, Connector, ConnectorError, ConnectorKind, Deps, Output,
};
use riposte_tests::docker::{docker, docker_ok, Scene};
use riposte_tests::receiver::Receiver;
use riposte_tests::registry::{Options, RegistryServer, TokenAuth};
use riposte_tests::{free_port, NatsServer};
use serde_json::{json, Value};

fn args(v: Value) -> Args {
    v.as_object().cloned().unwrap()
}

/// The revocation list in the test server's JetStream.
async fn list(nats: &NatsServer) -> RevocationList {
    let js = async_nats::jetstream::new(nats.client().await);
    RevocationList::open(&js, "riposte", 1, None).await.unwrap()
}

fn connector(list: &RevocationList, settings: Value) -> RegistryConnector {
    let deps = Deps {
        revocations: Some(list.clone()),
        ..Default::default()
    };
    RegistryConnector::new("reg", settings.as_object().unwrap(), &deps).unwrap()
}

/// Runs `action` as the engine does: arguments checked against the action's spec, inside a run
/// context.
async fn run(c: &RegistryConnector, action: &str, a: Value) -> Result<Output, ConnectorError> {
    let a = args(a);
    let spec = c.actions().iter().find(|s| s.name == action).unwrap();
    check_args(spec, &a)?;
    scope(ctx(None), c.run(action, &a)).await
}

fn ctx(by: Option<&str>) -> RunContext {
    RunContext {
        run_id: Some("run-1".into()),
        playbook: Some("scanner-critical".into()),
        event_id: Some("ev-1".into()),
        step: Some("revoke".into()),
        by: by.map(str::to_owned),
    }
}

fn permanent(r: Result<Output, ConnectorError>) -> String {
    match r {
        Err(ConnectorError::Permanent(m)) => m,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

fn transient(r: Result<Output, ConnectorError>) -> String {
    match r {
        Err(ConnectorError::Transient(m)) => m,
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

/// Whether `docker pull REF` succeeds (it asks the registry for the manifest every time).
fn pulls(reference: &str) -> bool {
    docker(&["pull", "--quiet", reference]).status.success()
}

#[tokio::test]
async fn inspect_reads_the_digest_docker_push_printed_with_size_created_and_labels() {
    let mut scene = Scene::new("reg-inspect");
    let reg = RegistryServer::start();
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let (reference, pushed) = reg.push(&mut scene, "team/app", "1", &[("team", "payments")]);
    let repo_digest = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &reference,
    ]);
    assert_eq!(repo_digest, format!("{}/team/app@{pushed}", reg.host));
    let c = connector(&list, json!({"url": reg.url}));
    let out = run(&c, "inspect", json!({"image": reference}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["digest"], pushed, "{out}");
    assert_eq!(out["labels"]["team"], "payments", "{out}");
    assert!(
        out["size"].as_u64().unwrap() > 500_000,
        "busybox is larger: {out}"
    );
    assert!(out["created"].as_str().unwrap().starts_with("20"), "{out}");
    assert!(
        out["media_type"].as_str().unwrap().contains("manifest"),
        "{out}"
    );
    // By digest alone, the same answer.
    let by_digest = run(
        &c,
        "inspect",
        json!({"image": format!("{}/team/app@{pushed}", reg.host)}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(by_digest["digest"], pushed);
    assert_eq!(by_digest["size"], out["size"]);
}

#[tokio::test]
async fn revoke_records_digest_reference_reason_findings_and_run_and_is_done_once() {
    let mut scene = Scene::new("reg-record");
    let reg = RegistryServer::start();
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let (reference, digest) = reg.push(&mut scene, "app", "1.0", &[]);
    let c = connector(&list, json!({"url": reg.url}));
    let a = json!({
        "image": reference,
        "reason": "critical CVE with a fix",
        "findings": ["CVE-2024-0001", "CVE-2024-0002"],
    });
    let first = run(&c, "revoke", a.clone()).await.unwrap();
    let out = &first.output;
    assert_eq!(out["already"], false, "{out}");
    assert_eq!(out["registry"]["action"], "record", "{out}");
    let key = out["key"].as_str().unwrap();
    assert_eq!(key, format!("d.{}", &digest["sha256:".len()..]));
    assert!(first.undo.is_some());
    let (entry, _) = list.get_key(key).await.unwrap().unwrap();
    assert_eq!(entry.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(entry.reference.as_deref(), Some(reference.as_str()));
    assert_eq!(entry.state, State::Revoked);
    assert_eq!(entry.reason, "critical CVE with a fix");
    assert_eq!(entry.findings, ["CVE-2024-0001", "CVE-2024-0002"]);
    assert_eq!(entry.event_id.as_deref(), Some("ev-1"));
    assert_eq!(entry.playbook.as_deref(), Some("scanner-critical"));
    assert_eq!(entry.run_id.as_deref(), Some("run-1"));
    assert_eq!(entry.revoked.by, "riposte");
    assert_eq!(entry.registry.as_ref().unwrap()["action"], "record");
    assert!(pulls(&reference), "record only leaves the registry alone");

    // Again, with one more finding: already revoked, findings merged, no undo.
    let mut again = a.clone();
    again["findings"] = json!(["CVE-2024-0003"]);
    let second = run(&c, "revoke", again).await.unwrap();
    assert_eq!(second.output["already"], true, "{}", second.output);
    assert!(second.undo.is_none());
    let (entry, _) = list.get_key(key).await.unwrap().unwrap();
    assert_eq!(entry.findings.len(), 3);

    // An image of another registry is recorded only, and the output says why.
    let q = connector(&list, json!({"url": reg.url, "on_revoke": "quarantine"}));
    let other = run(
        &q,
        "revoke",
        json!({"image": "ghcr.io/acme/api:2", "reason": "secret in image"}),
    )
    .await
    .unwrap()
    .output;
    let message = other["registry"]["message"].as_str().unwrap();
    assert!(
        message.contains("not in this instance's registry") && message.contains("no quarantine"),
        "{message}"
    );
    assert!(list
        .find(&ImageRef::parse("ghcr.io/acme/api:2").unwrap())
        .await
        .unwrap()
        .is_some());

    // A report with thousands of findings revokes with the first thousand distinct ids.
    let many: Vec<String> = (0..5000)
        .map(|i| format!("CVE-2024-{}", i % 4500))
        .collect();
    let out = run(
        &q,
        "revoke",
        json!({"image": "ghcr.io/acme/api:3", "reason": "x".repeat(5000), "findings": many}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(out["entry"]["findings"].as_array().unwrap().len(), 1000);
    assert_eq!(out["findings_left_out"], 3500);
    assert_eq!(out["entry"]["reason"].as_str().unwrap().len(), 1000);

    // The default instance records without any registry.
    let deps = Deps {
        revocations: Some(list.clone()),
        ..Default::default()
    };
    let default = ConnectorKind::Registry
        .build("registry", &serde_json::Map::new(), &deps)
        .unwrap();
    let out = scope(
        ctx(None),
        default.run(
            "revoke",
            &args(json!({"image": "nginx:1.25", "reason": "CVE-2024-9"})),
        ),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(out["entry"]["reference"], "docker.io/library/nginx:1.25");

    // The reinstate action, without a previous step.
    let back = run(
        &c,
        "reinstate",
        json!({"image": reference, "reason": "false positive"}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(back["entry"]["state"], "reinstated", "{back}");
    assert_eq!(back["entry"]["reinstated"]["by"], "riposte");
    assert_eq!(back["entry"]["reinstated"]["reason"], "false positive");
    assert_eq!(
        back["entry"]["revoked"]["by"], "riposte",
        "the revocation stays"
    );
}

#[tokio::test]
async fn quarantine_moves_the_image_and_reinstating_moves_it_back() {
    let mut scene = Scene::new("reg-quarantine");
    let reg = RegistryServer::start();
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let (reference, digest) = reg.push(&mut scene, "shop/api", "3", &[("v", "3")]);
    let (second, second_digest) = reg.push(&mut scene, "shop/api", "4", &[("v", "4")]);
    let c = connector(&list, json!({"url": reg.url, "on_revoke": "quarantine"}));
    let quarantined = format!("{}/quarantine/shop/api:3", reg.host);

    // The plan resolves the digest and names where the image would go, changing nothing.
    let plan = c
        .plan(
            "revoke",
            &args(json!({"image": reference, "reason": "CVE-2024-1"})),
        )
        .await
        .unwrap()
        .description;
    assert!(
        plan.contains(&digest) && plan.contains("quarantine/shop/api"),
        "{plan}"
    );
    assert!(pulls(&reference));

    let started = Instant::now();
    let out = run(
        &c,
        "revoke",
        json!({"image": reference, "reason": "CVE-2024-1", "findings": ["CVE-2024-1"]}),
    )
    .await
    .unwrap();
    eprintln!("quarantine took {:?}", started.elapsed());
    let r = &out.output["registry"];
    assert_eq!(r["action"], "quarantine", "{r}");
    assert_eq!(r["quarantined_as"], quarantined, "{r}");
    assert_eq!(r["blobs"]["copied"], 0, "every blob is mounted: {r}");
    assert!(r["blobs"]["mounted"].as_u64().unwrap() >= 2, "{r}");
    let (entry, _) = list
        .get_key(out.output["key"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.registry.as_ref().unwrap()["quarantined_as"],
        quarantined
    );

    // Gone from its repository (404), in quarantine with the same digest, pullable there.
    let gone = permanent(run(&c, "inspect", json!({"image": reference})).await);
    assert!(
        gone.contains("404") && gone.contains("manifest unknown"),
        "{gone}"
    );
    let there = run(&c, "inspect", json!({"image": quarantined}))
        .await
        .unwrap()
        .output;
    assert_eq!(there["digest"], digest);
    assert!(!pulls(&reference));
    assert!(pulls(&quarantined));
    assert!(pulls(&second), "the other tag stays");

    // Revoking again changes nothing in the registry, and its plan says so.
    let plan = c
        .plan(
            "revoke",
            &args(json!({"image": reference, "reason": "CVE-2024-1"})),
        )
        .await
        .unwrap()
        .description;
    assert!(plan.contains("already revoked"), "{plan}");
    let again = run(
        &c,
        "revoke",
        json!({"image": reference, "reason": "CVE-2024-1"}),
    )
    .await
    .unwrap();
    assert_eq!(again.output["already"], true);
    assert!(pulls(&quarantined));

    // The revert moves it back and reinstates the entry in the name of who asked.
    let undo = out.undo.unwrap();
    let back = scope(ctx(Some("alice")), c.revert("revoke", &undo))
        .await
        .unwrap()
        .output;
    assert_eq!(back["registry"]["action"], "restore", "{back}");
    assert_eq!(back["entry"]["state"], "reinstated");
    assert_eq!(back["entry"]["reinstated"]["by"], "alice");
    assert!(pulls(&reference), "the original pulls again");
    assert!(!pulls(&quarantined), "quarantine is emptied");
    let history = list
        .history(out.output["key"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(history.last().unwrap().state, State::Reinstated);

    // The reinstate action moves a quarantined image back too.
    run(
        &c,
        "revoke",
        json!({"image": second, "reason": "CVE-2024-2"}),
    )
    .await
    .unwrap();
    assert!(!pulls(&second));
    let back = run(
        &c,
        "reinstate",
        json!({"image": second, "reason": "fixed upstream"}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(back["entry"]["digest"], second_digest);
    assert!(pulls(&second));
}

#[tokio::test]
async fn delete_removes_the_manifest_and_its_revert_reinstates_the_record_only() {
    let mut scene = Scene::new("reg-delete");
    let reg = RegistryServer::start();
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let (reference, digest) = reg.push(&mut scene, "app", "7", &[]);
    let c = connector(&list, json!({"url": reg.url}));
    let out = run(
        &c,
        "revoke",
        json!({"image": reference, "digest": digest, "reason": "secret", "on_revoke": "delete"}),
    )
    .await
    .unwrap();
    assert_eq!(out.output["registry"]["action"], "delete");
    assert_eq!(out.output["registry"]["deleted"], true);
    let gone = permanent(run(&c, "inspect", json!({"image": reference})).await);
    assert!(gone.contains("manifest unknown"), "{gone}");
    assert!(!pulls(&reference));
    let back = scope(
        ctx(Some("bob")),
        c.revert("revoke", out.undo.as_ref().unwrap()),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(back["entry"]["state"], "reinstated");
    assert_eq!(back["entry"]["reinstated"]["by"], "bob");
    let message = back["registry"]["message"].as_str().unwrap();
    assert!(message.contains("stays deleted"), "{message}");
    assert!(!pulls(&reference));
}

#[tokio::test]
async fn a_registry_answering_401_or_404_fails_permanently_and_records_nothing() {
    let reg = RegistryServer::start_with_htpasswd("ci", "s3cret-pass");
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/app:1", reg.host);

    let anonymous = connector(&list, json!({"url": reg.url}));
    let e = permanent(run(&anonymous, "inspect", json!({"image": image})).await);
    assert!(e.contains("401") && e.contains("needs `username`"), "{e}");

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let c = connector(
        &list,
        json!({"url": reg.url, "username": "ci", "password_file": wrong}),
    );
    let e = permanent(run(&c, "revoke", json!({"image": image, "reason": "CVE-1"})).await);
    assert!(
        e.contains("refused the credentials") && e.contains("401"),
        "{e}"
    );
    assert!(!e.contains("not-the-password"), "{e}");
    assert!(!format!("{c:?}").contains("not-the-password"));

    // The right password passes; an unknown tag is then a clear 404.
    let right = dir.path().join("right");
    std::fs::write(&right, "s3cret-pass\n").unwrap();
    let c = connector(
        &list,
        json!({"url": reg.url, "username": "ci", "password_file": right}),
    );
    let e = permanent(run(&c, "revoke", json!({"image": image, "reason": "CVE-1"})).await);
    assert!(
        e.contains("404") && e.contains("MANIFEST_UNKNOWN") && e.contains("app:1"),
        "{e}"
    );
    assert!(list.all().await.unwrap().is_empty(), "nothing recorded");
}

#[tokio::test]
async fn a_registry_answering_500_or_away_is_transient_so_retry_applies() {
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let failing = Receiver::start(|_, _| {
        (
            500,
            r#"{"errors":[{"code":"UNKNOWN","message":"storage backend down"}]}"#.to_owned(),
        )
    });
    let host = failing
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let c = connector(&list, json!({"url": failing.url()}));
    let e = transient(
        run(
            &c,
            "revoke",
            json!({"image": format!("{host}/app:1"), "reason": "CVE-1"}),
        )
        .await,
    );
    assert!(
        e.contains("500") && e.contains("storage backend down"),
        "{e}"
    );

    let port = free_port();
    let c = connector(
        &list,
        json!({"url": format!("http://127.0.0.1:{port}"), "timeout": "2s"}),
    );
    let e = transient(
        run(
            &c,
            "inspect",
            json!({"image": format!("127.0.0.1:{port}/app:1")}),
        )
        .await,
    );
    assert!(e.contains("cannot connect"), "{e}");
    assert!(list.all().await.unwrap().is_empty(), "nothing recorded");
}

#[test]
fn bad_settings_and_arguments_say_what_is_wrong() {
    let deps = Deps::default();
    let build = |v: Value| {
        RegistryConnector::new("reg", v.as_object().unwrap(), &deps)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(build(json!({"on_revoke": "burn"})).contains("`on_revoke` must be"));
    assert!(build(json!({"on_revoke": "delete"})).contains("need `url`"));
    assert!(
        build(json!({"url": "http://localhost:5000", "username": "u"}))
            .contains("`username` needs `password_file`")
    );
    assert!(
        build(json!({"url": "http://localhost:5000", "quarantine_repository": "Q"}))
            .contains("quarantine_repository")
    );
    assert!(
        build(json!({"url": "http://localhost:5000", "colour": "red"}))
            .contains("unknown setting `colour`")
    );
    let c = RegistryConnector::new("reg", &serde_json::Map::new(), &deps).unwrap();
    let e = c
        .describe("revoke", &args(json!({"image": "Bad/Name", "reason": "x"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not an image reference"), "{e}");
    let e = c
        .describe(
            "revoke",
            &args(json!({"image": "app", "digest": "sha256:12", "reason": "x"})),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("not sha256:<64 hex>"), "{e}");
}

/// Base64 (`url`: the URL-safe alphabet without padding, as JWTs use).
fn base64(bytes: &[u8], url: bool) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    if url {
        URL_SAFE_NO_PAD.encode(bytes)
    } else {
        STANDARD.encode(bytes)
    }
}

/// A token the registry trusts: a JWT signed (RS256, with openssl) by the key of `cert`, whose
/// CA is in the registry's `rootcertbundle`, granting `access`.
fn sign_token(dir: &std::path::Path, service: &str, access: Value) -> String {
    let pem = std::fs::read_to_string(dir.join("server.pem")).unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [der]});
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": "riposte-test-issuer", "sub": "ci", "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), true),
        base64(claims.to_string().as_bytes(), true)
    );
    let file = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::fs::write(file.path(), &input).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-sign"])
        .arg(dir.join("server.key"))
        .arg(file.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl dgst: {out:?}");
    format!("{input}.{}", base64(&out.stdout, true))
}

#[tokio::test]
async fn the_token_flow_gets_a_token_for_each_scope_from_the_registry_realm_over_https() {
    let mut scene = Scene::new("reg-token");
    let open = RegistryServer::start();
    let (reference, digest) = open.push(&mut scene, "shop/web", "2", &[("team", "web")]);
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let certs = tempfile::tempdir().unwrap();
    riposte_tests::certificates(certs.path());
    let dir = certs.path().to_owned();
    let service = "riposte-test-registry";
    let expected = format!("Basic {}", base64(b"ci:token-pass", false));
    // The token server: basic credentials in, a token for exactly the scopes asked out.
    let token_dir = dir.clone();
    let realm = Receiver::start(move |req, _| {
        if req.header("authorization") != Some(expected.as_str()) {
            return (401, r#"{"details":"bad credentials"}"#.to_owned());
        }
        let query = req.query().unwrap_or("");
        let access: Vec<Value> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|s| s.replace("%3A", ":").replace("%2F", "/").replace("%2C", ","))
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let token = sign_token(&token_dir, "riposte-test-registry", Value::Array(access));
        (200, json!({"token": token}).to_string())
    });
    let reg = RegistryServer::start_with(&Options {
        token: Some(TokenAuth {
            realm: format!("{}/token", realm.url()),
            service: service.to_owned(),
            issuer: "riposte-test-issuer".to_owned(),
            root_certs: dir.join("ca.pem"),
        }),
        tls: Some((dir.join("server.pem"), dir.join("server.key"))),
        storage: Some(open.storage()),
        ..Options::default()
    });
    let password = dir.join("password");
    std::fs::write(&password, "token-pass\n").unwrap();
    let c = connector(
        &list,
        json!({
            "url": reg.url, "ca_file": dir.join("ca.pem"),
            "username": "ci", "password_file": password, "on_revoke": "quarantine",
        }),
    );
    let image = reference.replace(&open.host, &reg.host);
    let out = run(&c, "inspect", json!({"image": image}))
        .await
        .unwrap()
        .output;
    assert_eq!(out["digest"], digest);
    assert_eq!(out["labels"]["team"], "web");
    // Quarantine needs push and delete scopes too, each obtained by the flow.
    let revoked = run(
        &c,
        "revoke",
        json!({"image": image, "reason": "CVE-2024-7"}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(revoked["registry"]["action"], "quarantine", "{revoked}");
    let scopes: Vec<String> = realm
        .requests()
        .iter()
        .filter_map(|r| r.query().map(str::to_owned))
        .collect();
    assert!(
        scopes.iter().any(|q| q.contains("push")) && scopes.iter().any(|q| q.contains("delete")),
        "{scopes:?}"
    );

    // A token from `token_file` is sent as it is.
    let token = dir.join("token");
    std::fs::write(
        &token,
        sign_token(
            &dir,
            service,
            json!([{"type": "repository", "name": "quarantine/shop/web", "actions": ["pull"]}]),
        ),
    )
    .unwrap();
    let bearer = connector(
        &list,
        json!({"url": reg.url, "ca_file": dir.join("ca.pem"), "token_file": token}),
    );
    let there = run(
        &bearer,
        "inspect",
        json!({"image": format!("{}/quarantine/shop/web:2", reg.host)}),
    )
    .await
    .unwrap()
    .output;
    assert_eq!(there["digest"], digest);
    // Its scope does not reach other repositories: the registry's refusal is permanent.
    let e = permanent(run(&bearer, "inspect", json!({"image": image})).await);
    assert!(e.contains("401"), "{e}");

    // Without the CA, the registry's certificate is refused: transient (the client cannot tell
    // a bad certificate from a network failure), and nothing is said about the credentials.
    let no_ca = connector(
        &list,
        json!({"url": reg.url, "token_file": dir.join("token")}),
    );
    let e = transient(run(&no_ca, "inspect", json!({"image": image})).await);
    assert!(!e.contains("eyJ"), "{e}");
}

#[tokio::test]
async fn a_registry_refusing_the_delete_leaves_the_image_revoked_and_a_retry_finishes_the_quarantine(
) {
    let mut scene = Scene::new("reg-pending");
    let storage = tempfile::tempdir().unwrap();
    let options = Options {
        storage: Some(storage.path().to_owned()),
        deletes_disabled: true,
        ..Options::default()
    };
    let strict = RegistryServer::start_with(&options);
    let (reference, digest) = strict.push(&mut scene, "app", "5", &[]);
    let nats = NatsServer::start();
    let list = list(&nats).await;
    let c = connector(&list, json!({"url": strict.url, "on_revoke": "quarantine"}));
    let a = json!({"image": reference, "reason": "CVE-2024-5"});
    let e = permanent(run(&c, "revoke", a.clone()).await);
    assert!(
        e.contains("405") && e.contains("delete: enabled: true"),
        "{e}"
    );
    let image = ImageRef::parse(&format!("{reference}@{digest}")).unwrap();
    let (entry, _) = list.find(&image).await.unwrap().unwrap();
    assert_eq!(
        entry.state,
        State::Revoked,
        "denied although the registry failed"
    );
    assert_eq!(entry.registry.as_ref().unwrap()["status"], "pending");

    // The same registry with deletes enabled: the step's retry finishes the move.
    let port = strict.port();
    drop(strict);
    let reg = RegistryServer::start_with(&Options {
        deletes_disabled: false,
        port: Some(port),
        ..options
    });
    // The client's pooled connection died with the first registry: that try is transient,
    // as the engine's `retry` expects.
    let out = match run(&c, "revoke", a.clone()).await {
        Err(ConnectorError::Transient(_)) => run(&c, "revoke", a).await.unwrap(),
        other => other.unwrap(),
    };
    assert_eq!(out.output["already"], false);
    assert_eq!(out.output["registry"]["action"], "quarantine");
    assert!(out.undo.is_some());
    assert!(!pulls(&reference));
    assert!(pulls(&format!("{}/quarantine/app:5", reg.host)));
    let (entry, _) = list.find(&image).await.unwrap().unwrap();
    assert!(entry.registry.as_ref().unwrap().get("status").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_playbook_quarantines_an_image_through_the_engine_and_riposte_revert_moves_it_back() {
    let mut scene = Scene::new("reg-engine");
    let reg = RegistryServer::start();
    let (reference, digest) = reg.push(&mut scene, "shop/cart", "9", &[]);
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("riposte.yaml");
    riposte_tests::write(
        &cfg,
        &format!(
            "connectors:\n  registry:\n    type: registry\n    url: {}\n    on_revoke: quarantine\n",
            reg.url
        ),
    );
    riposte_tests::write(
        &work.path().join("pb/revoke.yaml"),
        &format!(
            r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: revoke-cart
spec:
  mode: enforce
  match:
    sources: [falco]
    when: event.title == "Cart image compromised"
  steps:
    - id: revoke
      action: registry.revoke
      with: {{ image: "{reference}", reason: "CVE-2024-3094", findings: [CVE-2024-3094] }}
"#
        ),
    );
    let _engine =
        riposte_tests::Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;
    let alert =
        riposte_tests::falco_alert("cart-1", "Cart image compromised", "Critical", "c1", "shop");
    riposte_tests::publish(&client, "falco.critical.cart", &[alert]).await;
    let records = riposte_tests::wait_for(
        &nats.url,
        std::time::Duration::from_secs(40),
        "the revoke step",
        |r| {
            r.iter()
                .any(|x| x.record == RecordKind::Step && x.step.as_deref() == Some("revoke"))
        },
    );
    let step = records
        .iter()
        .find(|x| x.record == RecordKind::Step && x.step.as_deref() == Some("revoke"))
        .unwrap();
    assert_eq!(step.outcome, "ok", "{step:#?}");
    let run = step.run_id.clone().unwrap();
    assert!(!pulls(&reference));
    assert!(pulls(&format!("{}/quarantine/shop/cart:9", reg.host)));

    // The entry names the event, playbook and run the engine ran it for, and the change is
    // in the audit trail.
    let list = list(&nats).await;
    let image = ImageRef::parse(&format!("{reference}@{digest}")).unwrap();
    let (entry, _) = list.find(&image).await.unwrap().unwrap();
    assert_eq!(entry.event_id.as_deref(), Some("cart-1"));
    assert_eq!(entry.playbook.as_deref(), Some("revoke-cart"));
    assert_eq!(entry.run_id.as_deref(), Some(run.as_str()));
    assert!(records.iter().any(|r| r.record == RecordKind::Revocation));

    let out = riposte_tests::cli(&["revert", &run, "--nats", &nats.url, "--as", "alice"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pulls(&reference), "back in its repository");
    let (entry, _) = list.find(&image).await.unwrap().unwrap();
    assert_eq!(entry.state, State::Reinstated);
    assert_eq!(entry.reinstated.unwrap().by, "alice");
}
