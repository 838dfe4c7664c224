//! Reads the [`Facts`] the checks need: the namespace's conntrack sysctls, its entry count, the
//! CPU count and kube-proxy's mode. The CLI's `audit` and the agent (at start and every ten
//! minutes) both gather through here.

use std::time::Duration;

use super::{host, sysctl, Facts};
use crate::kube_proxy::{self, HttpUrl};

/// How long kube-proxy gets to connect and to answer.
const KUBE_PROXY_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads everything the checks need in `netns` (`None`: the caller's namespace), asking
/// kube-proxy's mode at `kube_proxy_mode` (unknown when it does not answer within a second).
/// Fails only when the sysctls cannot be read: no conntrack in the kernel, or a namespace that
/// cannot be entered.
pub fn gather(netns: Option<&str>, kube_proxy_mode: &HttpUrl) -> Result<Facts, sysctl::Error> {
    let reading = sysctl::read(netns)?;
    for (key, why) in &reading.unreadable {
        tracing::warn!("could not read net.netfilter.{key}: {why}; reporting it as absent");
    }
    // The count over netlink (what `conntrack -C` reads); without CAP_NET_ADMIN fall back to the
    // namespace's nf_conntrack_count sysctl, which holds the same number.
    let netlink = ctnetlink::Conntrack::open_in(netns).and_then(|mut ct| ct.stats());
    let peak_entries = match netlink {
        Ok(g) => Some(u64::from(g.entries)),
        Err(e) => {
            let fallback = reading.values.get("nf_conntrack_count").copied();
            if fallback.is_some() {
                tracing::debug!("entry count over netlink failed ({e}); using nf_conntrack_count");
            } else {
                tracing::warn!(
                    "could not read the entry count ({e}); table utilization is not checked"
                );
            }
            fallback
        }
    };
    let kube_proxy_mode = match kube_proxy::proxy_mode_blocking(kube_proxy_mode, KUBE_PROXY_TIMEOUT)
    {
        Ok(m) => Some(m),
        Err(why) => {
            tracing::debug!("kube-proxy mode unknown: {why}");
            None
        }
    };
    Ok(Facts {
        sysctls: reading.values,
        cpus: host::cpus(),
        peak_entries,
        proc_stat: reading.proc_stat,
        kube_proxy_mode,
    })
}
