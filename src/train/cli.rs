//! `minarc train` arguments.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::config::TrainConfig;
use super::run::{RunOptions, run};

/// Arguments of `minarc train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Configuration file (TOML or JSON; fields left out keep their defaults). Without it the
    /// defaults are used (see --write-config).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder: checkpoints/, model/ (the trained model), train.json, curve.png/svg.
    #[arg(long, default_value = "out/train")]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in OUT/checkpoints (same configuration).
    #[arg(long)]
    pub resume: bool,
    /// Start from the weights of a checkpoint (OUT/checkpoints/step-N.safetensors of an earlier
    /// run with the same model section): a next training phase with its own configuration,
    /// optimiser and schedule. The earlier run is recorded in the checkpoints and minarc.json.
    /// A checkpoint with fewer layers (and nothing else different) grows into this model: the
    /// layers above its own start with zero output projections, so they add nothing at first.
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Stop with a checkpoint once this many steps are done (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Device: cpu, or cuda / cuda:N when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Write the default configuration as TOML to FILE and exit.
    #[arg(long)]
    pub write_config: Option<PathBuf>,
}

/// Runs `minarc train`; returns the exit code.
pub fn main(args: TrainArgs) -> Result<i32> {
    if let Some(p) = &args.write_config {
        std::fs::write(p, TrainConfig::default().to_toml()?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
        eprintln!(
            "wrote the default training configuration to {}",
            p.display()
        );
        return Ok(0);
    }
    let cfg = match &args.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    let device = crate::model::config::parse_device(&args.device)?;
    let res = run(
        cfg,
        &RunOptions {
            out: args.out.clone(),
            resume: args.resume,
            device,
            stop_after: args.stop_after,
            init: args.init.clone(),
            progress: true,
        },
    )?;
    Ok(if res.finished || res.step > 0 { 0 } else { 1 })
}
