//! ctnetlink against the real kernel, inside throwaway namespaces: parse what was created,
//! exact deletes, kernel filters against user-space filters, statistics against `conntrack`,
//! events (and their loss). These live in netlab's tests because ctnetlink cannot depend on
//! netlab (a dev-dependency cycle would build two copies of ctnetlink).

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ip, root_or_skip};
use ctnetlink::{
    Conntrack, DeleteKey, DeleteOutcome, EventGroups, EventKind, EventSocket, Family, Filter, Flow,
    FlowUpdate, Lookup, NewFlow, Status, TcpState, Tuple, TupleMatch,
};
use ctnetlink::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use netlab::NetNs;

fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple::ports(ip(src), sport, ip(dst), dport, IPPROTO_TCP)
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple::ports(ip(src), sport, ip(dst), dport, IPPROTO_UDP)
}

fn orig_set(flows: &[Flow]) -> BTreeSet<String> {
    flows.iter().map(|f| format!("{:?}", f.orig)).collect()
}

/// A mixed table: IPv4 and IPv6, TCP/UDP/SCTP, DNAT'd and not, marks, two zones.
fn mixed_entries() -> Vec<NewFlow> {
    let mut v = Vec::new();
    for i in 0..40u16 {
        let backend = format!("203.0.113.{}", 1 + i % 5);
        let mut nf = NewFlow::established(
            tcp("192.0.2.2", 40000 + i, "198.51.100.10", 80),
            Some((ip(&backend), 8080)),
        );
        nf.mark = Some((i % 4) as u32);
        v.push(nf);
        let mut u = NewFlow::established(
            udp("192.0.2.3", 30000 + i, "198.51.100.53", 53),
            Some((ip(&backend), 5353)),
        );
        if i % 3 == 0 {
            u.status = Status::empty(); // unreplied
        }
        if i % 10 == 0 {
            u.zone = 7;
        }
        v.push(u);
        let backend6 = format!("2001:db8:2::{}", 1 + i % 5);
        v.push(NewFlow::established(
            tcp("2001:db8:1::2", 40000 + i, "2001:db8:3::10", 443),
            Some((ip(&backend6), 8443)),
        ));
        v.push(NewFlow::established(
            udp("2001:db8:1::3", 30000 + i, "2001:db8:3::53", 53),
            None,
        ));
    }
    v.push(NewFlow::established(
        Tuple::ports(
            ip("192.0.2.4"),
            3868,
            ip("198.51.100.20"),
            3868,
            IPPROTO_SCTP,
        ),
        Some((ip("203.0.113.9"), 3868)),
    ));
    v
}

#[test]
fn created_entries_parse_back_field_by_field() {
    if !root_or_skip("created_entries_parse_back_field_by_field") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    let mut nf = NewFlow::established(
        tcp("192.0.2.2", 40000, "198.51.100.10", 80),
        Some((ip("203.0.113.7"), 8080)),
    );
    nf.mark = Some(0x42);
    nf.timeout = 1234;
    let mut nf6 = NewFlow::established(
        tcp("2001:db8:1::2", 40001, "2001:db8:3::10", 443),
        Some((ip("2001:db8:2::7"), 8443)),
    );
    nf6.zone = 3;
    let syn = NewFlow::established(
        tcp("192.0.2.5", 40002, "198.51.100.10", 80),
        Some((ip("203.0.113.8"), 8080)),
    )
    .with_status(Status::empty())
    .with_tcp_state(TcpState::SYN_SENT);
    let s = ct.create(&[nf, nf6, syn]).unwrap();
    assert_eq!(s.created, 3, "{s:?}");
    let flows = ct.dump_vec(&Filter::default()).unwrap();
    assert_eq!(flows.len(), 3);
    let f4 = flows.iter().find(|f| f.orig == nf.orig).unwrap();
    assert_eq!(f4.family, Family::Ipv4);
    assert_eq!(f4.reply, tcp("203.0.113.7", 8080, "192.0.2.2", 40000));
    assert!(
        f4.is_dnat()
            && f4
                .status
                .contains(Status::ASSURED | Status::SEEN_REPLY | Status::CONFIRMED)
    );
    assert_eq!(f4.tcp_state, Some(TcpState::ESTABLISHED));
    assert_eq!(f4.mark, Some(0x42));
    assert!(f4.timeout.is_some_and(|t| t <= 1234 && t > 1200));
    assert!(f4.id.is_some());
    let f6 = flows.iter().find(|f| f.orig == nf6.orig).unwrap();
    assert_eq!(f6.family, Family::Ipv6);
    assert_eq!(f6.reply.src, ip("2001:db8:2::7"));
    assert_eq!(f6.reply.sport(), Some(8443));
    assert_eq!(f6.zone, 3);
    let fs = flows.iter().find(|f| f.orig == syn.orig).unwrap();
    assert!(fs.unreplied());
    assert_eq!(fs.state_name(), Some("SYN_SENT"));

    // conntrack -L sees the same entries the same way.
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "conntrack", "-L", "-f", "ipv4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("src=192.0.2.2 dst=198.51.100.10 sport=40000 dport=80"),
        "{text}"
    );
    assert!(
        text.contains("src=203.0.113.7 dst=192.0.2.2 sport=8080 dport=40000"),
        "{text}"
    );
    assert!(text.contains("mark=66"), "{text}");
}

