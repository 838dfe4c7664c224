#![doc = include_str!("../README.md")]
//!
//! ## Design
//!
//! - A pure codec that never touches a socket and parses an entry into a `Copy` [`Flow`] without
//!   allocating ([`parse_message`] and [`parse_events`] are its public entry points).
//! - [`Conntrack`]: streamed and filtered dumps, exact batched deletes and reads (reply tuple +
//!   zone + id), batched creates, global and per-CPU statistics, in any named network namespace.
//! - [`EventSocket`]: NEW/UPDATE/DESTROY events with a distinct "events were lost" signal, and a
//!   kernel-side filter on the reply source or on DNAT ([`bpf`]) so a listener wakes only for the
//!   flows it wants.
//!
//! Facts about the kernel it relies on are documented where they matter: [`Filter`] (the
//! kernel's inverted IPv6 compare) and [`DeleteKey`] (why entries are addressed by their reply
//! tuple).
#![warn(missing_docs)]

mod attr;
pub mod bpf;
mod conntrack;
mod consts;
mod error;
mod events;
mod filter;
mod flow;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod netns;
mod nl;
mod request;
mod socket;
mod stats;
#[cfg(test)]
mod test_fixtures;
#[cfg(test)]
mod test_kernel;

pub use conntrack::{Conntrack, CreateSummary, DeleteOutcome, DumpSummary, Lookup};
pub use consts::{
    IPPROTO_DCCP, IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP, IPPROTO_UDPLITE,
};
pub use error::{Error, ParseError, Result};
pub use events::{
    parse_events, EventFilterHandle, EventGroups, EventKind, EventSocket, FilterApplied,
};
pub use filter::{Filter, TupleMatch};
pub use flow::{
    proto_from_name, proto_name, Counters, Family, Flow, SctpState, Status, TcpState, Tuple, L4,
};
pub use request::{DeleteKey, FlowUpdate, NewFlow};
pub use stats::{CpuStats, GlobalStats};

/// Parses the first conntrack entry in a datagram of netlink messages (as found in dumps and
/// events, e.g. a byte capture of [`Conntrack::dump_raw`]): `Ok(None)` when it holds no entry.
/// Pure and panic-free on any input; for captures, fixtures and fuzzing.
pub fn parse_message(buf: &[u8]) -> Result<Option<Flow>, ParseError> {
    for m in nl::Messages::new(buf) {
        let m = m?;
        let t = m.header.kind;
        if t == consts::msg_type(consts::IPCTNL_MSG_CT_NEW)
            || t == consts::msg_type(consts::IPCTNL_MSG_CT_DELETE)
        {
            let (g, attrs) = m.nfgen()?;
            return flow::parse_flow(g.family, attrs).map(Some);
        }
    }
    Ok(None)
}
