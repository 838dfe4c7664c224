//! The objects, the global resourceVersion, and the change log watches are served from.
//!
//! Like etcd behind the watch cache: every write bumps one global resourceVersion; the log keeps
//! every change since the last compaction; a watch from a resourceVersion older than the
//! compaction point is told `410 Expired`. Paginated lists are served from a snapshot taken at the
//! first page, so pages are consistent; compaction expires their continue tokens as well.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::resource::{ResourceType, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// `(resource index, namespace, name)`; `""` namespace for cluster-scoped objects.
type Key = (usize, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One logged write.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: usize,
    pub kind: ChangeType,
    /// The object after the change (for a delete: its last state, with the delete's rv).
    pub object: Value,
    /// The object before a modification.
    pub old: Option<Value>,
}

/// What a list or watch selects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    pub namespace: Option<String>,
    pub fields: FieldSelector,
    pub labels: LabelSelector,
}

impl Selection {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str()) {
                return false;
            }
        }
        self.fields.matches(obj) && self.labels.matches(obj)
    }
}

struct Snapshot {
    resource: usize,
    rv: u64,
    items: Vec<Value>,
}

/// A page of a list.
pub(crate) struct Page {
    pub rv: u64,
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

#[derive(Default)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this are expired.
    compacted: u64,
    snapshots: HashMap<u64, Snapshot>,
    next_id: u64,
    /// While set, writes are not logged (events lost; the caller compacts afterwards).
    pub quiet: bool,
}

