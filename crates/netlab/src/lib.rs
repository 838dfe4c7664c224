//! netlab: real Kubernetes-shaped networks in throwaway network namespaces, for ghostbuster's
//! tests, benchmarks and `ghostbuster demo`.
//!
//! A [`Lab`] is one "node" namespace that forwards and holds DNAT rules shaped after kube-proxy's
//! nftables proxier ([`kube_proxy`]) or, with [`ProxyMode::Iptables`], its iptables proxier
//! ([`kube_proxy_iptables`]), plus "pod" namespaces attached to it with point-to-point veths (Calico
//! style). Pods run in-process servers ([`server`]); clients ([`client`]) hold pools of long-lived
//! connections through Service VIPs and report every error and stall. A pod can vanish silently
//! (packets dropped, no RST, no ICMP) so a pooled connection hangs like the ghosts in the seeds,
//! and its IP can be reused by a pod of another service. [`bulk`] fills a namespace's conntrack
//! table with synthetic, cluster-shaped DNAT entries and writes the ground truth.
//!
//! The proxy mode is [`ProxyConfig::mode`]: nftables unless the environment variable
//! `GB_LAB_PROXY_MODE=iptables` ([`kube_proxy::PROXY_MODE_ENV`]) changes the default, which is
//! how the existing kernel tests run against iptables-mode rules. Both modes produce the same
//! conntrack entries (DST_NAT, reply from the pod), so ghosts look alike.
//!
//! Everything needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` (iproute2) and `nft`
//! (nftables); the iptables mode also needs `iptables-restore` (Debian's `iptables`, the
//! nf_tables flavour by default), run inside the node namespace. Namespaces are named `gbt-<pid>-<seq>-<role>`, are deleted on drop (also while
//! unwinding from a panic) and leftovers of dead processes are removed by
//! [`cleanup_leftovers`], which [`Lab::new`] calls first. Addresses come only from documentation
//! ranges ([`plan`]).
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use netlab::{plan, Lab, PodSpec, Service, ServicePort, ServerSpec, TcpPool, TcpPoolConfig};
//!
//! let mut lab = Lab::new()?;
//! let a = lab.add_pod(PodSpec::backend("web-a").serve(ServerSpec::http(8080, 200, "web-a")))?.endpoints();
//! let client = lab.add_pod(PodSpec::client("client"))?.netns().to_string();
//! let vip = plan::vip_v4(10);
//! let web = Service::new("default", "web").cluster_ip(vip).port(ServicePort::tcp("http", 80, 8080));
//! lab.sync_services(&[web.clone().endpoints(a)])?;
//! let pool = TcpPool::start(&client, SocketAddr::from((vip, 80)), TcpPoolConfig::default())?;
//! pool.wait_answers(1, Duration::from_secs(2));
//! lab.delete_pod_silently("web-a")?; // the pooled connections now hang
//! # Ok::<(), netlab::Error>(())
//! ```

pub mod bulk;
mod chain_name;
pub mod client;
mod command;
pub mod error;
pub mod k8s;
pub mod kube_proxy;
pub mod kube_proxy_iptables;
mod lab;
mod link;
pub mod model;
pub mod node;
pub mod ns;
pub mod plan;
pub mod pod;
mod poll;
pub mod sctp;
pub mod server;
pub mod sync_proxy;

pub use client::{
    http_get, udp_query, AppProtocol, ClientReport, HttpAnswer, TcpPool, TcpPoolConfig, UdpClient,
    UdpConfig,
};
pub use error::{Error, Result};
pub use kube_proxy::{KubeProxy, ProxyConfig, ProxyMode};
pub use lab::{DeletedPod, Lab};
pub use model::{Endpoint, Protocol, Service, ServicePort};
pub use node::Node;
pub use ns::{cleanup_leftovers, cleanup_own, in_netns, spawn_in_netns, NetNs, NsThread};
pub use pod::{Pod, PodSpec};
pub use server::{Server, ServerKind, ServerSpec, ServerStats};
pub use sync_proxy::{SyncPlan, SyncRecord, SyncingProxy};

/// Checks what every lab needs before touching anything: root, `ip` (iproute2) and `nft`
/// (nftables). The error names the exact install command.
pub fn preflight() -> Result<()> {
    if !is_root() {
        return Err(Error::NotRoot);
    }
    command::run("ip", &["-V"], None)?;
    command::run("nft", &["--version"], None)?;
    Ok(())
}

/// [`preflight`] plus the tools of `mode`: `iptables-restore` and `ip6tables-restore` for
/// [`ProxyMode::Iptables`].
pub fn preflight_mode(mode: ProxyMode) -> Result<()> {
    preflight()?;
    if mode == ProxyMode::Iptables {
        command::run("iptables-restore", &["--version"], None)?;
        command::run("ip6tables-restore", &["--version"], None)?;
    }
    Ok(())
}

/// True when running as root (uid 0). Tests use it to decide whether to skip (outside CI) or fail
/// (in CI, where a missing capability is an error).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
