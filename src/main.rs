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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Puzzles(args) => std::process::exit(minarc::puzzle::cli::main(&args)),
    }
}