pub(crate) fn index_of(r: &ResourceType) -> usize {
    RESOURCES
        .iter()
        .position(|x| std::ptr::eq(x, r))
        .unwrap_or_default()
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Store {
    pub(crate) fn new() -> Self {
        Store {
            // Real clusters never start at 0, and "0" means "any" to a list or watch.
            rv: 1000,
            compacted: 1000,
            ..Store::default()
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Forgets the change log: watches from any earlier resourceVersion get `410 Expired`, and so
    /// do continue tokens.
    pub(crate) fn compact(&mut self) {
        let rv = self.bump();
        self.compacted = rv;
        self.log.clear();
        self.snapshots.clear();
    }

    fn log(&mut self, change: Change) {
        if !self.quiet {
            self.log.push(change);
        }
    }

    /// Changes after `rv`.
    pub(crate) fn changes_after(&self, rv: u64) -> &[Change] {
        let start = self.log.partition_point(|c| c.rv <= rv);
        &self.log[start..]
    }

    pub(crate) fn get(&self, r: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(index_of(r), scope(r, ns), name.to_owned()))
    }

    /// All objects of `r` selected, in key order (namespace, name), as etcd returns them.
    pub(crate) fn select(&self, r: &ResourceType, sel: &Selection) -> Vec<Value> {
        let i = index_of(r);
        self.objects
            .range((i, String::new(), String::new())..)
            .take_while(|((ri, _, _), _)| *ri == i)
            .map(|(_, v)| v)
            .filter(|v| sel.matches(v))
            .cloned()
            .collect()
    }

    /// A list page: the first page snapshots the selection when `limit` cuts it.
    pub(crate) fn list(
        &mut self,
        r: &ResourceType,
        sel: &Selection,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Page, ApiError> {
        let (id, offset, rv, items) = match continue_token {
            Some(token) => {
                let (id, offset) = parse_token(token)
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                let snap = self
                    .snapshots
                    .get(&id)
                    .filter(|s| s.resource == index_of(r))
                    .ok_or_else(ApiError::continue_expired)?;
                (id, offset, snap.rv, None)
            }
            None => {
                let items = self.select(r, sel);
                self.next_id += 1;
                (self.next_id, 0, self.rv, Some(items))
            }
        };
        let all: &[Value] = match &items {
            Some(v) => v,
            None => self.snapshots.get(&id).map_or(&[], |s| &s.items),
        };
        let rest = all.get(offset..).unwrap_or_default();
        let n = limit
            .filter(|&l| l > 0)
            .unwrap_or(rest.len())
            .min(rest.len());
        let page: Vec<Value> = rest[..n].to_vec();
        let remaining = rest.len() - n;
        let continue_token = (remaining > 0).then(|| format!("{id}-{}", offset + n));
        if remaining > 0 {
            if let Some(items) = items {
                self.snapshots.insert(
                    id,
                    Snapshot {
                        resource: index_of(r),
                        rv,
                        items,
                    },
                );
            }
        } else {
            self.snapshots.remove(&id);
        }
        Ok(Page {
            rv,
            items: page,
            continue_token,
            remaining: (remaining > 0).then_some(remaining),
        })
    }

    /// Stores a new object. `namespace` is the request's (or `""`); `annotate` adds the
    /// annotation `kubectl apply` leaves.
    pub(crate) fn create(
        &mut self,
        r: &'static ResourceType,
        namespace: &str,
        mut obj: Value,
        manager: &str,
        annotate: bool,
    ) -> Result<Value, ApiError> {
        let original = obj.clone();
        check_type(r, &mut obj)?;
        let meta = metadata(&mut obj)?;
        set_namespace(r, namespace, meta)?;
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("{} is invalid: metadata.name: Required value: name or generateName is required", r.kind),
                    )
                })?
                .to_owned();
            self.next_id += 1;
            let suffix = suffix(self.next_id);
            meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
        }
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let ns = scope(r, namespace);
        let key = (index_of(r), ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(r.group, r.plural, &name));
        }
        let rv = self.bump();
        let time = now();
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("uid".into(), json!(uid(rv)));
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta.insert("creationTimestamp".into(), json!(time));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if annotate {
            let mut applied = original;
            if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                m.retain(|k, _| {
                    matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations")
                });
            }
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.entry("kubectl.kubernetes.io/last-applied-configuration")
                    .or_insert_with(|| json!(format!("{applied}\n")));
            }
        }
        record_manager(&mut obj, r, manager, "Update", &time);
        self.objects.insert(key, obj.clone());
        self.log(Change {
            rv,
            resource: index_of(r),
            kind: ChangeType::Added,
            object: obj.clone(),
            old: None,
        });
        Ok(obj)
    }

    /// Replaces an object; `expected_rv` is checked when the request carried one (optimistic
    /// concurrency).
    pub(crate) fn update(
        &mut self,
        r: &'static ResourceType,
        namespace: &str,
        name: &str,
        mut obj: Value,
        manager: &str,
        check_rv: bool,
    ) -> Result<Value, ApiError> {
        check_type(r, &mut obj)?;
        let key = (index_of(r), scope(r, namespace), name.to_owned());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(r.group, r.plural, name));
        };
        let meta = metadata(&mut obj)?;
        set_namespace(r, namespace, meta)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), json!(name));
            }
        }
        if check_rv {
            if let Some(given) = meta.get("resourceVersion").and_then(Value::as_str) {
                if Some(given)
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                {
                    return Err(ApiError::conflict(r.group, r.plural, name));
                }
            }
        }
        for k in ["uid", "creationTimestamp"] {
            if let Some(v) = old.pointer(&format!("/metadata/{k}")) {
                meta.insert(k.into(), v.clone());
            }
        }
        if !meta.contains_key("managedFields") {
            if let Some(mf) = old.pointer("/metadata/managedFields") {
                meta.insert("managedFields".into(), mf.clone());
            }
        }
        let rv = self.bump();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        record_manager(&mut obj, r, manager, "Update", &now());
        self.objects.insert(key, obj.clone());
        self.log(Change {
            rv,
            resource: index_of(r),
            kind: ChangeType::Modified,
            object: obj.clone(),
            old: Some(old),
        });
        Ok(obj)
    }

    pub(crate) fn delete(
        &mut self,
        r: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = (index_of(r), scope(r, namespace), name.to_owned());
        let Some(mut obj) = self.objects.remove(&key) else {
            return Err(ApiError::not_found(r.group, r.plural, name));
        };
        let rv = self.bump();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        self.log(Change {
            rv,
            resource: index_of(r),
            kind: ChangeType::Deleted,
            object: obj.clone(),
            old: None,
        });
        Ok(obj)
    }
}

fn scope(r: &ResourceType, ns: &str) -> String {
    if r.namespaced {
        ns.to_owned()
    } else {
        String::new()
    }
}

/// Sets or checks `apiVersion` and `kind`.
fn check_type(r: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request was not an object",
        ));
    };
    let want_version = r.api_version();
    for (field, want) in [("apiVersion", want_version.as_str()), ("kind", r.kind)] {
        match m.get(field).and_then(Value::as_str) {
            Some(have) if !have.is_empty() && have != want => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({have}) does not match the expected API \
                     version ({want})"
                )));
            }
            _ => {
                m.insert(field.into(), json!(want));
            }
        }
    }
    Ok(())
}

