//! The faults the churn soak injects, seen through a real `kube::Client`: a pod GET that hangs
//! until released, and a watch that stays connected but silent (no events, no BOOKMARKs) until
//! the silence ends, when what changed meanwhile arrives. Every wait is bounded.

mod support;

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::json;
use support::{client, list_then_watch, WAIT};

fn pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "203.0.113.9", "podIPs": [{"ip": "203.0.113.9"}]}
    })
}

#[tokio::test]
async fn a_hung_get_answers_only_when_released_and_lists_still_answer() {
    let server = FakeApiServer::start().await.unwrap();
    server.create(pod("web-0"));
    server.hang_gets("pods", true);
    let pods: Api<Pod> = Api::namespaced(client(&server), "shop");
    let pending = pods.get("web-0");
    tokio::pin!(pending);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pending)
            .await
            .is_err(),
        "a hung GET answered"
    );
    // Only single-object GETs hang.
    let l = tokio::time::timeout(WAIT, pods.list(&ListParams::default()))
        .await
        .expect("list in time")
        .unwrap();
    assert_eq!(l.items.len(), 1);
    server.hang_gets("pods", false);
    let p = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(p.metadata.name.as_deref(), Some("web-0"));
}

#[tokio::test]
async fn a_silent_watch_sends_nothing_until_the_silence_ends() {
    let server = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&server), "shop");
    let (_, mut w) = list_then_watch(
        &server,
        &pods,
        "pods",
        &ListParams::default(),
        &WatchParams::default(),
    )
    .await;
    server.silence_watches("pods", true);
    server.create(pod("web-1"));
    server.bookmark();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), w.next())
            .await
            .is_err(),
        "a silent watch sent something"
    );
    server.silence_watches("pods", false);
    let first = tokio::time::timeout(WAIT, w.next())
        .await
        .expect("in time")
        .expect("open")
        .unwrap();
    assert!(
        matches!(&first, WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("web-1")),
        "{first:?}"
    );
}
