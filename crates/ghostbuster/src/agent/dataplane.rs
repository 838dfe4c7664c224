//! The dataplane actor (`kube-proxy-mode`): reads kube-proxy's mode and looks for the IPVS link,
//! at start and every `--kube-proxy-mode-interval`. kube-proxy's mode can change under a running
//! agent (a ConfigMap edit and a restart), and IPVS must turn the agent to report-only without
//! waiting for the agent's own restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::supervisor::{Actor, Shutdown};
use crate::kube_proxy::KubeProxy;

/// Why the agent only reports on this dataplane, when it must (`None`: it may act).
pub type Dataplane = Arc<Mutex<Option<String>>>;

/// Starts the probe; the first reading is made before this returns, so that the reactor never
/// acts on a dataplane nobody looked at.
pub async fn spawn(
    kube_proxy: KubeProxy,
    netns: Option<String>,
    every: Duration,
    mut shutdown: Shutdown,
) -> (Dataplane, Actor) {
    let dataplane: Dataplane = Arc::default();
    probe_dataplane(&kube_proxy, netns.clone(), &dataplane).await;
    let every = every.max(Duration::from_millis(100));
    let d = dataplane.clone();
    let actor = Actor::task("kube-proxy-mode", async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            probe_dataplane(&kube_proxy, netns.clone(), &d).await;
        }
    });
    (dataplane, actor)
}

/// Why ghostbuster must only report on this dataplane, if it must: kube-proxy in IPVS mode (its
/// `/proxyMode`, or the `kube-ipvs0` link it leaves). `mode`: the answer of `/proxyMode`, `None`
/// when it could not be read; then the link alone decides, and without it the previous verdict
/// stands (an unreadable endpoint is no news about the mode).
fn dataplane_hold(ipvs_link: bool, mode: Option<&str>, previous: Option<&str>) -> Option<String> {
    if ipvs_link || mode == Some("ipvs") {
        return Some(
            "kube-proxy runs in IPVS mode: IPVS recreates conntrack entries, so ghostbuster only \
             reports"
                .to_string(),
        );
    }
    match mode {
        Some(_) => None,
        None => previous.map(str::to_owned),
    }
}

/// Reads kube-proxy's mode and the IPVS link, and updates `dataplane`, logging a change.
async fn probe_dataplane(kp: &KubeProxy, netns: Option<String>, dataplane: &Mutex<Option<String>>) {
    let ipvs_link = tokio::task::spawn_blocking(move || {
        crate::kube_proxy::ipvs_interface_present(netns.as_deref()).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    let mode = match kp.proxy_mode().await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(error = %e, "kube-proxy's mode is unknown");
            None
        }
    };
    let mut d = lock(dataplane);
    let next = dataplane_hold(ipvs_link, mode.as_deref(), d.as_deref());
    if next != *d {
        match &next {
            Some(why) => tracing::warn!(mode = ?mode, "{why}"),
            None => tracing::warn!(
                mode = ?mode,
                "kube-proxy's mode changed from IPVS: removing stale flows again"
            ),
        }
        *d = next;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::dataplane_hold;

    #[test]
    fn the_dataplane_hold_follows_the_mode_and_keeps_its_verdict_when_unknown() {
        assert!(dataplane_hold(false, Some("ipvs"), None).is_some());
        assert!(
            dataplane_hold(true, Some("nftables"), None).is_some(),
            "kube-ipvs0"
        );
        assert_eq!(dataplane_hold(false, Some("nftables"), Some("ipvs")), None);
        assert_eq!(dataplane_hold(false, Some("iptables"), None), None);
        assert_eq!(dataplane_hold(false, None, Some("x")).as_deref(), Some("x"));
        assert_eq!(dataplane_hold(false, None, None), None);
    }
}
