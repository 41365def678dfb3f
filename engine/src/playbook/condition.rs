//! A compiled match condition: native predicates for its simple clauses, Rhai for the rest.
//!
//! A `when` is split on its top-level `&&`. Clauses of the forms `event.<field> == "text"`,
//! `event.<field> != "text"`, `event.<field> in ["a", "b", ...]` and
//! `at_least(event.severity, "level")` become native [`Predicate`]s, checked in nanoseconds
//! before any Rhai runs; a condition made only of such clauses never runs Rhai at all.
//! Equality and membership clauses feed the matcher's index. The semantics are Rhai's: a
//! missing field equals no string and is in no list.

use crate::event::{Event, Severity};

/// A field of the normalized event that native predicates can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `event.id`
    Id,
    /// `event.source`
    Source,
    /// `event.kind`
    Kind,
    /// `event.severity`
    Severity,
    /// `event.title`
    Title,
    /// `event.summary`
    Summary,
    /// `event.labels.<key>`
    Label(String),
    /// `event.resource.<part>.<field>`
    Resource(String, String),
}

impl Field {
    fn parse(path: &str) -> Option<Field> {
        let parts: Vec<&str> = path.split('.').collect();
        match parts.as_slice() {
            ["id"] => Some(Field::Id),
            ["source"] => Some(Field::Source),
            ["kind"] => Some(Field::Kind),
            ["severity"] => Some(Field::Severity),
            ["title"] => Some(Field::Title),
            ["summary"] => Some(Field::Summary),
            ["labels", key] => Some(Field::Label((*key).to_owned())),
            ["resource", part, field] if RESOURCE_FIELDS.contains(&(*part, *field)) => {
                Some(Field::Resource((*part).to_owned(), (*field).to_owned()))
            }
            _ => None,
        }
    }

    /// The field's text in an event, `None` when absent.
    pub fn read<'a>(&self, e: &'a Event) -> Option<&'a str> {
        let r = &e.resource;
        match self {
            Field::Id => Some(&e.id),
            Field::Source => Some(e.source.as_str()),
            Field::Kind => Some(e.kind.as_str()),
            Field::Severity => Some(e.severity.as_str()),
            Field::Title => Some(&e.title),
            Field::Summary => Some(&e.summary),
            Field::Label(k) => e.labels.get(k).map(String::as_str),
            Field::Resource(part, field) => match (part.as_str(), field.as_str()) {
                ("container", "id") => r.container.as_ref()?.id.as_deref(),
                ("container", "name") => r.container.as_ref()?.name.as_deref(),
                ("container", "image") => r.container.as_ref()?.image.as_deref(),
                ("pod", "name") => r.pod.as_ref()?.name.as_deref(),
                ("pod", "namespace") => r.pod.as_ref()?.namespace.as_deref(),
                ("pod", "uid") => r.pod.as_ref()?.uid.as_deref(),
                ("node", "name") => r.node.as_ref()?.name.as_deref(),
                ("image", "ref") => r.image.as_ref()?.r#ref.as_deref(),
                ("image", "repository") => r.image.as_ref()?.repository.as_deref(),
                ("image", "tag") => r.image.as_ref()?.tag.as_deref(),
                ("image", "digest") => r.image.as_ref()?.digest.as_deref(),
                ("host", "name") => r.host.as_ref()?.name.as_deref(),
                ("process", "name") => r.process.as_ref()?.name.as_deref(),
                ("process", "cmdline") => r.process.as_ref()?.cmdline.as_deref(),
                ("process", "user") => r.process.as_ref()?.user.as_deref(),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Id => f.write_str("event.id"),
            Field::Source => f.write_str("event.source"),
            Field::Kind => f.write_str("event.kind"),
            Field::Severity => f.write_str("event.severity"),
            Field::Title => f.write_str("event.title"),
            Field::Summary => f.write_str("event.summary"),
            Field::Label(k) => write!(f, "event.labels.{k}"),
            Field::Resource(p, x) => write!(f, "event.resource.{p}.{x}"),
        }
    }
}

