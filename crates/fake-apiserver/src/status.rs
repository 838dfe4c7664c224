//! `Status` objects: how the API server reports failures (and some successes).

use serde_json::{json, Value};

/// A failed request, rendered as a `Status` with the HTTP code it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    /// `NotFound`, `Forbidden`, `Expired`, `AlreadyExists`, `Conflict`, `BadRequest`, ...
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<Details>>,
}

/// `details` of a `Status`: the object concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    pub name: Option<String>,
    pub group: Option<String>,
    /// The resource's plural, as the API server puts it.
    pub kind: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn about(mut self, group: &str, plural: &str, name: Option<&str>) -> Self {
        self.details = Some(Box::new(Details {
            name: name.map(str::to_owned),
            group: (!group.is_empty()).then(|| group.to_owned()),
            kind: plural.to_owned(),
        }));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// A path the server has no resource for.
    pub(crate) fn no_resource() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let what = qualified(group, plural);
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found")).about(
            group,
            plural,
            Some(name),
        )
    }

    pub(crate) fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let what = qualified(group, plural);
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .about(group, plural, Some(name))
    }

    pub(crate) fn conflict(group: &str, plural: &str, name: &str) -> Self {
        let what = qualified(group, plural);
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
        .about(group, plural, Some(name))
    }

    /// The watch cache no longer holds `requested` (the current one is `current`).
    pub(crate) fn too_old(requested: u64, current: u64) -> Self {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({current})"),
        )
    }

    pub(crate) fn continue_expired() -> Self {
        ApiError::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results. Continuing with the \
             provided token results in an inconsistent list - objects that were created, \
             modified, or deleted between the time the first chunk was returned and now may \
             show up in the list.",
        )
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if let Some(n) = &d.name {
                details.insert("name".into(), json!(n));
            }
            if let Some(g) = &d.group {
                details.insert("group".into(), json!(g));
            }
            details.insert("kind".into(), json!(d.kind));
            s["details"] = Value::Object(details);
        }
        s
    }
}

/// `pods` or `endpointslices.discovery.k8s.io`, as API messages name a resource.
pub(crate) fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}