#[test]
fn delete_with_an_old_id_never_hits_a_new_entry_with_the_same_tuple() {
    if !root_or_skip("delete_with_an_old_id_never_hits_a_new_entry_with_the_same_tuple") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    let nf = NewFlow::established(
        tcp("192.0.2.2", 40000, "198.51.100.10", 80),
        Some((ip("203.0.113.7"), 8080)),
    );
    ct.create(&[nf]).unwrap();
    let old = ct.dump_vec(&Filter::default()).unwrap()[0];
    assert_eq!(
        ct.delete(&[DeleteKey::from(&old)]).unwrap(),
        vec![DeleteOutcome::Deleted]
    );
    // The kernel's id is a hash of the entry's address and original tuple, so a new entry that
    // reuses both the tuple and the freed memory slot gets the same id (measured). In a real node
    // other connections take freed slots in between; model that with one unrelated entry.
    ct.create(&[NewFlow::established(
        tcp("192.0.2.99", 1, "198.51.100.99", 1),
        None,
    )])
    .unwrap();
    // The tuple is reused by a new connection (to another backend).
    let again = NewFlow::established(nf.orig, Some((ip("203.0.113.8"), 8080)));
    ct.create(&[again]).unwrap();
    let new = *ct
        .dump_vec(&Filter::default())
        .unwrap()
        .iter()
        .find(|f| f.orig == nf.orig)
        .unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(
        ct.delete(&[DeleteKey::from(&old)]).unwrap(),
        vec![DeleteOutcome::AlreadyGone]
    );
    let left = ct.dump_vec(&Filter::default()).unwrap();
    let survivor = left
        .iter()
        .find(|f| f.orig == nf.orig)
        .expect("the new entry must survive");
    assert_eq!(survivor.reply.src, ip("203.0.113.8"));
}

