//! `ditlens`: the DiT Lens binary. With no subcommand it opens the explorer window; with a
//! subcommand it runs headless. Errors are printed once, on one line, with a non-zero exit.

use clap::Parser;
use ditlens::{cli, commands};

// Large short-lived tensors next to long-lived captures fragment glibc's heap; mimalloc keeps
// capture overhead and training allocation costs low.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
