//! `quarantine` and `release`.
//!
//! Quarantine attaches the container to an internal network the connector creates (no route
//! out, no other member reachable but fellow quarantined containers), then detaches it from
//! every other network. What it had (network, aliases, static addresses) is the undo data, so
//! `release` puts back exactly that. A quarantine that fails half way puts back what it had
//! already detached before it reports the failure.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerInspectResponse, EndpointIpamConfig, EndpointSettings, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::daemon::{changed, short, Daemon, Target};
use super::unchanged;
use crate::{ConnectorError, Output};

/// One network attachment, as recorded for `release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetRecord {
    /// Network name.
    pub name: String,
    /// Network id, when known (used first: a name may have been reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Aliases on that network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// A static IPv4 address the container was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// A static IPv6 address the container was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
}

/// The networks a container is attached to, with what `release` needs to restore them.
pub(crate) fn attached(i: &ContainerInspectResponse) -> Vec<NetRecord> {
    let id = i.id.clone().unwrap_or_default();
    let mut out: Vec<NetRecord> = i
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| {
            let ipam = ep.ipam_config.unwrap_or_default();
            NetRecord {
                name,
                id: ep.network_id.filter(|s| !s.is_empty()),
                // Old daemons list the short id as an alias; it comes back by itself.
                aliases: ep
                    .aliases
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| a != short(&id))
                    .collect(),
                ipv4_address: ipam.ipv4_address.filter(|s| !s.is_empty()),
                ipv6_address: ipam.ipv6_address.filter(|s| !s.is_empty()),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads the `networks` argument of `release` (or the undo data): names, or maps.
pub(crate) fn parse_networks(action: &str, v: &Value) -> Result<Vec<NetRecord>, ConnectorError> {
    let bad = |reason: String| ConnectorError::InvalidArgs {
        action: action.to_owned(),
        reason,
    };
    let Value::Array(items) = v else {
        return Err(bad(
            "`networks` must be a list of network names or maps".to_owned()
        ));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(name) if !name.is_empty() => Ok(NetRecord {
                name: name.clone(),
                id: None,
                aliases: Vec::new(),
                ipv4_address: None,
                ipv6_address: None,
            }),
            Value::Object(_) => {
                serde_json::from_value(item.clone()).map_err(|e| bad(format!("`networks`: {e}")))
            }
            other => Err(bad(format!("`networks`: `{other}` is not a network"))),
        })
        .collect()
}

/// Makes the quarantine network if it does not exist; refuses one that is not internal.
async fn ensure_network(daemon: &Daemon, name: &str) -> Result<(), ConnectorError> {
    let docker = daemon.client().await?;
    let what = format!("inspect network `{name}`");
    match daemon
        .call(&what, Duration::ZERO, docker.inspect_network(name, None))
        .await?
    {
        Ok(n) if n.internal == Some(true) => return Ok(()),
        Ok(_) => {
            return Err(ConnectorError::Permanent(format!(
                "the quarantine network `{name}` exists but is not internal: it would not cut \
                 the container off; remove it or set `quarantine_network`"
            )))
        }
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(daemon.fail(e, &what).await),
    }
    let what = format!("create network `{name}`");
    let req = NetworkCreateRequest {
        name: name.to_owned(),
        driver: Some("bridge".to_owned()),
        internal: Some(true),
        labels: Some(HashMap::from([(
            "riposte.io/quarantine".to_owned(),
            "true".to_owned(),
        )])),
        ..Default::default()
    };
    match daemon
        .call(&what, Duration::ZERO, docker.create_network(req))
        .await?
    {
        Ok(_) => Ok(()),
        // Made meanwhile by another run.
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(daemon.fail(e, &what).await),
    }
}

async fn connect(daemon: &Daemon, t: &Target, net: &NetRecord) -> Result<(), ConnectorError> {
    let docker = daemon.client().await?;
    let what = format!("attach {} to network `{}`", t.display(), net.name);
    // The default bridge network has no aliases.
    let aliases = (net.name != "bridge" && !net.aliases.is_empty()).then(|| net.aliases.clone());
    let ipam =
        (net.ipv4_address.is_some() || net.ipv6_address.is_some()).then(|| EndpointIpamConfig {
            ipv4_address: net.ipv4_address.clone(),
            ipv6_address: net.ipv6_address.clone(),
            ..Default::default()
        });
    let req = NetworkConnectRequest {
        container: t.id.clone(),
        endpoint_config: Some(EndpointSettings {
            aliases,
            ipam_config: ipam,
            ..Default::default()
        }),
    };
    let by = net.id.as_deref().unwrap_or(&net.name);
    let mut r = daemon
        .call(
            &what,
            Duration::ZERO,
            docker.connect_network(by, req.clone()),
        )
        .await?;
    if net.id.is_some() && is_status(&r, 404) {
        // The network was made again under the same name since.
        r = daemon
            .call(
                &what,
                Duration::ZERO,
                docker.connect_network(&net.name, req),
            )
            .await?;
    }
    match r {
        Ok(()) => Ok(()),
        Err(e) if conflict_already(&e) => Ok(()),
        Err(e) => Err(daemon.fail(e, &what).await),
    }
}

async fn disconnect(daemon: &Daemon, t: &Target, net: &str) -> Result<(), ConnectorError> {
    let docker = daemon.client().await?;
    let what = format!("detach {} from network `{net}`", t.display());
    let req = NetworkDisconnectRequest {
        container: t.id.clone(),
        force: Some(true),
    };
    match daemon
        .call(&what, Duration::ZERO, docker.disconnect_network(net, req))
        .await?
    {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError { message, .. })
            if message.contains("is not connected") =>
        {
            Ok(())
        }
        Err(e) => Err(daemon.fail(e, &what).await),
    }
}

