//! Reading `metadata` into keys, the one place that decides what a missing name or namespace means.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::error::{Error, Result};
use super::event::Kind;
use super::model::{ObjectKey, Uid};
use super::name::{Name, NamePool};

/// The object's `namespace/name`. A namespaced object without a namespace is taken to be in
/// `default`, as kubectl does for a manifest; a nameless object is rejected.
pub(crate) fn key(meta: &ObjectMeta, kind: Kind, pool: &mut NamePool) -> Result<ObjectKey> {
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(Error::invalid(
            kind,
            "<unnamed>",
            "metadata.name is missing",
        ));
    }
    let namespace = if kind.namespaced() {
        meta.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    } else {
        ""
    };
    // Services and Nodes are named again by slices and config; Pod and slice names are unique and
    // not worth a pool entry, nor are Namespaces' (most are dropped at once; the index interns
    // the few it keeps).
    let name = match kind {
        Kind::Pod | Kind::EndpointSlice | Kind::Namespace => Name::new(name),
        _ => pool.intern(name),
    };
    Ok(ObjectKey {
        namespace: pool.intern(namespace),
        name,
    })
}

pub(crate) fn uid(meta: &ObjectMeta, pool: &mut NamePool) -> Option<Uid> {
    meta.uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| Uid::parse(u, pool))
}

pub(crate) fn label<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(name).map(String::as_str)
}
