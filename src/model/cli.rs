//! Command-line entry points of the model module: `minarc init-model` and `minarc bench forward`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::config::{parse_device, parse_dtype};
use super::fixture::{Preset, init_model};
use super::outputs::CaptureSpec;
use super::qwen2::Qwen2;

/// `minarc init-model`: write a fixture model folder (HF layout, random weights).
#[derive(Debug, Args)]
pub struct InitModelArgs {
    /// Preset: tiny, small or qwen05b-shape.
    #[arg(long)]
    pub preset: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of safetensors shards (>1 writes model.safetensors.index.json).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
}

/// Runs `minarc init-model`.
pub fn run_init_model(args: &InitModelArgs) -> Result<()> {
    let preset: Preset = args.preset.parse()?;
    init_model(preset, args.seed, &args.out, args.shards)?;
    println!(
        "wrote {} fixture (seed {}) to {}",
        preset.name(),
        args.seed,
        args.out.display()
    );
    Ok(())
}

/// Largest `--reps` of a benchmark.
pub const MAX_REPS: usize = 10_000;

/// `minarc bench forward` options: a plain forward against a forward with full capture.
#[derive(Debug, Args)]
pub struct BenchForwardArgs {
    /// Fixture preset to build in a temp dir (ignored with --model).
    #[arg(long, default_value = "qwen05b-shape")]
    pub preset: String,
    /// Use an existing HF model folder instead of a preset.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 600)]
    pub tokens: usize,
    /// Timed repetitions of each variant.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Compute device: cpu, cuda, cuda:N (CUDA needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Hold the decoder layers' projection weights in this dtype (bf16 or f16; products in it
    /// with f32 accumulation, the rest in --dtype).
    #[arg(long = "weights-dtype")]
    pub weights_dtype: Option<String>,
    /// The JSON written by `scripts/reference/bench_torch.py --json` on the same model folder
    /// and prompt length: prints HF's times and minarc's ratios to them.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Batch sizes to time batched forwards with full capture at (e.g. `1,4,16`): samples/s of
    /// each, `--tokens` tokens per sample.
    #[arg(long, value_delimiter = ',')]
    pub batches: Vec<usize>,
}

/// Runs `minarc bench …`.
/// Peak resident set size in bytes (VmHWM from /proc/self/status), if available.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `minarc bench forward`: prints timings, GFLOP/s, the capture ratio and peak RSS.
pub fn bench_forward(a: &BenchForwardArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=MAX_REPS).contains(&a.reps),
        "--reps must be in 1..={MAX_REPS}, got {}",
        a.reps
    );
    anyhow::ensure!(a.tokens > 0, "--tokens must be at least 1");
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let tmp;
    let dir = match &a.model {
        Some(d) => d.clone(),
        None => {
            let preset: Preset = a.preset.parse()?;
            tmp = tempfile::tempdir().context("creating a temp dir")?;
            let t = Instant::now();
            init_model(preset, 0, tmp.path(), 1)?;
            eprintln!(
                "built {} fixture in {:.1}s",
                preset.name(),
                t.elapsed().as_secs_f64()
            );
            tmp.path().to_path_buf()
        }
    };
    let t = Instant::now();
    let opts = crate::model::loader::LoadOptions {
        weights_dtype: a.weights_dtype.as_deref().map(parse_dtype).transpose()?,
        ..Default::default()
    };
    let model = Qwen2::load_with(&dir, dtype, &device, &opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let cfg = model.config().clone();
    // deterministic token ids (3.. avoids special tokens)
    let ids: Vec<u32> = (0..a.tokens)
        .map(|i| 3 + ((i as u64 * 2_654_435_761) % (cfg.vocab_size as u64 - 3)) as u32)
        .collect();
    model.forward(&ids)?; // warm-up
    // CUDA kernels run asynchronously: wait for them so the timings cover the work (no-op on CPU).
    device.synchronize()?;
    let spec = CaptureSpec::full();
    let mut plain = Vec::new();
    let mut capture = Vec::new();
    let mut bytes = 0;
    for _ in 0..a.reps {
        let t = Instant::now();
        let h = model.forward(&ids)?;
        device.synchronize()?;
        drop(h);
        plain.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let out = model.forward_capture(&ids, &spec)?;
        capture.push(t.elapsed().as_secs_f64());
        bytes = out.bytes();
    }
    let s = a.tokens as f64;
    let e = cfg.hidden_size as f64;
    let l = cfg.num_hidden_layers as f64;
    let body_params = (cfg.matmul_params() - cfg.hidden_size * cfg.vocab_size) as f64;
    // matmuls: 2·params·tokens; attention: QKᵀ and A·V over the full s×s block, 2·2·s²·e per layer
    let flops = 2.0 * body_params * s + 4.0 * s * s * e * l;
    let (p, c) = (median(plain), median(capture));
    println!("model: {}", model.describe());
    println!(
        "params {:.1}M, tokens {}, reps {}, threads {}, load {:.2}s",
        cfg.num_params() as f64 / 1e6,
        a.tokens,
        a.reps,
        candle_core::utils::get_num_threads(),
        load_s
    );
    println!(
        "plain forward:         median {:.3}s  ({:.1} GFLOP/s, {:.0} tok/s)",
        p,
        flops / p / 1e9,
        s / p
    );
    println!(
        "forward + full capture: median {:.3}s  ({:.1} GFLOP/s), capture {:.1} MB",
        c,
        flops / c / 1e9,
        bytes as f64 / 1e6
    );
    println!("capture / plain ratio: {:.3}", c / p);
    if let Some(rss) = peak_rss_bytes() {
        println!("peak RSS: {:.2} GB", rss as f64 / 1e9);
    }
    if !a.batches.is_empty() {
        bench_batches(&model, &a.batches, a.tokens, a.reps, &spec)?;
    }
    if let Some(path) = &a.torch {
        let text = crate::limits::read_text_file_max(path, 1 << 20)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in torch_ratios(&text, a.tokens, &a.dtype, p, c)
            .with_context(|| format!("--torch {}", path.display()))?
        {
            println!("{line}");
        }
    }
    Ok(())
}

