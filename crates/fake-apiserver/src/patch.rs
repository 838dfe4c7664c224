//! PATCH bodies: JSON merge patch (RFC 7386; strategic merge and apply patches are treated as
//! merge patches, which is what they amount to for the objects tests send) and JSON patch
//! (RFC 6902: add, remove, replace, test).

use serde_json::Value;

use crate::status::ApiError;

/// The kinds of PATCH the API server accepts, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        Some(match ct {
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/json-patch+json" => PatchType::Json,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
            _ => return None,
        })
    }
}

/// Parses a patch body: JSON, or YAML for apply patches.
pub(crate) fn parse_body(kind: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if kind == PatchType::Apply => serde_yaml_ng::from_slice(body)
            .map_err(|y| ApiError::bad_request(format!("invalid apply patch: {e}; {y}"))),
        Err(e) => Err(ApiError::bad_request(format!("invalid patch: {e}"))),
    }
}

/// Applies `patch` to `target`.
pub(crate) fn apply(kind: PatchType, target: &mut Value, patch: Value) -> Result<(), ApiError> {
    match kind {
        PatchType::Merge | PatchType::Strategic | PatchType::Apply => {
            merge(target, patch);
            Ok(())
        }
        PatchType::Json => json_patch(target, patch),
    }
}

/// RFC 7386.
pub(crate) fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(&k);
        } else {
            merge(t.entry(k).or_insert(Value::Null), v);
        }
    }
}

fn json_patch(target: &mut Value, patch: Value) -> Result<(), ApiError> {
    let Value::Array(ops) = patch else {
        return Err(ApiError::bad_request(
            "a JSON patch is an array of operations",
        ));
    };
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let value = op.get("value").cloned();
        let bad = |m: &str| ApiError::new(422, "Invalid", format!("{m}: {op}"));
        match name {
            "add" | "replace" => {
                let value = value.ok_or_else(|| bad("missing value"))?;
                let (parent, last) = split_pointer(path).ok_or_else(|| bad("bad path"))?;
                let p = target
                    .pointer_mut(parent)
                    .ok_or_else(|| bad("no such parent"))?;
                match p {
                    Value::Object(m) => {
                        if name == "replace" && !m.contains_key(&last) {
                            return Err(bad("replace of a missing key"));
                        }
                        m.insert(last, value);
                    }
                    Value::Array(a) => {
                        if last == "-" {
                            a.push(value);
                        } else {
                            let i: usize = last.parse().map_err(|_| bad("bad index"))?;
                            if name == "replace" && i < a.len() {
                                a[i] = value;
                            } else if name == "add" && i <= a.len() {
                                a.insert(i, value);
                            } else {
                                return Err(bad("index out of range"));
                            }
                        }
                    }
                    _ => return Err(bad("parent is not a container")),
                }
            }
            "remove" => {
                let (parent, last) = split_pointer(path).ok_or_else(|| bad("bad path"))?;
                let p = target
                    .pointer_mut(parent)
                    .ok_or_else(|| bad("no such parent"))?;
                let removed = match p {
                    Value::Object(m) => m.remove(&last).is_some(),
                    Value::Array(a) => match last.parse::<usize>() {
                        Ok(i) if i < a.len() => {
                            a.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(bad("nothing to remove"));
                }
            }
            "test" => {
                if target.pointer(path) != value.as_ref() {
                    return Err(bad("test failed"));
                }
            }
            _ => return Err(bad("unsupported operation")),
        }
    }
    Ok(())
}

/// `/a/b~1c` → (`/a`, `b/c`).
fn split_pointer(path: &str) -> Option<(&str, String)> {
    let i = path.rfind('/')?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Some((&path[..i], last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1]});
        merge(
            &mut v,
            json!({"b": {"c": null, "e": 4}, "l": [2], "n": "x"}),
        );
        assert_eq!(
            v,
            json!({"a": 1, "b": {"d": 3, "e": 4}, "l": [2], "n": "x"})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut v = json!({"series": {"count": 1}, "l": [1, 2]});
        apply(
            PatchType::Json,
            &mut v,
            json!([
                {"op": "test", "path": "/series/count", "value": 1},
                {"op": "replace", "path": "/series/count", "value": 2},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "remove", "path": "/l/0"},
                {"op": "add", "path": "/a~1b", "value": true}
            ]),
        )
        .unwrap();
        assert_eq!(v, json!({"series": {"count": 2}, "l": [2, 3], "a/b": true}));
        assert!(apply(
            PatchType::Json,
            &mut v,
            json!([{"op": "test", "path": "/l/0", "value": 9}])
        )
        .is_err());
    }
}
