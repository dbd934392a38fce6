//! Command-line entry points for `minarc run`, `minarc watch`, `minarc repl` and
//! `minarc help-functions` (main.rs only parses arguments and calls these).

use crate::script::host::Host;
use crate::script::shard::{self, Shard, ShardMode};
use crate::script::state::{Output, SharedBuf};
use crate::script::watch::{WatchEvent, Watcher};
use crate::script::{repl, runner};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// `minarc run FILE [-- args]`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The script file.
    pub file: PathBuf,
    /// Run one shard of the script's work: `i/N` (0-based), or `auto` for the index a Slurm
    /// job array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, MINARC_SHARD_COUNT) gives. `forward` and `mr` see the i-th
    /// contiguous slice of their items; each `mr` call writes its partial sums to --shard-dir.
    #[arg(long, value_name = "i/N|auto")]
    pub shard: Option<String>,
    /// Folder of the sharded run's partial results (each shard writes `shard-i-of-N/`).
    #[arg(long, value_name = "DIR", default_value = "shards", requires = "shard")]
    pub shard_dir: PathBuf,
    /// Run the script with every `mr` call answered from the sums `minarc reduce DIR` merged
    /// (and `forward` computing nothing): the output of one unsharded run.
    #[arg(long, value_name = "DIR", conflicts_with = "shard")]
    pub reduced: Option<PathBuf>,
    /// Arguments for the script, available as the constant array `ARGS`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `minarc reduce DIR`.
#[derive(Args, Debug)]
pub struct ReduceArgs {
    /// The --shard-dir of a sharded run (all its shards finished).
    pub dir: PathBuf,
}

/// `minarc watch FILE [-- args]`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The script file to run and re-run on every save.
    pub file: PathBuf,
    /// Show every run's output, errors, figures and shown values on a page at
    /// http://127.0.0.1:PORT/ that updates itself.
    #[arg(long)]
    pub view: bool,
    /// Port of the live view (127.0.0.1 only; 0 = any free port).
    #[arg(long, default_value_t = 8300)]
    pub port: u16,
    /// Arguments for the script, available as the constant array `ARGS`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `minarc help-functions`.
#[derive(Args, Debug)]
pub struct HelpFunctionsArgs {
    /// Print Markdown tables (the function table of docs/src/functions.md) instead of plain text.
    #[arg(long)]
    pub markdown: bool,
}

/// Ctrl-C sets the host's interrupt flag; a second Ctrl-C before the flag was consumed
/// (e.g. stuck in a native call that does not check it) exits the process.
pub fn install_interrupt_handler(host: &Host) -> Result<()> {
    let flag = host.state().interrupt_handle();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting");
            std::process::exit(runner::EXIT_INTERRUPTED);
        }
    })
    .context("cannot install the Ctrl-C handler")
}

/// `minarc run`: returns the process exit code.
pub fn run(args: RunArgs) -> Result<i32> {
    let mode = match (&args.shard, &args.reduced) {
        (Some(s), _) => {
            let shard = if s.trim() == "auto" {
                Shard::from_env(|k| std::env::var(k).ok())?
            } else {
                Shard::parse(s)?
            };
            eprintln!(
                "shard {}/{}: partial results in {}",
                shard.index,
                shard.count,
                shard.dir(&args.shard_dir).display()
            );
            ShardMode::Shard {
                shard,
                dir: args.shard_dir.clone(),
            }
        }
        (None, Some(dir)) => {
            anyhow::ensure!(
                dir.is_dir(),
                "--reduced {}: no such folder (run minarc reduce on the --shard-dir first)",
                dir.display()
            );
            ShardMode::Replay(dir.clone())
        }
        (None, None) => ShardMode::Whole,
    };
    let mut host = Host::new();
    host.state().set_shard_mode(mode);
    install_interrupt_handler(&host)?;
    let result = runner::run(&mut host, &args.file, args.args);
    if let Err(e) = &result {
        eprintln!("{e}");
    }
    Ok(runner::exit_code(&result))
}

/// `minarc reduce DIR`: merges the shards' partial sums into DIR/reduced.
pub fn reduce(args: ReduceArgs) -> Result<i32> {
    let r = shard::reduce(&args.dir)?;
    for line in &r.calls {
        println!("{line}");
    }
    println!(
        "merged {} shards into {}; run the script with --reduced {} for the full results",
        r.shards,
        r.out.display(),
        args.dir.display()
    );
    Ok(0)
}