/// Times batched forwards with capture `spec` at each batch size (`tokens` tokens per sample,
/// each sample its own ids) and prints samples/s and tokens/s.
fn bench_batches(
    model: &Qwen2,
    batches: &[usize],
    tokens: usize,
    reps: usize,
    spec: &CaptureSpec,
) -> Result<()> {
    for &b in batches {
        crate::limits::FORWARD_BATCH.check(b, "--batches")?;
        anyhow::ensure!(b >= 1, "--batches: a batch size must be at least 1");
    }
    let vocab = model.config().vocab_size as u64;
    println!("batched forward with full capture ({tokens} tokens per sample):");
    for &b in batches {
        let seqs: Vec<Vec<u32>> = (0..b as u64)
            .map(|k| {
                (0..tokens as u64)
                    .map(|i| 3 + ((i * 2_654_435_761 + k * 40_503) % (vocab - 3)) as u32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let specs = vec![spec.clone(); b];
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            let outs = model.forward_capture_batch(&refs, &specs)?;
            model.device().synchronize()?;
            times.push(t.elapsed().as_secs_f64());
            drop(outs);
        }
        let t = median(times);
        println!(
            "  batch {b:>3}: median {t:.3}s  {:.2} samples/s  {:.0} tok/s",
            b as f64 / t,
            (b * tokens) as f64 / t
        );
    }
    Ok(())
}

/// `bench_torch.py`'s JSON (the fields read here).
#[derive(serde::Deserialize)]
struct TorchBench {
    tokens: usize,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    torch: Option<String>,
    body: std::collections::BTreeMap<String, TorchTime>,
}

/// One timing of `bench_torch.py`'s JSON (its median over the repetitions).
#[derive(serde::Deserialize)]
pub(crate) struct TorchTime {
    pub(crate) median_s: f64,
}

/// The lines comparing minarc's plain and capture medians (seconds, at `dtype`) with HF's body
/// times from `bench_torch.py`'s JSON: each HF time, minarc's plain forward over HF's at the
/// same dtype, and the capture over HF's fastest.
pub fn torch_ratios(
    json: &str,
    tokens: usize,
    dtype: &str,
    plain: f64,
    capture: f64,
) -> Result<Vec<String>> {
    let t: TorchBench = serde_json::from_str(json).context("not bench_torch.py's JSON")?;
    anyhow::ensure!(
        t.tokens == tokens,
        "measured at {} tokens, this run at {tokens}: rerun one with the other's length",
        t.tokens
    );
    let times: Vec<(&String, f64)> = t.body.iter().map(|(k, v)| (k, v.median_s)).collect();
    anyhow::ensure!(
        times.iter().all(|(_, s)| s.is_finite() && *s > 0.0),
        "a time that is not a positive number"
    );
    let Some(&(fast_name, fast)) = times.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        anyhow::bail!("no HF times in it");
    };
    let mut out = vec![format!(
        "HF transformers body (torch {}, {} threads): {}",
        t.torch.as_deref().unwrap_or("?"),
        t.threads.map_or("?".into(), |n| n.to_string()),
        times
            .iter()
            .map(|(k, s)| format!("{k} {s:.3}s"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    if let Some((_, same)) = times.iter().find(|(k, _)| k.as_str() == dtype) {
        out.push(format!("minarc plain / HF {dtype}: {:.2}", plain / same));
    }
    out.push(format!(
        "minarc with capture / HF fastest ({fast_name}): {:.2}",
        capture / fast
    ));
    Ok(out)
}

/// `minarc plan` options.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A model folder, its config.json, or a built-in shape: qwen2.5-0.5b, qwen2.5-7b,
    /// qwen2.5-72b, qwen2.5-72b-gptq-int4.
    #[arg(long)]
    pub model: String,
    /// Tokens of one sample.
    #[arg(long, default_value_t = 600)]
    pub tokens: usize,
    /// Compute dtype (f32, f16, bf16); default: the config's torch_dtype.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Storage dtype of the capture (f32, f16, bf16).
    #[arg(long, default_value = "f32")]
    pub capture_dtype: String,
    /// The capture also stores logits.
    #[arg(long)]
    pub logits: bool,
    /// Devices in layer order with their usable memory, e.g. cuda:0=80GiB,cuda:1=80GiB
    /// (default: cpu with the memory available now).
    #[arg(long)]
    pub devices: Option<String>,
    /// Host memory for the activation store (default: the memory available now).
    #[arg(long)]
    pub host_memory: Option<String>,
    /// GPTQ layers kept packed or dequantised on load (default: packed when a device is CUDA,
    /// as loading does).
    #[arg(long, value_parser = ["packed", "dense"])]
    pub gptq: Option<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `minarc plan`.
pub fn run_plan(a: &PlanArgs) -> Result<()> {
    use super::plan::{DeviceBudget, PlanOptions, load_config, parse_bytes, parse_devices, plan};
    let cfg = load_config(&a.model)?;
    let avail = crate::limits::available_memory().unwrap_or(16 << 30);
    let devices = match &a.devices {
        Some(d) => parse_devices(d)?,
        None => vec![DeviceBudget {
            name: "cpu".into(),
            bytes: avail,
        }],
    };
    let dtype = match &a.dtype {
        Some(d) => parse_dtype(d)?,
        None => cfg.storage_dtype()?,
    };
    let o = PlanOptions {
        tokens: a.tokens,
        dtype,
        capture_dtype: parse_dtype(&a.capture_dtype)?,
        capture_logits: a.logits,
        devices,
        host_bytes: match &a.host_memory {
            Some(h) => parse_bytes(h)?,
            None => avail,
        },
        gptq_packed: a.gptq.as_deref().map(|g| g == "packed"),
    };
    let dir = std::path::Path::new(&a.model);
    let p = plan(&cfg, dir.is_dir().then_some(dir), &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", p.render(&cfg, &o));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::torch_ratios;

    const JSON: &str = r#"{"model": "m", "tokens": 600, "threads": 2, "torch": "2.15.0",
        "cpu_capability": "AVX512",
        "body": {"f32": {"median_s": 2.5, "times_s": [2.5]},
                 "bf16": {"median_s": 0.8, "times_s": [0.8]}}}"#;

    #[test]
    fn ratios_divide_by_the_same_dtype_and_by_the_fastest() {
        let lines = torch_ratios(JSON, 600, "f32", 1.5, 1.6).unwrap();
        assert_eq!(
            lines,
            [
                "HF transformers body (torch 2.15.0, 2 threads): bf16 0.800s, f32 2.500s",
                "minarc plain / HF f32: 0.60",
                "minarc with capture / HF fastest (bf16): 2.00",
            ]
        );
        // no HF time at minarc's dtype: only the comparison with the fastest
        let lines = torch_ratios(JSON, 600, "f16", 1.0, 0.4).unwrap();
        assert_eq!(lines[1], "minarc with capture / HF fastest (bf16): 0.50");
    }

    #[test]
    fn mismatched_or_malformed_files_are_errors() {
        let e = torch_ratios(JSON, 300, "f32", 1.0, 1.0).unwrap_err();
        assert!(e.to_string().contains("600 tokens"), "{e}");
        assert!(torch_ratios("{}", 600, "f32", 1.0, 1.0).is_err());
        let empty = r#"{"tokens": 600, "body": {}}"#;
        assert!(torch_ratios(empty, 600, "f32", 1.0, 1.0).is_err());
        let zero = r#"{"tokens": 600, "body": {"f32": {"median_s": 0}}}"#;
        assert!(torch_ratios(zero, 600, "f32", 1.0, 1.0).is_err());
    }
}
