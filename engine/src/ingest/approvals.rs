//! The approvals endpoints of the gateway: `POST /v1/approvals/{run}/{step}` records a decision
//! on a step that waits for approval, `GET /v1/approvals` lists those that wait.
//!
//! Requests authenticate exactly as events do (bearer token, HMAC signature over the body, or
//! a client certificate), and then the credential's name must be listed in
//! `ingest.approval_senders`: a credential that only sends events never approves an action
//! (403). The body names the person deciding (`as`); the decision records both, e.g. `alice`
//! via `http:chatops`. The decision is written by compare-and-set like `riposte approve`'s:
//! 404 when nothing waits there, 409 when it is decided or timed out, 403 when `as` is not
//! among the step's approvers, 202 once recorded (a replica resumes the run within seconds).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::tls::Peer;
use super::{Answer, Gateway};
use crate::approval::{Approvals, DecideError, Decision};

/// The body of a decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// `approve` or `deny`.
    decision: String,
    /// Who decides (checked against the step's approvers).
    #[serde(rename = "as")]
    by: String,
    /// Why.
    #[serde(default)]
    reason: Option<String>,
}

fn answer(status: StatusCode, text: impl Into<String>) -> Answer {
    Answer::Json(status, json!({ "error": text.into() }))
}

impl Gateway {
    /// The sender of an approvals request, when it may use these endpoints, and its body.
    async fn approver(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(String, bytes::Bytes, &Approvals), Answer> {
        let (sender, payload) = self.authenticate(peer, headers, body).await?;
        match &self.approvals {
            Some(a) if self.approval_senders.contains(&sender) => Ok((sender, payload, a)),
            _ => Err(answer(
                StatusCode::FORBIDDEN,
                format!(
                    "credential `{sender}` may not use the approvals endpoints: list it in \
                     `ingest.approval_senders`"
                ),
            )),
        }
    }

    async fn decide(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        body: Body,
        run: &str,
        step: &str,
    ) -> Answer {
        let (sender, payload, approvals) = match self.approver(peer, headers, body).await {
            Ok(found) => found,
            Err(a) => return a,
        };
        let asked: DecisionBody = match serde_json::from_slice(&payload) {
            Ok(b) => b,
            Err(e) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body must be {{\"decision\": \"approve\"|\"deny\", \"as\": NAME, \
                         \"reason\": TEXT}}: {e}"
                    ),
                )
            }
        };
        let approved = match asked.decision.as_str() {
            "approve" => true,
            "deny" => false,
            other => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    format!("`decision` must be `approve` or `deny`, not `{other}`"),
                )
            }
        };
        let decision = Decision {
            approved,
            by: asked.by,
            via: format!("http:{sender}"),
            reason: asked.reason.filter(|r| !r.trim().is_empty()),
            at: self.clock.now(),
            timed_out: false,
        };
        match approvals.decide(run, step, decision.clone()).await {
            Ok(p) => {
                tracing::info!(run_id = %p.run_id, step = %p.step, by = %decision.by, via = %decision.via, decision = decision.outcome(), "approval decided");
                Answer::Json(
                    StatusCode::ACCEPTED,
                    json!({
                        "run_id": p.run_id,
                        "step": p.step,
                        "decision": decision.to_json(),
                        "status": "recorded: a replica resumes the run within seconds \
                                   (see `riposte audit --run RUN_ID`)",
                    }),
                )
            }
            Err(e) => {
                let status = match &e {
                    DecideError::Unknown { .. } => StatusCode::NOT_FOUND,
                    DecideError::Decided { .. } | DecideError::Expired { .. } => {
                        StatusCode::CONFLICT
                    }
                    DecideError::NotAnApprover { .. } | DecideError::BadName(_) => {
                        StatusCode::FORBIDDEN
                    }
                    DecideError::State(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                answer(status, e.to_string())
            }
        }
    }

    async fn pending(&self, peer: &Peer, headers: &HeaderMap, body: Body) -> Answer {
        let approvals = match self.approver(peer, headers, body).await {
            Ok((_, _, a)) => a,
            Err(a) => return a,
        };
        match approvals.list().await {
            Ok(list) => Answer::Json(
                StatusCode::OK,
                json!({ "approvals": list.iter().map(|(p, _)| p.summary()).collect::<Vec<_>>() }),
            ),
            Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

/// `POST /v1/approvals/{run}/{step}`.
pub(super) async fn decide(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((run, step)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = gw.decide(&peer, &headers, body, &run, &step).await;
    settle(&gw, &peer, answer)
}

/// `GET /v1/approvals`.
pub(super) async fn list(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = gw.pending(&peer, &headers, body).await;
    settle(&gw, &peer, answer)
}

fn settle(gw: &Gateway, peer: &Peer, answer: Answer) -> Response {
    if let Answer::Unauthenticated(why) = &answer {
        gw.metrics
            .ingest_auth_failures
            .get_or_create(&crate::metrics::Metrics::label("reason", why.code()))
            .inc();
        tracing::warn!(peer = %peer.addr, reason = why.code(), "approvals: unauthenticated request refused");
    }
    answer.into_response(gw.credentials.has_tokens())
}
