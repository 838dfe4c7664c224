//! The fake against a real `kube::Client`: what a client sees must be what a real API server
//! sends. Every wait is bounded.

mod support;

use std::time::Duration;

use fake_apiserver::{FakeApiServer, PolicyRule, Rbac};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};
use support::{client, list_then_watch, WAIT};

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    })
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no watch event in time")
        .expect("watch stream ended")
}

async fn raw(client: &kube::Client, path: &str) -> Value {
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("raw request");
    serde_json::from_str(&text).expect("json")
}

fn api_code(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn lists_look_like_the_api_servers() {
    let server = FakeApiServer::start().await.unwrap();
    for i in 0..3 {
        server.create(service(
            "shop",
            &format!("s{i}"),
            &format!("10.96.0.{}", 10 + i),
        ));
    }
    let c = client(&server);
    let list = raw(&c, "/api/v1/services?limit=2").await;
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["apiVersion"], "v1");
    assert!(list["metadata"]["resourceVersion"].is_string());
    assert_eq!(list["metadata"]["remainingItemCount"], 1);
    let item = &list["items"][0];
    assert!(
        item.get("kind").is_none(),
        "list items carry no kind: {item}"
    );
    let meta = &item["metadata"];
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(meta["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(meta["resourceVersion"].is_string());
    assert_eq!(meta["managedFields"][0]["fieldsType"], "FieldsV1");
    assert!(meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    // Typed, paginated, through kube's own list.
    let api: Api<Service> = Api::all(c.clone());
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("continue token");
    server.delete("services", "shop", "s2");
    let rest = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.items.len(),
        1,
        "pages come from the first page's snapshot"
    );
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );

    // A continue token older than a compaction is 410 Expired.
    let first = api.list(&ListParams::default().limit(1)).await.unwrap();
    server.expire_watches();
    let err = api
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 410);

    // resourceVersionMatch with continue is refused, as the API server validates it.
    let req = http::Request::get(
        "/api/v1/services?continue=1-1&resourceVersion=5&resourceVersionMatch=NotOlderThan",
    )
    .body(Vec::new())
    .unwrap();
    assert_eq!(api_code(c.request_text(req).await.unwrap_err()).0, 400);

    // resourceVersion=0 (any) lists work, namespaced lists only see their namespace.
    server.create(service("other", "x", "10.96.1.1"));
    let any = api.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(any.items.len(), 3);
    let shop: Api<Service> = Api::namespaced(c.clone(), "shop");
    assert_eq!(
        shop.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    let reqs = server.requests();
    assert!(reqs
        .iter()
        .any(|r| r.resource == "services" && r.resource_version() == Some("0")));
    assert!(server.count("list", "services") >= 5);
}

#[tokio::test]
async fn watches_stream_changes_bookmarks_and_410() {
    let server = FakeApiServer::start().await.unwrap();
    server.create(service("shop", "web", "10.96.0.10"));
    let api: Api<Service> = Api::all(client(&server));
    let (rv, mut w) = list_then_watch(
        &server,
        &api,
        "services",
        &ListParams::default(),
        &WatchParams::default(),
    )
    .await;

    server.create(service("shop", "db", "10.96.0.11"));
    match next(&mut w).await.unwrap() {
        WatchEvent::Added(s) => assert_eq!(s.metadata.name.as_deref(), Some("db")),
        e => panic!("{e:?}"),
    }
    let mut changed = service("shop", "db", "10.96.0.11");
    changed["spec"]["ports"][0]["port"] = json!(81);
    server.update(changed);
    assert!(matches!(
        next(&mut w).await.unwrap(),
        WatchEvent::Modified(_)
    ));
    server.delete("services", "shop", "db");
    let deleted_rv = match next(&mut w).await.unwrap() {
        WatchEvent::Deleted(s) => s.metadata.resource_version.unwrap(),
        e => panic!("{e:?}"),
    };
    assert_eq!(deleted_rv, server.resource_version().to_string());
    server.bookmark();
    match next(&mut w).await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, deleted_rv),
        e => panic!("{e:?}"),
    }
    server.expire_watches();
    match next(&mut w).await.unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
        }
        e => panic!("{e:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .is_none(),
        "ends after 410"
    );

    // A watch from before the compaction: an ERROR event, or HTTP 410 when asked.
    let mut old = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(next(&mut old).await.unwrap(), WatchEvent::Error(s) if s.code == 410));
    server.set_watch_gone_http(true);
    let err = api.watch(&WatchParams::default(), &rv).await;
    let err = match err {
        Err(e) => e,
        Ok(s) => next(&mut s.boxed()).await.unwrap_err(),
    };
    assert_eq!(api_code(err).0, 410);

    // Watching from "0" starts with everything present.
    let mut all = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut all).await.unwrap(), WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("web"))
    );

    // A dropped connection (no final chunk) ends the stream: kube reads the chunked decoder's
    // unexpected EOF as a resumable end; other clients see an error.
    server.drop_watches();
    let cut = tokio::time::timeout(WAIT, all.next())
        .await
        .expect("in time");
    assert!(matches!(cut, None | Some(Err(_))), "{cut:?}");
}

