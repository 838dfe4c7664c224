//! The HTTP side: one handler that parses the path as the API server does, records the request,
//! authenticates and authorizes it, and serves get/list/watch/create/update/patch/delete.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::patch::{self, PatchType};
use crate::resource::{parse_path, ResourceType, Target, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use crate::shared::{EventWrite, Request, Shared};
use crate::status::{qualified, ApiError};
use crate::store::{index_of, Change, ChangeType, Selection};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// Default watch duration when `timeoutSeconds` is absent (the API server picks 30–60 min).
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter (`true`/`1`).
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn nonempty(&self, k: &str) -> Option<&str> {
        self.get(k).filter(|v| !v.is_empty())
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn verb_of(method: &Method, named: bool, watch: bool) -> String {
    match *method {
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return method.as_str().to_ascii_lowercase(),
    }
    .to_owned()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params(
        Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map(|q| q.0)
            .unwrap_or_default(),
    );
    let path = uri.path().to_owned();
    let target = parse_path(&path).ok();
    let verb = match &target {
        Some(t) => verb_of(&method, t.name.is_some(), params.flag("watch")),
        None => method.as_str().to_ascii_lowercase(),
    };
    let record = Request {
        method: method.to_string(),
        verb: verb.clone(),
        path: path.clone(),
        group: target.as_ref().map_or("", |t| t.resource.group).to_owned(),
        resource: target.as_ref().map_or("", |t| t.resource.plural).to_owned(),
        namespace: target.as_ref().and_then(|t| t.namespace.clone()),
        name: target.as_ref().and_then(|t| t.name.clone()),
        params: params.0.clone(),
        status: 0,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let (slot, token) = {
        let mut st = shared.lock();
        st.ctl.requests.push(record);
        (st.ctl.requests.len() - 1, st.ctl.token.clone())
    };
    let response = match token {
        Some(t) if !bearer_matches(&headers, &t) => error_response(&ApiError::unauthorized()),
        _ => match target {
            None => non_resource(&path),
            Some(t) => match serve(&shared, &method, &verb, t, &params, &headers, body).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            },
        },
    };
    let code = response.status().as_u16();
    if let Some(r) = shared.lock().ctl.requests.get_mut(slot) {
        r.status = code;
    }
    response
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

/// `/version`, health endpoints and discovery roots; anything else is a 404.
fn non_resource(path: &str) -> Response {
    match path.trim_end_matches('/') {
        "/version" => json_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
                "platform": "linux/amd64"
            }),
        ),
        "/healthz" | "/livez" | "/readyz" => (StatusCode::OK, "ok").into_response(),
        "/api" => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        "/apis" => {
            let mut groups: Vec<&str> = RESOURCES
                .iter()
                .map(|r| r.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.sort_unstable();
            groups.dedup();
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        _ => error_response(&ApiError::no_resource()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    verb: &str,
    t: Target,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = t.resource;
    {
        let st = shared.lock();
        if let Some(rbac) = &st.ctl.rbac {
            let selected_name = params
                .get("fieldSelector")
                .and_then(|f| FieldSelector::parse(f, r).ok())
                .and_then(|f| f.name().map(str::to_owned));
            let name = t.name.as_deref().or(selected_name.as_deref());
            if !rbac.allows(verb, r.group, r.plural, name) {
                return Err(forbidden(&rbac.user, verb, &t));
            }
        }
        if st.ctl.disabled.contains(r.plural) {
            return Err(ApiError::no_resource());
        }
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let manager = params.get("fieldManager").unwrap_or("unknown").to_owned();
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        hang_while_told_in(shared, r, |c| &c.hung_writes).await;
    }
    match (method, t.name.as_deref()) {
        (&Method::GET | &Method::HEAD, Some(name)) => {
            hang_while_told_in(shared, r, |c| &c.hung_gets).await;
            hang_while_object_told(shared, r, &ns, name).await;
            let st = shared.lock();
            match st.store.get(r, &ns, name) {
                Some(o) => Ok(json_response(200, o)),
                None => Err(ApiError::not_found(r.group, r.plural, name)),
            }
        }
        (&Method::GET | &Method::HEAD, None) if params.flag("watch") => watch(shared, &t, params),
        (&Method::GET | &Method::HEAD, None) => list(shared, &t, params).await,
        (&Method::POST, None) => {
            if r.namespaced && t.namespace.is_none() {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                ));
            }
            let obj = parse_json(&body)?;
            let created = shared.mutate(|st| st.store.create(r, &ns, obj, &manager, false))?;
            note_event(shared, r, "create", &created);
            Ok(json_response(201, &created))
        }
        (&Method::PUT, Some(name)) => {
            let obj = parse_json(&body)?;
            let updated = shared.mutate(|st| st.store.update(r, &ns, name, obj, &manager, true))?;
            note_event(shared, r, "update", &updated);
            Ok(json_response(200, &updated))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(ct).ok_or_else(|| {
                ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {ct:?}"),
                )
            })?;
            let p = patch::parse_body(kind, &body)?;
            let (code, obj) = shared.mutate(|st| -> Result<(u16, Value), ApiError> {
                match st.store.get(r, &ns, name).cloned() {
                    Some(mut current) => {
                        patch::apply(kind, &mut current, p)?;
                        let o = st.store.update(r, &ns, name, current, &manager, false)?;
                        Ok((200, o))
                    }
                    None if kind == PatchType::Apply => {
                        let mut obj = p;
                        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.insert("name".into(), json!(name));
                        }
                        Ok((201, st.store.create(r, &ns, obj, &manager, false)?))
                    }
                    None => Err(ApiError::not_found(r.group, r.plural, name)),
                }
            })?;
            note_event(shared, r, "patch", &obj);
            Ok(json_response(code, &obj))
        }
        (&Method::DELETE, Some(name)) => {
            let obj = shared.mutate(|st| st.store.delete(r, &ns, name))?;
            Ok(json_response(200, &obj))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

fn note_event(shared: &Shared, r: &ResourceType, verb: &str, obj: &Value) {
    if r.group == "events.k8s.io" {
        shared.lock().ctl.event_writes.push(EventWrite {
            verb: verb.to_owned(),
            object: obj.clone(),
        });
    }
}

fn forbidden(user: &str, verb: &str, t: &Target) -> ApiError {
    let r = t.resource;
    let what = qualified(r.group, r.plural);
    let subject = match &t.name {
        Some(n) => format!("{what} \"{n}\""),
        None => what,
    };
    let scope = match &t.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            r.plural, r.group
        ),
    )
    .about(r.group, r.plural, t.name.as_deref())
}

fn selection(t: &Target, params: &Params) -> Result<Selection, ApiError> {
    Ok(Selection {
        namespace: t.namespace.clone(),
        fields: match params.nonempty("fieldSelector") {
            Some(f) => FieldSelector::parse(f, t.resource).map_err(ApiError::bad_request)?,
            None => FieldSelector::default(),
        },
        labels: match params.nonempty("labelSelector") {
            Some(l) => LabelSelector::parse(l).map_err(ApiError::bad_request)?,
            None => LabelSelector::default(),
        },
    })
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

async fn list(shared: &Arc<Shared>, t: &Target, params: &Params) -> Result<Response, ApiError> {
    let r = t.resource;
    let sel = selection(t, params)?;
    let rv = params.nonempty("resourceVersion");
    let rv_match = params.nonempty("resourceVersionMatch");
    let cont = params.nonempty("continue");
    // apimachinery's ValidateListOptions.
    if cont.is_some() && rv_match.is_some() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    if cont.is_some() && rv.is_some_and(|v| v != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if rv_match.is_some() && rv.is_none() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let limit = match params.nonempty("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    hang_while_told(shared, r).await;
    let page = shared.mutate(|st| -> Result<_, ApiError> {
        if let (Some(v), Some("Exact")) = (rv, rv_match) {
            let v = parse_rv(v)?;
            if v < st.store.compacted() {
                return Err(ApiError::too_old(v, st.store.resource_version()));
            }
        }
        st.store.list(r, &sel, limit, cont)
    })?;
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = page.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(n) = page.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    // List items carry no kind/apiVersion: the list's type says it.
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|mut o| {
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": meta,
            "items": items,
        }),
    ))
}

/// Waits while the test keeps lists of `r` hanging (for ever, if it never lets go).
async fn hang_while_told(shared: &Arc<Shared>, r: &ResourceType) {
    hang_while_told_in(shared, r, |c| &c.hung).await;
}

/// Waits while `r` is in the set `which` picks of the test's controls.
async fn hang_while_told_in(
    shared: &Arc<Shared>,
    r: &ResourceType,
    which: impl Fn(&crate::shared::Control) -> &std::collections::HashSet<&'static str>,
) {
    let mut changed = shared.changed.subscribe();
    loop {
        {
            let st = shared.lock();
            if st.ctl.shutdown || !which(&st.ctl).contains(r.plural) {
                return;
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// Waits while the test keeps GETs of this one object hanging.
async fn hang_while_object_told(shared: &Arc<Shared>, r: &ResourceType, ns: &str, name: &str) {
    let key = (r.plural, ns.to_owned(), name.to_owned());
    let mut changed = shared.changed.subscribe();
    loop {
        {
            let st = shared.lock();
            if st.ctl.shutdown || !st.ctl.hung_objects.contains(&key) {
                return;
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

struct WatchSpec {
    resource: &'static ResourceType,
    sel: Selection,
    /// `None`: start with ADDED events for everything present (`resourceVersion` 0 or absent).
    from: Option<u64>,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Duration,
}

fn watch(shared: &Arc<Shared>, t: &Target, params: &Params) -> Result<Response, ApiError> {
    let sel = selection(t, params)?;
    let from = match params.nonempty("resourceVersion") {
        None | Some("0") => None,
        Some(v) => Some(parse_rv(v)?),
    };
    let timeout = match params.nonempty("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        None => DEFAULT_WATCH,
    };
    let spec = WatchSpec {
        resource: t.resource,
        sel,
        from,
        bookmarks: params.flag("allowWatchBookmarks"),
        initial_events_end: params.flag("sendInitialEvents"),
        timeout,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(64);
    {
        let st = shared.lock();
        if let Some(v) = from {
            if v < st.store.compacted() {
                let e = ApiError::too_old(v, st.store.resource_version());
                if st.ctl.watch_gone_http {
                    return Err(e);
                }
                // The watch cache answers 200 and then an ERROR event.
                let line = event_line("ERROR", &e.to_status());
                let body = Body::from_stream(futures::stream::iter([Ok::<_, io::Error>(line)]));
                return Ok(watch_response(body));
            }
        }
    }
    tokio::spawn(produce(Arc::clone(shared), spec, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(watch_response(Body::from_stream(stream)))
}

fn watch_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark_line(r: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": meta}),
    )
}

/// How a logged change looks through a selection: a modification that moves an object into or
/// out of it is an ADDED or DELETED, as the watch cache reports it.
fn translate<'a>(c: &'a Change, sel: &Selection) -> Option<(&'static str, &'a Value)> {
    let now = sel.matches(&c.object);
    match c.kind {
        ChangeType::Added => now.then_some(("ADDED", &c.object)),
        ChangeType::Deleted => now.then_some(("DELETED", &c.object)),
        ChangeType::Modified => {
            let before = c.old.as_ref().is_some_and(|o| sel.matches(o));
            match (before, now) {
                (true, true) => Some(("MODIFIED", &c.object)),
                (false, true) => Some(("ADDED", &c.object)),
                (true, false) => Some(("DELETED", &c.object)),
                (false, false) => None,
            }
        }
    }
}

enum End {
    /// The stream ends normally (after an ERROR event, or at the timeout).
    Clean,
    /// The connection is cut mid-stream.
    Abort,
}

/// Counts an open watch for the lifetime of its producer.
struct OpenWatch {
    shared: Arc<Shared>,
    plural: &'static str,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.shared.mutate(|st| {
            if let Some(n) = st.ctl.open_watches.get_mut(self.plural) {
                *n = n.saturating_sub(1);
            }
        });
    }
}

async fn produce(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Result<Bytes, io::Error>>) {
    let r = spec.resource;
    let ri = index_of(r);
    let mut changed = shared.changed.subscribe();
    let mut lines = Vec::new();
    let (mut cursor, bookmark_gen, expire_gen, drop_gen, interval) = {
        let mut st = shared.lock();
        *st.ctl.open_watches.entry(r.plural).or_default() += 1;
        let cursor = match spec.from {
            Some(rv) => rv,
            None => {
                for o in st.store.select(r, &spec.sel) {
                    lines.push(event_line("ADDED", &o));
                }
                let rv = st.store.resource_version();
                if spec.initial_events_end {
                    lines.push(bookmark_line(r, rv, true));
                }
                rv
            }
        };
        (
            cursor,
            st.ctl.bookmark_gen,
            st.ctl.expire_gen,
            st.ctl.drop_gen,
            st.ctl.bookmark_interval,
        )
    };
    let _open = OpenWatch {
        shared: Arc::clone(&shared),
        plural: r.plural,
    };
    shared.changed.send_modify(|v| *v = v.wrapping_add(1));
    let mut seen_bookmarks = bookmark_gen;
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut next_auto = tokio::time::Instant::now() + interval.unwrap_or(far);
    let mut auto_bookmark = false;
    loop {
        let mut end = None;
        {
            let st = shared.lock();
            if st.ctl.shutdown || st.ctl.drop_gen != drop_gen {
                end = Some(End::Abort);
            } else if st.ctl.silent.contains(r.plural) {
                // Connected but silent: nothing is sent and the cursor stays where it is, so
                // what happened meanwhile arrives late, when the silence ends.
                auto_bookmark = false;
            } else {
                for c in st
                    .store
                    .changes_after(cursor)
                    .iter()
                    .filter(|c| c.resource == ri)
                {
                    if let Some((kind, obj)) = translate(c, &spec.sel) {
                        lines.push(event_line(kind, obj));
                    }
                }
                cursor = cursor.max(st.store.resource_version());
                if st.ctl.expire_gen != expire_gen {
                    let e = ApiError::too_old(cursor, st.store.resource_version());
                    lines.push(event_line("ERROR", &e.to_status()));
                    end = Some(End::Clean);
                } else if st.ctl.bookmark_gen != seen_bookmarks || auto_bookmark {
                    seen_bookmarks = st.ctl.bookmark_gen;
                    auto_bookmark = false;
                    if spec.bookmarks {
                        lines.push(bookmark_line(r, cursor, false));
                    }
                }
            }
        }
        for line in lines.drain(..) {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        match end {
            Some(End::Clean) => return,
            Some(End::Abort) => {
                let cut =
                    io::Error::new(io::ErrorKind::ConnectionReset, "watch dropped by the test");
                let _ = tx.send(Err(cut)).await;
                return;
            }
            None => {}
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
            () = tx.closed() => return,
            () = tokio::time::sleep_until(next_auto) => {
                auto_bookmark = true;
                next_auto = tokio::time::Instant::now() + interval.unwrap_or(far);
            }
        }
    }
}
