//! What each action needs from Kubernetes RBAC, and the minimal ClusterRole for a set of
//! actions (`riposte rbac`).

use std::collections::{BTreeMap, BTreeSet};

/// One permission: verbs on resources of an API group (`""` is the core group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The API group.
    pub group: &'static str,
    /// Resources, subresources as `pods/eviction`.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
}

macro_rules! rule {
    ($group:expr, $resources:expr, $verbs:expr $(,)?) => {
        Rule {
            group: $group,
            resources: $resources,
            verbs: $verbs,
        }
    };
}

/// Reading a pod, its namespace and its owner chain: what every pod action and enrichment do.
pub const READ_POD: &[Rule] = &[
    rule!("", &["pods", "namespaces"], &["get"]),
    rule!(
        "apps",
        &["replicasets", "deployments", "statefulsets", "daemonsets"],
        &["get"],
    ),
    rule!("batch", &["jobs", "cronjobs"], &["get"]),
];

/// What an action needs beyond [`READ_POD`] (which every action but the node ones and
/// `restore_scale` also needs). `None` for an unknown action.
pub fn needs(action: &str) -> Option<&'static [Rule]> {
    Some(match action {
        "inspect_pod" => &[],
        "delete_pod" => &[rule!("", &["pods"], &["delete"])],
        "evict_pod" => &[rule!("", &["pods/eviction"], &["create"])],
        "isolate_pod" => &[
            rule!("", &["pods"], &["patch"]),
            rule!(
                "networking.k8s.io",
                &["networkpolicies"],
                &["list", "create", "delete"]
            ),
        ],
        "release_pod" => &[
            rule!("", &["pods"], &["patch"]),
            rule!("networking.k8s.io", &["networkpolicies"], &["delete"]),
        ],
        "label" | "annotate" => &[
            rule!("", &["pods", "nodes"], &["get", "patch"]),
            rule!(
                "apps",
                &["replicasets", "deployments", "statefulsets", "daemonsets"],
                &["patch"],
            ),
            rule!("batch", &["jobs", "cronjobs"], &["patch"]),
        ],
        "cordon_node" | "uncordon_node" => &[rule!("", &["nodes"], &["get", "patch"])],
        "drain_node" => &[
            rule!("", &["nodes"], &["get", "patch"]),
            rule!("", &["pods"], &["list"]),
            rule!("", &["pods/eviction"], &["create"]),
        ],
        "scale_to_zero" | "restore_scale" => &[rule!(
            "apps",
            &[
                "deployments/scale",
                "statefulsets/scale",
                "replicasets/scale",
            ],
            &["get", "patch"],
        )],
        "event" => &[
            rule!("", &["events"], &["create"]),
            rule!("", &["nodes"], &["get"]),
        ],
        "logs" => &[rule!("", &["pods/log"], &["get"])],
        // Every namespace's pods, a page at a time; owners are read as for any pod.
        "find_by_image" => &[rule!("", &["pods"], &["list"])],
        _ => return None,
    })
}