/// Pins the calling thread to one CPU (best effort): the conntrack slab hands a freed object back
/// to the next allocation on the same CPU, which is what makes ids repeat.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity(0, ..)
    // concerns only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpu = libc::sched_getcpu().max(0) as usize;
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Issue #12 §2: CTA_ID is a hash of the entry's address and *original* tuple, so a UDP entry
/// re-created with the same original tuple in the freed slot carries the same id even when
/// kube-proxy now sends it to another backend. A delete by original tuple + id then hits the
/// re-routed, healthy entry; a delete by reply tuple (it names the backend) + id cannot.
#[test]
fn a_stale_key_never_hits_a_rerouted_entry_with_the_same_id() {
    if !root_or_skip("a_stale_key_never_hits_a_rerouted_entry_with_the_same_id") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    pin_to_one_cpu();
    let orig = udp("192.0.2.2", 40000, "198.51.100.53", 53);
    let to_a = NewFlow::established(orig, Some((ip("203.0.113.7"), 5353)));
    let to_b = NewFlow::established(orig, Some((ip("203.0.113.8"), 5353)));
    let find = |ct: &mut Conntrack| {
        ct.dump_vec(&Filter::default())
            .unwrap()
            .into_iter()
            .find(|f| f.orig == orig)
    };
    // The slot is reused by the next allocation on the same CPU; a few attempts, bounded.
    let mut pair = None;
    for _ in 0..50 {
        assert_eq!(ct.create(&[to_a]).unwrap().created, 1);
        let old = find(&mut ct).expect("entry to A");
        assert_eq!(
            ct.delete(&[DeleteKey::from(&old)]).unwrap(),
            vec![DeleteOutcome::Deleted]
        );
        assert_eq!(ct.create(&[to_b]).unwrap().created, 1);
        let new = find(&mut ct).expect("entry to B");
        if new.id == old.id {
            pair = Some((old, new));
            break;
        }
        assert_eq!(
            ct.delete(&[DeleteKey::from(&new)]).unwrap(),
            vec![DeleteOutcome::Deleted]
        );
    }
    let (old, new) = pair.expect("the kernel never reused the id in 50 attempts");
    assert_eq!(new.reply.src, ip("203.0.113.8"));
    // The stale key (from the dump that saw A) must not touch B.
    assert_eq!(
        ct.delete(&[DeleteKey::from(&old)]).unwrap(),
        vec![DeleteOutcome::AlreadyGone],
        "a delete keyed on the flow to A hit the re-routed flow to B"
    );
    let survivor = find(&mut ct).expect("the re-routed entry to B must survive");
    assert_eq!((survivor.id, survivor.reply), (new.id, new.reply));
    // B's own key still removes it: the reply-tuple key is exact, not blind.
    assert_eq!(
        ct.delete(&[DeleteKey::from(&new)]).unwrap(),
        vec![DeleteOutcome::Deleted]
    );
    assert!(find(&mut ct).is_none());
}

/// Exact reads (one CT_GET per key, batched) see an entry as it is now: a half-open flow that got
/// its reply reads back replied and ESTABLISHED with the same id, a deleted one reads back gone.
#[test]
fn exact_reads_see_the_entry_as_it_is_now() {
    if !root_or_skip("exact_reads_see_the_entry_as_it_is_now") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    let half_open = |sport| {
        NewFlow::established(
            tcp("192.0.2.2", sport, "198.51.100.10", 80),
            Some((ip("203.0.113.7"), 8080)),
        )
        .with_status(Status::empty())
        .with_timeout(120)
        .with_tcp_state(TcpState::SYN_SENT)
    };
    // Enough keys for several batches (at least 16 per batch).
    let n = 3000u16;
    let flows: Vec<NewFlow> = (0..n).map(|i| half_open(20000 + i)).collect();
    assert_eq!(ct.create(&flows).unwrap().created, u64::from(n));
    let mut table = ct.dump_vec(&Filter::default()).unwrap();
    table.sort_by_key(|f| f.orig.sport());
    let keys: Vec<DeleteKey> = table.iter().map(DeleteKey::from).collect();
    // Entry 0 gets its reply; entry 1 is deleted.
    let first = table[0];
    let done = ct
        .update(&[FlowUpdate::new(keys[0])
            .with_status(first.status | Status::SEEN_REPLY | Status::ASSURED)
            .with_tcp_state(TcpState::ESTABLISHED)])
        .unwrap();
    assert_eq!(done, vec![None]);
    assert_eq!(
        ct.delete(&keys[1..2]).unwrap(),
        vec![DeleteOutcome::Deleted]
    );
    let now = ct.get(&keys).unwrap();
    assert_eq!(now.len(), keys.len());
    match now[0] {
        Lookup::Found(f) => {
            assert_eq!((f.id, f.orig, f.reply), (first.id, first.orig, first.reply));
            assert!(f.status.contains(Status::SEEN_REPLY));
            assert_eq!(f.tcp_state, Some(TcpState::ESTABLISHED));
        }
        other => panic!("entry 0: {other:?}"),
    }
    assert_eq!(now[1], Lookup::Gone);
    for (i, (was, is)) in table.iter().zip(&now).enumerate().skip(2) {
        let Lookup::Found(f) = is else {
            panic!("entry {i}: {is:?}")
        };
        assert_eq!((f.id, f.orig, f.reply), (was.id, was.orig, was.reply));
        assert!(!f.status.contains(Status::SEEN_REPLY));
    }
    // A change of an entry that is gone is refused, never a create.
    assert_eq!(
        ct.update(&[FlowUpdate::new(keys[1]).with_tcp_state(TcpState::ESTABLISHED)])
            .unwrap(),
        vec![Some(libc::ENOENT)]
    );
    assert_eq!(
        ct.dump_vec(&Filter::default()).unwrap().len(),
        n as usize - 1
    );
}

