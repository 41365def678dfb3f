//! Connector `pagerduty`: pages through the PagerDuty Events API v2.
//!
//! (Being written: no actions yet.)

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::spec::ActionSpec;
use crate::{
    reject_unknown_settings, Args, BuildError, Connector, ConnectorError, Deps, Output, Plan,
};

/// The actions of `pagerduty`.
pub const ACTIONS: &[ActionSpec] = &[];

/// A `pagerduty` instance.
#[derive(Debug)]
pub struct PagerDutyConnector;

impl PagerDutyConnector {
    /// Builds an instance.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        reject_unknown_settings(instance, settings, &[])?;
        Ok(PagerDutyConnector)
    }
}

#[async_trait]
impl Connector for PagerDutyConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, _args: &Args) -> Result<Plan, ConnectorError> {
        Err(ConnectorError::UnknownAction(action.to_owned()))
    }

    async fn run(&self, action: &str, _args: &Args) -> Result<Output, ConnectorError> {
        Err(ConnectorError::UnknownAction(action.to_owned()))
    }
}
