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
use crate::sockets::Ended;
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
    socket: Option<Ended>,
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
            socket: None,
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

    /// What ending the client's socket came to (`agent --terminate-sockets`).
    pub fn socket(mut self, ended: Option<Ended>) -> Self {
        self.socket = ended;
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
        if let Some(e) = self.socket {
            m.serialize_entry("socket", e.label())?;
        }
        if self.trace {
            m.serialize_entry("trace", &TraceJson(v))?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::{Arc, Mutex};

    use ctnetlink::{Counters, Family, SctpState, Status, TcpState, Tuple, L4};
    use serde_json::{json, Value};

    use super::*;
    use crate::cluster::{FrontendKind, Name, Protocol};
    use crate::telemetry::RemovedFlow;
    use crate::verdict::{
        Backend, Evidence, KeepReason, Owner, ServiceRef, Step, Trace, VerdictKind,
    };

    const SCHEMA: &str = include_str!("../../../docs/flow.schema.json");

    fn schema() -> Value {
        serde_json::from_str(SCHEMA).expect("docs/flow.schema.json is JSON")
    }

    /// Validates `v` against docs/flow.schema.json, with formats (date-time, ipv4/ipv6) asserted.
    fn validate(v: &Value) -> Result<(), String> {
        let mut schemas = boon::Schemas::new();
        let mut c = boon::Compiler::new();
        c.enable_format_assertions();
        c.add_resource("urn:ghostbuster:flow", schema())
            .map_err(|e| e.to_string())?;
        let id = c
            .compile("urn:ghostbuster:flow", &mut schemas)
            .map_err(|e| format!("{e:#}"))?;
        schemas.validate(v, id).map_err(|e| format!("{e:#}"))
    }

    fn assert_valid(v: &Value) {
        if let Err(e) = validate(v) {
            panic!("{e}\n{}", serde_json::to_string_pretty(v).unwrap());
        }
    }

    /// The list `variants` as an array, after an exhaustive match over them: a variant added to
    /// the enum does not compile here until it is listed, so the lists below are complete.
    macro_rules! every {
        ($t:ident: $($v:ident),+ $(,)?) => {{
            #[allow(dead_code)]
            fn exhaustive(x: $t) {
                match x {
                    $($t::$v)|+ => {}
                }
            }
            [$($t::$v),+]
        }};
    }

    fn names<T: Serialize>(xs: impl IntoIterator<Item = T>) -> Vec<Value> {
        xs.into_iter()
            .map(|x| serde_json::to_value(x).unwrap())
            .collect()
    }

    fn sorted(mut v: Vec<Value>) -> Vec<Value> {
        v.sort_by_key(|x| x.to_string());
        v.dedup();
        v
    }

    /// The schema's enums are the Rust enums' names, in the same order where the order means
    /// something (declaration order); a renamed or added variant fails here, not in a user's
    /// validator.
    #[test]
    fn schema_enums_are_the_rust_enums() {
        let s = schema();
        let p = &s["properties"];
        let verdicts = every!(VerdictKind: Healthy, NotService, MissedDnat, Unanswered, NotServing,
            PortChanged, IpReused, Deselected, EndpointGone, ServiceGone);
        assert_eq!(verdicts, VerdictKind::ALL);
        assert_eq!(p["verdict"]["enum"], json!(names(verdicts)));

        let evidence = every!(Evidence: HalfOpen, Udp, PodAbsent, PodReplaced,
            PodCreatedAfterFlow, SnapshotOnly, EndpointRemoved, PodGone);
        assert_eq!(evidence, Evidence::ALL);
        assert_eq!(p["evidence"]["items"]["enum"], json!(names(evidence)));

        let keep = every!(KeepReason: NoEvidence, LivePod, NewerThanSnapshot, Zone, Protocol,
            Namespace, ApiServer, Unmanaged, Annotation, UnknownAge, NewerThanApiAnswer);
        assert_eq!(keep, KeepReason::ALL);
        let mut kept = vec![Value::Null];
        kept.extend(names(keep));
        assert_eq!(p["kept_because"]["enum"], json!(kept));

        let outcomes = every!(Outcome: Deleted, AlreadyGone, Failed, Kept, Changed, StaleVerdict);
        assert_eq!(outcomes, Outcome::ALL);
        assert_eq!(p["result"]["enum"], json!(names(outcomes)));

        let ended = every!(Ended: Destroyed, NoSocket, Unconnected, NoNamespace, Ambiguous,
            Recovered, NotApplicable, Failed);
        assert_eq!(ended, Ended::ALL);
        let labels: Vec<Value> = ended.iter().map(|e| json!(e.label())).collect();
        assert_eq!(p["socket"]["enum"], json!(labels));

        let svc = &s["$defs"]["service"]["properties"];
        let protocols = every!(Protocol: Tcp, Udp, Sctp);
        assert_eq!(protocols, Protocol::ALL);
        assert_eq!(svc["protocol"]["enum"], json!(names(protocols)));
        let frontends = every!(FrontendKind: ClusterIp, NodePort, ExternalIp, LoadBalancer);
        assert_eq!(svc["frontend"]["enum"], json!(names(frontends)));

        // ctnetlink's names: every value its name functions can return.
        let proto: Vec<Value> = (0..=255u8)
            .map(|n| json!(ctnetlink::proto_name(n)))
            .collect();
        let in_schema = p["protocol"]["enum"].as_array().unwrap().clone();
        assert_eq!(sorted(proto), sorted(in_schema));
        // Family is non_exhaustive: a new family shows up as a schema failure of its flows.
        let families = [Family::Ipv4, Family::Ipv6];
        assert_eq!(
            p["family"]["enum"],
            json!(families.map(|f| f.name()).to_vec())
        );
        let mut states = vec![Value::Null];
        states.extend((0..=255u8).map(|n| json!(TcpState(n).name())));
        states.extend((0..=255u8).map(|n| json!(SctpState(n).name())));
        let in_schema = p["state"]["enum"].as_array().unwrap().clone();
        assert_eq!(sorted(states), sorted(in_schema));
        assert_eq!(p["status"]["items"]["enum"], json!(Status::NAMES));
    }

    fn tcp_flow() -> Flow {
        let client = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5));
        let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
        let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 2, 9));
        let mut f = Flow::new(
            Tuple::ports(client, 40001, vip, 5432, 6),
            Tuple::ports(pod, 5432, client, 40001, 6),
        );
        f.status = Status::DST_NAT | Status::SEEN_REPLY | Status::ASSURED;
        f.timeout = Some(431_999);
        f.mark = Some(7);
        f.id = Some(u32::MAX);
        f.use_count = Some(1);
        f.tcp_state = Some(TcpState::ESTABLISHED);
        f.start_ns = Some(1_714_957_312_123_456_789);
        f.orig_counters = Some(Counters {
            packets: 3,
            bytes: 180,
        });
        f.reply_counters = Some(Counters {
            packets: 2,
            bytes: 120,
        });
        f.labels = Some([0xab; 16]);
        f
    }

    /// A portless IPv6 flow with ICMP fields and none of the optional kernel fields.
    fn icmp6_flow() -> Flow {
        let a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));
        let b = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9));
        let icmp = |src, dst| Tuple {
            src,
            dst,
            proto: 58,
            l4: L4::Icmp {
                kind: 128,
                code: 0,
                id: 77,
            },
        };
        let mut f = Flow::new(icmp(a, b), icmp(b, a));
        f.zone = 3;
        f
    }

    fn service() -> ServiceRef {
        ServiceRef {
            namespace: Name::new("db"),
            name: Name::new("postgres"),
            port: 5432,
            port_name: Name::new(""),
            protocol: Protocol::Tcp,
            node_port: Some(30432),
            frontend: FrontendKind::NodePort,
        }
    }

    /// A kept `ip_reused` TCP flow (every optional verdict member set) and a `not_service` ICMP
    /// flow (every one null).
    fn findings() -> [Finding; 2] {
        let mut trace = Trace::default();
        trace.push(Step::Frontend(FrontendKind::NodePort));
        trace.push(Step::OtherServiceEndpoint);
        trace.push(Step::Row(VerdictKind::IpReused));
        let reused = Finding {
            flow: tcp_flow(),
            verdict: Verdict {
                kind: VerdictKind::IpReused,
                evidence: [Evidence::PodReplaced, Evidence::PodCreatedAfterFlow]
                    .into_iter()
                    .collect(),
                half_open: false,
                removable: false,
                kept_because: Some(KeepReason::Namespace),
                service: Some(service()),
                backend: Some(Backend {
                    ip: IpAddr::V4(Ipv4Addr::new(10, 244, 2, 9)),
                    port: 5432,
                }),
                now_owned_by: Some(Owner {
                    namespace: Some(Name::new("shop")),
                    service: None,
                    pod: Some(Name::new("cart-1")),
                }),
                trace,
            },
        };
        let mut trace = Trace::default();
        trace.push(Step::OtherProtocol(58));
        trace.push(Step::Row(VerdictKind::NotService));
        let icmp = Finding {
            flow: icmp6_flow(),
            verdict: Verdict {
                kind: VerdictKind::NotService,
                evidence: Default::default(),
                half_open: true,
                removable: false,
                kept_because: None,
                service: None,
                backend: None,
                now_owned_by: None,
                trace,
            },
        };
        [reused, icmp]
    }

    /// The `--log-removed-flows` line as `--log-format json` writes it, parsed.
    fn log_line(r: &RemovedFlow) -> Value {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::default());
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(sub, || r.log());
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let mut lines = text.lines();
        let line = lines.next().expect("one log line");
        assert_eq!(lines.next(), None, "{text}");
        serde_json::from_str(line).expect("a JSON log line")
    }

    /// Every output's flow object, from every kind of flow, against the schema: scan (no
    /// result), sweep (result), explain (trace), `/debug/recent` and the log line (time, result,
    /// errno). And all outputs agree on every field they share.
    #[test]
    fn every_output_matches_the_schema() {
        let t = Timestamp::from_second(1_714_957_400).unwrap();
        for f in &findings() {
            let scan = serde_json::to_value(FlowRecord::new(f)).unwrap();
            assert_valid(&scan);
            assert!(scan.get("result").is_none() && scan.get("time").is_none());
            let sweep = serde_json::to_value(FlowRecord::new(f).result(Outcome::Kept)).unwrap();
            assert_valid(&sweep);
            assert_eq!(sweep["result"], "kept");
            let explain = serde_json::to_value(FlowRecord::new(f).with_trace()).unwrap();
            assert_valid(&explain);
            let trace = explain["trace"].as_array().unwrap();
            assert_eq!(trace.len(), f.verdict.trace.steps().len());
            assert!(trace[0].as_str().unwrap().starts_with("1. "));

            let removed = RemovedFlow::new(f, Outcome::Failed, Some(libc::ENOENT), t);
            let recent = serde_json::to_value(&removed).unwrap();
            assert_valid(&recent);
            assert_eq!(recent["time"], "2024-05-06T01:03:20Z");
            assert_eq!(recent["errno"], libc::ENOENT);
            assert!(
                recent.get("socket").is_none(),
                "no socket result until one is known"
            );
            let mut ended = RemovedFlow::new(f, Outcome::Deleted, None, t);
            ended.socket = Some(Ended::Destroyed);
            let ended = serde_json::to_value(&ended).unwrap();
            assert_valid(&ended);
            assert_eq!(ended["socket"], "destroyed");
            let line = log_line(&removed);
            assert_eq!(line["fields"]["message"], "removed flow");
            let logged: Value =
                serde_json::from_str(line["fields"]["flow"].as_str().expect("flow is JSON text"))
                    .unwrap();
            assert_eq!(
                logged, recent,
                "the log line carries the /debug/recent object"
            );

            for (k, v) in scan.as_object().unwrap() {
                for other in [&sweep, &explain, &recent] {
                    assert_eq!(&other[k], v, "field {k} differs between outputs");
                }
            }
        }
        let [reused, icmp] = findings();
        let v = serde_json::to_value(FlowRecord::new(&reused)).unwrap();
        assert_eq!(v["kept_because"], "namespace");
        assert_eq!(v["now_owned_by"]["pod"], "cart-1");
        assert_eq!(v["start_time"], "2024-05-06T01:01:52.123456789Z");
        assert_eq!(v["labels"], "ab".repeat(16));
        let v = serde_json::to_value(FlowRecord::new(&icmp)).unwrap();
        assert!(v["original"]["sport"].is_null());
        assert_eq!(v["original"]["icmp_type"], 128);
        assert!(v["service"].is_null() && v["state"].is_null());
    }

    /// The schema rejects what no output may print, so a passing validation means something.
    #[test]
    fn the_schema_rejects_malformed_objects() {
        let [f, _] = findings();
        let good = serde_json::to_value(FlowRecord::new(&f).result(Outcome::Deleted)).unwrap();
        assert_valid(&good);
        type Spoil = fn(&mut Value);
        let broken: [(&str, Spoil); 8] = [
            ("unknown verdict", |v| v["verdict"] = json!("zombie")),
            ("missing field", |v| {
                v.as_object_mut().unwrap().remove("reason");
            }),
            ("unknown field", |v| v["verdicts"] = json!("healthy")),
            ("unknown result", |v| v["result"] = json!("gone")),
            ("port out of range", |v| {
                v["original"]["sport"] = json!(70000)
            }),
            ("not an IP", |v| v["backend"]["ip"] = json!("pod-a")),
            ("not a time", |v| v["start_time"] = json!("yesterday")),
            ("errno without result", |v| {
                v.as_object_mut().unwrap().remove("result");
                v["errno"] = json!(1);
            }),
        ];
        for (what, spoil) in broken {
            let mut v = good.clone();
            spoil(&mut v);
            assert!(validate(&v).is_err(), "{what}: accepted");
        }
    }
}
