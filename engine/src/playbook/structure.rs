//! Unknown keys anywhere in a document, all at once.
//!
//! serde stops at the first unknown key; this walks a document beside its JSON Schema
//! (generated from the same types: a playbook's, or `riposte.yaml`'s) and names every key the
//! schema does not allow, so they are reported together with their positions.

use std::sync::OnceLock;

use serde_json::Value;

use super::positions::{Pos, Positions};
use super::spec::PlaybookFile;

/// A key the schema does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Where the key is.
    pub pos: Pos,
    /// Its path, e.g. `spec.steps[0].retyr`.
    pub path: String,
    /// The keys allowed beside it.
    pub allowed: Vec<String>,
}

/// Reads YAML text and returns every key `schema` does not allow, in file order; a YAML
/// syntax error is returned as is.
pub fn unknown_keys_in(
    text: &str,
    positions: &Positions,
    schema: &Value,
) -> Result<Vec<UnknownKey>, serde_yaml::Error> {
    let raw: Value = serde_yaml::from_str(text)?;
    let mut found: Vec<UnknownKey> = unknown_keys(&raw, schema)
        .into_iter()
        .map(|(path, allowed)| UnknownKey {
            pos: positions.key(&path),
            path,
            allowed,
        })
        .collect();
    found.sort_by_key(|k| (k.pos.line, k.pos.column));
    Ok(found)
}

/// The playbook schema, built once.
pub fn playbook_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(PlaybookFile)).unwrap_or(Value::Null)
    })
}

/// Every key of `doc` that `schema` does not allow: (path of the key, allowed keys).
pub fn unknown_keys(doc: &Value, schema: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    walk(doc, schema, schema, "", &mut out);
    out
}

/// Follows `$ref` and picks the object branch of an `anyOf` (`Option<T>`).
fn resolve<'a>(node: &'a Value, root: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..8 {
        if let Some(name) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            match root.get("$defs").and_then(|d| d.get(name)) {
                Some(target) => node = target,
                None => return node,
            }
        } else if let Some(branches) = node.get("anyOf").and_then(Value::as_array) {
            match branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            {
                Some(b) => node = b,
                None => return node,
            }
        } else {
            return node;
        }
    }
    node
}

fn walk(
    value: &Value,
    node: &Value,
    root: &Value,
    path: &str,
    out: &mut Vec<(String, Vec<String>)>,
) {
    let node = resolve(node, root);
    match value {
        Value::Object(map) => {
            let Some(props) = node.get("properties").and_then(Value::as_object) else {
                return;
            };
            let closed = node.get("additionalProperties") == Some(&Value::Bool(false));
            for (key, v) in map {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match props.get(key) {
                    Some(sub) => walk(v, sub, root, &child, out),
                    None if closed => out.push((child, props.keys().cloned().collect())),
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = node.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(v, item, root, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_every_unknown_key_with_its_path() {
        let doc: Value = serde_yaml::from_str(
            "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: x, colour: red }\nspec:\n  match: { when: 'true', sourcez: [] }\n  dedup: { key: a, window: 1m, size: 3 }\n  steps:\n    - { id: a, action: log.info, with: { anything: goes }, retyr: {} }\n",
        )
        .unwrap();
        let found: Vec<String> = unknown_keys(&doc, playbook_schema())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            found,
            vec![
                "metadata.colour",
                "spec.dedup.size",
                "spec.match.sourcez",
                "spec.steps[0].retyr"
            ]
        );
    }
}