#[test]
fn deleting_n_among_m_removes_exactly_those() {
    if !root_or_skip("deleting_n_among_m_removes_exactly_those") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    let m = 6000u32;
    let entries: Vec<NewFlow> = (0..m)
        .map(|i| {
            let src = format!("192.0.2.{}", 1 + i / 60000);
            let dst = if i % 2 == 0 {
                "198.51.100.10"
            } else {
                "2001:db8:3::10"
            };
            let src = if i % 2 == 0 {
                src
            } else {
                "2001:db8:1::2".to_string()
            };
            let be = if i % 2 == 0 {
                "203.0.113.7"
            } else {
                "2001:db8:2::7"
            };
            NewFlow::established(
                Tuple::ports(
                    ip(&src),
                    1024 + (i % 60000) as u16,
                    ip(dst),
                    80,
                    IPPROTO_TCP,
                ),
                Some((ip(be), 8080)),
            )
        })
        .collect();
    let s = ct.create(&entries).unwrap();
    assert_eq!(s.created, m as u64, "{s:?}");
    let all = ct.dump_vec(&Filter::default()).unwrap();
    assert_eq!(all.len(), m as usize);
    let victims: Vec<Flow> = all
        .iter()
        .copied()
        .filter(|f| f.orig.sport().unwrap() % 3 == 0)
        .collect();
    let keys: Vec<DeleteKey> = victims.iter().map(DeleteKey::from).collect();
    let out = ct.delete(&keys).unwrap();
    assert!(
        out.iter().all(|o| *o == DeleteOutcome::Deleted),
        "every victim deleted"
    );
    let left = ct.dump_vec(&Filter::default()).unwrap();
    assert_eq!(left.len(), all.len() - victims.len());
    let left_set = orig_set(&left);
    assert!(victims
        .iter()
        .all(|v| !left_set.contains(&format!("{:?}", v.orig))));
    // Deleting them again: every one is already gone, nothing else is touched.
    let again = ct.delete(&keys).unwrap();
    assert!(again.iter().all(|o| *o == DeleteOutcome::AlreadyGone));
    assert_eq!(ct.dump_vec(&Filter::default()).unwrap().len(), left.len());
}

#[test]
fn kernel_filtered_dumps_equal_user_space_filtering() {
    if !root_or_skip("kernel_filtered_dumps_equal_user_space_filtering") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    let s = ct.create(&mixed_entries()).unwrap();
    assert_eq!(s.failed, 0, "{s:?}");
    let all = ct.dump_vec(&Filter::default()).unwrap();
    assert_eq!(all.len() as u64, s.created);
    let filters = [
        Filter::new().with_reply(TupleMatch::new().with_src(ip("203.0.113.3"))),
        Filter::new()
            .with_orig(
                TupleMatch::new()
                    .with_dst(ip("198.51.100.53"))
                    .with_dport(53),
            )
            .with_proto(IPPROTO_UDP),
        Filter::new()
            .with_family(Family::Ipv4)
            .with_proto(IPPROTO_TCP),
        Filter::new().with_family(Family::Ipv6),
        // IPv6 addresses: filtered in user space only (the kernel's compare is inverted).
        Filter::new().with_reply(TupleMatch::new().with_src(ip("2001:db8:2::2"))),
        Filter::new()
            .with_orig(
                TupleMatch::new()
                    .with_src(ip("2001:db8:1::3"))
                    .with_sport(30005),
            )
            .with_proto(IPPROTO_UDP),
        Filter::new().with_mark(1, 3),
        Filter::new().with_status(Status::empty(), Status::SEEN_REPLY),
        Filter::new()
            .with_status(Status::DST_NAT, Status::DST_NAT)
            .with_family(Family::Ipv4),
        Filter::new().with_zone(7),
        Filter::new()
            .with_proto(IPPROTO_SCTP)
            .with_reply(TupleMatch::new().with_src(ip("203.0.113.9"))),
    ];
    for (i, f) in filters.iter().enumerate() {
        let kernel = ct.dump_vec(f).unwrap();
        let user: Vec<Flow> = all.iter().copied().filter(|x| f.matches(x)).collect();
        assert!(
            !user.is_empty(),
            "filter {i} should match something in the fixture table"
        );
        assert_eq!(orig_set(&kernel), orig_set(&user), "filter {i}: {f:?}");
    }
}

