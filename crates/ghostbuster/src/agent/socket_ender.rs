//! The socket ender actor (`sockets`, with `--terminate-sockets`): for each flow the reactor
//! deleted, ends the client's socket when it is on this node ([`crate::sockets`]). A thread: its
//! lookups enter namespaces and wait on netlink answers, never on the reactor's time.
//!
//! Each result goes to `ghostbuster_sockets_terminated_total{result}`, onto the flow's
//! `/debug/recent` entry (`socket`), and into the log: always when a socket was destroyed,
//! every result with `--log-removed-flows`.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use ctnetlink::Flow;

use super::supervisor::{Actor, Shutdown};
use crate::render;
use crate::sockets::{Ended, Terminator};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::recent::Recent;

/// The flows whose client sockets are to be ended (bounded by what the reactor deletes, itself
/// bounded by the breakers).
pub type Requests = Sender<Flow>;

/// How the ender works.
pub struct Settings {
    /// The node's namespace (`None`: the agent's own).
    pub node_netns: Option<String>,
    /// Log every result, not only destroyed sockets (`--log-removed-flows`).
    pub log_each: bool,
}

/// Where its results go.
pub struct Outputs {
    pub metrics: Arc<Metrics>,
    /// `/debug/recent`: the result is noted on the flow's entry.
    pub recent: Recent,
}

/// Starts the ender.
pub fn spawn(
    settings: Settings,
    outputs: Outputs,
    requests: Receiver<Flow>,
    shutdown: Shutdown,
) -> std::io::Result<Actor> {
    let Settings {
        node_netns,
        log_each,
    } = settings;
    let Outputs { metrics, recent } = outputs;
    Actor::thread("sockets", move || {
        let mut terminator = Terminator::new(node_netns);
        while !shutdown.is_set() {
            let flow = match requests.recv_timeout(Duration::from_millis(250)) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let ended = terminator.end(&flow);
            metrics.socket_ended(ended);
            recent.note_socket(&flow, ended);
            if log_each || ended == Ended::Destroyed {
                tracing::info!(
                    protocol = flow.proto_name(),
                    client = %render::endpoint(&flow.orig.src, flow.orig.sport()),
                    service = %render::endpoint(&flow.orig.dst, flow.orig.dport()),
                    backend = %render::endpoint(&flow.reply.src, flow.reply.sport()),
                    result = ended.label(),
                    "client socket of a removed flow"
                );
            }
        }
        Ok(())
    })
}
