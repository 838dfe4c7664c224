//! Setups the `scan_kernel*` stories share: the ghost-and-healthy opening of a removal story, UDP
//! backends and Services, and a resolver that queries a frontend.
//!
//! Each helper does what the stories did inline, in the same order, with the same bounded waits
//! and the same assertions; a story keeps its own checks of what the sweep did.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlab::plan::vip_v4;
use netlab::{
    ClientReport, DeletedPod, Endpoint, Lab, PodSpec, ServerSpec, Service, ServicePort, TcpPool,
    UdpClient, UdpConfig,
};

use super::{expect_answers, expect_hang, mark, v4, Story, HTTP};

/// The pools of a ghost story once the failure has been shown: `ghosts` hung (`hung`), `healthy`
/// answering (`before`, their report before any sweep).
pub struct Ghosted {
    pub ghosts: Vec<TcpPool>,
    pub hung: Vec<ClientReport>,
    pub healthy: Vec<TcpPool>,
    pub before: Vec<ClientReport>,
}

impl Ghosted {
    /// The story of a single ghost pool and a single healthy one:
    /// `(ghost, hung, healthy, before)`.
    pub fn single(mut self) -> (TcpPool, ClientReport, TcpPool, ClientReport) {
        assert_eq!(self.ghosts.len(), 1, "one ghost pool");
        assert_eq!(self.healthy.len(), 1, "one healthy pool");
        (
            self.ghosts.remove(0),
            self.hung.remove(0),
            self.healthy.remove(0),
            self.before.remove(0),
        )
    }
}

impl Story {
    /// The opening of a removal story. The Service is `from` and the pools `open` gives answer
    /// through it (the ghosts); a rolling update moves it to `to`; `vanish` makes the old backend
    /// die without a RST (deleted or silenced, like a pod on a dead node); the pools `open` gives
    /// now answer through `to` (the healthy ones). The failure first: for `observe`, every one of
    /// the `connections` of each ghost pool hangs; the healthy pools are marked.
    pub fn ghosts_with(
        &mut self,
        [from, to]: [&Service; 2],
        open: impl Fn(&str) -> Vec<TcpPool>,
        connections: usize,
        vanish: impl FnOnce(&mut Lab),
        observe: Duration,
    ) -> Ghosted {
        self.lab.sync_services(std::slice::from_ref(from)).unwrap();
        let ghosts = open(&self.client);
        for g in &ghosts {
            expect_answers(g, 2, "ghost pool");
        }
        self.lab.sync_services(std::slice::from_ref(to)).unwrap();
        vanish(&mut self.lab);
        let healthy = open(&self.client);
        for h in &healthy {
            expect_answers(h, 2, "healthy pool");
        }
        let hung = ghosts
            .iter()
            .map(|g| expect_hang(g, connections, observe))
            .collect();
        let before = healthy.iter().map(mark).collect();
        Ghosted {
            ghosts,
            hung,
            healthy,
            before,
        }
    }

    /// [`Story::ghosts_with`] for one pool of `connections` to `target`, and `web-a` deleted:
    /// `(ghost, hung, healthy, before)`.
    pub fn ghost(
        &mut self,
        switch: [&Service; 2],
        target: SocketAddr,
        connections: usize,
        observe: Duration,
    ) -> (TcpPool, ClientReport, TcpPool, ClientReport) {
        self.ghosts_with(
            switch,
            |c| vec![super::pool(c, target, connections)],
            connections,
            delete("web-a"),
            observe,
        )
        .single()
    }

    /// The two backends most stories start from: `web-a` and `web-b` of `shop/web`, HTTP only.
    pub fn web_pair(&mut self) -> (Vec<Endpoint>, Vec<Endpoint>) {
        let a = self.backend("web-a", "shop", "web", &[]);
        let b = self.backend("web-b", "shop", "web", &[]);
        (a, b)
    }

    /// Seed 003's newcomer: `billing-0` of `billing/billing` (answers 404) gets the IPv4 address
    /// of the `dead` pod; its ready endpoints.
    pub fn takes_over(&mut self, dead: &DeletedPod) -> Vec<Endpoint> {
        let IpAddr::V4(dead_v4) = dead.ips[0] else {
            panic!("IPv4 first")
        };
        self.lab
            .add_pod(
                PodSpec::backend("billing-0")
                    .in_namespace("billing")
                    .label("app", "billing")
                    .with_ipv4(dead_v4)
                    .serve(ServerSpec::http(HTTP, 404, "billing-0")),
            )
            .unwrap()
            .endpoints()
    }

    /// [`Story::backend`] `name` (`app: <app>` in `ns`) plus a UDP echo on `port` that answers
    /// with its name.
    pub fn udp_backend(&mut self, name: &str, ns: &str, app: &str, port: u16) -> Vec<Endpoint> {
        self.backend(name, ns, app, &[ServerSpec::udp_echo(port, name)])
    }

    /// A resolver in the client pod querying `target` ([`querier_config`]), once it had three
    /// answers.
    pub fn querier(&self, target: SocketAddr) -> UdpClient {
        let querier = UdpClient::start(&self.client, target, querier_config()).unwrap();
        assert!(
            querier.wait_answers(3, super::TIMEOUT),
            "{:#?}",
            querier.report()
        );
        querier
    }
}

/// For [`Story::ghosts_with`]: pod `name` is deleted silently (its node died; no RST, no ICMP).
pub fn delete(name: &str) -> impl FnOnce(&mut Lab) + '_ {
    move |lab| {
        lab.delete_pod_silently(name).unwrap();
    }
}

/// Waits until `querier` had three more answers; fails with its report otherwise.
pub fn expect_more_answers(querier: &UdpClient) {
    let before = querier.report();
    assert!(
        querier.wait_answers(before.answers + 3, super::TIMEOUT),
        "{:#?}",
        querier.report()
    );
}

/// A resolver's socket: one query every 50 ms, 200 ms to answer, bounded to 30 s.
pub fn querier_config() -> UdpConfig {
    UdpConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        run_for: Duration::from_secs(30),
        ..UdpConfig::default()
    }
}

/// Service `ns/name` at ClusterIP `vip_v4(vip)` with the one port `port`, and the IPv4
/// endpoints of `eps`.
pub fn service(ns: &str, name: &str, vip: u8, port: ServicePort, eps: &[Endpoint]) -> Service {
    Service::new(ns, name)
        .cluster_ip(vip_v4(vip))
        .port(port)
        .endpoints(v4(eps))
}