fn metadata(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let m = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body of the request was not an object"))?;
    let meta = m.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object"))
}

fn set_namespace(
    r: &ResourceType,
    ns: &str,
    meta: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    if !r.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    match meta.get("namespace").and_then(Value::as_str) {
        Some(given) if !given.is_empty() && given != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
    }
}

/// Adds (or refreshes) the `managedFields` entry of `manager`, with a FieldsV1 set shaped after
/// the object's fields, as server-side field tracking records them.
fn record_manager(obj: &mut Value, r: &ResourceType, manager: &str, operation: &str, time: &str) {
    let fields = fields_v1(obj, 0);
    let entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": r.api_version(),
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    let Ok(meta) = metadata(obj) else { return };
    let list = meta.entry("managedFields").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.retain(|e| e.get("manager").and_then(Value::as_str) != Some(manager));
        list.push(entry);
    }
}

fn fields_v1(v: &Value, depth: usize) -> Value {
    let mut out = Map::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            if depth == 0 && matches!(k.as_str(), "apiVersion" | "kind") {
                continue;
            }
            if depth == 1
                && matches!(
                    k.as_str(),
                    "managedFields" | "resourceVersion" | "uid" | "creationTimestamp"
                )
            {
                continue;
            }
            let sub = if depth < 4 {
                fields_v1(child, depth + 1)
            } else {
                json!({})
            };
            out.insert(format!("f:{k}"), sub);
        }
    }
    if depth > 0 && out.is_empty() {
        return json!({});
    }
    if depth > 0 {
        out.insert(".".into(), json!({}));
    }
    Value::Object(out)
}

/// A UUID-shaped uid, unique per resourceVersion.
fn uid(rv: u64) -> String {
    let h = rv.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h & 0xfff) as u16,
        (rv & 0xfff) as u16,
        rv & 0xffff_ffff_ffff
    )
}

/// Five characters from `[a-z0-9]` (as `generateName` appends), derived from `n`.
fn suffix(n: u64) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (0..5)
        .map(|_| {
            let c = CHARS[(x % CHARS.len() as u64) as usize] as char;
            x /= CHARS.len() as u64;
            c
        })
        .collect()
}

fn parse_token(token: &str) -> Option<(u64, usize)> {
    let (id, offset) = token.split_once('-')?;
    Some((id.parse().ok()?, offset.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::by_name;

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"clusterIP": "10.0.0.1"}})
    }

    #[test]
    fn create_fills_metadata_and_logs() {
        let mut s = Store::new();
        let r = by_name("services").unwrap();
        let o = s.create(r, "shop", svc("web"), "kubectl", true).unwrap();
        assert_eq!(o["metadata"]["namespace"], "shop");
        assert_eq!(o["metadata"]["resourceVersion"], "1001");
        assert!(o["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert!(o["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:clusterIP"].is_object());
        assert!(
            o["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                .is_string()
        );
        assert_eq!(s.changes_after(1000).len(), 1);
        assert!(s.create(r, "shop", svc("web"), "kubectl", false).is_err());
        let o = s.delete(r, "shop", "web").unwrap();
        assert_eq!(o["metadata"]["resourceVersion"], "1002");
        assert_eq!(s.changes_after(1001)[0].kind, ChangeType::Deleted);
    }

    #[test]
    fn pages_are_consistent_and_expire() {
        let mut s = Store::new();
        let r = by_name("services").unwrap();
        for i in 0..5 {
            s.create(r, "a", svc(&format!("s{i}")), "m", false).unwrap();
        }
        let sel = Selection::default();
        let p1 = s.list(r, &sel, Some(2), None).unwrap();
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, Some(3));
        s.delete(r, "a", "s4").unwrap();
        let token = p1.continue_token.unwrap();
        let p2 = s.list(r, &sel, Some(2), Some(&token)).unwrap();
        assert_eq!(p2.rv, p1.rv);
        let p3 = s
            .list(r, &sel, Some(2), p2.continue_token.as_deref())
            .unwrap();
        assert_eq!(p3.items.len(), 1, "the snapshot still has s4");
        assert!(p3.continue_token.is_none());
        let p1 = s.list(r, &sel, Some(2), None).unwrap();
        s.compact();
        let e = s
            .list(r, &sel, Some(2), p1.continue_token.as_deref())
            .err()
            .unwrap();
        assert_eq!(e.code, 410);
    }
}
