//! `ghostbuster list`: stream the table through filters into a table, JSON or NDJSON.
//!
//! Nothing is collected: each entry goes from the receive buffer through the filter to the
//! output. `--count` still parses every entry (it is the benchmarks' baseline for a full dump);
//! the cheap kernel counter is `ghostbuster stats`.

use std::io::{BufWriter, Write};
use std::ops::ControlFlow;

use anyhow::Context;
use clap::Args;
use ctnetlink::{Conntrack, Flow};

use super::filter_args::FilterArgs;
use super::Output;
use crate::exit::{input_error, ExitCode};
use crate::render;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Network namespace (a name under /run/netns, or a path such as /proc/PID/ns/net).
    #[arg(long)]
    pub netns: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// Print only the number of matching entries.
    #[arg(long)]
    pub count: bool,
}

pub fn run(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (filter, state) = a.filter.build().map_err(input_error)?;
    let mut ct = Conntrack::open_in(a.netns.as_deref()).context("open conntrack")?;
    // Not the locked handle: the rows are written from the dump's decoding thread.
    let mut out = BufWriter::with_capacity(256 * 1024, std::io::stdout());
    let mut n: u64 = 0;
    let mut write_err: Option<std::io::Error> = None;
    let mut first = true;
    if !a.count {
        match a.output {
            Output::Table | Output::Wide => {
                render::write_header(&mut out, a.output == Output::Wide)?
            }
            Output::Json => out.write_all(b"{\"flows\":[")?,
            Output::Ndjson => {}
        }
    }
    let each = |f: &Flow| {
        if !state.matches(f) {
            return ControlFlow::Continue(());
        }
        n += 1;
        if a.count {
            return ControlFlow::Continue(());
        }
        let r = match a.output {
            Output::Table | Output::Wide => {
                render::write_row(&mut out, f, a.output == Output::Wide)
            }
            Output::Json => {
                let sep: &[u8] = if first { b"\n" } else { b",\n" };
                first = false;
                out.write_all(sep).and_then(|_| {
                    serde_json::to_writer(&mut out, &render::FlowJson(f)).map_err(Into::into)
                })
            }
            Output::Ndjson => serde_json::to_writer(&mut out, &render::FlowJson(f))
                .map_err(Into::into)
                .and_then(|_| out.write_all(b"\n")),
        };
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        }
    };
    // With a spare core, decoding and writing overlap the kernel's walk of its table.
    let summary = if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        ct.dump_pipelined(&filter, each)?
    } else {
        ct.dump(&filter, each)?
    };
    if let Some(e) = write_err {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::Ok);
        }
        return Err(e).context("write output");
    }
    if a.count {
        writeln!(out, "{n}")?;
    } else if a.output == Output::Json {
        write!(out, "\n],\"count\":{n}")?;
        if summary.malformed > 0 {
            write!(out, ",\"malformed\":{}", summary.malformed)?;
        }
        writeln!(out, "}}")?;
    }
    out.flush()?;
    if summary.malformed > 0 {
        tracing::warn!(
            malformed = summary.malformed,
            first_error = ?summary.first_error,
            "some entries did not parse and were skipped"
        );
    }
    Ok(ExitCode::Ok)
}
