//! The JSON Schemas in `schemas/`, generated from the Rust types so they cannot drift (a test
//! compares the checked-in files with these).

use std::path::Path;

use crate::audit::AuditRecord;
use crate::config::Config;
use crate::event::Event;
use crate::playbook::spec::PlaybookFile;

/// Every schema: file name and pretty JSON text (with a trailing newline).
pub fn all() -> Vec<(&'static str, String)> {
    let render = |s: schemars::Schema| {
        serde_json::to_string_pretty(&s)
            .map_or_else(|e| format!("{{\"error\": \"{e}\"}}"), |t| t + "\n")
    };
    vec![
        (
            "playbook.schema.json",
            render(schemars::schema_for!(PlaybookFile)),
        ),
        ("config.schema.json", render(schemars::schema_for!(Config))),
        ("event.schema.json", render(schemars::schema_for!(Event))),
        (
            "audit.schema.json",
            render(schemars::schema_for!(AuditRecord)),
        ),
    ]
}

/// Writes every schema into `dir`.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in all() {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}
