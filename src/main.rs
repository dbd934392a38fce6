//! The `minarc` command line: a thin layer over the library's domain modules.

use clap::{Parser, Subcommand};
use minarc::script::cli as script_cli;

#[derive(Parser)]
#[command(
    name = "minarc",
    version,
    about = "Mechanistic interpretability workbench for Qwen2 models on ARC-style puzzles"
)]
struct Cli {
    /// Show error backtraces (also MINARC_DEBUG=1). Without it, errors are one clear message
    /// even when RUST_BACKTRACE is set.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Rhai script (`minarc run FILE -- args`); errors print file:line:col.
    Run(script_cli::RunArgs),
    /// Merge the partial results of a sharded run (`minarc run --shard`) for `--reduced`.
    Reduce(script_cli::ReduceArgs),
    /// Run a script and re-run it on every save, keeping models and caches loaded.
    Watch(script_cli::WatchArgs),
    /// Interactive Rhai shell with the model kept loaded.
    Repl(script_cli::ReplArgs),
    /// List every script function with its signature and doc (`--markdown` for the tables of docs/src/functions.md).
    HelpFunctions(script_cli::HelpFunctionsArgs),
    /// Generate MinARC puzzles and write them as a JSONL dataset of samples.
    Puzzles(minarc::puzzle::cli::PuzzlesArgs),
    /// Write a fixture model folder (HF layout, deterministic random weights, fixture tokenizer).
    InitModel(minarc::model::cli::InitModelArgs),
    /// Render an attribution-graph view (JSON) as a self-contained HTML page (and DOT/JSON).
    Graph(minarc::vis::cli::GraphArgs),
    /// Memory a model needs (weights, one forward, the capture per sample) and a layer
    /// placement over devices, from its config alone.
    Plan(minarc::model::cli::PlanArgs),
    /// Benchmarks that print timings and ratios.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve a model and its activation cache over HTTP (connect with the Remote backend).
    Serve(minarc::remote::cli::ServeArgs),
    /// Train a Qwen2-architecture model on MinARC puzzles (HF folder out; checkpoints, --resume).
    Train(minarc::train::cli::TrainArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Plain forward vs forward with full capture.
    Forward(minarc::model::cli::BenchForwardArgs),
    /// Attribution primitives as multiples of one plain forward.
    Attribution(minarc::attribution::bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let debug = cli.debug || minarc::limits::env_flag("MINARC_DEBUG");
    // Library errors (anyhow, candle) capture a backtrace when RUST_BACKTRACE is set and print
    // it inside ordinary messages; RUST_LIB_BACKTRACE=0 turns that capture off (panics keep
    // RUST_BACKTRACE). Set before any thread exists or any error is built.
    // SAFETY: single-threaded here; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("RUST_LIB_BACKTRACE", if debug { "1" } else { "0" });
    }
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if debug {
                eprintln!("error: {e:?}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let code = match cli.command {
        Command::Run(a) => script_cli::run(a)?,
        Command::Reduce(a) => script_cli::reduce(a)?,
        Command::Watch(a) => script_cli::watch(a)?,
        Command::Repl(a) => script_cli::repl(a)?,
        Command::HelpFunctions(a) => script_cli::help_functions(a)?,
        Command::Puzzles(args) => minarc::puzzle::cli::main(&args),
        Command::InitModel(args) => minarc::model::cli::run_init_model(&args).map(|_| 0)?,
        Command::Graph(args) => minarc::vis::cli::run(&args).map(|_| 0)?,
        Command::Bench(BenchCommand::Forward(args)) => {
            minarc::model::cli::bench_forward(&args).map(|_| 0)?
        }
        Command::Bench(BenchCommand::Attribution(args)) => {
            minarc::attribution::bench::run(&args).map(|_| 0)?
        }
        Command::Plan(args) => minarc::model::cli::run_plan(&args).map(|_| 0)?,
        Command::Serve(args) => minarc::remote::cli::run(&args).map(|_| 0)?,
        Command::Train(args) => minarc::train::cli::main(args)?,
    };
    Ok(code)
}