#[test]
fn stats_equal_conntrack_count_and_per_cpu_counters() {
    if !root_or_skip("stats_equal_conntrack_count_and_per_cpu_counters") {
        return;
    }
    let ns = NetNs::create("ct").unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    ct.create(&mixed_entries()).unwrap();
    let g = ct.stats().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "conntrack", "-C"])
        .output()
        .unwrap();
    let c: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(g.entries, c);
    assert!(g.max_entries > 0);
    let cpus = ct.stats_per_cpu().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "conntrack", "-S"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let cpu: u16 = fields
            .next()
            .unwrap()
            .trim_start_matches("cpu=")
            .parse()
            .unwrap();
        let mine = cpus.iter().find(|c| c.cpu == cpu).expect("same CPUs");
        for kv in fields {
            let (k, v) = kv.split_once('=').unwrap();
            let v: u32 = v.parse().unwrap();
            if let Some(i) = ctnetlink::CpuStats::NAMES.iter().position(|n| *n == k) {
                assert_eq!(mine.values()[i], v, "cpu {cpu} counter {k}");
            }
        }
        n += 1;
    }
    assert_eq!(n, cpus.len());
    assert_eq!(
        ctnetlink::CpuStats::sum(&cpus)[2],
        c as u64,
        "insert counts every created entry"
    );
}

/// Turns on connection tracking for locally generated traffic in a namespace (the kernel only
/// registers conntrack hooks in a namespace when a rule needs them).
fn track(ns: &NetNs) {
    let rules = "table inet gbtrack { chain out { type filter hook output priority 0; ct state new accept; }; }";
    let st = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", rules])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn real_traffic_yields_new_then_destroy_events() {
    if !root_or_skip("real_traffic_yields_new_then_destroy_events") {
        return;
    }
    let ns = NetNs::create("ev").unwrap();
    track(&ns);
    let mut ev = EventSocket::open_in(Some(ns.name()), EventGroups::ALL, 1 << 20).unwrap();
    ev.set_timeout(Some(Duration::from_millis(200))).unwrap();
    // One UDP datagram on loopback inside the namespace: a NEW entry.
    ns.run(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"x", "127.0.0.1:9").unwrap();
    })
    .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !seen
            .iter()
            .any(|(k, _): &(EventKind, Flow)| *k == EventKind::New)
    {
        ev.recv(|k, f| seen.push((k, *f))).unwrap();
    }
    let (_, new) = *seen
        .iter()
        .find(|(k, f)| *k == EventKind::New && f.orig.dport() == Some(9))
        .expect("NEW event");
    // Remove it: a DESTROY event for the same tuple.
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    assert_eq!(
        ct.delete(&[DeleteKey::from(&new)]).unwrap(),
        vec![DeleteOutcome::Deleted]
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut destroyed = false;
    while Instant::now() < deadline && !destroyed {
        ev.recv(|k, f| destroyed |= k == EventKind::Destroy && f.orig == new.orig)
            .unwrap();
    }
    assert!(destroyed, "DESTROY event after the delete");
}

