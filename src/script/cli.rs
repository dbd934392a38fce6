//! Command-line entry points for `minarc run`, `minarc watch`, `minarc repl` and
//! `minarc help-functions` (main.rs only parses arguments and calls these).

use crate::script::host::Host;
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
    /// Arguments for the script, available as the constant array `ARGS`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `minarc watch FILE [-- args]`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The script file to run and re-run on every save.
    pub file: PathBuf,
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
    let mut host = Host::new();
    install_interrupt_handler(&host)?;
    let result = runner::run(&mut host, &args.file, args.args);
    if let Err(e) = &result {
        eprintln!("{e}");
    }
    Ok(runner::exit_code(&result))
}

/// `minarc watch`: runs until Ctrl-C while idle.
pub fn watch(args: WatchArgs) -> Result<i32> {
    let mut host = Host::new();
    install_interrupt_handler(&host)?;
    host.set_args(args.args);
    let stop_flag = host.state().interrupt_handle();
    let mut w = Watcher::new(host, &args.file);
    report(1, w.run_once().map(|_| ()));
    eprintln!(
        "watching {} (Ctrl-C while idle to quit)",
        args.file.display()
    );
    // While idle, the interrupt flag means "quit"; during a run it only stops the run
    // (run_once clears it afterwards).
    w.event_loop(&stop_flag, |ev| {
        if let WatchEvent::Ran(n, r) = ev {
            report(*n, r.clone());
        }
    })?;
    Ok(0)
}

fn report(run: usize, r: Result<(), crate::script::ScriptError>) {
    match r {
        Ok(()) => eprintln!("-- run {run}: ok"),
        Err(e) => eprintln!("{e}\n-- run {run}: failed (host state kept; save to run again)"),
    }
}

/// `minarc repl`.
pub fn repl() -> Result<i32> {
    let host = Host::new();
    install_interrupt_handler(&host)?;
    repl::run_terminal(host)?;
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
