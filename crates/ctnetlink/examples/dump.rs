//! Dumps the conntrack table of the current network namespace (or of the named one given as
//! the first argument) and prints the entry counts by protocol and state. Needs CAP_NET_ADMIN.
//!
//! `cargo run -p ctnetlink --example dump [-- NETNS]`. The same code is in the README.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use ctnetlink::{Conntrack, Filter, Status};

fn main() -> Result<(), ctnetlink::Error> {
    let netns = std::env::args().nth(1);
    let mut ct = Conntrack::open_in(netns.as_deref())?;

    let mut by_state: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut dnat = 0u64;
    let summary = ct.dump(&Filter::default(), |flow| {
        let state = flow.state_name().unwrap_or("-");
        *by_state.entry((flow.proto_name(), state)).or_default() += 1;
        if flow.status.contains(Status::DST_NAT) {
            dnat += 1;
        }
        ControlFlow::Continue(())
    })?;

    for ((proto, state), n) in &by_state {
        println!("{proto:<8} {state:<12} {n}");
    }
    let table = ct.stats()?;
    println!(
        "{} entries ({} DNAT'd), table {}/{}",
        summary.matched, dnat, table.entries, table.max_entries
    );
    Ok(())
}