#[test]
fn an_event_flood_reports_lost_events_and_the_socket_recovers() {
    if !root_or_skip("an_event_flood_reports_lost_events_and_the_socket_recovers") {
        return;
    }
    let ns = NetNs::create("ev").unwrap();
    let mut ev = EventSocket::open_in(Some(ns.name()), EventGroups::ALL, 16 * 1024).unwrap();
    ev.set_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut ct = Conntrack::open_in(Some(ns.name())).unwrap();
    let flood: Vec<NewFlow> = (0..20_000u32)
        .map(|i| {
            NewFlow::established(
                udp(
                    "192.0.2.2",
                    1024 + (i % 60000) as u16,
                    "198.51.100.53",
                    53 + (i / 60000) as u16,
                ),
                None,
            )
        })
        .collect();
    ct.create(&flood).unwrap();
    let mut lost = false;
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match ev.recv(|_, _| got += 1) {
            Err(ctnetlink::Error::EventsLost) => {
                lost = true;
                break;
            }
            Ok((0, _)) => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        lost,
        "a 16 KiB buffer cannot hold 20k events (got {got} before the loss)"
    );
    // The socket keeps working after the loss: drain, then new events arrive.
    while let Ok((n, _)) = ev.recv(|_, _| {}) {
        if n == 0 {
            break;
        }
    }
    ct.create(&[NewFlow::established(
        udp("192.0.2.9", 999, "198.51.100.53", 53),
        None,
    )])
    .unwrap();
    let mut fresh = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !fresh {
        match ev.recv(|_, f| fresh |= f.orig.sport() == Some(999)) {
            Ok(_) | Err(ctnetlink::Error::EventsLost) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(fresh);
}

#[test]
fn missing_namespace_and_missing_privilege_are_clear_errors() {
    let e = Conntrack::open_in(Some("gbt-does-not-exist")).unwrap_err();
    assert!(e.is_environment(), "{e}");
    assert!(e.to_string().contains("gbt-does-not-exist"), "{e}");
}

/// Real traffic through kube-proxy-shaped rules: the parsed entry shows the Service VIP as the
/// original destination and the pod as the reply source, with DST_NAT set (IPv4 and IPv6).
#[test]
fn real_dnat_traffic_parses_with_vip_and_backend() {
    use netlab::{http_get, plan, Lab, PodSpec, ServerSpec, Service, ServicePort};
    if !root_or_skip("real_dnat_traffic_parses_with_vip_and_backend") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let pod = lab
        .add_pod(PodSpec::backend("web-a").serve(ServerSpec::http(8080, 200, "web-a")))
        .unwrap();
    let (eps, pod_ips) = (pod.endpoints(), pod.ips());
    let client = lab
        .add_pod(PodSpec::client("client"))
        .unwrap()
        .netns()
        .to_string();
    let web = Service::new("default", "web")
        .cluster_ip(plan::vip_v4(20))
        .cluster_ip(plan::vip_v6(20))
        .port(ServicePort::tcp("http", 80, 8080))
        .endpoints(eps);
    lab.sync_services(&[web]).unwrap();
    for vip in [
        IpAddr::from(plan::vip_v4(20)),
        IpAddr::from(plan::vip_v6(20)),
    ] {
        let a = http_get(&client, (vip, 80).into(), Duration::from_secs(2)).unwrap();
        assert_eq!(a.status, 200);
    }
    let mut ct = Conntrack::open_in(Some(lab.node_netns())).unwrap();
    let flows = ct.dump_vec(&Filter::new().with_proto(IPPROTO_TCP)).unwrap();
    for vip in [
        IpAddr::from(plan::vip_v4(20)),
        IpAddr::from(plan::vip_v6(20)),
    ] {
        let f = flows
            .iter()
            .find(|f| f.orig.dst == vip && f.orig.dport() == Some(80))
            .unwrap_or_else(|| panic!("an entry to {vip}: {flows:?}"));
        assert!(f.is_dnat(), "{f:?}");
        assert!(pod_ips.contains(&f.reply.src), "{f:?}");
        assert_eq!(f.reply.sport(), Some(8080));
        assert_eq!(f.family, Family::of(&vip));
    }
}
