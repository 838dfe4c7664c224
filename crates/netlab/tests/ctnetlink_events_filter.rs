//! The conntrack event socket's kernel-side filter (a classic BPF program on the reply source)
//! against the real kernel, in throwaway namespaces: only the events of backends in the set
//! arrive, the set can be switched from another thread while a reader is blocked, the empty set
//! lets nothing through, IPv6 works, 500 addresses work, and removing the filter (or a set too
//! large for one program) delivers everything again.
//!
//! Entries are made with `Conntrack::create` (a CT_NEW with DNAT, so the reply source is the
//! backend). The kernel sends the NEW event while it handles the create, before it acknowledges
//! it: once `create` returns, each event is queued on our socket or was dropped by the filter.
//! Negative checks still end with a marker entry that must pass, received after everything
//! created before it.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ip, root_or_skip};
use ctnetlink::IPPROTO_TCP;
use ctnetlink::{Conntrack, EventGroups, EventKind, EventSocket, FilterApplied, NewFlow, Tuple};
use netlab::NetNs;

const A: &str = "203.0.113.10";
const B: &str = "203.0.113.20";
const A6: &str = "2001:db8:2::10";
const B6: &str = "2001:db8:2::20";

/// A DNAT'd TCP entry from a client port toward `backend` (behind a VIP of its family).
fn toward(backend: &str, client_port: u16) -> NewFlow {
    let b = ip(backend);
    let (client, vip) = if b.is_ipv4() {
        ("192.0.2.2", "198.51.100.10")
    } else {
        ("2001:db8:1::2", "2001:db8:3::10")
    };
    NewFlow::established(
        Tuple::ports(ip(client), client_port, ip(vip), 80, IPPROTO_TCP),
        Some((b, 8080)),
    )
}

/// An entry without NAT: its reply source is the original destination.
fn plain(client_port: u16) -> NewFlow {
    NewFlow::established(
        Tuple::ports(
            ip("192.0.2.3"),
            client_port,
            ip("198.51.100.53"),
            53,
            IPPROTO_TCP,
        ),
        None,
    )
}

/// (reply source, client port) of an event: what identifies the entries made here.
type Seen = BTreeSet<(IpAddr, u16)>;

fn key(nf: &NewFlow) -> (IpAddr, u16) {
    let reply_src = nf.dnat.map(|(b, _)| b).unwrap_or(nf.orig.dst);
    (reply_src, nf.orig.sport().unwrap_or(0))
}

fn keys(flows: &[NewFlow]) -> Seen {
    flows.iter().map(key).collect()
}

struct Lab {
    ns: NetNs,
    ct: Conntrack,
    ev: EventSocket,
}

impl Lab {
    fn new() -> Lab {
        let ns = NetNs::create("evf").unwrap();
        let ct = Conntrack::open_in(Some(ns.name())).unwrap();
        let ev = EventSocket::open_in(Some(ns.name()), EventGroups::NEW, 1 << 20).unwrap();
        ev.set_timeout(Some(Duration::from_millis(200))).unwrap();
        Lab { ns, ct, ev }
    }

    fn create(&mut self, flows: &[NewFlow]) {
        let s = self.ct.create(flows).unwrap();
        assert_eq!(s.created, flows.len() as u64, "{s:?}");
    }

    /// Creates `flows`, then `marker` (which must pass the filter), and returns every NEW event
    /// received up to and including the marker's. Bounded by 5 s.
    fn events_until(&mut self, flows: &[NewFlow], marker: NewFlow) -> Seen {
        self.create(flows);
        self.create(&[marker]);
        let want = key(&marker);
        let mut seen = Seen::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !seen.contains(&want) {
            self.ev
                .recv(|k, f| {
                    if k == EventKind::New {
                        seen.insert((f.reply.src, f.orig.sport().unwrap_or(0)));
                    }
                })
                .unwrap();
        }
        assert!(
            seen.contains(&want),
            "marker {want:?} never arrived: {seen:?}"
        );
        seen
    }

