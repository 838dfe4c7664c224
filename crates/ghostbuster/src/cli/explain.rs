//! `ghostbuster explain`: for one flow or every flow of an IP, the verdict and every row of the
//! decision table it passed through.

use std::net::IpAddr;
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::Args;
use ctnetlink::{Conntrack, Filter, Flow, TupleMatch};

use super::cluster_args::{ClusterArgs, Need, PolicyArgs};
use crate::exit::{input_error, ExitCode};
use crate::flow_json::FlowRecord;
use crate::kube_proxy::HttpUrl;
use crate::render;
use crate::scan::classify_matching;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// A flow (`tcp 192.0.2.2:40000 -> 198.51.100.10:80`, IPv6 as `[2001:db8::1]:80`) or an IP
    /// (every flow from, to, or DNAT'd to it).
    #[arg(required = true, num_args = 1..)]
    pub target: Vec<String>,
    /// text or json.
    #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// Also ask the agent on this node (its admin address, e.g. http://127.0.0.1:9477) what it
    /// removed of these flows lately: its `/debug/recent` entries that match, with the verdict,
    /// the result and, with `--terminate-sockets`, whether the client's socket was ended. A flow
    /// the agent removed is no longer in the table: this is where its story is.
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
}

/// How long the agent's `/debug/recent` may take to answer.
const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(IpAddr),
    Flow {
        proto: u8,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
    },
}

fn endpoint(s: &str) -> anyhow::Result<(IpAddr, u16)> {
    let sa =
        std::net::SocketAddr::from_str(s).with_context(|| format!("{s:?} is not ADDRESS:PORT"))?;
    Ok((sa.ip(), sa.port()))
}

impl FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        let words: Vec<&str> = s.split_whitespace().filter(|w| *w != "->").collect();
        let [proto, src, dst] = words.as_slice() else {
            bail!("expected an IP or `PROTO SRC:SPORT -> DST:DPORT`, got {s:?}");
        };
        let proto = ctnetlink::proto_from_name(proto)
            .with_context(|| format!("unknown protocol {proto:?}"))?;
        let (src, sport) = endpoint(src)?;
        let (dst, dport) = endpoint(dst)?;
        Ok(Target::Flow {
            proto,
            src,
            sport,
            dst,
            dport,
        })
    }
}

impl Target {
    /// Whether a flow object (docs/flow.schema.json), e.g. an agent's `/debug/recent` entry, is
    /// one this target names.
    fn matches_json(&self, v: &serde_json::Value) -> bool {
        let ip = |t: &str, k: &str| v[t][k].as_str().and_then(|s| s.parse::<IpAddr>().ok());
        let port = |t: &str, k: &str| v[t][k].as_u64();
        match *self {
            Target::Ip(want) => [
                ip("original", "src"),
                ip("original", "dst"),
                ip("reply", "src"),
                ip("reply", "dst"),
            ]
            .contains(&Some(want)),
            Target::Flow {
                proto,
                src,
                sport,
                dst,
                dport,
            } => {
                v["protocol"].as_str() == Some(ctnetlink::proto_name(proto))
                    && ip("original", "src") == Some(src)
                    && port("original", "sport") == Some(u64::from(sport))
                    && ip("original", "dst") == Some(dst)
                    && port("original", "dport") == Some(u64::from(dport))
            }
        }
    }

    fn matches(&self, f: &Flow) -> bool {
        match *self {
            Target::Ip(ip) => {
                f.orig.src == ip || f.orig.dst == ip || f.reply.src == ip || f.reply.dst == ip
            }
            Target::Flow {
                proto,
                src,
                sport,
                dst,
                dport,
            } => {
                f.proto() == proto
                    && f.orig.src == src
                    && f.orig.sport() == Some(sport)
                    && f.orig.dst == dst
                    && f.orig.dport() == Some(dport)
            }
        }
    }
    fn filter(&self) -> Filter {
        match *self {
            Target::Ip(_) => Filter::default(),
            Target::Flow {
                proto,
                src,
                sport,
                dst,
                dport,
            } => Filter::new().with_proto(proto).with_orig(
                TupleMatch::new()
                    .with_src(src)
                    .with_sport(sport)
                    .with_dst(dst)
                    .with_dport(dport),
            ),
        }
    }
}

