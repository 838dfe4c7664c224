//! Linux conntrack over netlink (ctnetlink), written for speed and exactness.
//!
//! - a pure codec ([`attr`], [`nl`], [`flow`], [`request`]) that never touches a socket and
//!   parses an entry into a `Copy` [`Flow`] without allocating;
//! - [`Conntrack`]: streamed and filtered dumps, exact batched deletes and reads (reply tuple +
//!   zone + id), batched creates, global and per-CPU statistics, in any named network namespace;
//! - [`EventSocket`]: NEW/UPDATE/DESTROY events with a distinct "events were lost" signal, and a
//!   kernel-side filter on the backend ([`bpf`]) so a listener wakes only for the flows it wants.
//!
//! It knows nothing of Kubernetes. Facts about the kernel it relies on are in the comments of
//! [`filter`] (the inverted IPv6 compare) and [`request`] (a DELETE without a tuple is a flush).

pub mod attr;
pub mod bpf;
mod conntrack;
pub mod consts;
pub mod error;
pub mod events;
pub mod filter;
pub mod flow;
pub mod netns;
pub mod nl;
pub mod request;
mod socket;
pub mod stats;

pub use bpf::reply_src_program;
pub use conntrack::{Conntrack, CreateSummary, DeleteOutcome, DumpSummary, Lookup};
pub use error::{Error, ParseError, Result};
pub use events::{
    parse_events, EventFilterHandle, EventGroups, EventKind, EventSocket, FilterApplied,
};
pub use filter::{Filter, TupleMatch};
pub use flow::{
    parse_flow, proto_from_name, proto_name, Counters, Family, Flow, SctpState, Status, TcpState,
    Tuple, L4,
};
pub use request::{DeleteKey, FlowUpdate, NewFlow};
pub use stats::{CpuStats, GlobalStats};

/// Parses one complete netlink message holding a conntrack entry (as found in dumps and events),
/// e.g. from a byte capture. For fuzzing and fixtures.
pub fn parse_message(buf: &[u8]) -> Result<Option<Flow>, ParseError> {
    for m in nl::Messages::new(buf) {
        let m = m?;
        let t = m.header.kind;
        if t == consts::msg_type(consts::IPCTNL_MSG_CT_NEW)
            || t == consts::msg_type(consts::IPCTNL_MSG_CT_DELETE)
        {
            let (g, attrs) = m.nfgen()?;
            return parse_flow(g.family, attrs).map(Some);
        }
    }
    Ok(None)
}