fn is_status<T>(r: &Result<T, DockerError>, code: u16) -> bool {
    matches!(r, Err(DockerError::DockerResponseServerError { status_code, .. }) if *status_code == code)
}

fn conflict_already(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { message, .. }
        if message.contains("already exists") || message.contains("already attached"))
}

/// Cuts `t` off every network but the quarantine one.
pub(crate) async fn quarantine(
    daemon: &Daemon,
    t: &Target,
    qnet: &str,
) -> Result<Output, ConnectorError> {
    let mode = t
        .inspect
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    if mode == "host" || mode.starts_with("container:") {
        return Err(ConnectorError::Permanent(format!(
            "{} shares the network namespace of {}: quarantine cannot cut it off; pause or \
             stop it instead",
            t.display(),
            if mode == "host" {
                "the host"
            } else {
                "another container"
            }
        )));
    }
    let nets = attached(&t.inspect);
    let others: Vec<NetRecord> = nets.iter().filter(|n| n.name != qnet).cloned().collect();
    let on_q = nets.len() != others.len();
    if others.is_empty() && (on_q || mode == "none") {
        return Ok(unchanged(t, "already quarantined"));
    }
    ensure_network(daemon, qnet).await?;
    let undo = json!({ "container": t.id, "networks": others, "quarantine_network": qnet });
    if !on_q {
        if let Err(e) = connect(
            daemon,
            t,
            &NetRecord {
                name: qnet.to_owned(),
                id: None,
                aliases: Vec::new(),
                ipv4_address: None,
                ipv6_address: None,
            },
        )
        .await
        {
            daemon.invalidate(&t.id);
            return Err(e);
        }
    }
    let mut done: Vec<&NetRecord> = Vec::new();
    for n in &others {
        if let Err(e) = disconnect(daemon, t, &n.name).await {
            for back in &done {
                if let Err(again) = connect(daemon, t, back).await {
                    tracing::error!(container = %t.id, network = %back.name, error = %again,
                        "could not put back a network after a failed quarantine");
                }
            }
            daemon.invalidate(&t.id);
            return Err(e);
        }
        done.push(n);
    }
    daemon.invalidate(&t.id);
    let mut out = changed(t, "quarantined", Some(undo));
    if let Some(o) = out.output.as_object_mut() {
        o.insert("quarantine_network".into(), json!(qnet));
        o.insert(
            "detached".into(),
            json!(others.iter().map(|n| n.name.as_str()).collect::<Vec<_>>()),
        );
    }
    Ok(out)
}

/// Attaches `nets` again and takes `t` off the quarantine network. When a network cannot be
/// put back the container stays on the quarantine network and the failure is reported.
pub(crate) async fn release(
    daemon: &Daemon,
    t: &Target,
    nets: &[NetRecord],
    qnet: &str,
) -> Result<Output, ConnectorError> {
    let now = attached(&t.inspect);
    let on = |name: &str| now.iter().any(|n| n.name == name);
    let missing: Vec<&NetRecord> = nets.iter().filter(|n| !on(&n.name)).collect();
    if missing.is_empty() && !on(qnet) {
        return Ok(unchanged(t, "not quarantined"));
    }
    let mut failures = Vec::new();
    for n in &missing {
        if let Err(e) = connect(daemon, t, n).await {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        daemon.invalidate(&t.id);
        return Err(ConnectorError::Permanent(format!(
            "{} stays quarantined: {}",
            t.display(),
            failures.join("; ")
        )));
    }
    if on(qnet) {
        disconnect(daemon, t, qnet).await?;
    }
    daemon.invalidate(&t.id);
    let mut out = changed(t, "released", None);
    if let Some(o) = out.output.as_object_mut() {
        o.insert(
            "restored".into(),
            json!(nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>()),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn networks_parse_from_names_and_maps() {
        let v = json!(["appnet", { "name": "db", "aliases": ["web"], "ipv4_address": "10.0.0.5" }]);
        let n = parse_networks("release", &v).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].aliases, vec!["web".to_owned()]);
        assert!(parse_networks("release", &json!("appnet")).is_err());
        assert!(parse_networks("release", &json!([1])).is_err());
        assert!(parse_networks("release", &json!([{ "nam": "x" }])).is_err());
    }
}