#[tokio::test]
async fn lost_events_are_only_seen_by_a_relist() {
    let server = FakeApiServer::start().await.unwrap();
    server.create(service("shop", "web", "10.96.0.10"));
    let api: Api<Service> = Api::all(client(&server));
    let (_, mut w) = list_then_watch(
        &server,
        &api,
        "services",
        &ListParams::default(),
        &WatchParams::default(),
    )
    .await;
    server.lose_events(|s| s.delete("services", "shop", "web"));
    assert!(matches!(next(&mut w).await.unwrap(), WatchEvent::Error(s) if s.code == 410));
    assert!(api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test]
async fn field_and_label_selectors_filter_lists_and_watches() {
    let server = FakeApiServer::start().await.unwrap();
    server.create(pod("a", "p1", "n1", "10.0.1.1"));
    server.create(pod("a", "p2", "n2", "10.0.2.1"));
    server.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}));
    server.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}));
    let c = client(&server);
    let pods: Api<Pod> = Api::all(c.clone());
    let on_n1 = ListParams::default().fields("spec.nodeName=n1");
    let l = pods.list(&on_n1).await.unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(l.items[0].metadata.name.as_deref(), Some("p1"));
    let nodes: Api<Node> = Api::all(c.clone());
    let l = nodes
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    let services: Api<Service> = Api::all(c.clone());
    server.create(service("a", "web", "10.96.0.1"));
    server.create(service("a", "db", "10.96.0.2"));
    let l = services
        .list(&ListParams::default().labels("app in (db, cache)"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    // Fields the API server does not index are refused.
    let err = services
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap_err();
    assert_eq!(api_code(err).0, 400);

    // A pod moving off the node leaves the watch as DELETED; one moving on arrives as ADDED.
    let wp = WatchParams::default().fields("spec.nodeName=n1");
    let (_, mut w) = list_then_watch(&server, &pods, "pods", &on_n1, &wp).await;
    server.update(pod("a", "p1", "n2", "10.0.1.1"));
    assert!(
        matches!(next(&mut w).await.unwrap(), WatchEvent::Deleted(p) if p.metadata.name.as_deref() == Some("p1"))
    );
    server.update(pod("a", "p2", "n1", "10.0.2.1"));
    assert!(
        matches!(next(&mut w).await.unwrap(), WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("p2"))
    );
    let watches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .collect();
    assert_eq!(watches[0].field_selector(), Some("spec.nodeName=n1"));
}

#[tokio::test]
async fn gets_events_and_missing_resources() {
    let server = FakeApiServer::start().await.unwrap();
    server.create(pod("shop", "db-0", "n1", "10.0.1.5"));
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "shop");
    let p = pods.get("db-0").await.unwrap();
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.0.1.5"));
    let (code, reason, message) = api_code(pods.get("db-1").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(message, "pods \"db-1\" not found");
    assert_eq!(server.count("get", "pods"), 2);

    // events.k8s.io: POST with generateName, then PATCH, both recorded.
    let events: Api<Event> = Api::namespaced(c.clone(), "shop");
    let e: Event = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"generateName": "db.", "namespace": "shop"},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reason": "StaleFlowsRemoved", "note": "Removed 3 stale conntrack flows",
        "type": "Normal", "action": "Sweep", "reportingController": "ghostbuster.io/agent",
        "reportingInstance": "ghostbuster-n1",
        "regarding": {"kind": "Service", "namespace": "shop", "name": "db", "apiVersion": "v1"}
    }))
    .unwrap();
    let created = events.create(&PostParams::default(), &e).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("db.") && name.len() == 8, "{name}");
    let patch = json!({"series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"}});
    events
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let writes = server.event_writes();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0].verb, "create");
    assert_eq!(writes[1].verb, "patch");
    assert_eq!(writes[1].object["series"]["count"], 2);
    assert_eq!(server.events().len(), 1);

    // A disabled API is a 404 on list and watch alike.
    server.disable("servicecidrs");
    let cidrs: Api<ServiceCIDR> = Api::all(c.clone());
    let (code, ..) = api_code(cidrs.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 404);
    let (code, ..) = api_code(match cidrs.watch(&WatchParams::default(), "0").await {
        Err(e) => e,
        Ok(_) => panic!("watch of a disabled API answered"),
    });
    assert_eq!(code, 404);
}

#[tokio::test]
async fn rbac_and_authentication() {
    let server = FakeApiServer::start().await.unwrap();
    server.set_rbac(Some(Rbac::new(vec![
        PolicyRule::new(&[""], &["services"], &["get", "list", "watch"]),
        PolicyRule::new(&[""], &["pods"], &["get"]),
    ])));
    let c = client(&server);
    let services: Api<Service> = Api::all(c.clone());
    services.list(&ListParams::default()).await.unwrap();
    let pods: Api<Pod> = Api::all(c.clone());
    let (code, reason, message) = api_code(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "pods is forbidden: User \"system:serviceaccount:ghostbuster:ghostbuster\" cannot list \
         resource \"pods\" in API group \"\" at the cluster scope"
    );
    let forbidden = server.forbidden();
    assert_eq!(forbidden.len(), 1);
    assert_eq!(
        (forbidden[0].verb.as_str(), forbidden[0].resource.as_str()),
        ("list", "pods")
    );

    server.set_rbac(None);
    server.require_token(Some("s3cret"));
    let (code, ..) = api_code(services.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 401);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let authed: Api<Service> = Api::all(kube::Client::try_from(config).unwrap());
    authed.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn hanging_lists_answer_only_when_released() {
    let server = FakeApiServer::start().await.unwrap();
    server.hang_lists("endpointslices", true);
    let c = client(&server);
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::all(c);
    let lp = ListParams::default();
    let pending = slices.list(&lp);
    tokio::pin!(pending);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pending)
            .await
            .is_err()
    );
    assert_eq!(server.requests().last().unwrap().status, 0, "still hanging");
    server.hang_lists("endpointslices", false);
    let l = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert!(l.items.is_empty());
}

#[test]
fn runs_on_its_own_thread_for_sync_tests() {
    let server = FakeApiServer::start_in_thread().unwrap();
    server.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    let names = rt.block_on(async move {
        let c = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
        api.list(&ListParams::default()).await.unwrap().items.len()
    });
    assert_eq!(names, 1);
}
