//! The `minarc` command line: a thin layer over the library's domain modules.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "minarc",
    version,
    about = "Mechanistic interpretability workbench for Qwen2 models on ARC-style puzzles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate MinARC puzzles and write them as a JSONL dataset of samples.
    Puzzles(minarc::puzzle::cli::PuzzlesArgs),
    /// Write a fixture model folder (HF layout, deterministic random weights, fixture tokenizer).
    InitModel(minarc::model::cli::InitModelArgs),
    /// Render an attribution-graph view (JSON) as a self-contained HTML page (and DOT/JSON).
    Graph(minarc::vis::cli::GraphArgs),
    /// Benchmarks that print timings and ratios.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve a model and its activation cache over HTTP (connect with the Remote backend).
    Serve(minarc::remote::cli::ServeArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Plain forward vs forward with full capture.
    Forward(minarc::model::cli::BenchForwardArgs),
    /// Attribution primitives as multiples of one plain forward.
    Attribution(minarc::attribution::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Puzzles(args) => std::process::exit(minarc::puzzle::cli::main(&args)),
        Command::InitModel(args) => minarc::model::cli::run_init_model(&args),
        Command::Graph(args) => minarc::vis::cli::run(&args),
        Command::Bench(BenchCommand::Forward(args)) => minarc::model::cli::bench_forward(&args),
        Command::Bench(BenchCommand::Attribution(args)) => minarc::attribution::bench::run(&args),
        Command::Serve(args) => minarc::remote::cli::run(&args),
    }
}