/// `minarc watch`: runs until Ctrl-C while idle.
pub fn watch(args: WatchArgs) -> Result<i32> {
    let (output, buf) = if args.view {
        let (o, b) = Output::tee_stdout();
        (o, Some(b))
    } else {
        (Output::stdout(), None)
    };
    let mut host = Host::with_output(output);
    install_interrupt_handler(&host)?;
    host.set_args(args.args);
    let stop_flag = host.state().interrupt_handle();
    let view = match buf {
        Some(b) => {
            let v = ViewSession::start(args.port, host.state().clone(), b)?;
            eprintln!("live view: {}", v.url());
            Some(v)
        }
        None => None,
    };
    let mut w = Watcher::new(host, &args.file);
    let first = w.run_once().map(|_| ());
    if let Some(v) = &view {
        v.publish(1, &first);
    }
    report(1, first);
    eprintln!(
        "watching {} (Ctrl-C while idle to quit)",
        args.file.display()
    );
    // While idle, the interrupt flag means "quit"; during a run it only stops the run
    // (run_once clears it afterwards).
    w.event_loop(&stop_flag, |ev| {
        if let WatchEvent::Ran(n, r) = ev {
            if let Some(v) = &view {
                v.publish(*n, r);
            }
            report(*n, r.clone());
        }
    })?;
    Ok(0)
}

/// A live view bound to a host: each [`ViewSession::publish`] sends what the host printed,
/// showed and wrote since the last one.
pub struct ViewSession {
    view: crate::script::view::View,
    state: std::sync::Arc<crate::script::state::HostState>,
    buf: SharedBuf,
}

impl ViewSession {
    /// Starts the view on 127.0.0.1:`port` and records the files written on this thread.
    pub fn start(
        port: u16,
        state: std::sync::Arc<crate::script::state::HostState>,
        buf: SharedBuf,
    ) -> Result<Self> {
        crate::vis::written::start_recording();
        Ok(Self {
            view: crate::script::view::View::start(port)?,
            state,
            buf,
        })
    }

    /// The page's address.
    pub fn url(&self) -> String {
        self.view.url()
    }

    /// Publishes run `n` with its result.
    pub fn publish(&self, n: usize, result: &Result<(), crate::script::ScriptError>) {
        self.publish_error(n, result.as_ref().err().map(|e| e.to_string()));
    }

    /// Publishes run `n` with its error text (None: it worked).
    pub fn publish_error(&self, n: usize, error: Option<String>) {
        let output = self.buf.contents();
        self.buf.clear();
        self.view.publish(crate::script::view::ViewRun {
            n,
            error,
            output,
            shown: self.state.take_shown(),
            files: crate::vis::written::take_recorded(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
    }
}

fn report(run: usize, r: Result<(), crate::script::ScriptError>) {
    match r {
        Ok(()) => eprintln!("-- run {run}: ok"),
        Err(e) => eprintln!("{e}\n-- run {run}: failed (host state kept; save to run again)"),
    }
}

/// `minarc repl [--view]`.
#[derive(Args, Debug)]
pub struct ReplArgs {
    /// Show every entry's output, errors, figures and shown values on a page at
    /// http://127.0.0.1:PORT/ that updates itself.
    #[arg(long)]
    pub view: bool,
    /// Port of the live view (127.0.0.1 only; 0 = any free port).
    #[arg(long, default_value_t = 8300)]
    pub port: u16,
}

/// `minarc repl`.
pub fn repl(args: ReplArgs) -> Result<i32> {
    if !args.view {
        let host = Host::new();
        install_interrupt_handler(&host)?;
        repl::run_terminal(host)?;
        return Ok(0);
    }
    let (output, buf) = Output::tee_stdout();
    let host = Host::with_output(output);
    install_interrupt_handler(&host)?;
    let view = ViewSession::start(args.port, host.state().clone(), buf)?;
    repl::run_terminal_with(host, Some(view))?;
    Ok(0)
}

/// `minarc help-functions [--markdown]`.
pub fn help_functions(args: HelpFunctionsArgs) -> Result<i32> {
    let host = Host::new();
    if args.markdown {
        print!("{}", host.docs().markdown());
    } else {
        for l in host.docs().help_lines() {
            println!("{l}");
        }
    }
    Ok(0)
}
