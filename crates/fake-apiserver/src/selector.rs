//! Field and label selectors, as the API server parses and applies them.
//!
//! Field selectors: `a.b=v`, `a.b==v`, `a.b!=v`, comma separated (AND); a missing field compares
//! as `""` (so `spec.nodeName=` selects unscheduled pods). Label selectors: `k=v`, `k==v`,
//! `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.

use serde_json::Value;

use crate::resource::ResourceType;

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldOp {
    Eq,
    Ne,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, FieldOp, String)>,
}

impl FieldSelector {
    /// Parses and checks that every field is one the API server supports for `resource`.
    pub(crate) fn parse(s: &str, resource: &ResourceType) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, op, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, FieldOp::Ne, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, FieldOp::Eq, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, FieldOp::Eq, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !resource.field_supported(field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), op, value.trim().to_owned()));
        }
        Ok(FieldSelector { terms })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, op, want)| {
            let have = field_value(obj, field);
            match op {
                FieldOp::Eq => have == *want,
                FieldOp::Ne => have != *want,
            }
        })
    }

    /// The name a `metadata.name=NAME` term asks for (RBAC `resourceNames` on list/watch).
    pub(crate) fn name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, op, _)| f == "metadata.name" && *op == FieldOp::Eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// A field's value as a selector compares it: strings as they are, other scalars as JSON text,
/// missing as `""`; `status.podIPs` matches any of the pod's IPs through its first.
fn field_value(obj: &Value, path: &str) -> String {
    let mut v = obj;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items
            .first()
            .and_then(|i| i.get("ip").or(Some(i)))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let bad = || format!("unable to parse requirement: {term:?}");
            let req = if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::Ne(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, set)) = term.split_once(" notin ") {
                LabelReq::NotIn(k.trim().to_owned(), parse_set(set).ok_or_else(bad)?)
            } else if let Some((k, set)) = term.split_once(" in ") {
                LabelReq::In(k.trim().to_owned(), parse_set(set).ok_or_else(bad)?)
            } else if term.contains(char::is_whitespace) || term.contains(['(', ')']) {
                return Err(bad());
            } else {
                LabelReq::Exists(term.to_owned())
            };
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_name;
    use serde_json::json;

    #[test]
    fn fields() {
        let pods = by_name("pods").unwrap();
        let pod = json!({"metadata": {"name": "a", "namespace": "x"}, "spec": {"nodeName": "n1"}});
        let unscheduled = json!({"metadata": {"name": "b"}, "spec": {}});
        let s = FieldSelector::parse("spec.nodeName=n1", pods).unwrap();
        assert!(s.matches(&pod));
        assert!(!s.matches(&unscheduled));
        let s = FieldSelector::parse("spec.nodeName=", pods).unwrap();
        assert!(s.matches(&unscheduled));
        let s = FieldSelector::parse("metadata.name!=a,metadata.namespace=x", pods).unwrap();
        assert!(!s.matches(&pod));
        assert!(
            FieldSelector::parse("spec.nodeName=n1", by_name("endpointslices").unwrap())
                .unwrap_err()
                .contains("not supported")
        );
        let s = FieldSelector::parse("metadata.name=n1", by_name("nodes").unwrap()).unwrap();
        assert_eq!(s.name(), Some("n1"));
    }

    #[test]
    fn labels() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let ok = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(ok("app=web"));
        assert!(ok("app==web,tier"));
        assert!(!ok("app!=web"));
        assert!(ok("app in (web, db)"));
        assert!(!ok("app notin (web)"));
        assert!(ok("!missing"));
        assert!(!ok("missing"));
        assert!(ok(""));
        assert!(LabelSelector::parse("a b").is_err());
    }
}