/// The permissions for these actions (and for enrichment when `enrichment`), merged: one
/// entry per group and set of verbs, resources sorted.
pub fn merged(actions: &[&str], enrichment: bool) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut per: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut add = |rules: &[Rule]| {
        for r in rules {
            for res in r.resources {
                per.entry((r.group.to_owned(), (*res).to_owned()))
                    .or_default()
                    .extend(r.verbs.iter().map(|v| (*v).to_owned()));
            }
        }
    };
    if enrichment || !actions.is_empty() {
        add(READ_POD);
    }
    for a in actions {
        if let Some(rules) = needs(a) {
            add(rules);
        }
    }
    let mut grouped: BTreeMap<(String, Vec<String>), Vec<String>> = BTreeMap::new();
    for ((group, res), verbs) in per {
        let verbs: Vec<String> = verbs.into_iter().collect();
        grouped.entry((group, verbs)).or_default().push(res);
    }
    grouped
        .into_iter()
        .map(|((group, verbs), resources)| (group, resources, verbs))
        .collect()
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The ClusterRole (YAML) that allows exactly these actions, with a ClusterRoleBinding to
/// `subject` (`NAMESPACE/SERVICEACCOUNT`, or `user:NAME`) when given.
pub fn cluster_role(
    name: &str,
    actions: &[&str],
    enrichment: bool,
    subject: Option<&str>,
) -> Result<String, String> {
    let mut unknown: Vec<&str> = actions
        .iter()
        .copied()
        .filter(|a| needs(a).is_none())
        .collect();
    unknown.dedup();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown kubernetes action(s): {}",
            unknown.join(", ")
        ));
    }
    let mut listed: Vec<&str> = actions.to_vec();
    listed.sort_unstable();
    listed.dedup();
    let mut y = String::new();
    y.push_str(&format!(
        "# riposte: the least privilege for kubernetes actions: {}{}\n",
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed.join(", ")
        },
        if enrichment { " (and enrichment)" } else { "" }
    ));
    y.push_str("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n");
    y.push_str(&format!("  name: {}\n", quote(name)));
    y.push_str("  labels:\n    app.kubernetes.io/managed-by: riposte\nrules:\n");
    let rules = merged(&listed, enrichment);
    if rules.is_empty() {
        y.push_str("  []\n");
    }
    for (group, resources, verbs) in rules {
        y.push_str(&format!("  - apiGroups: [{}]\n", quote(&group)));
        let r: Vec<String> = resources.iter().map(|s| quote(s)).collect();
        y.push_str(&format!("    resources: [{}]\n", r.join(", ")));
        let v: Vec<String> = verbs.iter().map(|s| quote(s)).collect();
        y.push_str(&format!("    verbs: [{}]\n", v.join(", ")));
    }
    if let Some(subject) = subject {
        y.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n");
        y.push_str(&format!("metadata:\n  name: {}\n", quote(name)));
        y.push_str("  labels:\n    app.kubernetes.io/managed-by: riposte\n");
        y.push_str("roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n");
        y.push_str(&format!("  name: {}\nsubjects:\n", quote(name)));
        if let Some(user) = subject.strip_prefix("user:") {
            y.push_str("  - kind: User\n    apiGroup: rbac.authorization.k8s.io\n");
            y.push_str(&format!("    name: {}\n", quote(user)));
        } else {
            let (ns, sa) = subject.split_once('/').ok_or_else(|| {
                format!("`{subject}`: give NAMESPACE/SERVICEACCOUNT or user:NAME")
            })?;
            y.push_str("  - kind: ServiceAccount\n");
            y.push_str(&format!(
                "    namespace: {}\n    name: {}\n",
                quote(ns),
                quote(sa)
            ));
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_action_has_its_rules() {
        for a in super::super::ACTIONS {
            assert!(needs(a.name).is_some(), "{}", a.name);
        }
    }

    fn verbs_of(m: &[(String, Vec<String>, Vec<String>)], group: &str, res: &str) -> Vec<String> {
        m.iter()
            .find(|(g, r, _)| g == group && r.iter().any(|x| x == res))
            .map(|(_, _, v)| v.clone())
            .unwrap_or_default()
    }

    #[test]
    fn rules_are_merged_by_group_and_verbs() {
        let m = merged(&["cordon_node", "isolate_pod"], false);
        assert_eq!(verbs_of(&m, "", "nodes"), ["get", "patch"]);
        assert_eq!(verbs_of(&m, "", "pods"), ["get", "patch"]);
        assert_eq!(
            verbs_of(&m, "networking.k8s.io", "networkpolicies"),
            ["create", "delete", "list"]
        );
        assert!(verbs_of(&m, "", "pods/log").is_empty());
        let keys: Vec<(&String, &Vec<String>)> = m.iter().map(|(g, _, v)| (g, v)).collect();
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(keys, unique, "one entry per group and verbs");
    }

    #[test]
    fn the_role_names_its_actions_and_binding() {
        let y = cluster_role("riposte", &["logs"], true, Some("riposte/engine")).unwrap();
        assert!(y.contains("# riposte: the least privilege for kubernetes actions: logs"));
        assert!(y.contains("\"pods/log\"]"), "{y}");
        assert!(y.contains("kind: ServiceAccount"), "{y}");
        assert!(cluster_role("r", &["reboot"], false, None).is_err());
        assert!(cluster_role("r", &[], false, Some("nobody")).is_err());
    }
}
