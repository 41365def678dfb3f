//! Connector `log`: writes a line to the engine's own log (actions `info`, `warn`).
//!
//! The simplest connector, and the one `riposte test` and the demo lean on: it has no side
//! effects beyond the log, so plan and run differ only in whether the line is written.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::spec::{find_action, str_arg, ActionSpec, ParamSpec, ParamType};
use crate::{reject_unknown_settings, Args, BuildError, Connector, ConnectorError, Output, Plan};

const MESSAGE: ParamSpec = ParamSpec {
    name: "message",
    ty: ParamType::String,
    required: true,
    description: "The line to write.",
};

/// The actions of `log`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "info",
        description: "Write the message to the engine's log at level INFO.",
        params: &[MESSAGE],
        destructive: false,
        reversible: false,
        message_param: Some("message"),
    },
    ActionSpec {
        name: "warn",
        description: "Write the message to the engine's log at level WARN.",
        params: &[MESSAGE],
        destructive: false,
        reversible: false,
        message_param: Some("message"),
    },
];

/// A `log` instance.
#[derive(Debug)]
pub struct LogConnector {
    instance: String,
}

impl LogConnector {
    /// Builds an instance; `log` takes no settings.
    pub fn new(instance: &str, settings: &Map<String, Value>) -> Result<Self, BuildError> {
        reject_unknown_settings(instance, settings, &[])?;
        Ok(LogConnector {
            instance: instance.to_owned(),
        })
    }

    fn message<'a>(action: &str, args: &'a Args) -> Result<&'a str, ConnectorError> {
        if find_action(ACTIONS, action).is_none() {
            return Err(ConnectorError::UnknownAction(action.to_owned()));
        }
        str_arg(args, "message").ok_or_else(|| ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason: "missing required parameter `message`".to_owned(),
        })
    }
}

#[async_trait]
impl Connector for LogConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let message = Self::message(action, args)?;
        Ok(Plan {
            description: format!("write to the engine log at {action}: {message}"),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let message = Self::message(action, args)?;
        if action == "warn" {
            tracing::warn!(target: "riposte::connector::log", instance = %self.instance, "{message}");
        } else {
            tracing::info!(target: "riposte::connector::log", instance = %self.instance, "{message}");
        }
        Ok(Output {
            output: json!({ "message": message }),
            undo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn writes_the_message_and_reports_it() {
        let c = LogConnector::new("log", &Map::new()).unwrap();
        let args = json!({"message": "hello"});
        let out = c.run("info", args.as_object().unwrap()).await.unwrap();
        assert_eq!(out.output, json!({"message": "hello"}));
        let plan = c.describe("warn", args.as_object().unwrap()).unwrap();
        assert_eq!(plan.description, "write to the engine log at warn: hello");
    }

    #[tokio::test]
    async fn refuses_unknown_actions_and_settings() {
        let c = LogConnector::new("log", &Map::new()).unwrap();
        let args = json!({"message": "hello"});
        let err = c.run("shout", args.as_object().unwrap()).await.unwrap_err();
        assert_eq!(err, ConnectorError::UnknownAction("shout".into()));
        let settings = json!({"level": "debug"});
        let err = LogConnector::new("log", settings.as_object().unwrap()).unwrap_err();
        assert!(err.to_string().contains("unknown setting `level`"));
    }
}
