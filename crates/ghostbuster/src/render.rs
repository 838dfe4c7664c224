//! The flow object every command prints (`list` alone; `scan`, `sweep`, `explain` and the agent
//! with the verdict through `flow_json::FlowRecord`), and the table rows.
//!
//! Field names are an interface (README "JSON output"): snake_case, stable, added to but never
//! renamed. Serialization writes straight from the `Copy` [`Flow`] without building a tree.

use std::io::{self, Write};
use std::net::IpAddr;

use ctnetlink::{Flow, Tuple, L4};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Serializes a tuple as `{src, sport, dst, dport}` (ports null for portless protocols, plus
/// `icmp_type/icmp_code/icmp_id` for ICMP).
pub struct TupleJson<'a>(pub &'a Tuple);

impl Serialize for TupleJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("src", &t.src)?;
        m.serialize_entry("sport", &t.sport())?;
        m.serialize_entry("dst", &t.dst)?;
        m.serialize_entry("dport", &t.dport())?;
        if let L4::Icmp { kind, code, id } = t.l4 {
            m.serialize_entry("icmp_type", &kind)?;
            m.serialize_entry("icmp_code", &code)?;
            m.serialize_entry("icmp_id", &id)?;
        }
        m.end()
    }
}

struct StatusJson(ctnetlink::Status);

impl Serialize for StatusJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.names())
    }
}

/// Writes the common flow fields into an open JSON map, so `flow_json::FlowRecord` adds the
/// verdict's fields to the same object rather than nesting it.
pub fn flow_fields<M: SerializeMap>(m: &mut M, f: &Flow) -> Result<(), M::Error> {
    m.serialize_entry("protocol", f.proto_name())?;
    m.serialize_entry("family", f.family.name())?;
    m.serialize_entry("state", &f.state_name())?;
    m.serialize_entry("original", &TupleJson(&f.orig))?;
    m.serialize_entry("reply", &TupleJson(&f.reply))?;
    m.serialize_entry("zone", &f.zone)?;
    m.serialize_entry("mark", &f.mark.unwrap_or(0))?;
    m.serialize_entry("id", &f.id)?;
    m.serialize_entry("timeout", &f.timeout)?;
    m.serialize_entry("status", &StatusJson(f.status))?;
    m.serialize_entry("unreplied", &f.unreplied())?;
    if let Some(u) = f.use_count {
        m.serialize_entry("use", &u)?;
    }
    if let Some(ns) = f.start_ns {
        m.serialize_entry("start_time", &format_ns(ns))?;
    }
    if let Some(c) = f.orig_counters {
        m.serialize_entry("orig_packets", &c.packets)?;
        m.serialize_entry("orig_bytes", &c.bytes)?;
    }
    if let Some(c) = f.reply_counters {
        m.serialize_entry("reply_packets", &c.packets)?;
        m.serialize_entry("reply_bytes", &c.bytes)?;
    }
    if let Some(l) = f.labels {
        let hex: String = l.iter().map(|b| format!("{b:02x}")).collect();
        m.serialize_entry("labels", &hex)?;
    }
    Ok(())
}

/// RFC 3339 text of a wall-clock time in ns since the epoch.
pub fn format_ns(ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A flow as a JSON object.
pub struct FlowJson<'a>(pub &'a Flow);

impl Serialize for FlowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        flow_fields(&mut m, self.0)?;
        m.end()
    }
}

/// `ip:port`, with brackets for IPv6; just the address when there is no port.
pub fn endpoint(ip: &IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

/// Short flags as `conntrack -L` shows them.
pub fn short_flags(f: &Flow) -> String {
    let mut v = Vec::new();
    if f.unreplied() {
        v.push("UNREPLIED");
    }
    if f.status.contains(ctnetlink::Status::ASSURED) {
        v.push("ASSURED");
    }
    if f.is_dnat() {
        v.push("DNAT");
    }
    if f.status.contains(ctnetlink::Status::SRC_NAT) {
        v.push("SNAT");
    }
    v.join(",")
}

/// One table row for a flow; `wide` adds zone, mark, id and the reply destination.
pub fn write_row(w: &mut impl Write, f: &Flow, wide: bool) -> io::Result<()> {
    let o = &f.orig;
    let r = &f.reply;
    write!(
        w,
        "{:<5} {:<12} {:<45} {:<45} {:<24} {:>7}",
        f.proto_name(),
        f.state_name().unwrap_or("-"),
        format!(
            "{} -> {}",
            endpoint(&o.src, o.sport()),
            endpoint(&o.dst, o.dport())
        ),
        format!("reply {}", endpoint(&r.src, r.sport())),
        short_flags(f),
        f.timeout.map(|t| t.to_string()).unwrap_or_default(),
    )?;
    if wide {
        write!(
            w,
            " zone={} mark={} id={} reply_dst={}",
            f.zone,
            f.mark.unwrap_or(0),
            f.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            endpoint(&r.dst, r.dport())
        )?;
    }
    writeln!(w)
}

/// The table header matching [`write_row`].
pub fn write_header(w: &mut impl Write, wide: bool) -> io::Result<()> {
    write!(
        w,
        "{:<5} {:<12} {:<45} {:<45} {:<24} {:>7}",
        "PROTO", "STATE", "ORIGINAL", "REPLY", "FLAGS", "TIMEOUT"
    )?;
    if wide {
        write!(w, " DETAILS")?;
    }
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::Status;

    /// The JSON shape of `status`: the set flags' names in bit order; bits without a name (a
    /// newer kernel's) are left out.
    #[test]
    fn status_is_an_array_of_flag_names_in_bit_order() {
        let s = Status::DST_NAT | Status::CONFIRMED | Status::SEEN_REPLY;
        assert_eq!(
            serde_json::to_string(&StatusJson(s)).unwrap(),
            r#"["seen_reply","confirmed","dst_nat"]"#
        );
        let with_unknown = Status::from_bits_retain(s.bits() | 1 << 20);
        assert_eq!(
            serde_json::to_string(&StatusJson(with_unknown)).unwrap(),
            r#"["seen_reply","confirmed","dst_nat"]"#
        );
        assert_eq!(
            serde_json::to_string(&StatusJson(Status::empty())).unwrap(),
            "[]"
        );
    }
}
