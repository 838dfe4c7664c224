//! `ghostbuster demo`: reproduce the seeds' failures in throwaway namespaces and fix them (see
//! [`crate::demo`]). Exit 0 when every act passed, 1 when one did not (its control run did not
//! fail, or its fixed run did not recover), 3 for environment errors (not root, a tool missing);
//! Ctrl-C removes the labs and ends the process with SIGINT's status.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::cluster_args::parse_duration;
use crate::demo::{self, Options};
use crate::exit::{CodedError, ExitCode};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run only this act (repeatable): agent (or 0) the real agent at work, 1 the ghost pod, 2
    /// the wrong backend, 3 the UDP blackhole, 4 who fills the table. Default: all, agent first.
    #[arg(long, value_name = "agent|N", value_parser = parse_act)]
    pub act: Vec<u8>,
    /// The rules the lab's kube-proxy renders: its nftables or its iptables proxier's.
    #[arg(long, value_enum, default_value = "nftables")]
    pub proxy_mode: ProxyModeArg,
    /// Leave the labs' namespaces in place and print how to explore them.
    #[arg(long)]
    pub keep: bool,
    /// How long the control runs of acts 1 and 3 watch the failure (2s to 60s).
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    pub window: Duration,
    /// table: the narrated story; json: the results on stdout (the story goes to stderr).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: DemoOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyModeArg {
    Nftables,
    Iptables,
}

impl From<ProxyModeArg> for demo::ProxyMode {
    fn from(m: ProxyModeArg) -> Self {
        match m {
            ProxyModeArg::Nftables => demo::ProxyMode::Nftables,
            ProxyModeArg::Iptables => demo::ProxyMode::Iptables,
        }
    }
}

/// `agent` or `0` to `4`.
fn parse_act(s: &str) -> Result<u8, String> {
    match s.trim() {
        "agent" => Ok(0),
        n => match n.parse::<u8>() {
            Ok(n) if n <= 4 => Ok(n),
            _ => Err(format!("{s:?}: the acts are agent (or 0), 1, 2, 3 and 4")),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoOutput {
    Table,
    Json,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(2) || d > Duration::from_secs(60) {
        return Err(format!("{s:?}: the window must be 2s to 60s"));
    }
    Ok(d)
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = Options {
        acts: a.act,
        keep: a.keep,
        window: a.window,
        narrate_to_stderr: a.output == DemoOutput::Json,
        proxy_mode: a.proxy_mode.into(),
    };
    let report = match demo::run(&opts) {
        Ok(r) => r,
        Err(demo::Error::Interrupted) => {
            eprintln!("\nghostbuster demo: interrupted; the labs were removed");
            let _ = std::io::stdout().flush();
            demo::reraise();
        }
        Err(e) if e.is_environment() => {
            return Err(CodedError {
                code: ExitCode::Environment,
                error: e.into(),
            }
            .into());
        }
        Err(e) => {
            return Err(CodedError {
                code: ExitCode::Input,
                error: anyhow::Error::new(e).context("the demo stopped; its labs were removed"),
            }
            .into());
        }
    };
    if a.output == DemoOutput::Json {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    }
    Ok(if report.passed {
        ExitCode::Ok
    } else {
        ExitCode::Found
    })
}
