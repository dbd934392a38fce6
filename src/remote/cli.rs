//! `minarc serve`: hold a model and its activation cache behind HTTP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::server::{ServeOptions, serve_blocking};
use crate::model::{Local, parse_device, parse_dtype};

/// Arguments of `minarc serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or `default`
    /// for the built-in fixture model (created on first use).
    #[arg(long)]
    pub model: String,
    /// Interface to bind. Anything but a loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Bearer token required on every request (or env MINARC_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// Activation-cache budget in bytes (least recently used samples are evicted and
    /// recomputed on demand). Default: unlimited.
    #[arg(long = "cache-bytes")]
    pub cache_bytes: Option<usize>,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Largest accepted request body in MiB.
    #[arg(long = "body-limit-mb", default_value_t = 256)]
    pub body_limit_mb: usize,
    /// Per-request time limit in seconds.
    #[arg(long = "timeout-s", default_value_t = 600)]
    pub timeout_s: u64,
}

impl ServeArgs {
    /// The server options these flags describe.
    pub fn options(&self) -> Result<ServeOptions> {
        Ok(ServeOptions {
            host: self.host.clone(),
            port: self.port,
            token: self
                .token
                .clone()
                .or_else(|| std::env::var("MINARC_TOKEN").ok())
                .filter(|t| !t.is_empty()),
            cache_bytes: self.cache_bytes,
            body_limit: self.body_limit_mb.saturating_mul(1 << 20),
            timeout: Duration::from_secs(self.timeout_s.max(1)),
            dtype: parse_dtype(&self.dtype)?,
            device: parse_device(&self.device)?,
        })
    }
}

/// Runs `minarc serve` until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    let opts = args.options()?;
    // Check the bind before spending minutes loading a big model.
    super::server::bind_address(&opts)?;
    let dir = if args.model == "default" {
        crate::model::fixture::default_model_dir()?
    } else {
        PathBuf::from(&args.model)
    };
    let local = Local::load(&dir, opts.dtype, &opts.device)
        .with_context(|| format!("loading model {}", dir.display()))?;
    serve_blocking(local, opts)
}
