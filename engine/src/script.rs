//! The Rhai sandbox: compiles and evaluates playbook expressions and `${{ }}` templates.
//!
//! Owns the one [`Sandbox`] (built once, shared: building a Rhai engine costs far more than an
//! evaluation) and the compiled forms of expressions. Scripts get no file, network, process or
//! module access, and run under limits on operations, call depth, expression depth and sizes,
//! so a condition that loops or explodes is cut off with an error, never hangs the engine.
//! Evaluation errors are returned, never panicked on; the caller decides what they mean
//! (a condition that errors is "no match").

pub use riposte_connectors::guard::glob_match;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use rhai::packages::{Package, StandardPackage};
use rhai::{
    Dynamic, Engine, EvalAltResult, ImmutableString, OptimizationLevel, Position, Scope, AST,
};
use thiserror::Error;

use crate::clock::Clock;
use crate::event::{Event, Severity};

/// Operations one evaluation may take before it is cut off.
pub const MAX_OPERATIONS: u64 = 200_000;
/// Nested function calls.
pub const MAX_CALL_LEVELS: usize = 32;
/// Nesting of expressions (and of expressions inside functions).
pub const MAX_EXPR_DEPTH: usize = 64;
/// Length of any string built by a script.
pub const MAX_STRING_SIZE: usize = 256 * 1024;
/// Elements of any array built by a script.
pub const MAX_ARRAY_SIZE: usize = 10_000;
/// Entries of any map built by a script.
pub const MAX_MAP_SIZE: usize = 10_000;
/// Distinct regular expressions kept compiled by `matches()`.
const REGEX_CACHE: usize = 1024;

/// An error compiling or evaluating a script.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScriptError {
    /// The text is not valid Rhai (or uses an undeclared variable).
    #[error("{message}")]
    Syntax {
        /// What is wrong.
        message: String,
        /// 1-based line inside the expression, when known.
        line: Option<usize>,
        /// 1-based column inside the expression, when known.
        column: Option<usize>,
    },
    /// Evaluation failed or hit a sandbox limit.
    #[error("{0}")]
    Runtime(String),
    /// A condition gave something other than true or false.
    #[error("the condition returned {0}, not a bool")]
    NotBool(String),
}

/// Which variables an expression may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A match condition: `event`.
    Match,
    /// Vars, dedup keys: `event`, `vars`.
    Vars,
    /// Steps and notifications: `event`, `vars`, `steps`, `run`.
    Run,
}

impl Context {
    fn variables(self) -> &'static [&'static str] {
        match self {
            Context::Match => &["event"],
            Context::Vars => &["event", "vars"],
            Context::Run => &["event", "vars", "steps", "run"],
        }
    }
}

/// The sandboxed Rhai engine, built once and shared.
#[derive(Clone)]
pub struct Sandbox {
    engine: Arc<Engine>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sandbox")
    }
}

