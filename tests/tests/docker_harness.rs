//! The Docker test harness against the real daemon: what a scene creates is what the connector
//! tests will assert on, and nothing of it outlives the scene.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use riposte_tests::docker::*;

fn listed(args: &[&str]) -> Vec<String> {
    docker_ok(args).lines().map(str::to_owned).collect()
}

#[test]
fn a_scene_builds_containers_on_networks_and_removes_everything_when_dropped() {
    let mut scene = Scene::new("harness");
    let prefix = scene.prefix().to_owned();
    let front = scene.network("front");
    let back = scene.network("back");

    let web = scene.container_with_labels(
        "web",
        &[(&front, &["web", "www"]), (&back, &["web-internal"])],
        &[("riposte.io/protected", "true")],
    );
    let worker = scene.container("worker", &[(&back, &[])]);

    assert_eq!(web.id.len(), 64);
    assert!(web.id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(web.name.starts_with(&prefix));
    assert_eq!(web.short_id(), &web.id[..12]);

    let inspected = scene.inspect(&web.name);
    assert_eq!(inspected["Id"], web.id.as_str());
    assert_eq!(
        networks_of(&inspected),
        BTreeMap::from([
            (front.clone(), vec!["web".to_owned(), "www".to_owned()]),
            (back.clone(), vec!["web-internal".to_owned()]),
        ])
    );
    assert_eq!(
        labels_of(&inspected).get("riposte.io/protected"),
        Some(&"true".to_owned())
    );
    assert_eq!(state_of(&inspected), (true, false, "running".to_owned()));
    assert_eq!(
        networks_of(&scene.inspect(&worker.id)),
        BTreeMap::from([(back.clone(), vec![])])
    );
    assert!(!labels_of(&scene.inspect(&worker.id)).contains_key("riposte.io/protected"));

    // The aliases resolve on the shared network.
    let resolved = docker(&[
        "exec",
        &worker.name,
        "/bin/busybox",
        "nslookup",
        "web-internal",
    ]);
    assert!(
        String::from_utf8_lossy(&resolved.stdout).contains("Address"),
        "web-internal did not resolve from the worker: {}",
        String::from_utf8_lossy(&resolved.stderr)
    );

    // A paused container, a network and an image made outside the scene's own calls.
    docker_ok(&["pause", &worker.name]);
    assert_eq!(
        state_of(&scene.inspect(&worker.name)),
        (true, true, "paused".to_owned())
    );
    let outside = scene.name("quarantine");
    docker_ok(&["network", "create", &outside]);
    scene.track_network(&outside);
    let repo = scene.name("evidence");
    docker_ok(&["commit", &web.name, &format!("{repo}:snapshot")]);
    scene.track_image_repo(&repo);

    assert!(scene.try_inspect(&scene.name("absent")).is_none());
    drop(scene);

    let name_filter = format!("name={prefix}");
    assert_eq!(
        listed(&["ps", "-a", "-q", "--filter", &name_filter]),
        Vec::<String>::new()
    );
    assert_eq!(
        listed(&["network", "ls", "-q", "--filter", &name_filter]),
        Vec::<String>::new()
    );
    assert_eq!(
        listed(&["image", "ls", "-q", &format!("{repo}:*")]),
        Vec::<String>::new()
    );
    assert!(docker(&["image", "inspect", TEST_IMAGE]).status.success());
}
