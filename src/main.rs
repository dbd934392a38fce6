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
    /// Serve a model and its activation cache over HTTP (connect with the Remote backend).
    Serve(minarc::remote::cli::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Puzzles(args) => std::process::exit(minarc::puzzle::cli::main(&args)),
        Command::Serve(args) => minarc::remote::cli::run(&args),
    }
}