    /// Creates `flows` and returns what arrives within `quiet` (for sets nothing can pass).
    fn events_within(&mut self, flows: &[NewFlow], quiet: Duration) -> Seen {
        self.create(flows);
        let mut seen = Seen::new();
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            self.ev
                .recv(|k, f| {
                    if k == EventKind::New {
                        seen.insert((f.reply.src, f.orig.sport().unwrap_or(0)));
                    }
                })
                .unwrap();
        }
        seen
    }
}

#[test]
fn only_the_backends_in_the_set_arrive() {
    if !root_or_skip("only_the_backends_in_the_set_arrive") {
        return;
    }
    let mut lab = Lab::new();
    let applied = lab.ev.set_reply_src_filter([ip(A)]).unwrap();
    assert!(
        matches!(applied, FilterApplied::Filtered { .. }),
        "{applied:?}"
    );
    let to_a: Vec<NewFlow> = (0..3).map(|i| toward(A, 40000 + i)).collect();
    let others: Vec<NewFlow> = (0..3)
        .map(|i| toward(B, 41000 + i))
        .chain((0..3).map(|i| plain(42000 + i)))
        .chain([toward(A6, 43000)])
        .collect();
    let mut mixed = others.clone();
    mixed.splice(1..1, to_a.clone());
    let marker = toward(A, 49999);
    let seen = lab.events_until(&mixed, marker);
    let mut want = keys(&to_a);
    want.insert(key(&marker));
    assert_eq!(
        seen, want,
        "only A's entries (and the marker, toward A) arrive"
    );
}

#[test]
fn switching_the_set_from_another_thread_while_a_reader_is_blocked() {
    if !root_or_skip("switching_the_set_from_another_thread_while_a_reader_is_blocked") {
        return;
    }
    let Lab { ns, mut ct, mut ev } = Lab::new();
    ev.set_reply_src_filter([ip(A)]).unwrap();
    let handle = ev.filter_handle();
    // The reader blocks in recv for up to 10 s at a time: nothing else wakes it.
    ev.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let (tx, rx) = mpsc::channel::<(IpAddr, u16)>();
    let reader = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stop = false;
        while !stop && Instant::now() < deadline {
            let r = ev.recv(|k, f| {
                if k == EventKind::New {
                    let port = f.orig.sport().unwrap_or(0);
                    stop |= port == 0 || tx.send((f.reply.src, port)).is_err() || port == 59999;
                }
            });
            if r.is_err() {
                break;
            }
        }
    });
    let next = |n: usize| -> Seen {
        (0..n)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(5))
                    .expect("an event within 5 s")
            })
            .collect()
    };
    // Phase 1, filter {A}: A's entries arrive, B's do not.
    let one = [
        toward(B, 50000),
        toward(A, 50001),
        toward(B, 50002),
        toward(A, 50003),
    ];
    assert_eq!(ct.create(&one).unwrap().created, 4);
    assert_eq!(next(2), keys(&[one[1], one[3]]));
    // The reader is back in recv, blocked: switch the set under it.
    std::thread::sleep(Duration::from_millis(200));
    let applied = handle.set([ip(B)]).unwrap();
    assert!(matches!(applied, FilterApplied::Filtered { .. }));
    // Phase 2, filter {B}: the next events are B's only. The last one stops the reader.
    let two = [
        toward(A, 51000),
        toward(B, 51001),
        toward(A, 51002),
        toward(B, 59999),
    ];
    assert_eq!(ct.create(&two).unwrap().created, 4);
    assert_eq!(next(2), keys(&[two[1], two[3]]));
    reader.join().unwrap();
    assert!(
        rx.try_recv().is_err(),
        "nothing but B's entries after the switch"
    );
    // The handle outlives the socket harmlessly: updates then fail with a clear error.
    let e = handle.set([ip(A)]).unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
    drop(ns);
}

