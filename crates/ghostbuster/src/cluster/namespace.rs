//! Namespaces, read for one thing only: their `ghostbuster.io/mode` annotation, the
//! per-namespace default of the per-Service override.
//!
//! A cluster may have thousands of Namespaces and few carry the annotation, so the index keeps
//! nothing of the others (not even their names): a Namespace without the annotation and a
//! Namespace that does not exist mean the same thing, "no override".

use k8s_openapi::api::core::v1 as api;

use super::error::Result;
use super::event::Kind;
use super::meta;
use super::model::ObjectKey;
use super::name::NamePool;
use super::service::SweepMode;

/// The compact form of a Namespace.
#[derive(Clone, Debug)]
pub struct NamespaceMode {
    /// `""/name` (cluster-scoped).
    pub key: ObjectKey,
    /// `None`: no annotation, so the Namespace sets nothing.
    pub mode: Option<SweepMode>,
}

impl NamespaceMode {
    /// Reduces an API Namespace. Only a nameless one is rejected; no annotations, odd values
    /// ([`SweepMode::parse`]), no spec or status are all fine.
    pub fn from_api(ns: &api::Namespace, pool: &mut NamePool) -> Result<Self> {
        Ok(NamespaceMode {
            key: meta::key(&ns.metadata, Kind::Namespace, pool)?,
            mode: SweepMode::of(&ns.metadata),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reduce(v: serde_json::Value) -> Result<NamespaceMode> {
        let ns: api::Namespace = serde_json::from_value(v).unwrap();
        NamespaceMode::from_api(&ns, &mut NamePool::default())
    }

    #[test]
    fn reads_the_annotation_and_nothing_else() {
        let m = reduce(json!({"metadata": {"name": "shop"}})).unwrap();
        assert_eq!((&*m.key.namespace, &*m.key.name), ("", "shop"));
        assert_eq!(m.mode, None);
        let m = reduce(json!({"metadata": {"name": "shop", "annotations": {}}})).unwrap();
        assert_eq!(m.mode, None);
        for (value, mode) in [
            ("off", SweepMode::Off),
            (" OFF\n", SweepMode::Off),
            ("Sweep", SweepMode::Sweep),
            ("report", SweepMode::Report),
            ("", SweepMode::Report),
            ("disable-please", SweepMode::Report),
        ] {
            let m = reduce(json!({
                "metadata": {"name": "shop", "namespace": "ignored",
                             "annotations": {"ghostbuster.io/mode": value, "other": "x"}},
                "status": {"phase": "Terminating"}
            }))
            .unwrap();
            assert_eq!(m.mode, Some(mode), "{value:?}");
            assert_eq!(&*m.key.namespace, "", "cluster-scoped");
        }
        // Annotation keys are case-sensitive: this is some other annotation.
        let m = reduce(json!({"metadata": {"name": "shop",
                                           "annotations": {"ghostbuster.io/Mode": "off"}}}))
        .unwrap();
        assert_eq!(m.mode, None);
        assert!(reduce(json!({"metadata": {}})).is_err());
    }
}
