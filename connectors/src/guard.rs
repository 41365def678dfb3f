//! What no destructive action may touch: containers whose name matches a protected pattern,
//! workloads carrying a protected label. The engine applies these to the event before a step
//! runs; connectors that resolve their own targets (a container id to its name and labels)
//! apply them again to what they resolved.

use std::collections::BTreeMap;

/// Protected names and labels, from `protect:` in `riposte.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// Container name patterns (shell globs, without the leading `/`).
    pub containers: Vec<String>,
    /// Labels that mark a container or pod as protected (`key` → `value`).
    pub labels: BTreeMap<String, String>,
    /// Kubernetes namespaces no action touches.
    pub namespaces: Vec<String>,
    /// Kubernetes label selectors (`tier=control-plane`, `app in (vault,etcd)`): a pod, node or
    /// namespace whose labels match one is protected.
    pub selectors: Vec<Selector>,
}

impl Protection {
    /// Why a Kubernetes object (`what`, e.g. "pod `shop/web-1`") with these labels is
    /// protected by a label or selector, if it is.
    pub fn refuses_labels(&self, what: &str, labels: &BTreeMap<String, String>) -> Option<String> {
        for (k, v) in &self.labels {
            if labels.get(k) == Some(v) {
                return Some(format!("{what} is protected by its label `{k}={v}`"));
            }
        }
        self.selectors
            .iter()
            .find(|s| s.matches(labels))
            .map(|s| format!("{what} is protected (its labels match `{}`)", s.text))
    }
}

/// A Kubernetes label selector in its string form: requirements joined by commas, each one of
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`.
/// All requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The selector as written.
    pub text: String,
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    Absent(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    /// Parses a selector, naming what is wrong.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in split_top(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("selector `{text}` has an empty requirement"));
            }
            requirements
                .push(Requirement::parse(part).map_err(|e| format!("selector `{text}`: {e}"))?);
        }
        if requirements.is_empty() {
            return Err("a selector needs at least one requirement".to_owned());
        }
        Ok(Selector {
            text: text.trim().to_owned(),
            requirements,
        })
    }

    /// Whether labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("selector `{text}` has an unmatched `)`"));
                }
            }
            ',' if depth == 0 => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("selector `{text}` has an unclosed `(`"));
    }
    parts.push(text.get(start..).unwrap_or_default());
    Ok(parts)
}

/// Checks a label or annotation key (`[prefix/]name`), trimmed.
pub(crate) fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(format!("`{key}` is not a label key"))
    }
}

impl Requirement {
    fn parse(part: &str) -> Result<Requirement, String> {
        if let Some(rest) = part.strip_prefix('!') {
            return Ok(Requirement::Absent(label_key(rest)?));
        }
        for (op, ctor) in [
            (
                "!=",
                Requirement::NotEquals as fn(String, String) -> Requirement,
            ),
            ("==", Requirement::Equals),
            ("=", Requirement::Equals),
        ] {
            if let Some((k, v)) = part.split_once(op) {
                return Ok(ctor(label_key(k)?, v.trim().to_owned()));
            }
        }
        let words: Vec<&str> = part.splitn(3, char::is_whitespace).collect();
        if let [key, op, set] = words.as_slice() {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("`{part}`: the values must be in parentheses"))?;
            let values: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            return match *op {
                "in" => Ok(Requirement::In(label_key(key)?, values)),
                "notin" => Ok(Requirement::NotIn(label_key(key)?, values)),
                other => Err(format!("`{part}`: unknown operator `{other}` (in, notin)")),
            };
        }
        Ok(Requirement::Exists(label_key(part)?))
    }
}

impl Protection {
    /// Why a container with this name and these labels is protected, if it is.
    pub fn refuses<'a>(
        &self,
        name: &str,
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Option<String> {
        let name = name.trim_start_matches('/');
        for (k, v) in labels {
            if self.labels.get(k) == Some(v) {
                return Some(format!(
                    "container `{name}` is protected by its label `{k}={v}`"
                ));
            }
        }
        self.containers
            .iter()
            .find(|g| glob_match(g, name))
            .map(|g| format!("container `{name}` is protected (name matches `{g}`)"))
    }
}

/// Shell-style glob: `*` any run of characters, `?` one character, `\` escapes; the whole text
/// must match.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => {
                pi += 1;
                ti += 1;
                continue;
            }
            Some('\\') if p.get(pi + 1).is_some() && p.get(pi + 1) == t.get(ti) => {
                pi += 2;
                ti += 1;
                continue;
            }
            Some(c) if *c != '\\' && Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

/// Whether an environment variable's name says it holds a secret (`DB_PASSWORD`,
/// `GITHUB_TOKEN`), where a mounted file should have been used (`*_FILE` names are not).
pub(crate) fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
        "access_key",
    ]
    .iter()
    .any(|w| n.contains(w))
        && !n.ends_with("_file")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_labels_are_refused_with_their_reason() {
        let p = Protection {
            containers: vec!["riposte*".into()],
            labels: BTreeMap::from([("riposte.io/protected".into(), "true".into())]),
            ..Protection::default()
        };
        let none = BTreeMap::new();
        assert!(p
            .refuses("/riposte-engine", &none)
            .is_some_and(|r| r.contains("riposte*")));
        assert_eq!(p.refuses("web", &none), None);
        let labels = BTreeMap::from([("riposte.io/protected".to_string(), "true".to_string())]);
        assert!(p
            .refuses("web", &labels)
            .is_some_and(|r| r.contains("label")));
        let other = BTreeMap::from([("riposte.io/protected".to_string(), "false".to_string())]);
        assert_eq!(p.refuses("web", &other), None);
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_follow_the_kubernetes_string_form() {
        let s = Selector::parse("tier=control-plane, app in (vault, etcd),!canary").unwrap();
        assert!(s.matches(&labels(&[("tier", "control-plane"), ("app", "vault")])));
        assert!(!s.matches(&labels(&[("tier", "control-plane"), ("app", "web")])));
        assert!(!s.matches(&labels(&[
            ("tier", "control-plane"),
            ("app", "etcd"),
            ("canary", "1")
        ])));
        let s = Selector::parse("env notin (dev),team").unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("team", "x")])));
        assert!(s.matches(&labels(&[("team", "x")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("team", "x")])));
        let s = Selector::parse("a!=b").unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("a", "b")])));
        for bad in ["", "a in (b", "a in b", "a within (b)", "a b=c", ","] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubernetes_objects_are_refused_by_label_or_selector() {
        let p = Protection {
            labels: BTreeMap::from([("riposte.io/protected".into(), "true".into())]),
            selectors: vec![Selector::parse("app in (vault)").unwrap()],
            ..Protection::default()
        };
        let r = p.refuses_labels("pod `a/b`", &labels(&[("app", "vault")]));
        assert!(r.is_some_and(|r| r.contains("app in (vault)")));
        let r = p.refuses_labels("node `n`", &labels(&[("riposte.io/protected", "true")]));
        assert!(r.is_some_and(|r| r.contains("node `n`")));
        assert_eq!(
            p.refuses_labels("pod `a/b`", &labels(&[("app", "web")])),
            None
        );
    }

    #[test]
    fn secret_looking_env_names_are_flagged_by_name_only() {
        assert!(looks_secret("DB_PASSWORD"));
        assert!(looks_secret("github_token"));
        assert!(!looks_secret("DB_PASSWORD_FILE"));
        assert!(!looks_secret("PATH"));
    }
}
