//! `ditlens`: the DiT Lens binary. With no arguments it will open the explorer window; with a
//! subcommand it runs headless. Errors are printed once, on one line, with a non-zero exit.

mod cli;
mod commands;
mod models;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
