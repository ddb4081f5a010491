//! Dispatch of `ditlens` subcommands.

mod bench;
mod forward;

use crate::cli::{Cli, Command};
use clap::CommandFactory;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Forward(a)) => forward::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        None => {
            // The explorer window is not part of this build yet: show what the CLI offers.
            Cli::command().print_help()?;
            println!();
            Ok(())
        }
    }
}
