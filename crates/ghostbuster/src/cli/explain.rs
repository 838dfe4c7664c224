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
}

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
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "flows": items }))?
        );
        return Ok(ExitCode::Ok);
    }
    if found.is_empty() {
        println!("no conntrack entry matches {}", a.target.join(" "));
        return Ok(ExitCode::Ok);
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
    Ok(ExitCode::Ok)
}
