//! The Docker AuthZ plugin end to end: a dockerd of the test's own, started with
//! `--authorization-plugin`, asks `riposte run` about every request; creating a container from
//! (or pulling) a revoked image is refused with riposte's reason, a clean image is not, and a
//! reinstated image works again. The shared daemon on /var/run/docker.sock is never involved.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use riposte::audit::RecordKind;
use riposte_connectors::revocation::{Decision, ImageRef, Revocation, RevocationList, State};
use riposte_tests::docker::require_docker;
use riposte_tests::dockerd::Dockerd;
use riposte_tests::registry::RegistryServer;
use riposte_tests::{http_get, wait_for, write, Engine, NatsServer};

const PLAYBOOK: &str = "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: echo }\nspec:\n  match: { sources: [falco] }\n  steps:\n    - { id: a, action: log.info, with: { message: '${{ event.title }}' }, timeout: 60s }\n";

fn revocation(reference: &str) -> Revocation {
    Revocation {
        digest: None,
        reference: Some(ImageRef::parse(reference).unwrap().tagged().unwrap()),
        state: State::Revoked,
        reason: "critical vulnerabilities with a fix available".into(),
        findings: vec!["CVE-2024-45490".into(), "CVE-2024-45491".into()],
        event_id: Some("evt-trivy-1".into()),
        playbook: Some("revoke-vulnerable-images".into()),
        run_id: None,
        revoked: Decision {
            by: "riposte".into(),
            at: "2026-11-23T12:00:00Z".into(),
            reason: None,
        },
        reinstated: None,
        registry: None,
    }
}

