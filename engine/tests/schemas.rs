//! The JSON Schemas in `schemas/` are generated from the Rust types: this fails when a
//! checked-in file drifts from what the code accepts. Regenerate with `riposte schema schemas`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    for (name, text) in riposte::schema::all() {
        let on_disk = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("schemas/{name}: {e}; run `riposte schema schemas`"));
        assert!(
            on_disk == text,
            "schemas/{name} is out of date with the code: run `cargo run -p riposte -- schema schemas`"
        );
    }
}

#[test]
fn the_shipped_playbooks_follow_the_playbook_schema_shape() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/playbook.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let required = schema["required"].as_array().unwrap();
    for key in ["apiVersion", "kind", "metadata", "spec"] {
        assert!(required.iter().any(|r| r == key), "{key} is not required");
    }
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
}
