//! Issue #12 §3 "every API call has a timeout": the Kubernetes Events the agent posts (aggregated
//! removals on Services, Warning Events on the Node) against an API server that accepts the
//! request and never answers. Events are best effort: the call gives up, the event is dropped,
//! and nothing that waits on it — the flush loop, the reactor recording its removals — is held.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use ghostbuster::agent::k8s_events::{self, EventPoster};
use ghostbuster::cluster::kube as live;
use tokio::sync::Mutex;

const EVENTS: &str = "events.k8s.io/events";

fn client(server: &FakeApiServer) -> kube::Client {
    live::client_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

/// Waits (at most 5 s) until the server has received `n` Event creates.
async fn creates_reached(api: &FakeApiServer, n: usize) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while api.count("create", "events") < n {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_hung_event_post_neither_holds_the_flush_nor_the_poster() {
    // The server runs on a thread of its own (and is dropped outside the test's runtime).
    let api = FakeApiServer::start_in_thread().unwrap();
    runtime().block_on(hung_flush(&api));
}

async fn hung_flush(api: &FakeApiServer) {
    api.hang_writes(EVENTS, true);
    let poster = Arc::new(Mutex::new(
        EventPoster::new(client(api), "node-a", Duration::from_secs(300))
            .with_call_timeout(Duration::from_millis(300)),
    ));
    for service in ["web", "api"] {
        poster.lock().await.record(
            ("shop".into(), service.into()),
            3,
            "203.0.113.7:8080".into(),
            None,
            None,
        );
    }
    // The agent's flush loop, as run.rs drives it.
    let p = poster.clone();
    let flush = tokio::spawn(async move { k8s_events::flush(&p, Instant::now()).await });
    assert!(creates_reached(api, 1).await, "the Event was never posted");
    // The post is in flight and the server is silent. The reactor records its removals with
    // `try_lock` (it must never wait): the poster must be free meanwhile.
    assert!(
        poster.try_lock().is_ok(),
        "the poster stays locked while an Event post hangs: the reactor's removals are dropped"
    );
    let posted = tokio::time::timeout(Duration::from_secs(3), flush)
        .await
        .expect("the flush still hangs 3 s after the API server went silent")
        .unwrap();
    assert_eq!(posted, 0, "nothing was posted: {:?}", api.requests());
    // One timeout per flush, not one per Service: after the first went unanswered, the second
    // Service's Event was dropped unsent.
    assert_eq!(api.count("create", "events"), 1, "{:?}", api.requests());
    assert!(api.events().is_empty(), "the hung write stored nothing");

    // The API server answers again: the next Service's removals are posted; the dropped Event
    // is not retried.
    api.hang_writes(EVENTS, false);
    poster.lock().await.record(
        ("shop".into(), "cart".into()),
        1,
        "203.0.113.8:8080".into(),
        None,
        None,
    );
    let posted = tokio::time::timeout(
        Duration::from_secs(3),
        k8s_events::flush(&poster, Instant::now()),
    )
    .await
    .expect("a flush against an answering server returns");
    assert_eq!(posted, 1);
    let notes: Vec<String> = api
        .events()
        .iter()
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect();
    // The hung post itself may land once the server answers again (the fake, like a real API
    // server, finishes a write whose client gave up): what must not happen is a retry of it or
    // of the dropped one. Two creates in all: the hung one and cart's.
    assert_eq!(api.count("create", "events"), 2, "{:?}", api.requests());
    let cart: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains("203.0.113.8:8080"))
        .collect();
    assert_eq!(cart.len(), 1, "{notes:?}");
    assert!(
        notes
            .iter()
            .filter(|n| n.contains("203.0.113.7:8080"))
            .count()
            <= 1,
        "{notes:?}"
    );
}

/// The Warning Events on the Node (circuit breaker tripped, table filling) are posted from tasks
/// of their own; each gives up after its limit instead of living on for kube's read timeout.
#[test]
fn a_hung_node_warning_gives_up_after_its_timeout() {
    let api = FakeApiServer::start_in_thread().unwrap();
    api.hang_writes(EVENTS, true);
    let rt = runtime();
    // kube's client needs a runtime around it when it is made.
    let _in_rt = rt.enter();
    let started = Instant::now();
    let post = rt.spawn(k8s_events::post_node_warning_within(
        client(&api),
        "node-a".into(),
        k8s_events::NodeWarning {
            action: "RemoveConntrackEntries",
            reason: "GhostbusterCircuitOpen",
            note: "stopped removing".into(),
        },
        Duration::from_millis(300),
    ));
    rt.block_on(async {
        assert!(creates_reached(&api, 1).await, "the Event was never posted");
        tokio::time::timeout(Duration::from_secs(3), post)
            .await
            .expect("the Node Event's post still hangs 3 s after the API server went silent")
            .unwrap();
    });
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(api.events().is_empty());
}
