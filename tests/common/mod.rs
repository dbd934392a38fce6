//! Shared helpers for the model tests: fixture folders in temp dirs, deterministic inputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use minarc::model::fixture::{Preset, init_model, write_model};
use minarc::model::{ModelConfig, Qwen2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fixture model folder (weights + config only) in a fresh temp dir.
pub fn fixture(preset: Preset, seed: u64, shards: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(dir.path(), &preset.config(), seed, shards).expect("write fixture");
    dir
}

/// Loads a fixture folder in f32 on the CPU.
pub fn load(dir: &Path) -> Qwen2 {
    Qwen2::load(dir, DType::F32, &Device::Cpu).expect("load model")
}

/// Layers L and heads H of the `tiny` preset (checked in [`tiny_model_dir`]).
pub const TINY_L: usize = 2;
pub const TINY_H: usize = 4;

/// A complete `tiny` fixture folder (seed 7, with tokenizer), written once per test binary.
pub fn tiny_model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("minarc-tiny-fixture")
            .tempdir()
            .unwrap()
            .keep();
        init_model(Preset::Tiny, 7, &dir, 1).unwrap();
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        assert_eq!(
            (cfg.num_hidden_layers, cfg.num_attention_heads),
            (TINY_L, TINY_H)
        );
        dir
    })
}

/// Tiny model (seed 0) and its folder.
pub fn tiny() -> (tempfile::TempDir, Qwen2) {
    let dir = fixture(Preset::Tiny, 0, 1);
    let m = load(dir.path());
    (dir, m)
}

/// Deterministic token ids in 3..vocab (avoids the special tokens).
pub fn token_ids(cfg: &ModelConfig, s: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..s)
        .map(|_| rng.random_range(3..cfg.vocab_size as u32))
        .collect()
}

/// Random tensor N(0,1)-ish (uniform in [-1.7, 1.7]) of a shape.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.7f32..1.7)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Flattened f32 values.
pub fn vals(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a − b| (shapes must match).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    vals(a)
        .iter()
        .zip(vals(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// max |t|.
pub fn max_abs(t: &Tensor) -> f32 {
    vals(t).iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// Runs the first ```rhai block of a Markdown file of the repository (e.g. "README.md") with
/// `minarc run` in a fresh folder that is also `MINARC_HOME`; the run must succeed. Returns its
/// stdout and the folder (where the example's files are).
pub fn run_markdown_example(md: &str) -> (String, tempfile::TempDir) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(md)).unwrap();
    let block = text
        .split("```rhai\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("{md} has no rhai example"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.rhai"), block).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", "example.rhai"])
        .current_dir(dir.path())
        .env("MINARC_HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{md}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), dir)
}

/// A script host writing into a buffer, progress bars off.
pub fn script_host() -> (minarc::script::Host, minarc::script::SharedBuf) {
    let (out, buf) = minarc::script::Output::buffer();
    let host = minarc::script::Host::with_output(out);
    host.state().set_show_progress(false);
    (host, buf)
}

/// Script lines that load the model folder `dir`, forward two small puzzles (seeds 0..2) as
/// dataset "w1" and bind `model`, `ds`, `rs` and `r = rs[0]`.
pub fn script_prelude(dir: &Path) -> String {
    format!(
        "let model = load_model(\"{}\");\n\
         let ds = gen_dataset(#{{seeds: \"0..2\", n_train: 2, Q_train: 2, tokenizer: tokenizer(model)}});\n\
         let rs = forward(model, \"w1\", ds);\n\
         let r = rs[0];\n",
        dir.display()
    )
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The full circuit of a model: every head (through its queries), every MLP and the embedding,
/// each fed by everything below it and feeding lm_head. Returns the graph, the lm_head id and per
/// layer (heads, MLP).
#[allow(clippy::type_complexity)]
pub fn full_circuit(
    cfg: &ModelConfig,
    dataset_size: usize,
) -> (
    minarc::attribution::Graph,
    minarc::attribution::NodeId,
    Vec<(
        Vec<minarc::attribution::NodeId>,
        minarc::attribution::NodeId,
    )>,
) {
    use minarc::attribution::{Graph, NodeId, NodeType};
    let mut g = Graph::new(cfg, dataset_size);
    let lm = g.lm_head_id();
    g.add_node(lm, None).unwrap();
    let emb = g.id(0, None, NodeType::Embed).unwrap();
    let mut below: Vec<NodeId> = vec![emb];
    let mut layers: Vec<(Vec<NodeId>, NodeId)> = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let heads: Vec<NodeId> = (0..cfg.num_attention_heads)
            .map(|h| g.id(l, Some(h), NodeType::AttnQ).unwrap())
            .collect();
        layers.push((heads, g.id(l, None, NodeType::Mlp).unwrap()));
    }
    // downstream first so add_edge finds the downstream
    for u in layers
        .iter()
        .flat_map(|(h, m)| h.iter().copied().chain([*m]))
        .chain([emb])
    {
        g.add_edge(u, lm, 1.0).unwrap();
    }
    for (heads, mlp) in &layers {
        for &h in heads {
            for &u in &below {
                g.add_edge(u, h, 1.0).unwrap();
            }
        }
        for &u in below.iter().chain(heads) {
            g.add_edge(u, *mlp, 1.0).unwrap();
        }
        below.extend(heads.iter().copied());
        below.push(*mlp);
    }
    (g, lm, layers)
}

/// A server on 127.0.0.1 (ephemeral port) holding its own f32 CPU copy of the tiny fixture.
pub fn tiny_server() -> minarc::remote::RunningServer {
    minarc::remote::RunningServer::start(
        minarc::backend::Local::load(tiny_model_dir(), DType::F32, &Device::Cpu).unwrap(),
        minarc::remote::ServeOptions {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A 2-D float tensor as f64 rows.
pub fn f64_rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// A 1-D float tensor as f64 values.
pub fn f64_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}
