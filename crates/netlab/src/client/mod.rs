//! Clients that behave like the applications in the seeds: a pool of long-lived connections
//! through a Service VIP (database pool, gRPC channel, HTTP keep-alive), each sending a small
//! request on a schedule and waiting for the answer, and a DNS-like UDP querier that keeps its
//! socket (and therefore its conntrack tuple). They record every answer (and which backend gave
//! it), every error (ECONNRESET, ECONNREFUSED, EOF...) and every stall with timestamps, so a test
//! or the demo can show "the pooled connection hung for 10 s" and "it failed fast and recovered".
//!
//! A stall is a request not answered within `request_timeout`; it lasts from the moment the
//! request was sent until it is answered, fails, is abandoned or the run ends. A stalled TCP
//! request is *not* re-sent: the kernel retransmits, exactly what a blocked application sees.
//! Every loop is bounded by a request count and a run time, and checks a stop flag every [`TICK`].

mod oneshot;
mod pool;
mod report;
mod udp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use oneshot::{http_get, read_http_answer, udp_query, HttpAnswer};
pub use pool::{AppProtocol, TcpPool, TcpPoolConfig, MAX_POOL};
pub use report::{
    error_kind, ClientReport, ConnectionReport, ErrorRecord, Phase, Stall, StallEnd, MAX_RECORDS,
};
pub use udp::{UdpClient, UdpConfig};

/// How often waiting loops check their stop flag and deadlines.
pub const TICK: Duration = Duration::from_millis(20);

/// Sleeps up to `d`, waking early on stop or at `deadline`. Returns false when the loop should end.
pub(crate) fn pause(d: Duration, stop: &AtomicBool, deadline: Instant) -> bool {
    let until = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        thread::sleep(TICK.min(until - now));
    }
}
