//! Dispatch of `ditlens` subcommands.

mod analyses;
mod bench;
mod bench_train;
mod embedded;
mod forward;
mod perturb;
mod probe;
mod samples;
mod sd3;
mod sd3_generate;
mod train;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Forward(a)) => forward::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::BenchTrain(a)) => bench_train::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::ExportModel(a)) => train::export(a),
        Some(Command::TrainJudge(a)) => samples::train_judge(a),
        Some(Command::Samples(a)) => samples::run(a),
        Some(Command::Generate(a)) => sd3_generate::generate(a),
        Some(Command::Segment(a)) => embedded::segment_image(a),
        Some(Command::Eval(a)) => embedded::eval(a),
        Some(Command::MakeDataset(a)) => embedded::make_dataset(a),
        Some(Command::Probe(a)) => probe::run(a),
        Some(Command::Mass(a)) => analyses::mass(a),
        Some(Command::ValueNorms(a)) => analyses::value_norms(a),
        Some(Command::Pca(a)) => analyses::pca(a),
        Some(Command::HeadGrid(a)) => analyses::head_grid(a),
        Some(Command::TokenGrid(a)) => analyses::token_grid(a),
        Some(Command::PerturbSweep(a)) => perturb::sweep(a),
        Some(Command::EncodePrompt(a)) => sd3::encode_prompt(a),
        Some(Command::Gui(a)) => crate::gui::run(&a),
        None => crate::gui::run(&cli.window),
    }
}
