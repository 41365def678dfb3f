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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_refused_with_their_reason() {
        let p = Protection {
            containers: vec!["riposte*".into()],
            labels: BTreeMap::from([("riposte.io/protected".into(), "true".into())]),
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
}
