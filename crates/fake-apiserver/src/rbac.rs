//! RBAC enforcement from ClusterRole rules: the fake answers 403 to anything they do not allow,
//! so a test proves a rendered ClusterRole sufficient.
//!
//! Verbs follow the API server's request info: GET of a collection is `list` (`watch` with
//! `watch=true`), of an object `get`; POST `create`; PUT `update`; PATCH `patch`; DELETE of an
//! object `delete`, of a collection `deletecollection`. `resourceNames` restrict object verbs by
//! name, and list/watch only when the request selects `metadata.name=` one of them (as in 1.32+).

use serde::Deserialize;
use serde_json::Value;

/// One rule of a (Cluster)Role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

impl PolicyRule {
    /// A rule from string slices, for tests.
    pub fn new(api_groups: &[&str], resources: &[&str], verbs: &[&str]) -> Self {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        PolicyRule {
            api_groups: own(api_groups),
            resources: own(resources),
            verbs: own(verbs),
            resource_names: Vec::new(),
        }
    }

    fn allows(&self, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
        let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
        any(&self.verbs, verb)
            && any(&self.api_groups, group)
            && any(&self.resources, resource)
            && (self.resource_names.is_empty()
                || name.is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

/// The rules the client's identity is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rbac {
    pub rules: Vec<PolicyRule>,
    /// Named in 403 messages.
    pub user: String,
}

impl Rbac {
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        Rbac {
            rules,
            user: "system:serviceaccount:ghostbuster:ghostbuster".to_owned(),
        }
    }

    /// Collects the rules of every `ClusterRole` (and `Role`) in `text`: JSON (an object, a
    /// `List`, an array) or multi-document YAML, as `kubectl kustomize` renders it.
    pub fn from_manifests(text: &str) -> Result<Self, String> {
        let mut docs: Vec<Value> = Vec::new();
        if text.trim_start().starts_with(['{', '[']) {
            let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            docs.push(v);
        } else {
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
                docs.push(v);
            }
        }
        let mut rules = Vec::new();
        let mut roles = 0;
        let mut stack = docs;
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(items) => stack.extend(items),
                Value::Object(mut m) => {
                    if let Some(items) = m.remove("items") {
                        stack.push(items);
                        continue;
                    }
                    let kind = m.get("kind").and_then(Value::as_str).unwrap_or_default();
                    if kind == "ClusterRole" || kind == "Role" {
                        roles += 1;
                        if let Some(r) = m.remove("rules") {
                            let parsed: Vec<PolicyRule> =
                                serde_json::from_value(r).map_err(|e| e.to_string())?;
                            rules.extend(parsed);
                        }
                    }
                }
                _ => {}
            }
        }
        if roles == 0 {
            return Err("no ClusterRole or Role found".to_owned());
        }
        Ok(Rbac::new(rules))
    }

    /// True when some rule allows `verb` on `group/resource` (object `name` when known).
    pub fn allows(&self, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(verb, group, resource, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_cluster_role() {
        let text = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: gb}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: gb}
rules:
- apiGroups: [\"\"]
  resources: [services, nodes]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [\"\"]
  resources: [configmaps]
  resourceNames: [only]
  verbs: [get, list]
";
        let r = Rbac::from_manifests(text).unwrap();
        assert!(r.allows("watch", "", "services", None));
        assert!(!r.allows("list", "", "pods", None));
        assert!(!r.allows("list", "discovery.k8s.io", "services", None));
        assert!(r.allows("patch", "events.k8s.io", "events", Some("e")));
        assert!(!r.allows("delete", "events.k8s.io", "events", Some("e")));
        assert!(r.allows("get", "", "configmaps", Some("only")));
        assert!(!r.allows("get", "", "configmaps", Some("other")));
        assert!(!r.allows("list", "", "configmaps", None));
        assert!(Rbac::from_manifests("kind: ConfigMap").is_err());
    }

    #[test]
    fn wildcards_and_json() {
        let r = Rbac::from_manifests(
            r#"{"kind":"List","items":[{"kind":"ClusterRole","rules":[{"apiGroups":["*"],"resources":["*"],"verbs":["get"]}]}]}"#,
        )
        .unwrap();
        assert!(r.allows("get", "x.io", "things", Some("a")));
        assert!(!r.allows("list", "x.io", "things", None));
    }
}