#[test]
fn the_empty_set_lets_nothing_through() {
    if !root_or_skip("the_empty_set_lets_nothing_through") {
        return;
    }
    let mut lab = Lab::new();
    lab.ev.set_reply_src_filter([]).unwrap();
    let flows = [
        toward(A, 40000),
        toward(B, 40001),
        toward(A6, 40002),
        plain(40003),
    ];
    let seen = lab.events_within(&flows, Duration::from_millis(600));
    assert!(seen.is_empty(), "{seen:?}");
    // Not a dead socket: a set with A lets A's next entry through, and only it.
    lab.ev.set_reply_src_filter([ip(A)]).unwrap();
    let marker = toward(A, 49999);
    let seen = lab.events_until(&[toward(B, 40004)], marker);
    assert_eq!(seen, keys(&[marker]));
}

#[test]
fn ipv6_backends_in_the_set_arrive_others_do_not() {
    if !root_or_skip("ipv6_backends_in_the_set_arrive_others_do_not") {
        return;
    }
    let mut lab = Lab::new();
    lab.ev.set_reply_src_filter([ip(A6), ip(A)]).unwrap();
    let flows = [
        toward(B6, 40000),
        toward(A6, 40001),
        toward("2001:db8:2::1:10", 40002),
        toward("2001:db8:3::10", 40003),
        toward(B, 40004),
    ];
    let marker = toward(A6, 49999);
    let seen = lab.events_until(&flows, marker);
    assert_eq!(seen, keys(&[flows[1], marker]));
}

#[test]
fn a_filter_of_500_addresses_works() {
    if !root_or_skip("a_filter_of_500_addresses_works") {
        return;
    }
    let mut lab = Lab::new();
    let set: Vec<IpAddr> = (1..=250u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)))
        .chain((1..=250u16).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, i))))
        .collect();
    assert_eq!(set.len(), 500);
    let applied = lab.ev.set_reply_src_filter(set.iter().copied()).unwrap();
    let FilterApplied::Filtered { instructions } = applied else {
        panic!("500 addresses must fit one program: {applied:?}");
    };
    eprintln!("500 addresses: {instructions} instructions");
    let pass = [
        toward("203.0.113.1", 40000),
        toward("203.0.113.128", 40001),
        toward("203.0.113.250", 40002),
        toward("2001:db8:2::1", 40003),
        toward("2001:db8:2::fa", 40004),
    ];
    let stop = [
        toward("203.0.113.251", 41000),
        toward("198.51.100.77", 41001),
        toward("2001:db8:2::fb", 41002),
        toward("2001:db8:2::1:1", 41003),
        plain(41004),
    ];
    let mut flows: Vec<NewFlow> = stop.to_vec();
    flows.extend(pass);
    let marker = toward("203.0.113.200", 49999);
    let seen = lab.events_until(&flows, marker);
    let mut want = keys(&pass);
    want.insert(key(&marker));
    assert_eq!(seen, want);
}

#[test]
fn removing_the_filter_or_a_set_too_large_delivers_everything() {
    if !root_or_skip("removing_the_filter_or_a_set_too_large_delivers_everything") {
        return;
    }
    let mut lab = Lab::new();
    lab.ev.set_reply_src_filter([ip(A)]).unwrap();
    let marker = toward(A, 49990);
    assert_eq!(
        lab.events_until(&[toward(B, 40000)], marker),
        keys(&[marker])
    );
    // Removed: everything arrives, entries without NAT too.
    lab.ev.clear_filter().unwrap();
    let flows = [toward(B, 40001), plain(40002), toward(B6, 40003)];
    let marker = toward(B, 49991);
    let mut want = keys(&flows);
    want.insert(key(&marker));
    assert_eq!(lab.events_until(&flows, marker), want);
    // Removing twice is fine.
    lab.ev.clear_filter().unwrap();
    // A set beyond the limit (1025 addresses) attaches no filter at all: everything arrives.
    let huge: Vec<IpAddr> = (0..=ctnetlink::bpf::MAX_ADDRESSES as u16)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, i)))
        .collect();
    lab.ev.set_reply_src_filter([ip(A)]).unwrap();
    let applied = lab.ev.filter_handle().set(huge).unwrap();
    assert_eq!(applied, FilterApplied::Unfiltered);
    let flows = [toward(B, 40004), plain(40005)];
    let marker = toward(B, 49992);
    let mut want = keys(&flows);
    want.insert(key(&marker));
    assert_eq!(lab.events_until(&flows, marker), want);
}
