//! `${{ expr }}` templates in playbook strings, compiled once at load.
//!
//! A string that is exactly one `${{ expr }}` keeps the expression's type (a number stays a
//! number, a map a map); otherwise the pieces are joined as text. `with:` maps are trees of
//! such strings and literal values ([`ValueTemplate`]).

use rhai::{Dynamic, Scope, AST};
use serde_json::Value;

use crate::script::{dynamic_to_json, Context, Sandbox, ScriptError};

/// One compiled piece of a template.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Expr(AST),
}

/// A compiled template string.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// A problem in a template: the message and where in the string (0-based byte offset of the
/// expression, and the 1-based line/column inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// Byte offset in the template string where the expression starts.
    pub offset: usize,
}

impl Template {
    /// Compiles a template string.
    pub fn compile(text: &str, sandbox: &Sandbox, ctx: Context) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut offset = 0usize;
        while let Some(start) = rest.find("${{") {
            let (before, after) = rest.split_at(start);
            if !before.is_empty() {
                pieces.push(Piece::Text(before.to_owned()));
            }
            let body = after.get(3..).unwrap_or("");
            let Some(end) = body.find("}}") else {
                return Err(TemplateError {
                    message: "`${{` without its closing `}}`".to_owned(),
                    offset: offset + start,
                });
            };
            let expr = body.get(..end).unwrap_or("").trim();
            if expr.is_empty() {
                return Err(TemplateError {
                    message: "empty `${{ }}`".to_owned(),
                    offset: offset + start,
                });
            }
            let ast = sandbox
                .compile_expression(expr, ctx)
                .map_err(|e| TemplateError {
                    message: match e {
                        ScriptError::Syntax { message, .. } => message,
                        other => other.to_string(),
                    },
                    offset: offset + start,
                })?;
            pieces.push(Piece::Expr(ast));
            let consumed = start + 3 + end + 2;
            offset += consumed;
            rest = rest.get(consumed..).unwrap_or("");
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    /// A template that is one whole Rhai expression (a `vars` entry).
    pub fn expression(
        text: &str,
        sandbox: &Sandbox,
        ctx: Context,
    ) -> Result<Template, ScriptError> {
        Ok(Template {
            pieces: vec![Piece::Expr(sandbox.compile_expression(text, ctx)?)],
        })
    }

    /// Renders to JSON: a lone expression keeps its type, anything else is a string.
    pub fn render(
        &self,
        sandbox: &Sandbox,
        scope: &mut Scope<'static>,
    ) -> Result<Value, ScriptError> {
        if let [Piece::Expr(ast)] = self.pieces.as_slice() {
            return Ok(dynamic_to_json(&sandbox.eval(ast, scope)?));
        }
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Expr(ast) => out.push_str(&to_text(&sandbox.eval(ast, scope)?)),
            }
        }
        Ok(Value::String(out))
    }

    /// Renders to a string (for keys such as `dedup.key`).
    pub fn render_string(
        &self,
        sandbox: &Sandbox,
        scope: &mut Scope<'static>,
    ) -> Result<String, ScriptError> {
        Ok(match self.render(sandbox, scope)? {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }
}

/// How a value reads inside a string: text as is, nothing as empty, the rest as JSON.
fn to_text(value: &Dynamic) -> String {
    if value.is_unit() {
        return String::new();
    }
    if value.is_string() {
        return value.to_string();
    }
    match dynamic_to_json(value) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// A JSON tree whose strings may hold templates (a step's `with:`).
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    /// A value with no template in it.
    Literal(Value),
    /// A string with at least one `${{ }}`.
    Template(Template),
    /// An array with templates inside.
    Array(Vec<ValueTemplate>),
    /// A map with templates inside (keys are literal).
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    /// Compiles every string of a tree; `on_error` receives the path (`.key`, `[i]` appended to
    /// `path`) and the error of each bad template, and compilation goes on.
    pub fn compile(
        value: &Value,
        sandbox: &Sandbox,
        ctx: Context,
        path: &str,
        on_error: &mut dyn FnMut(&str, TemplateError),
    ) -> ValueTemplate {
        match value {
            Value::String(s) if s.contains("${{") => match Template::compile(s, sandbox, ctx) {
                Ok(t) => ValueTemplate::Template(t),
                Err(e) => {
                    on_error(path, e);
                    ValueTemplate::Literal(value.clone())
                }
            },
            Value::Array(items) if contains_template(value) => ValueTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        ValueTemplate::compile(v, sandbox, ctx, &format!("{path}[{i}]"), on_error)
                    })
                    .collect(),
            ),
            Value::Object(map) if contains_template(value) => ValueTemplate::Object(
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            ValueTemplate::compile(
                                v,
                                sandbox,
                                ctx,
                                &format!("{path}.{k}"),
                                on_error,
                            ),
                        )
                    })
                    .collect(),
            ),
            other => ValueTemplate::Literal(other.clone()),
        }
    }

    /// Renders the tree.
    pub fn render(
        &self,
        sandbox: &Sandbox,
        scope: &mut Scope<'static>,
    ) -> Result<Value, ScriptError> {
        Ok(match self {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::Template(t) => t.render(sandbox, scope)?,
            ValueTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.render(sandbox, scope))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTemplate::Object(entries) => {
                let mut map = serde_json::Map::new();
                for (k, v) in entries {
                    map.insert(k.clone(), v.render(sandbox, scope)?);
                }
                Value::Object(map)
            }
        })
    }
}

fn contains_template(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("${{"),
        Value::Array(items) => items.iter().any(contains_template),
        Value::Object(map) => map.values().any(contains_template),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::clock::SystemClock;
    use crate::script::json_to_dynamic;
    use serde_json::json;
    use std::sync::Arc;

    fn render(text: &str) -> Value {
        let sb = Sandbox::new(Arc::new(SystemClock));
        let t = Template::compile(text, &sb, Context::Match).unwrap();
        let mut scope = Scope::new();
        scope.push_constant_dynamic(
            "event",
            json_to_dynamic(&json!({"n": 3, "name": "web", "m": {"a": [1, 2]}})),
        );
        t.render(&sb, &mut scope).unwrap()
    }

    #[test]
    fn a_lone_expression_keeps_its_type() {
        assert_eq!(render("${{ event.n }}"), json!(3));
        assert_eq!(render("${{ event.m }}"), json!({"a": [1, 2]}));
        assert_eq!(render("${{event.n > 2}}"), json!(true));
    }

    #[test]
    fn mixed_text_is_joined_as_a_string() {
        assert_eq!(
            render("pod ${{ event.name }} x${{ event.n }}"),
            json!("pod web x3")
        );
        assert_eq!(render("${{ event.missing }}!"), json!("!"));
        assert_eq!(render("no template"), json!("no template"));
    }

    #[test]
    fn errors_say_where() {
        let sb = Sandbox::new(Arc::new(SystemClock));
        let e = Template::compile("ab ${{ event.", &sb, Context::Match).unwrap_err();
        assert_eq!(e.offset, 3);
        let e = Template::compile("ab ${{ nope.x }}", &sb, Context::Match).unwrap_err();
        assert!(e.message.contains("nope"), "{}", e.message);
    }
}
