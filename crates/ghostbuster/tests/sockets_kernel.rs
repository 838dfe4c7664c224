//! Ending a removed ghost's client socket (`crate::sockets`, `agent --terminate-sockets`) on the
//! real kernel: a lab node with kube-proxy-shaped DNAT, a client pod whose namespace is pinned
//! under /run/netns (as containerd pins a sandbox's), real sockets blocked in `read()`.
//!
//! What must hold: a reader blocked on a ghost returns `ECONNABORTED` within 1 s of the ending;
//! without it (the entry removed, nothing else) it stays blocked; a healthy neighbour socket to
//! the same Service is untouched; an unconnected UDP socket (a resolver's, a DNS server's) is
//! never ended — only a connected one.
//!
//! Kernel tests need root: outside CI they skip with a printed reason, in CI (`CI` set) they fail.

mod scan_support;

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use ctnetlink::{Conntrack, DeleteKey, Filter, Flow};
use ghostbuster::sockets::{Ended, Terminator};
use netlab::plan::vip_v4;
use netlab::{Endpoint, ServerSpec, Service, ServicePort};
use scan_support::*;

/// The node's conntrack entry whose original source is `client` (the client socket's address).
fn flow_from(node: &str, client: SocketAddr) -> Flow {
    let mut ct = Conntrack::open_in(Some(node)).expect("conntrack in the node namespace");
    let mut found = None;
    ct.dump(&Filter::new(), |f| {
        if f.orig.src == client.ip() && f.orig.sport() == Some(client.port()) {
            found = Some(*f);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .expect("dump");
    found.unwrap_or_else(|| panic!("no entry from {client}"))
}

fn delete(node: &str, f: &Flow) {
    let mut ct = Conntrack::open_in(Some(node)).expect("conntrack");
    ct.delete(&[DeleteKey::from(f)]).expect("delete");
}

fn web(eps: &[Endpoint]) -> Service {
    Service::new("shop", "web")
        .cluster_ip(vip_v4(30))
        .port(ServicePort::tcp("http", 80, HTTP))
        .endpoints(v4(eps))
}

/// The ghost's reader returns at once with the ending, not without it; the neighbour to the same
/// Service (and backend) keeps working; a second ending finds no socket.
#[test]
fn a_reader_blocked_on_a_ghost_gets_econnaborted_and_its_neighbour_is_untouched() {
    let Some(mut s) = Story::start("sockets_tcp_reader", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    s.lab.sync_services(&[web(&a)]).unwrap();
    let vip = SocketAddr::from((vip_v4(30), 80));
    let node = s.node();

    // Three connections through the Service, each answered once (so each is ESTABLISHED and
    // known to conntrack): the ghost, the control (its entry removed, nothing else) and the
    // neighbour.
    let mut streams: Vec<TcpStream> = (0..3).map(|_| connect(&s.client, vip)).collect();
    for st in &mut streams {
        assert_eq!(http_request(st, TIMEOUT).expect("answered"), "web-a");
    }
    let mut neighbour = streams.pop().unwrap();
    let control = streams.pop().unwrap();
    let ghost = streams.pop().unwrap();
    let ghost_flow = flow_from(&node, ghost.local_addr().unwrap());
    let control_flow = flow_from(&node, control.local_addr().unwrap());
    assert!(ghost_flow.is_dnat(), "{ghost_flow:?}");

    // The backend vanishes silently: both readers wait on it.
    s.lab.delete_pod_silently("web-a").unwrap();
    let ghost_reader = BlockedReader::tcp(ghost);
    let control_reader = BlockedReader::tcp(control);

    // Without the ending the control's reader stays blocked though its entry is gone.
    delete(&node, &control_flow);
    assert!(
        Conntrack::open_in(Some(&node))
            .unwrap()
            .get(&[DeleteKey::from(&control_flow)])
            .unwrap()
            .iter()
            .all(|l| !matches!(l, ctnetlink::Lookup::Found(_))),
        "the control's entry was removed"
    );

    // With it the ghost's reader returns ECONNABORTED at once.
    delete(&node, &ghost_flow);
    let mut terminator = Terminator::new(Some(node.clone()));
    let ended_at = Instant::now();
    assert_eq!(terminator.end(&ghost_flow), Ended::Destroyed);
    expect_aborted(&ghost_reader, ended_at, "the ghost's reader");
    assert!(
        control_reader
            .returned_within(Duration::from_secs(2))
            .is_none(),
        "the control's reader returned without an ending: its socket was touched"
    );

    // Ending it again finds nothing; the neighbour's socket is still there (its backend is gone
    // too, so it is not asked to answer: its socket must simply still be open and connected).
    assert_eq!(terminator.end(&ghost_flow), Ended::NoSocket);
    let b = s.backend("web-b", "shop", "web", &[]);
    s.lab.sync_services(&[web(&b)]).unwrap();
    let mut fresh = connect(&s.client, vip);
    assert_eq!(
        http_request(&mut fresh, TIMEOUT).expect("answered"),
        "web-b"
    );
    assert!(
        neighbour.peer_addr().is_ok(),
        "the neighbour was disconnected"
    );
    neighbour.set_nonblocking(true).unwrap();
    let e = neighbour
        .read(&mut [0u8; 8])
        .expect_err("no data and not closed");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "the neighbour: {e}");
}

/// UDP: a connected socket's reader is ended; an unconnected socket that sent the same kind of
/// query (its entry removed the same way) is left alone and still gets answers.
#[test]
fn only_a_connected_udp_socket_is_ended() {
    let Some(mut s) = Story::start("sockets_udp", false) else {
        return;
    };
    let a = s.dns_backend("dns-a");
    s.lab.sync_services(&[dns_service(31, &a)]).unwrap();
    let dns = SocketAddr::from((vip_v4(31), 53));
    let node = s.node();

    let (connected, unconnected) = netlab::in_netns(&s.client, move || {
        let c = UdpSocket::bind("0.0.0.0:0")?;
        c.connect(dns)?;
        let u = UdpSocket::bind("0.0.0.0:0")?;
        io::Result::Ok((c, u))
    })
    .expect("enter namespace")
    .expect("sockets");
    for sock in [&connected, &unconnected] {
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    }
    connected.send(b"q").unwrap();
    unconnected.send_to(b"q", dns).unwrap();
    let mut buf = [0u8; 64];
    let n = connected
        .recv(&mut buf)
        .expect("answer to the connected socket");
    assert!(buf[..n].starts_with(b"dns-a"));
    let (n, _) = unconnected
        .recv_from(&mut buf)
        .expect("answer to the unconnected socket");
    assert!(buf[..n].starts_with(b"dns-a"));
    let local = |sock: &UdpSocket| {
        let port = sock.local_addr().unwrap().port();
        SocketAddr::new(client_ip(&s), port)
    };
    let connected_flow = flow_from(&node, local(&connected));
    let unconnected_flow = flow_from(&node, local(&unconnected));

    let reader = BlockedReader::udp(connected);
    let mut terminator = Terminator::new(Some(node.clone()));
    delete(&node, &unconnected_flow);
    assert_eq!(terminator.end(&unconnected_flow), Ended::Unconnected);
    delete(&node, &connected_flow);
    let ended_at = Instant::now();
    assert_eq!(terminator.end(&connected_flow), Ended::Destroyed);
    expect_aborted(&reader, ended_at, "the connected UDP reader");

    // The unconnected socket still sends and gets answers (from a new backend, too).
    let b = s.dns_backend("dns-b");
    s.lab.sync_services(&[dns_service(31, &b)]).unwrap();
    unconnected.send_to(b"q", dns).unwrap();
    let (n, _) = unconnected
        .recv_from(&mut buf)
        .expect("the unconnected socket still works");
    assert!(buf[..n].starts_with(b"dns-b"));
}

/// A flow whose client address no namespace of this node holds (a client on another node) ends
/// nothing.
#[test]
fn a_client_on_another_node_is_not_looked_for() {
    let Some(mut s) = Story::start("sockets_elsewhere", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[ServerSpec::udp_echo(5353, "x")]);
    s.lab.sync_services(&[web(&a)]).unwrap();
    let vip = SocketAddr::from((vip_v4(30), 80));
    let mut st = connect(&s.client, vip);
    assert_eq!(http_request(&mut st, TIMEOUT).expect("answered"), "web-a");
    let mut f = flow_from(&s.node(), st.local_addr().unwrap());
    // The same flow as if its client were 203.0.113.77, an address no namespace here holds.
    let elsewhere: IpAddr = "203.0.113.77".parse().unwrap();
    f.orig.src = elsewhere;
    f.reply.dst = elsewhere;
    let mut terminator = Terminator::new(Some(s.node()));
    assert_eq!(terminator.end(&f), Ended::NoNamespace);
    // The real client's socket is untouched and still answered.
    assert_eq!(http_request(&mut st, TIMEOUT).expect("answered"), "web-a");
}

/// The client pod's address (the source of its flows).
fn client_ip(s: &Story) -> IpAddr {
    IpAddr::V4(
        s.lab
            .pod("client")
            .expect("client pod")
            .ipv4()
            .expect("an IPv4 address"),
    )
}

/// A connected UDP socket whose next query already found a live backend after the ghost's
/// removal (its tuple has a new, answered entry) is left alone: it works again.
#[test]
fn a_socket_whose_tuple_found_a_live_backend_again_is_left_alone() {
    let Some(mut s) = Story::start("sockets_recovered", false) else {
        return;
    };
    let a = s.dns_backend("dns-a");
    s.lab.sync_services(&[dns_service(32, &a)]).unwrap();
    let dns = SocketAddr::from((vip_v4(32), 53));
    let node = s.node();
    let sock = netlab::in_netns(&s.client, move || {
        let c = UdpSocket::bind("0.0.0.0:0")?;
        c.connect(dns)?;
        io::Result::Ok(c)
    })
    .expect("enter namespace")
    .expect("socket");
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    sock.send(b"q").unwrap();
    let n = sock.recv(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"dns-a"));
    let ghost = flow_from(&node, sock.local_addr().unwrap());

    // The rolling update: dns-b serves, dns-a vanishes, the ghost entry is removed, and the
    // client's next query is DNAT'd to dns-b and answered before the ending comes.
    let b = s.dns_backend("dns-b");
    s.lab.sync_services(&[dns_service(32, &b)]).unwrap();
    s.lab.delete_pod_silently("dns-a").unwrap();
    delete(&node, &ghost);
    sock.send(b"q").unwrap();
    let n = sock.recv(&mut buf).expect("answer from the new backend");
    assert!(buf[..n].starts_with(b"dns-b"));

    let mut terminator = Terminator::new(Some(node.clone()));
    assert_eq!(terminator.end(&ghost), Ended::Recovered);
    sock.send(b"q").unwrap();
    let n = sock.recv(&mut buf).expect("the socket still works");
    assert!(buf[..n].starts_with(b"dns-b"));
}

/// A client on the host itself (the node's namespace, as with hostNetwork): its socket is found
/// in the node's namespace and ended.
#[test]
fn a_host_client_is_ended_in_the_nodes_namespace() {
    let Some(mut s) = Story::start("sockets_host", false) else {
        return;
    };
    let a = s.backend("web-a", "shop", "web", &[]);
    s.lab.sync_services(&[web(&a)]).unwrap();
    let vip = SocketAddr::from((vip_v4(30), 80));
    let node = s.node();
    // The node needs a route for the Service address (a real node's default route): the output
    // path routes before kube-proxy's DNAT, then again to the pod.
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &node,
            "route",
            "replace",
            "198.51.100.30/32",
            "dev",
            "sink0",
        ])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "{out:?}");
    let mut host = connect(&node, vip);
    assert_eq!(http_request(&mut host, TIMEOUT).expect("answered"), "web-a");
    let ghost_flow = flow_from(&node, host.local_addr().unwrap());
    assert!(ghost_flow.is_dnat(), "{ghost_flow:?}");
    s.lab.delete_pod_silently("web-a").unwrap();
    let reader = BlockedReader::tcp(host);
    delete(&node, &ghost_flow);
    let mut terminator = Terminator::new(Some(node.clone()));
    let ended_at = Instant::now();
    assert_eq!(terminator.end(&ghost_flow), Ended::Destroyed);
    expect_aborted(&reader, ended_at, "the host client's reader");
}
