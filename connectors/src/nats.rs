//! Connector `nats`: publishes a derived event on a NATS subject (action `publish`).
//!
//! The payload is sent as JSON (a string payload is sent as is), so one playbook can feed
//! another or an outside consumer. The subject is checked before anything is sent: no
//! wildcards, no empty tokens, no white space. The connection is the engine's own, injected.
//! Each message carries a `Nats-Msg-Id` of its run and step, so a stream that captures the
//! subject deduplicates a step performed again after a redelivery (within the stream's
//! duplicate window).

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::spec::{find_action, str_arg, ActionSpec, ParamSpec, ParamType};
use crate::{
    reject_unknown_settings, Args, BuildError, Connector, ConnectorError, Deps, Output, Plan,
};

/// The actions of `nats`.
pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "publish",
    description: "Publish a payload (JSON, or a string as is) on a NATS subject.",
    params: &[
        ParamSpec {
            name: "subject",
            ty: ParamType::String,
            required: true,
            description:
                "The subject; no wildcards. Setting `subject_prefix` of the instance is prepended.",
        },
        ParamSpec {
            name: "payload",
            ty: ParamType::Any,
            required: true,
            description: "The payload: a map or array is sent as JSON, a string as is.",
        },
    ],
    destructive: false,
    reversible: false,
    message_param: None,
}];

/// A `nats` instance.
#[derive(Debug)]
pub struct NatsConnector {
    client: Option<async_nats::Client>,
    prefix: String,
    jetstream: bool,
}

impl NatsConnector {
    /// Builds an instance. Settings: `subject_prefix` (optional, e.g. `derived.`), `jetstream`
    /// (optional, false: with true, each publish waits until a stream has stored the message,
    /// and fails, to be retried, when none did).
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        reject_unknown_settings(instance, settings, &["subject_prefix", "jetstream"])?;
        let jetstream = match settings.get("jetstream") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(BuildError::Config {
                    instance: instance.to_owned(),
                    reason: "`jetstream` must be true or false".to_owned(),
                })
            }
        };
        let prefix = match settings.get("subject_prefix") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(BuildError::Config {
                    instance: instance.to_owned(),
                    reason: "`subject_prefix` must be a string".to_owned(),
                })
            }
        };
        Ok(NatsConnector {
            client: deps.nats.clone(),
            prefix,
            jetstream,
        })
    }

    fn prepare(&self, action: &str, args: &Args) -> Result<(String, Bytes), ConnectorError> {
        if find_action(ACTIONS, action).is_none() {
            return Err(ConnectorError::UnknownAction(action.to_owned()));
        }
        let invalid = |reason: String| ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason,
        };
        let subject = format!("{}{}", self.prefix, str_arg(args, "subject").unwrap_or(""));
        check_subject(&subject).map_err(invalid)?;
        let payload = match args.get("payload") {
            Some(Value::String(s)) => Bytes::from(s.clone().into_bytes()),
            Some(v) => Bytes::from(v.to_string().into_bytes()),
            None => return Err(invalid("missing required parameter `payload`".to_owned())),
        };
        Ok((subject, payload))
    }
}

/// Checks that a subject is one a publisher may use.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    if subject.chars().any(char::is_whitespace) {
        return Err(format!("subject `{subject}` contains white space"));
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(format!("subject `{subject}` has an empty token"));
        }
        if token == "*" || token == ">" {
            return Err(format!("subject `{subject}` contains a wildcard"));
        }
    }
    Ok(())
}

#[async_trait]
impl Connector for NatsConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let (subject, payload) = self.prepare(action, args)?;
        Ok(Plan {
            description: format!("publish {} bytes to `{subject}`", payload.len()),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let (subject, payload) = self.prepare(action, args)?;
        let client = self.client.as_ref().ok_or_else(|| {
            ConnectorError::Permanent("no NATS connection was given to this connector".to_owned())
        })?;
        let bytes = payload.len();
        // The same step of the same run always sends the same message id, so a JetStream
        // stream capturing the subject keeps one copy when a redelivered event sends it again.
        let mut headers = async_nats::HeaderMap::new();
        if let Some(ctx) = crate::context::current() {
            if let (Some(run), Some(step)) = (ctx.run_id, ctx.step) {
                headers.insert("Nats-Msg-Id", format!("{run}:{step}").as_str());
            }
        }
        if self.jetstream {
            let js = async_nats::jetstream::new(client.clone());
            let ack = js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| ConnectorError::Transient(format!("publish to `{subject}`: {e}")))?
                .await
                .map_err(|e| {
                    ConnectorError::Transient(format!("`{subject}` was not stored: {e}"))
                })?;
            return Ok(Output {
                output: json!({
                    "subject": subject,
                    "bytes": bytes,
                    "stream": ack.stream,
                    "seq": ack.sequence,
                    "duplicate": ack.duplicate,
                }),
                undo: None,
            });
        }
        client
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| ConnectorError::Transient(format!("publish to `{subject}`: {e}")))?;
        client
            .flush()
            .await
            .map_err(|e| ConnectorError::Transient(format!("flush after `{subject}`: {e}")))?;
        Ok(Output {
            output: json!({ "subject": subject, "bytes": bytes }),
            undo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn connector(prefix: Option<&str>) -> NatsConnector {
        let mut settings = Map::new();
        if let Some(p) = prefix {
            settings.insert("subject_prefix".into(), json!(p));
        }
        NatsConnector::new("nats", &settings, &Deps::default()).unwrap()
    }

    #[test]
    fn plans_the_subject_with_its_prefix_and_the_payload_size() {
        let args = json!({"subject": "alerts", "payload": {"a": 1}});
        let plan = connector(Some("derived."))
            .describe("publish", args.as_object().unwrap())
            .unwrap();
        assert_eq!(plan.description, "publish 7 bytes to `derived.alerts`");
    }

    #[test]
    fn refuses_wildcards_and_empty_tokens() {
        for subject in ["a.>", "a.*.b", "a..b", "", "a b"] {
            let args = json!({"subject": subject, "payload": "x"});
            let err = connector(None)
                .describe("publish", args.as_object().unwrap())
                .unwrap_err();
            assert!(
                matches!(err, ConnectorError::InvalidArgs { .. }),
                "{subject}"
            );
        }
    }

    #[tokio::test]
    async fn without_a_connection_the_run_fails_permanently() {
        let args = json!({"subject": "a", "payload": "x"});
        let err = connector(None)
            .run("publish", args.as_object().unwrap())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
    }
}
