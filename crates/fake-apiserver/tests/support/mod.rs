//! Shared by the tests that drive the fake through a real `kube::Client`.

use std::fmt::Debug;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;

/// The bound on every wait.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn client(server: &FakeApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

/// A client's list-then-watch: lists with `lp`, watches with `wp` from the list's
/// resourceVersion and waits (bounded) until the fake holds that watch of `resource`. Returns
/// the resourceVersion and the events.
pub async fn list_then_watch<'a, K>(
    server: &FakeApiServer,
    api: &'a Api<K>,
    resource: &str,
    lp: &ListParams,
    wp: &WatchParams,
) -> (String, BoxStream<'a, kube::Result<WatchEvent<K>>>)
where
    K: Clone + DeserializeOwned + Debug + Send + 'static,
{
    let rv = api
        .list(lp)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let events = api.watch(wp, &rv).await.unwrap().boxed();
    assert!(server.wait_for_watches(resource, 1, WAIT).await);
    (rv, events)
}