impl Sandbox {
    /// Builds the sandbox: a raw engine with the standard library (strings, arrays, maps, maths;
    /// no I/O), the playbook helpers, limits, and `print`/`debug` routed to tracing.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let mut engine = Engine::new_raw();
        engine.register_global_module(StandardPackage::new().as_shared_module());
        engine
            .set_max_operations(MAX_OPERATIONS)
            .set_max_call_levels(MAX_CALL_LEVELS)
            .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_EXPR_DEPTH)
            .set_max_string_size(MAX_STRING_SIZE)
            .set_max_array_size(MAX_ARRAY_SIZE)
            .set_max_map_size(MAX_MAP_SIZE)
            .set_strict_variables(true)
            .set_optimization_level(OptimizationLevel::Simple);
        engine.disable_symbol("eval");
        engine.on_print(|s| tracing::info!(target: "riposte::script", "{s}"));
        engine.on_debug(|s, _, pos| tracing::debug!(target: "riposte::script", %pos, "{s}"));
        register_helpers(&mut engine, clock);
        Sandbox {
            engine: Arc::new(engine),
        }
    }

    /// Compiles a script (statements allowed; the last expression is its value).
    pub fn compile(&self, text: &str, ctx: Context) -> Result<AST, ScriptError> {
        let scope = declared(ctx);
        self.engine
            .compile_with_scope(&scope, text)
            .map_err(|e| syntax_error(e.to_string(), e.1))
    }

    /// Compiles a single expression (used inside `${{ }}`).
    pub fn compile_expression(&self, text: &str, ctx: Context) -> Result<AST, ScriptError> {
        let scope = declared(ctx);
        self.engine
            .compile_expression_with_scope(&scope, text)
            .map_err(|e| syntax_error(e.to_string(), e.1))
    }

    /// Evaluates a compiled script in `scope`; variables the script declares are dropped after.
    pub fn eval(&self, ast: &AST, scope: &mut Scope<'static>) -> Result<Dynamic, ScriptError> {
        let len = scope.len();
        let result = self.engine.eval_ast_with_scope::<Dynamic>(scope, ast);
        scope.rewind(len);
        result.map_err(|e| ScriptError::Runtime(runtime_message(&e)))
    }

    /// Evaluates a condition against a blank event: `Some(what it returned)` when that is a
    /// value but not a bool, which shows at load time that the condition can never match.
    pub fn probe_non_bool(&self, ast: &AST) -> Option<String> {
        let blank = Event {
            id: String::new(),
            source: crate::event::Source::Generic,
            kind: crate::event::Kind::Alert,
            time: String::new(),
            severity: Severity::Info,
            title: String::new(),
            summary: String::new(),
            resource: Default::default(),
            findings: Vec::new(),
            labels: Default::default(),
            data: serde_json::json!({}),
            enrichment: Default::default(),
        };
        let mut scope = Scope::new();
        scope.push_constant_dynamic("event", event_to_dynamic(&blank, true));
        match self.eval(ast, &mut scope) {
            Ok(v) if !v.is_bool() => Some(describe(&v)),
            _ => None,
        }
    }

    /// Evaluates a condition: true or false, or an error (which callers treat as no match).
    pub fn eval_bool(&self, ast: &AST, scope: &mut Scope<'static>) -> Result<bool, ScriptError> {
        let value = self.eval(ast, scope)?;
        value
            .as_bool()
            .map_err(|_| ScriptError::NotBool(describe(&value)))
    }
}

/// A scope declaring the variables of a context, for compiling (values are placeholders).
fn declared(ctx: Context) -> Scope<'static> {
    let mut scope = Scope::new();
    for name in ctx.variables() {
        scope.push_dynamic(*name, Dynamic::UNIT);
    }
    scope
}

fn syntax_error(message: String, pos: Position) -> ScriptError {
    // Rhai appends " (line L, position C)"; the caller reports the position itself.
    let message = match message.rfind(" (line ") {
        Some(i) if !pos.is_none() => message.get(..i).unwrap_or(&message).to_owned(),
        _ => message,
    };
    ScriptError::Syntax {
        message,
        line: pos.line(),
        column: pos.position(),
    }
}

fn runtime_message(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorTooManyOperations(_) => format!(
            "cut off by the sandbox: more than {MAX_OPERATIONS} operations (a loop that never ends?)"
        ),
        EvalAltResult::ErrorStackOverflow(_) => {
            format!("cut off by the sandbox: more than {MAX_CALL_LEVELS} nested calls")
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            format!("cut off by the sandbox: {what} too large")
        }
        other => other.to_string(),
    }
}

/// Names a value's type and, for short values, the value, for messages.
pub fn describe(value: &Dynamic) -> String {
    let ty = value.type_name();
    let text = value.to_string();
    if value.is_unit() {
        "() (nothing)".to_owned()
    } else if text.len() <= 40 {
        format!("{ty} {text}")
    } else {
        ty.to_owned()
    }
}

