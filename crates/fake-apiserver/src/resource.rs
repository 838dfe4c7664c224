//! The resources the fake serves, and how a request path names one.
//!
//! Paths follow the API server's layout: `/api/v1/...` for the core group,
//! `/apis/GROUP/VERSION/...` for the others; namespaced resources also under
//! `.../namespaces/NS/RESOURCE[/NAME]`.

/// One resource type (a REST collection).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// The plural resource name used in paths and RBAC rules.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Field selectors the real API server accepts for this resource besides `metadata.name` and
    /// `metadata.namespace` (others are answered with 400, as the API server does).
    pub fields: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn field_supported(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || self.fields.contains(&field)
    }
}

/// Everything the fake knows. Other paths are answered with 404, like a resource the server does
/// not have.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        fields: &["spec.clusterIP", "spec.type"],
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        fields: &["addressType"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        fields: &["spec.unschedulable"],
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "servicecidrs",
        kind: "ServiceCIDR",
        namespaced: false,
        fields: &[],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        fields: &["status.phase"],
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        fields: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        fields: &[],
    },
];

/// Finds a resource by plural name (`"pods"`), or by `group/plural` (`"discovery.k8s.io/endpointslices"`).
pub fn by_name(name: &str) -> Option<&'static ResourceType> {
    let (group, plural) = name.rsplit_once('/').unwrap_or(("", name));
    RESOURCES
        .iter()
        .find(|r| r.plural == plural && (group.is_empty() || r.group == group))
}

/// Finds a resource by an object's `apiVersion` and `kind`.
pub fn by_type(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub resource: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`, ... (served like the object itself).
    pub subresource: Option<String>,
}

/// Why a path names nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not a resource path at all, or a group/version/resource the server does not have.
    NotFound,
}

/// Parses `/api/v1/namespaces/ns/pods/name` and friends.
pub(crate) fn parse_path(path: &str) -> Result<Target, PathError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(PathError::NotFound),
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .ok_or(PathError::NotFound)
    };
    let owned = |s: &&str| (*s).to_owned();
    match rest {
        // `/api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]]`
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            let resource = find(plural)?;
            if !resource.namespaced {
                return Err(PathError::NotFound);
            }
            Ok(Target {
                resource,
                namespace: Some((*ns).to_owned()),
                name: tail.first().map(owned),
                subresource: tail.get(1).map(owned),
            })
        }
        // `/api/v1/RESOURCE[/NAME[/SUB]]` (cluster scope, or all namespaces)
        [plural, tail @ ..] if tail.len() <= 2 && !plural.is_empty() => {
            let resource = find(plural)?;
            if resource.namespaced && !tail.is_empty() {
                return Err(PathError::NotFound);
            }
            Ok(Target {
                resource,
                namespace: None,
                name: tail.first().map(owned),
                subresource: tail.get(1).map(owned),
            })
        }
        _ => Err(PathError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/namespaces/shop/pods/web-0").unwrap();
        assert_eq!(t.resource.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("shop"));
        assert_eq!(t.name.as_deref(), Some("web-0"));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(t.resource.kind, "EndpointSlice");
        assert_eq!(t.namespace, None);
        let t = parse_path("/api/v1/namespaces/shop").unwrap();
        assert_eq!(t.resource.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("shop"));
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!(t.name, None);
        assert_eq!(
            parse_path("/apis/networking.k8s.io/v1beta1/servicecidrs"),
            Err(PathError::NotFound)
        );
        assert_eq!(parse_path("/api/v1/pods/x"), Err(PathError::NotFound));
        assert_eq!(parse_path("/healthz"), Err(PathError::NotFound));
        let t = parse_path("/api/v1/nodes/n1/status").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("status"));
    }

    #[test]
    fn lookups() {
        assert_eq!(by_name("endpointslices").unwrap().group, "discovery.k8s.io");
        assert_eq!(by_name("events.k8s.io/events").unwrap().kind, "Event");
        assert_eq!(
            by_type("networking.k8s.io/v1", "ServiceCIDR")
                .unwrap()
                .plural,
            "servicecidrs"
        );
        assert!(by_type("serving.knative.dev/v1", "Service").is_none());
        // Namespaces: core v1, cluster-scoped (ghostbuster watches their mode annotation).
        let ns = by_type("v1", "Namespace").unwrap();
        assert_eq!((ns.plural, ns.namespaced), ("namespaces", false));
        assert_eq!(by_name("namespaces"), Some(ns));
    }
}
