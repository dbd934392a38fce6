//! `minarc serve`: hold a model and its activation cache behind HTTP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::server::{ServeOptions, serve_blocking};
use crate::backend::Local;
use crate::model::{LoadOptions, parse_dtype};

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
    /// Activation-cache budget: bytes (suffixes K, M, G allowed) or `unlimited`. Least recently
    /// used samples are evicted and recomputed on demand. Default: a quarter of the machine's
    /// memory.
    #[arg(long = "cache-bytes")]
    pub cache_bytes: Option<String>,
    /// The activation store on disk: evicted samples spill to DIR/spill (read back instead of
    /// recomputed), and save_activations / load_activations name folders under DIR.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Do not scan the checkpoint's weights for NaN/inf on load.
    #[arg(long = "skip-weight-check")]
    pub skip_weight_check: bool,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Compute device: cpu, cuda or cuda:N, or a layer map over several GPUs (cuda:0,cuda:1 or
    /// cuda:0=0-39,cuda:1=40-79; the first device holds the embeddings and lm_head).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Largest accepted request body in MiB.
    #[arg(long = "body-limit-mb", default_value_t = 256)]
    pub body_limit_mb: usize,
    /// Per-request time limit in seconds.
    #[arg(long = "timeout-s", default_value_t = 600)]
    pub timeout_s: u64,
    /// GPTQ checkpoints: `packed` keeps the layers packed and dequantises one at a time when
    /// used (the default on CUDA), `dense` dequantises on load (the default on the CPU).
    #[arg(long, value_parser = ["packed", "dense"])]
    pub gptq: Option<String>,
    /// Bytes of dequantised layers a packed GPTQ model keeps (N[K|M|G]; default 4G).
    #[arg(long = "gptq-cache-bytes")]
    pub gptq_cache_bytes: Option<String>,
    /// Hold the decoder layers' projection weights in this dtype (bf16 or f16; products in it
    /// with f32 accumulation, activations and captures in --dtype).
    #[arg(long = "weights-dtype")]
    pub weights_dtype: Option<String>,
}

impl ServeArgs {
    /// The server options these flags describe.
    pub fn options(&self) -> Result<ServeOptions> {
        let device = crate::model::config::home_device(&self.device)?;
        let mut load = LoadOptions::for_device(&device);
        if crate::model::config::is_device_map(&self.device) {
            load.device_map = Some(self.device.clone());
        }
        load.check_finite = !self.skip_weight_check && load.check_finite;
        load.weights_dtype = self
            .weights_dtype
            .as_deref()
            .map(crate::model::config::parse_dtype)
            .transpose()?;
        let budget = match &self.gptq_cache_bytes {
            Some(v) => parse_cache_bytes(v)?
                .ok_or_else(|| anyhow::anyhow!("--gptq-cache-bytes must be a size"))?,
            None => crate::model::loader::default_gptq_cache_bytes(),
        };
        load.gptq_packed = match self.gptq.as_deref() {
            Some("packed") => Some(budget),
            Some(_) => None,
            None => load.gptq_packed.map(|_| budget),
        };
        Ok(ServeOptions {
            host: self.host.clone(),
            port: self.port,
            token: self
                .token
                .clone()
                .or_else(|| std::env::var("MINARC_TOKEN").ok())
                .filter(|t| !t.is_empty()),
            cache_bytes: match &self.cache_bytes {
                None => Some(super::server::default_cache_bytes()),
                Some(v) => parse_cache_bytes(v)?,
            },
            body_limit: self.body_limit_mb.saturating_mul(1 << 20),
            timeout: Duration::from_secs(self.timeout_s.max(1)),
            dtype: parse_dtype(&self.dtype)?,
            device,
            load,
            store: self.store.clone(),
        })
    }
}

/// `--cache-bytes`: `unlimited`, or a byte count with an optional K/M/G (binary) suffix.
pub fn parse_cache_bytes(v: &str) -> Result<Option<usize>> {
    let t = v.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num.trim().parse().with_context(|| {
        format!("--cache-bytes {v:?} is not a byte count (e.g. 4G, 512M, 1000000 or unlimited)")
    })?;
    n.checked_mul(mult)
        .map(Some)
        .with_context(|| format!("--cache-bytes {v:?} is too large"))
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
    let local = Local::load_with(&dir, opts.dtype, &opts.device, &opts.load)
        .with_context(|| format!("loading model {}", dir.display()))?;
    match opts.cache_bytes {
        Some(b) => eprintln!(
            "minarc serve: activation cache budget {} (--cache-bytes to change)",
            crate::limits::fmt_bytes(b as u128)
        ),
        None => eprintln!("minarc serve: activation cache unlimited"),
    }
    serve_blocking(local, opts)
}
