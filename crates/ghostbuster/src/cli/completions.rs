//! `ghostbuster completions SHELL`.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::exit::ExitCode;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

pub fn run(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "ghostbuster", &mut std::io::stdout());
    Ok(ExitCode::Ok)
}
