//! The flow index's cost per conntrack event, in process (no kernel): a million IPv6 entries over
//! 100,000 backends built as a full pass builds them (the agent bench's steady table), then the
//! agent bench's generator replayed as the event thread sees it — NEW events for flows toward
//! 10,000 backends from 254 clients, in bursts of 100, each flow's DESTROY 30 s of flows later —
//! applied one burst at a time as `FlowIndex::apply` does. Between bursts the caches are either
//! left warm or flushed (a line written in every 64 bytes of 64 MiB), since on a node the event
//! thread sleeps ~100 ms between bursts while the rest of the machine runs.
//!
//! `cargo bench -p ghostbuster --bench flow_index -- [--events N]` (default 600,000). Prints
//! nanoseconds per event, medians of 5 runs. No root needed.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use ctnetlink::{EventKind, Flow, Status, Tuple};
use ghostbuster::agent::flow_index::{Builder, Entries};

fn flow(client: IpAddr, sport: u16, vip: IpAddr, backend: IpAddr, dport: u16) -> Flow {
    let mut f = Flow::new(
        Tuple::ports(client, sport, vip, 53, 17),
        Tuple::ports(backend, dport, client, sport, 17),
    );
    f.status = Status::DST_NAT | Status::SEEN_REPLY;
    f
}

fn v6(prefix: u128, i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(prefix + u128::from(i)))
}

const BACKENDS: u128 = 0x2001_0db8_0002_0000_0000_0000_0000_0000;
const CLIENTS: u128 = 0x2001_0db8_0001_0000_0000_0000_0000_0000;
const VIP: u128 = 0x2001_0db8_0003_0000_0000_0000_0000_0000;

/// The table's entry `i`: 1,000,000 over 100,000 backends from 254 clients.
fn table_flow(i: u32) -> Flow {
    flow(
        v6(CLIENTS, i % 254 + 1),
        (i / 254) as u16 + 1,
        v6(VIP, i % 10_000),
        v6(BACKENDS, i % 100_000),
        8080,
    )
}

/// The generator's flow `n`, as the agent bench makes them.
fn generated(n: u32) -> Flow {
    flow(
        v6(CLIENTS, n % 254 + 1),
        40_000 + ((n / 254) % 20_000) as u16,
        v6(VIP, n % 10_000),
        v6(BACKENDS, n % 10_000),
        5353,
    )
}

fn evict() {
    let mut buf = vec![0u8; 64 << 20];
    for i in (0..buf.len()).step_by(64) {
        buf[i] = i as u8;
    }
    std::hint::black_box(&buf);
}

/// Nanoseconds per event over `events` events, caches flushed between bursts or not.
fn run(events: usize, flush: bool) -> f64 {
    let mut b = Builder::default();
    for i in 0..1_000_000 {
        b.push(&table_flow(i));
    }
    let mut e: Entries = b.finish();
    let live = 21_000; // ~700 new flows/s living 30 s
    let mut fifo: VecDeque<Flow> = VecDeque::with_capacity(live + 100);
    let mut burst: Vec<(EventKind, Flow)> = Vec::with_capacity(200);
    let (mut n, mut done) = (0u32, 0usize);
    let mut spent = std::time::Duration::ZERO;
    while done < events {
        burst.clear();
        for _ in 0..100 {
            let f = generated(n);
            n += 1;
            burst.push((EventKind::New, f));
            fifo.push_back(f);
            if fifo.len() > live {
                let old = fifo.pop_front().expect("fifo");
                burst.push((EventKind::Destroy, old));
            }
        }
        if flush {
            evict();
        }
        let t = Instant::now();
        for (kind, f) in &burst {
            match kind {
                EventKind::New => e.insert(f),
                _ => e.remove(f),
            };
        }
        spent += t.elapsed();
        done += burst.len();
    }
    std::hint::black_box(&e);
    spent.as_nanos() as f64 / done as f64
}

fn main() {
    let mut events = 600_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--events" => events = args.next().and_then(|v| v.parse().ok()).unwrap_or(events),
            _ => {}
        }
    }
    println!("| caches between bursts | ns per event (median of 5) | runs |\n|---|---:|---|");
    for flush in [false, true] {
        let mut runs: Vec<f64> = (0..5).map(|_| run(events, flush)).collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.0} | {} |",
            if flush { "flushed" } else { "warm" },
            runs[2],
            runs.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