/// One HTTP request to the plugin's socket, as dockerd would make it: status and body.
fn plugin_call(socket: &Path, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, text.split_once("\r\n\r\n").unwrap().1.to_owned())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn metric(engine: &Engine, line_start: &str) -> f64 {
    let (_, text) = http_get(&engine.metrics, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A nats-server, `riposte run` with the plugin on a socket, and a dockerd of the test's own
/// that asks it (started after it: dockerd activates its plugins at start).
struct Setup {
    nats: NatsServer,
    engine: Engine,
    daemon: Dockerd,
    name: String,
    socket: PathBuf,
    _work: tempfile::TempDir,
}

fn setup(tag: &str) -> Setup {
    require_docker();
    let nats = NatsServer::start();
    let work = tempfile::Builder::new()
        .prefix("raz")
        .tempdir_in("/tmp")
        .unwrap();
    write(&work.path().join("pb/echo.yaml"), PLAYBOOK);
    let name = format!("riposte-test-{}-{tag}", std::process::id());
    let socket = work.path().join("authz.sock");
    let mut daemon = Dockerd::prepare();
    let cfg = work.path().join("riposte.yaml");
    write(
        &cfg,
        &format!(
            "images:\n  authz:\n    socket: {}\n    docker_host: {}\n",
            socket.display(),
            daemon.host
        ),
    );
    let engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    assert!(socket.exists(), "{}", engine.log_text());
    daemon.start(Some((&name, &socket)));
    Setup {
        nats,
        engine,
        daemon,
        name,
        socket,
        _work: work,
    }
}

async fn revocation_list(nats: &NatsServer) -> RevocationList {
    let js = async_nats::jetstream::new(nats.client().await);
    RevocationList::open(&js, "riposte", 1, None).await.unwrap()
}

/// Runs `docker create ARGS` until it is refused (the index follows the bucket within
/// moments), removing what got created meanwhile.
fn refused_create(s: &Setup, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut argv = vec!["create"];
    argv.extend_from_slice(args);
    loop {
        let out = s.daemon.docker(&argv);
        if !out.status.success() {
            return stderr(&out);
        }
        assert!(
            Instant::now() < deadline,
            "a container was created from a revoked image; engine log:\n{}\ndockerd log:\n{}",
            s.engine.log_text(),
            s.daemon.log_text()
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        s.daemon.docker(&["rm", &id]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerd_refuses_containers_from_revoked_images_through_the_plugin() {
    let s = setup("ref");
    let (nats, engine, daemon, name, socket) = (&s.nats, &s.engine, &s.daemon, &s.name, &s.socket);
    let revoked_id = daemon.import_busybox("riposte-authz/app:1.0");
    daemon.import_busybox("riposte-authz/app:1.1");

    let list = revocation_list(nats).await;
    list.revoke(revocation("riposte-authz/app:1.0"))
        .await
        .unwrap();
    let expected = format!(
        "authorization denied by plugin {name}: riposte: image riposte-authz/app:1.0 is revoked: \
         critical vulnerabilities with a fix available (findings CVE-2024-45490, CVE-2024-45491, \
         revoked by playbook revoke-vulnerable-images at 2026-11-23T12:00:00Z)"
    );
    let refused = refused_create(&s, &["riposte-authz/app:1.0"]);
    assert!(refused.contains(&expected), "{refused}");

    // By image id: the daemon names its tags, one of them revoked.
    let by_id = daemon.docker(&["create", &revoked_id]);
    assert!(!by_id.status.success(), "created by image id");
    assert!(stderr(&by_id).contains("is revoked"), "{}", stderr(&by_id));

    // A pull of the revoked reference is refused before any registry is asked.
    let pull = daemon.docker(&["pull", "riposte-authz/app:1.0"]);
    assert!(!pull.status.success());
    assert!(
        stderr(&pull).contains(&format!(
            "authorization denied by plugin {name}: riposte: image"
        )),
        "{}",
        stderr(&pull)
    );

    // A clean image, and every other request, goes through.
    let clean = daemon.docker(&["create", "--name", "clean", "riposte-authz/app:1.1"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(daemon.docker(&["ps", "-a"]).status.success());

    // Reinstated: allowed again within moments.
    list.reinstate(
        &ImageRef::parse("riposte-authz/app:1.0").unwrap(),
        Decision {
            by: "alice".into(),
            at: "2026-11-23T13:00:00Z".into(),
            reason: Some("rebuilt upstream; false positive".into()),
        },
    )
    .await
    .unwrap()
    .unwrap();
    let started = Instant::now();
    loop {
        let out = daemon.docker(&["create", "riposte-authz/app:1.0"]);
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused after reinstating: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Requests dockerd would never send get a clear answer, not a crash.
    let (code, body) = plugin_call(socket, "/AuthZPlugin.AuthZReq", "not json");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("the AuthZ request is not one dockerd sends"),
        "{body}"
    );
    let odd = r#"{"User":"mallory","RequestMethod":"POST","RequestUri":"/v1.41/containers/create","RequestBody":"%%%"}"#;
    let (code, body) = plugin_call(socket, "/AuthZPlugin.AuthZReq", odd);
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["Allow"], true, "on_undecided is allow by default");
    let (code, body) = plugin_call(socket, "/Plugin.Activate", "");
    assert_eq!((code, body.as_str()), (200, r#"{"Implements":["authz"]}"#));
    assert!(metric(engine, "riposte_authz_decisions_total{decision=\"denied\"}") >= 3.0);
    assert!(
        metric(
            engine,
            "riposte_enforcement_undecided_total{point=\"authz\",answer=\"allowed\"}"
        ) >= 1.0
    );

    // Every denial and the unreadable requests are in the audit trail.
    let records = wait_for(&nats.url, Duration::from_secs(20), "authz records", |r| {
        let enf: Vec<_> = r
            .iter()
            .filter(|x| x.record == RecordKind::Enforcement && x.action.as_deref() == Some("authz"))
            .collect();
        enf.iter().filter(|x| x.outcome == "denied").count() >= 3
            && enf.iter().filter(|x| x.outcome == "error").count() >= 2
    });
    let denial = records
        .iter()
        .find(|x| x.record == RecordKind::Enforcement && x.outcome == "denied")
        .unwrap();
    let out = denial.output.as_ref().unwrap();
    assert_eq!(out["image"], "riposte-authz/app:1.0");
    assert_eq!(out["revocation"]["playbook"], "revoke-vulnerable-images");
    assert!(denial.reason.as_deref().unwrap().contains("is revoked"));
    let unreadable = records
        .iter()
        .find(|x| x.outcome == "error" && x.output.is_some())
        .unwrap();
    assert_eq!(unreadable.output.as_ref().unwrap()["user"], "mallory");
    assert_eq!(
        unreadable.reason.as_deref(),
        Some("the request body is not base64")
    );
    let spec = Path::new(riposte_tests::dockerd::PLUGIN_SPEC_DIR).join(format!("{name}.spec"));
    assert!(spec.exists());
    drop(s);
    assert!(!spec.exists(), "the spec file outlived the daemon");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_by_digest_catches_the_tag_and_the_image_id() {
    let s = setup("digest");
    let registry = RegistryServer::start();
    // Pushed from the test's daemon, the image gets a repository digest there.
    let id = s.daemon.import_busybox("riposte-authz/pushed:1");
    let reference = format!("{}/team/app:2", registry.host);
    let tagged = s
        .daemon
        .docker(&["tag", "riposte-authz/pushed:1", &reference]);
    assert!(tagged.status.success(), "{}", stderr(&tagged));
    let pushed = s.daemon.docker(&["push", &reference]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let inspect = s.daemon.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &reference,
    ]);
    let digests: Vec<String> = serde_json::from_slice(&inspect.stdout).unwrap();
    let digest = digests[0].rsplit_once('@').unwrap().1.to_owned();

    let list = revocation_list(&s.nats).await;
    let mut by_digest = revocation("unused:1");
    by_digest.reference = None;
    by_digest.digest = Some(digest.clone());
    list.revoke(by_digest).await.unwrap();
    for image in [
        reference.as_str(),
        id.as_str(),
        &format!("{}/team/app@{digest}", registry.host),
    ] {
        let refused = refused_create(&s, &[image]);
        assert!(
            refused.contains(&format!(
                "authorization denied by plugin {}: riposte: image",
                s.name
            )) && refused.contains("is revoked"),
            "{image}: {refused}"
        );
    }
    // The image's other tag is the same image: refused too. Another image is not.
    let same = s.daemon.docker(&["create", "riposte-authz/pushed:1"]);
    assert!(stderr(&same).contains("is revoked"), "{}", stderr(&same));
    s.daemon.import_busybox("riposte-authz/other:1");
    let clean = s.daemon.docker(&["create", "riposte-authz/other:1"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
}