pub fn run(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let target: Target = a.target.join(" ").parse().map_err(input_error)?;
    let agent_url = a
        .agent
        .as_deref()
        .map(recent_url)
        .transpose()
        .map_err(input_error)?;
    let policy = a.policy.policy().map_err(input_error)?;
    let loaded = a.cluster.load_for(Need::Report)?;
    let mut ct = Conntrack::open_in(a.cluster.netns.as_deref()).context("open conntrack")?;
    let found = classify_matching(&mut ct, &loaded.index, &policy, &target.filter(), |f| {
        target.matches(f)
    })?;
    if a.output == "json" {
        let items: Vec<FlowRecord<'_>> = found
            .iter()
            .map(|f| FlowRecord::new(f).with_trace())
            .collect();
        let mut doc = serde_json::json!({ "flows": items });
        if let Some(url) = &agent_url {
            doc["removed_by_agent"] = serde_json::Value::Array(removed_by_agent(url, &target)?);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::Ok);
    }
    if found.is_empty() {
        println!("no conntrack entry matches {}", a.target.join(" "));
    }
    for f in &found {
        let mut row = Vec::new();
        render::write_row(&mut row, &f.flow, true)?;
        print!("{}", String::from_utf8_lossy(&row));
        let v = &f.verdict;
        println!(
            "  verdict: {}{}  removable: {}",
            v.kind,
            if v.evidence.is_empty() {
                String::new()
            } else {
                format!(
                    " (evidence: {})",
                    v.evidence
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            if v.removable { "yes" } else { "no" }
        );
        for line in v.trace.to_string().lines() {
            println!("    {line}");
        }
        if let Some(k) = v.kept_explanation() {
            println!("  kept because: {k}");
        }
        println!();
    }
    if let Some(url) = &agent_url {
        let removed = removed_by_agent(url, &target)?;
        println!(
            "the agent removed {} matching flow{} lately (its /debug/recent):",
            removed.len(),
            if removed.len() == 1 { "" } else { "s" }
        );
        for r in &removed {
            println!("  {}", removal_line(r));
        }
    }
    Ok(ExitCode::Ok)
}

/// `URL` + `/debug/recent` (the agent's admin address, with or without a path).
fn recent_url(agent: &str) -> anyhow::Result<HttpUrl> {
    let mut url = HttpUrl::parse(agent).map_err(|e| anyhow::anyhow!("--agent: {e}"))?;
    if url.path == "/" {
        url.path = "/debug/recent".to_string();
    }
    Ok(url)
}

/// The agent's `/debug/recent` entries that match `target`, newest first.
fn removed_by_agent(url: &HttpUrl, target: &Target) -> anyhow::Result<Vec<serde_json::Value>> {
    let shown = format!("http://{}{}", url.host_header(), url.path);
    let r = crate::kube_proxy::get_blocking(url, AGENT_TIMEOUT)
        .with_context(|| format!("ask the agent at {shown}"))?;
    if r.status != 200 {
        bail!(
            "the agent at {shown} answered {}: {} (it answers /debug/recent on localhost only, \
             unless --expose-debug-recent)",
            r.status,
            r.body.trim()
        );
    }
    let doc: serde_json::Value = serde_json::from_str(&r.body)
        .with_context(|| format!("the agent at {shown} answered something other than JSON"))?;
    let flows = doc["flows"]
        .as_array()
        .with_context(|| format!("the agent at {shown}: no `flows` in its answer"))?;
    Ok(flows
        .iter()
        .filter(|f| target.matches_json(f))
        .cloned()
        .collect())
}

/// One removal as a line: when, the flow, what the agent did and why, and the socket's fate.
fn removal_line(r: &serde_json::Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let end = |t: &str| {
        let v = &r[t];
        let ip = v["src"].as_str().unwrap_or("?");
        let port = v["sport"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let dip = v["dst"].as_str().unwrap_or("?");
        let dport = v["dport"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_default();
        format!("{}:{port} -> {}:{dport}", bracket(ip), bracket(dip))
    };
    let socket = match r["socket"].as_str() {
        Some(x) => format!(", client socket: {x}"),
        None => String::new(),
    };
    format!(
        "{} {} {} (backend {}): {} — {}, result {}{socket}",
        s("time"),
        s("protocol"),
        end("original"),
        r["reply"]["src"].as_str().unwrap_or("?"),
        s("verdict"),
        s("reason"),
        s("result"),
    )
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(
        proto: &str,
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        backend: &str,
    ) -> serde_json::Value {
        json!({
            "protocol": proto,
            "original": { "src": src, "sport": sport, "dst": dst, "dport": dport },
            "reply": { "src": backend, "sport": 8080, "dst": src, "dport": sport },
        })
    }

    /// An agent's entry matches by the same rule as a table's flow: the exact original tuple
    /// and protocol, or an IP on either side of either tuple (the backend included).
    #[test]
    fn agent_entries_match_like_table_flows() {
        let e = entry(
            "tcp",
            "192.0.2.10",
            40000,
            "198.51.100.40",
            80,
            "203.0.113.10",
        );
        let flow: Target = "tcp 192.0.2.10:40000 -> 198.51.100.40:80".parse().unwrap();
        assert!(flow.matches_json(&e));
        for other in [
            "udp 192.0.2.10:40000 -> 198.51.100.40:80",
            "tcp 192.0.2.10:40001 -> 198.51.100.40:80",
            "tcp 192.0.2.10:40000 -> 198.51.100.40:81",
        ] {
            assert!(
                !other.parse::<Target>().unwrap().matches_json(&e),
                "{other}"
            );
        }
        for ip in ["192.0.2.10", "198.51.100.40", "203.0.113.10"] {
            assert!(ip.parse::<Target>().unwrap().matches_json(&e), "{ip}");
        }
        assert!(!"203.0.113.11".parse::<Target>().unwrap().matches_json(&e));
        assert!(
            !flow.matches_json(&json!({})),
            "a malformed entry matches nothing"
        );
    }

    #[test]
    fn the_agent_url_gets_the_recent_path_and_bad_ones_are_refused() {
        assert_eq!(
            recent_url("http://127.0.0.1:9477").unwrap().path,
            "/debug/recent"
        );
        assert_eq!(recent_url("http://[::1]:9477/x").unwrap().path, "/x");
        for bad in [
            "https://127.0.0.1:9477",
            "127.0.0.1:9477",
            "http://:9477",
            "http://h:port",
        ] {
            let e = recent_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("--agent: "), "{bad}: {e}");
        }
    }

    #[test]
    fn a_removal_line_says_what_happened_to_the_socket() {
        let mut e = entry(
            "tcp",
            "2001:db8::5",
            40000,
            "2001:db8::1",
            80,
            "2001:db8::9",
        );
        e["time"] = json!("2026-12-07T12:00:00Z");
        e["verdict"] = json!("endpoint_gone");
        e["reason"] = json!("the pod is gone");
        e["result"] = json!("deleted");
        let line = removal_line(&e);
        assert!(
            line.contains("[2001:db8::5]:40000 -> [2001:db8::1]:80"),
            "{line}"
        );
        assert!(
            line.contains("endpoint_gone") && line.contains("result deleted"),
            "{line}"
        );
        assert!(!line.contains("socket"), "{line}");
        e["socket"] = json!("unconnected");
        assert!(removal_line(&e).ends_with("client socket: unconnected"));
    }
}
