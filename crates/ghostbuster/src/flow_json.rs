//! The one JSON object for "a flow with its verdict", whoever prints it: `scan`/`sweep -o json`
//! (`flows[]`), `explain -o json`, the agent's `/debug/recent` and its `--log-removed-flows` line.
//!
//! One serializer, so a field cannot mean one thing in a report and another in the agent's
//! forensics: a script written against `sweep -o json` reads `/debug/recent` unchanged. The object
//! is the flow object of `list` (`render::flow_fields`) plus the verdict's fields; what only some
//! outputs know (when and how a removal went, the explain trace) are optional members of the same
//! object, absent rather than null where the output cannot know them. `docs/flow.schema.json`
//! describes it; the tests hold every output to that schema, and the schema's enums to the Rust
//! enums, so neither can drift.

use ctnetlink::Flow;
use jiff::Timestamp;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::render::flow_fields;
use crate::scan::Finding;
use crate::sweep::Outcome;
use crate::verdict::Verdict;

/// A flow with its verdict, as one JSON object. Build with [`FlowRecord::new`], then add what
/// the output knows.
#[derive(Clone, Copy)]
pub struct FlowRecord<'a> {
    flow: &'a Flow,
    verdict: &'a Verdict,
    time: Option<Timestamp>,
    result: Option<Outcome>,
    errno: Option<i32>,
    trace: bool,
}

impl<'a> FlowRecord<'a> {
    pub fn new(f: &'a Finding) -> Self {
        FlowRecord {
            flow: &f.flow,
            verdict: &f.verdict,
            time: None,
            result: None,
            errno: None,
            trace: false,
        }
    }

    /// What a sweep did with the flow (`result`).
    pub fn result(mut self, o: Outcome) -> Self {
        self.result = Some(o);
        self
    }

    /// When the agent acted on the flow (`time`), and the kernel's errno of a failed delete.
    pub fn removal(mut self, time: Timestamp, result: Outcome, errno: Option<i32>) -> Self {
        self.time = Some(time);
        self.result = Some(result);
        self.errno = errno;
        self
    }

    /// Adds the decision table's steps (`trace`, one line each), for `explain`.
    pub fn with_trace(mut self) -> Self {
        self.trace = true;
        self
    }
}

/// The explain trace as a list of lines, serialized without building a `Vec`.
struct TraceJson<'a>(&'a Verdict);

impl Serialize for TraceJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .trace
                .steps()
                .iter()
                .enumerate()
                .map(|(i, step)| format!("{}. {step}", i + 1)),
        )
    }
}

impl Serialize for FlowRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.verdict;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("verdict", &v.kind)?;
        m.serialize_entry("evidence", &v.evidence)?;
        m.serialize_entry("half_open", &v.half_open)?;
        m.serialize_entry("removable", &v.removable)?;
        m.serialize_entry("kept_because", &v.kept_because)?;
        flow_fields(&mut m, self.flow)?;
        m.serialize_entry("service", &v.service)?;
        m.serialize_entry("backend", &v.backend)?;
        m.serialize_entry("now_owned_by", &v.now_owned_by)?;
        m.serialize_entry("reason", &v.reason())?;
        if let Some(t) = self.time {
            m.serialize_entry("time", &t)?;
        }
        if let Some(o) = self.result {
            m.serialize_entry("result", o.as_str())?;
        }
        if let Some(e) = self.errno {
            m.serialize_entry("errno", &e)?;
        }
        if self.trace {
            m.serialize_entry("trace", &TraceJson(v))?;
        }
        m.end()
    }
}