/// Converts an event into the Rhai map playbooks see as `event`. Every resource part is present
/// (an empty map when unknown), so `event.resource.pod.namespace` is `()` rather than an error.
/// Built field by field (the payload under `data` converted once), which costs a third of going
/// through `serde_json::Value`; a test keeps the two in step.
pub fn event_to_dynamic(e: &Event, with_data: bool) -> Dynamic {
    fn text(s: &str) -> Dynamic {
        Dynamic::from(ImmutableString::from(s))
    }
    fn part(fields: &[(&str, Option<&str>)]) -> rhai::Map {
        let mut m = rhai::Map::new();
        for (k, v) in fields {
            if let Some(v) = v {
                m.insert((*k).into(), text(v));
            }
        }
        m
    }
    fn strings(map: &std::collections::BTreeMap<String, String>) -> Dynamic {
        Dynamic::from_map(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), text(v)))
                .collect(),
        )
    }
    let r = &e.resource;
    let mut resource = rhai::Map::new();
    let c = r.container.as_ref();
    resource.insert(
        "container".into(),
        Dynamic::from_map(part(&[
            ("id", c.and_then(|c| c.id.as_deref())),
            ("name", c.and_then(|c| c.name.as_deref())),
            ("image", c.and_then(|c| c.image.as_deref())),
        ])),
    );
    let p = r.pod.as_ref();
    let mut pod = part(&[
        ("name", p.and_then(|p| p.name.as_deref())),
        ("namespace", p.and_then(|p| p.namespace.as_deref())),
        ("uid", p.and_then(|p| p.uid.as_deref())),
    ]);
    if let Some(labels) = p.map(|p| &p.labels).filter(|l| !l.is_empty()) {
        pod.insert("labels".into(), strings(labels));
    }
    resource.insert("pod".into(), Dynamic::from_map(pod));
    resource.insert(
        "node".into(),
        Dynamic::from_map(part(&[(
            "name",
            r.node.as_ref().and_then(|n| n.name.as_deref()),
        )])),
    );
    let i = r.image.as_ref();
    resource.insert(
        "image".into(),
        Dynamic::from_map(part(&[
            ("ref", i.and_then(|i| i.r#ref.as_deref())),
            ("repository", i.and_then(|i| i.repository.as_deref())),
            ("tag", i.and_then(|i| i.tag.as_deref())),
            ("digest", i.and_then(|i| i.digest.as_deref())),
        ])),
    );
    resource.insert(
        "host".into(),
        Dynamic::from_map(part(&[(
            "name",
            r.host.as_ref().and_then(|h| h.name.as_deref()),
        )])),
    );
    let pr = r.process.as_ref();
    let mut process = part(&[
        ("name", pr.and_then(|p| p.name.as_deref())),
        ("cmdline", pr.and_then(|p| p.cmdline.as_deref())),
        ("user", pr.and_then(|p| p.user.as_deref())),
    ]);
    if let Some(pid) = pr.and_then(|p| p.pid) {
        process.insert("pid".into(), Dynamic::from_int(pid));
    }
    resource.insert("process".into(), Dynamic::from_map(process));
    let findings: rhai::Array = e
        .findings
        .iter()
        .map(|f| {
            let m = part(&[
                ("id", Some(&f.id)),
                ("severity", Some(f.severity.as_str())),
                ("package", f.package.as_deref()),
                ("installed", f.installed.as_deref()),
                ("fixed", f.fixed.as_deref()),
                ("title", f.title.as_deref()),
            ]);
            Dynamic::from_map(m)
        })
        .collect();
    let mut m = rhai::Map::new();
    m.insert("id".into(), text(&e.id));
    m.insert("source".into(), text(e.source.as_str()));
    m.insert("kind".into(), text(e.kind.as_str()));
    m.insert("time".into(), text(&e.time));
    m.insert("severity".into(), text(e.severity.as_str()));
    m.insert("title".into(), text(&e.title));
    m.insert("summary".into(), text(&e.summary));
    m.insert("resource".into(), Dynamic::from_map(resource));
    m.insert("findings".into(), Dynamic::from_array(findings));
    m.insert("labels".into(), strings(&e.labels));
    let data = if with_data {
        json_to_dynamic(&e.data)
    } else {
        Dynamic::UNIT
    };
    m.insert("data".into(), data);
    m.insert(
        "enrichment".into(),
        Dynamic::from_map(
            e.enrichment
                .iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect(),
        ),
    );
    Dynamic::from_map(m)
}

/// Converts JSON to a Rhai value (integers stay integers; numbers too large become floats).
pub fn json_to_dynamic(value: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(json_to_dynamic).collect()),
        Value::Object(map) => {
            let mut out = rhai::Map::new();
            for (k, v) in map {
                out.insert(k.as_str().into(), json_to_dynamic(v));
            }
            Dynamic::from_map(out)
        }
    }
}

/// Converts a Rhai value to JSON (unit becomes null; values with no JSON form, their text).
pub fn dynamic_to_json(value: &Dynamic) -> serde_json::Value {
    use serde_json::Value;
    if value.is_unit() {
        return Value::Null;
    }
    if let Ok(b) = value.as_bool() {
        return Value::Bool(b);
    }
    if let Ok(i) = value.as_int() {
        return Value::from(i);
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    }
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return Value::String(s.to_string());
    }
    if let Some(items) = value.read_lock::<rhai::Array>() {
        return Value::Array(items.iter().map(dynamic_to_json).collect());
    }
    if let Some(map) = value.read_lock::<rhai::Map>() {
        return Value::Object(
            map.iter()
                .map(|(k, v)| (k.to_string(), dynamic_to_json(v)))
                .collect(),
        );
    }
    Value::String(value.to_string())
}