const RESOURCE_FIELDS: &[(&str, &str)] = &[
    ("container", "id"),
    ("container", "name"),
    ("container", "image"),
    ("pod", "name"),
    ("pod", "namespace"),
    ("pod", "uid"),
    ("node", "name"),
    ("image", "ref"),
    ("image", "repository"),
    ("image", "tag"),
    ("image", "digest"),
    ("host", "name"),
    ("process", "name"),
    ("process", "cmdline"),
    ("process", "user"),
];

/// A clause checked natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    /// `event.<field> == "text"`
    Equals(Field, String),
    /// `event.<field> != "text"`
    NotEquals(Field, String),
    /// `event.<field> in ["a", "b", ...]` (the values without repeats, in order)
    In(Field, Vec<String>),
    /// `at_least(event.severity, "level")`
    AtLeast(Severity),
}

impl Predicate {
    /// Whether the event satisfies the clause.
    pub fn holds(&self, e: &Event) -> bool {
        match self {
            Predicate::Equals(f, v) => f.read(e) == Some(v.as_str()),
            Predicate::NotEquals(f, v) => f.read(e) != Some(v.as_str()),
            Predicate::In(f, vs) => f.read(e).is_some_and(|x| vs.iter().any(|v| v == x)),
            Predicate::AtLeast(min) => e.severity >= *min,
        }
    }

    /// Parses one clause, `None` when it is not of a native form.
    fn parse(clause: &str) -> Option<Predicate> {
        let c = strip_parens(clause.trim());
        if let Some(args) = c
            .strip_prefix("at_least(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (a, b) = args.split_once(',')?;
            if a.trim() != "event.severity" {
                return None;
            }
            return Severity::parse(&string_literal(b.trim())?).map(Predicate::AtLeast);
        }
        let member = |(l, r): (&str, &str)| {
            let field = Field::parse(l.trim().strip_prefix("event.")?)?;
            Some(Predicate::In(field, string_list(r.trim())?))
        };
        if let Some(p) = c.split_once(" in ").and_then(member) {
            return Some(p);
        }
        for (op, negate) in [("==", false), ("!=", true)] {
            let Some((l, r)) = c.split_once(op) else {
                continue;
            };
            let (l, r) = (l.trim(), r.trim());
            let (path, lit) = match (l.strip_prefix("event."), r.strip_prefix("event.")) {
                (Some(p), None) => (p, string_literal(r)?),
                (None, Some(p)) => (p, string_literal(l)?),
                _ => return None,
            };
            let field = Field::parse(path)?;
            return Some(if negate {
                Predicate::NotEquals(field, lit)
            } else {
                Predicate::Equals(field, lit)
            });
        }
        None
    }
}

/// A `"..."` literal without escapes or interpolation, as its text.
fn string_literal(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains(['"', '\\']) {
        return None;
    }
    Some(inner.to_owned())
}

/// A `["a", "b", ...]` array of plain string literals, as its distinct texts in order; `None`
/// for anything else (an empty array, other values, a trailing comma Rhai would also accept
/// is fine).
fn string_list(s: &str) -> Option<Vec<String>> {
    let mut rest = s.strip_prefix('[')?.strip_suffix(']')?.trim();
    let mut values: Vec<String> = Vec::new();
    while !rest.is_empty() {
        let body = rest.strip_prefix('"')?;
        let end = body.find('"')?;
        let (text, after) = body.split_at(end);
        if text.contains('\\') {
            return None;
        }
        if !values.iter().any(|v| v == text) {
            values.push(text.to_owned());
        }
        rest = after.get(1..)?.trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => break,
            None => return None,
        }
    }
    (!values.is_empty()).then_some(values)
}

/// Removes parentheses that wrap the whole clause.
fn strip_parens(mut s: &str) -> &str {
    while let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        if split_top_level_and(inner).is_none() || !balanced(inner) {
            break;
        }
        s = inner.trim();
    }
    s
}

fn balanced(s: &str) -> bool {
    split_top_level_and(s).is_some()
}

