//! Action and parameter descriptions, and the check of arguments against them.
//!
//! `riposte check` and the playbook schema read these descriptions; the engine checks every
//! rendered argument map with [`check_args`] before a connector sees it, so connectors can rely on
//! the types they declared.

use serde_json::Value;

use crate::{Args, ConnectorError};

/// The type of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// true or false.
    Bool,
    /// Any JSON value (objects, arrays, strings...).
    Any,
}

impl ParamType {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Bool => "bool",
            ParamType::Any => "any",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Integer => value.is_i64() || value.is_u64(),
            ParamType::Bool => value.is_boolean(),
            ParamType::Any => true,
        }
    }
}

/// One parameter of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    /// Name, as written under `with:`.
    pub name: &'static str,
    /// Type.
    pub ty: ParamType,
    /// Whether a step must give it.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
}

/// One action of a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionSpec {
    /// Name, as written after the instance: `log.info` has action `info`.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Its parameters.
    pub params: &'static [ParamSpec],
    /// Whether it changes the estate (counted by limits, stopped by the kill switch).
    pub destructive: bool,
    /// Whether it has an inverse ([`crate::Connector::revert`]).
    pub reversible: bool,
    /// Whether it can serve in a `notify` block with no `with`: the engine then fills the
    /// parameter named here with its default enriched message.
    pub message_param: Option<&'static str>,
}

impl ActionSpec {
    /// Whether the action takes the enriched notice: its message parameter takes any value
    /// (the paging, chat, mail and webhook connectors). Such notifications are grouped and
    /// retried by default.
    pub fn takes_notice(&self) -> bool {
        self.message_param.is_some_and(|m| {
            self.params
                .iter()
                .any(|p| p.name == m && p.ty == ParamType::Any)
        })
    }
}

/// Finds an action by name.
pub fn find_action<'a>(actions: &'a [ActionSpec], name: &str) -> Option<&'a ActionSpec> {
    actions.iter().find(|a| a.name == name)
}

/// Checks arguments against an action's parameters: every required one given, none unknown,
/// every one of its declared type. Returns every problem, joined.
pub fn check_args(action: &ActionSpec, args: &Args) -> Result<(), ConnectorError> {
    let mut problems = Vec::new();
    for p in action.params {
        match args.get(p.name) {
            None | Some(Value::Null) if p.required => {
                problems.push(format!("missing required parameter `{}`", p.name));
            }
            Some(v) if !v.is_null() && !p.ty.accepts(v) => problems.push(format!(
                "parameter `{}` must be of type {}, got {}",
                p.name,
                p.ty.as_str(),
                json_type(v)
            )),
            _ => {}
        }
    }
    for key in args.keys() {
        if !action.params.iter().any(|p| p.name == key) {
            let known: Vec<&str> = action.params.iter().map(|p| p.name).collect();
            problems.push(format!(
                "unknown parameter `{key}` (known: {})",
                known.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConnectorError::InvalidArgs {
            action: action.name.to_owned(),
            reason: problems.join("; "),
        })
    }
}

/// The JSON type name of a value, for messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "map",
    }
}

/// Reads a string argument that [`check_args`] has already checked.
pub fn str_arg<'a>(args: &'a Args, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

/// A string argument that is given and not blank.
pub fn given<'a>(args: &'a Args, name: &str) -> Option<&'a str> {
    str_arg(args, name).filter(|s| !s.trim().is_empty())
}

/// Refuses a value longer than a service takes, where cutting it would change its meaning
/// (an identity such as a dedup key or an alias).
pub fn check_len(
    action: &str,
    param: &str,
    value: &str,
    max: usize,
    service: &str,
) -> Result<(), ConnectorError> {
    let n = value.chars().count();
    if n > max {
        return Err(ConnectorError::invalid(
            action,
            format!("`{param}` is {n} characters, {service} takes at most {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    const SPEC: ActionSpec = ActionSpec {
        name: "publish",
        description: "",
        params: &[
            ParamSpec {
                name: "subject",
                ty: ParamType::String,
                required: true,
                description: "",
            },
            ParamSpec {
                name: "count",
                ty: ParamType::Integer,
                required: false,
                description: "",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    };

    #[test]
    fn names_every_problem_with_the_arguments() {
        let args = json!({"count": "three", "subjekt": "x"});
        let err = check_args(&SPEC, args.as_object().unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("missing required parameter `subject`"),
            "{msg}"
        );
        assert!(
            msg.contains("`count` must be of type integer, got string"),
            "{msg}"
        );
        assert!(msg.contains("unknown parameter `subjekt`"), "{msg}");
    }

    #[test]
    fn accepts_arguments_of_the_declared_types() {
        let args = json!({"subject": "a.b", "count": 3});
        assert!(check_args(&SPEC, args.as_object().unwrap()).is_ok());
    }
}