type HelperResult<T> = Result<T, Box<EvalAltResult>>;

fn helper_error(message: String) -> Box<EvalAltResult> {
    message.into()
}

fn register_helpers(engine: &mut Engine, clock: Arc<dyn Clock>) {
    engine.register_fn(
        "at_least",
        |severity: ImmutableString, min: ImmutableString| -> HelperResult<bool> {
            let min = Severity::parse(&min).ok_or_else(|| {
                helper_error(format!(
                    "at_least: `{min}` is not a severity (info, low, medium, high, critical)"
                ))
            })?;
            Ok(Severity::parse(&severity).is_some_and(|s| s >= min))
        },
    );
    // A missing field (`()`) is below every severity rather than an error.
    engine.register_fn("at_least", |_: (), _: ImmutableString| false);
    engine.register_fn("glob", |pattern: ImmutableString, text: ImmutableString| {
        glob_match(&pattern, &text)
    });
    engine.register_fn("glob", |_: ImmutableString, _: ()| false);
    let cache: Arc<RwLock<HashMap<String, regex::Regex>>> = Arc::default();
    let regexes = cache.clone();
    engine.register_fn(
        "matches",
        move |pattern: ImmutableString, text: ImmutableString| -> HelperResult<bool> {
            regex_match(&regexes, &pattern, &text)
        },
    );
    engine.register_fn("matches", |_: ImmutableString, _: ()| false);
    engine.register_fn(
        "in_cidr",
        |ip: ImmutableString, cidr: ImmutableString| -> HelperResult<bool> {
            let net: ipnet::IpNet = cidr
                .trim()
                .parse()
                .map_err(|_| helper_error(format!("in_cidr: `{cidr}` is not a CIDR block")))?;
            Ok(ip
                .trim()
                .parse::<IpAddr>()
                .is_ok_and(|addr| net.contains(&addr)))
        },
    );
    engine.register_fn("in_cidr", |_: (), _: ImmutableString| false);
    engine.register_fn("label", |map: rhai::Map, key: ImmutableString| -> Dynamic {
        map.get(key.as_str())
            .filter(|v| !v.is_unit())
            .cloned()
            .unwrap_or_else(|| Dynamic::from(ImmutableString::new()))
    });
    engine.register_fn("label", |_: (), _: ImmutableString| {
        Dynamic::from(ImmutableString::new())
    });
    engine.register_fn("now", move || -> rhai::INT { clock.now().timestamp() });
    engine.register_fn(
        "timestamp",
        |text: ImmutableString| -> HelperResult<rhai::INT> {
            chrono::DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.timestamp())
                .map_err(|_| helper_error(format!("timestamp: `{text}` is not an RFC 3339 time")))
        },
    );
}

