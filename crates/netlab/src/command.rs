//! Running the helper programs. netlab is a lab harness, not product code: shelling out to `ip`
//! and `nft` keeps it short and makes every step reproducible by hand (`ip -n NAME ...`).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Runs `program args...`, feeding `stdin` if given; returns stdout. A non-zero exit becomes
/// [`Error::Command`] carrying stderr, so `nft` syntax errors show the offending line.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let package = match program {
        "nft" => "nftables",
        "conntrack" => "conntrack",
        "iptables-restore" | "ip6tables-restore" | "iptables-save" | "ip6tables-save" => "iptables",
        _ => "iproute2",
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            package,
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (EPIPE) means the program exited early; its status tells why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{program}`"), e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut shown = format!("{program} {}", args.join(" "));
    if let Some(input) = stdin {
        let first: Vec<&str> = input.lines().take(3).collect();
        shown.push_str(&format!(" <<< {:?}...", first.join("; ")));
    }
    Err(Error::Command {
        command: shown,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs many `ip` commands (one per line, without the leading `ip`) inside `netns` with a single
/// process: `ip -n NETNS -batch -`. Lines are applied in order; the first failure stops it.
pub(crate) fn ip_batch(netns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut script = lines.join("\n");
    script.push('\n');
    run("ip", &["-n", netns, "-batch", "-"], Some(&script)).map(|_| ())
}

/// Loads an nft script into `netns` as one transaction (`nft -f -`): either all of it applies
/// or none of it does, which is what makes a rule rewrite atomic.
pub(crate) fn nft(netns: &str, script: &str) -> Result<String> {
    run(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(script),
    )
}

/// Runs `nft ARGS...` inside `netns` (for listing).
pub(crate) fn nft_args(netns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", netns, "nft"];
    all.extend_from_slice(args);
    run("ip", &all, None)
}

/// Loads an `iptables-restore` file into `netns` (`ip6tables-restore` when `v6`). Without
/// `--noflush` every table named in `rules` is replaced as a whole, atomically per table, which
/// is right for a lab node that owns its namespace's `filter` and `nat` tables.
pub(crate) fn iptables_restore(netns: &str, v6: bool, rules: &str) -> Result<String> {
    let program = if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    };
    run("ip", &["netns", "exec", netns, program], Some(rules))
}

/// `iptables-save` (`ip6tables-save` when `v6`) inside `netns`.
pub(crate) fn iptables_save(netns: &str, v6: bool) -> Result<String> {
    let program = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    run("ip", &["netns", "exec", netns, program], None)
}