/// Splits on `&&` outside strings, parentheses, brackets and braces. `None` when the text is not
/// balanced or holds something the splitter does not follow (comments, backtick strings).
pub fn split_top_level_and(text: &str) -> Option<Vec<&str>> {
    let bytes = text.as_bytes();
    let mut depth: i32 = 0;
    let mut in_str: Option<u8> = None;
    let mut parts = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        let b = *bytes.get(i)?;
        if let Some(q) = in_str {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                in_str = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' => in_str = Some(b),
            b'`' => return None,
            b'/' if matches!(bytes.get(i + 1), Some(b'/') | Some(b'*')) => return None,
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            b'&' if depth == 0 && bytes.get(i + 1) == Some(&b'&') => {
                parts.push(text.get(start..i)?);
                start = i + 2;
                i += 2;
                continue;
            }
            b';' if depth == 0 => return None,
            _ => {}
        }
        i += 1;
    }
    if depth != 0 || in_str.is_some() {
        return None;
    }
    parts.push(text.get(start..)?);
    Some(parts)
}

/// The native part of a condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeClauses {
    /// Clauses that must all hold.
    pub predicates: Vec<Predicate>,
    /// Whether the predicates are the whole condition (no Rhai needed).
    pub complete: bool,
}

impl NativeClauses {
    /// Extracts native clauses from a condition's text.
    pub fn extract(text: &str) -> NativeClauses {
        let Some(clauses) = split_top_level_and(text.trim()) else {
            return NativeClauses::default();
        };
        let mut predicates = Vec::new();
        let mut complete = true;
        for clause in clauses {
            match Predicate::parse(clause) {
                Some(p) => predicates.push(p),
                None => complete = false,
            }
        }
        NativeClauses {
            predicates,
            complete,
        }
    }

    /// The title the condition requires, if one of its clauses is `event.title == "..."`.
    pub fn required_title(&self) -> Option<&str> {
        self.predicates.iter().find_map(|p| match p {
            Predicate::Equals(Field::Title, t) => Some(t.as_str()),
            _ => None,
        })
    }

    /// Whether every clause holds.
    pub fn hold(&self, e: &Event) -> bool {
        self.predicates.iter().all(|p| p.holds(e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn simple_clauses_become_native_predicates() {
        let n = NativeClauses::extract(
            "event.title == \"Terminal shell in container\"\n  && at_least(event.severity, \"medium\")\n  && event.resource.pod.namespace != \"kube-system\"",
        );
        assert!(n.complete);
        assert_eq!(n.required_title(), Some("Terminal shell in container"));
        assert_eq!(n.predicates.len(), 3);
    }

    #[test]
    fn membership_in_a_list_of_texts_is_native() {
        let n = NativeClauses::extract(
            "event.resource.pod.namespace in [\"shop\", \"bank\", \"shop\",] && event.title == \"login in progress\"",
        );
        assert!(n.complete);
        assert_eq!(
            n.predicates,
            [
                Predicate::In(
                    Field::Resource("pod".into(), "namespace".into()),
                    vec!["shop".into(), "bank".into()]
                ),
                Predicate::Equals(Field::Title, "login in progress".into()),
            ]
        );
        for rhai_only in [
            "event.title in []",
            "event.title in [\"a\", 1]",
            "event.title in [\"a\" \"b\"]",
            "event.title in \"a long title\"",
            "event.data.x in [\"a\"]",
            "\"shell\" in event.title",
            "event.title in [\"a\\\"b\"]",
        ] {
            assert!(!NativeClauses::extract(rhai_only).complete, "{rhai_only}");
        }
    }

    #[test]
    fn other_clauses_leave_the_condition_to_rhai() {
        let n = NativeClauses::extract("event.title == \"a && b\" && glob(\"x*\", event.summary)");
        assert!(!n.complete);
        assert_eq!(n.required_title(), Some("a && b"));
        let n = NativeClauses::extract("event.title == \"a\" || event.title == \"b\"");
        assert!(!n.complete);
        assert_eq!(n.required_title(), None);
        assert!(NativeClauses::extract("(event.title == \"a\")").complete);
        assert!(!NativeClauses::extract("let x = 1; event.title == \"a\"").complete);
        assert!(!NativeClauses::extract("event.data.x == \"a\"").complete);
    }
}