fn regex_match(
    cache: &RwLock<HashMap<String, regex::Regex>>,
    pattern: &str,
    text: &str,
) -> HelperResult<bool> {
    if let Ok(map) = cache.read() {
        if let Some(re) = map.get(pattern) {
            return Ok(re.is_match(text));
        }
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| helper_error(format!("matches: invalid regular expression: {e}")))?;
    let hit = re.is_match(text);
    if let Ok(mut map) = cache.write() {
        if map.len() < REGEX_CACHE {
            map.insert(pattern.to_owned(), re);
        }
    }
    Ok(hit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::clock::FixedClock;

    fn sandbox() -> Sandbox {
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        Sandbox::new(Arc::new(FixedClock::new(at.into())))
    }

    fn eval(text: &str, event: serde_json::Value) -> Result<bool, ScriptError> {
        let sb = sandbox();
        let ast = sb.compile(text, Context::Match)?;
        let mut scope = Scope::new();
        scope.push_constant_dynamic("event", json_to_dynamic(&event));
        sb.eval_bool(&ast, &mut scope)
    }

    #[test]
    fn helpers_compare_severities_globs_regexes_and_networks() {
        let ev = serde_json::json!({"severity": "high", "ip": "10.1.2.3", "name": "nginx-7f9c"});
        assert_eq!(
            eval(r#"at_least(event.severity, "medium")"#, ev.clone()),
            Ok(true)
        );
        assert_eq!(
            eval(r#"at_least(event.severity, "critical")"#, ev.clone()),
            Ok(false)
        );
        assert_eq!(
            eval(r#"at_least(event.missing, "low")"#, ev.clone()),
            Ok(false)
        );
        assert_eq!(eval(r#"glob("nginx-*", event.name)"#, ev.clone()), Ok(true));
        assert_eq!(
            eval(r#"matches("^nginx-[0-9a-f]+$", event.name)"#, ev.clone()),
            Ok(true)
        );
        assert_eq!(
            eval(r#"in_cidr(event.ip, "10.0.0.0/8")"#, ev.clone()),
            Ok(true)
        );
        assert_eq!(
            eval(r#"in_cidr(event.ip, "192.168.0.0/16")"#, ev.clone()),
            Ok(false)
        );
        assert_eq!(eval(r#"label(event, "nope") == """#, ev.clone()), Ok(true));
        assert_eq!(eval(r#"now() == 1767225600"#, ev.clone()), Ok(true));
        assert_eq!(
            eval(r#"now() - timestamp("2025-12-31T23:00:00Z") == 3600"#, ev),
            Ok(true)
        );
    }

    #[test]
    fn a_condition_that_never_ends_is_cut_off() {
        let err = eval("loop { }", serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("cut off by the sandbox"), "{err}");
        let err = eval("fn f(x) { f(x) } f(1)", serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("cut off by the sandbox"), "{err}");
        let err = eval(r#"let s = "x"; loop { s += s; }"#, serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("cut off by the sandbox"), "{err}");
    }

    #[test]
    fn undeclared_variables_and_eval_are_refused_at_compile_time() {
        let sb = sandbox();
        assert!(sb.compile("evnt.title == \"x\"", Context::Match).is_err());
        assert!(sb.compile("vars.x == 1", Context::Match).is_err());
        assert!(sb.compile("vars.x == 1", Context::Vars).is_ok());
        assert!(sb.compile(r#"eval("1")"#, Context::Match).is_err());
    }

    #[test]
    fn a_non_boolean_condition_is_an_error() {
        let err = eval("event.title", serde_json::json!({"title": "x"})).unwrap_err();
        assert_eq!(err, ScriptError::NotBool("string x".into()));
    }

    /// Adds the parts a serialized event leaves out when empty: every resource part as an empty
    /// map, `findings` as an empty array, `labels` as an empty map.
    fn complete_view(value: &mut serde_json::Value) {
        use serde_json::{Map, Value};
        if let Some(resource) = value.get_mut("resource").and_then(Value::as_object_mut) {
            for part in ["container", "pod", "node", "image", "host", "process"] {
                resource
                    .entry(part)
                    .or_insert_with(|| Value::Object(Map::new()));
            }
        }
        if let Some(map) = value.as_object_mut() {
            map.entry("findings")
                .or_insert_with(|| Value::Array(Vec::new()));
            map.entry("labels")
                .or_insert_with(|| Value::Object(Map::new()));
            map.entry("enrichment")
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }

    #[test]
    fn the_rhai_view_of_an_event_matches_its_json_form() {
        let payload = br#"{"uuid":"u1","rule":"R","priority":"Critical","output":"x","time":"2026-01-01T00:00:00Z","output_fields":{"container.id":"abc","container.name":"web","k8s.ns.name":"ns","k8s.pod.name":"p","proc.pid":42,"proc.name":"sh","user.name":"root"},"tags":["a"]}"#;
        let mut events =
            crate::formats::normalize(crate::event::Source::Falco, payload, chrono::Utc::now())
                .unwrap();
        let mut e = events.remove(0);
        e.findings.push(crate::event::Finding {
            id: "CVE-1".into(),
            severity: Severity::High,
            package: Some("openssl".into()),
            installed: Some("1".into()),
            fixed: None,
            title: None,
        });
        e.resource
            .pod
            .get_or_insert_with(Default::default)
            .labels
            .insert("app".into(), "web".into());
        let mut expected = serde_json::to_value(&e).unwrap();
        complete_view(&mut expected);
        assert_eq!(dynamic_to_json(&event_to_dynamic(&e, true)), expected);
    }

    #[test]
    fn glob_handles_stars_marks_and_escapes() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match(r"a\*", "a*"));
        assert!(!glob_match(r"a\*", "ab"));
        assert!(glob_match("*.example.com", "www.example.com"));
        assert!(!glob_match("*.example.com", "example.org"));
    }
}
