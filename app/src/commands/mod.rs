//! Dispatch of `ditlens` subcommands.

mod bench;
mod embedded;
mod forward;
mod train;

use crate::cli::{Cli, Command};
use clap::CommandFactory;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Forward(a)) => forward::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Generate(a)) => embedded::generate(a),
        Some(Command::Segment(a)) => embedded::segment(a),
        Some(Command::Eval(a)) => embedded::eval(a),
        Some(Command::MakeDataset(a)) => embedded::make_dataset(a),
        None => {
            // The explorer window is not part of this build yet: show what the CLI offers.
            Cli::command().print_help()?;
            println!();
            Ok(())
        }
    }
}
