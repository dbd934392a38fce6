//! `minarc bench attribution`: timings of the attribution primitives and of intervened
//! forwards as multiples of one plain forward, on a fixture preset (default qwen05b-shape) or a model folder.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};

use super::graph::Graph;
use super::node::{NodeId, NodeType};
use super::pattern::SampleRef;
use super::step::{attribute_step, backward, residual_request, set_pos_ids};
use crate::backend::{Backend, InterveneOptions, Local, SampleKey};
use crate::model::fixture::{Preset, write_model};
use crate::model::intervene::{Edit, Intervention, Site};
use crate::model::{CaptureSpec, SampleInput};

/// Arguments of `minarc bench attribution`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model folder (HF layout). Default: the preset written to a temp dir.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Fixture preset when no --model is given (tiny, small, qwen05b-shape).
    #[arg(long, default_value = "qwen05b-shape")]
    pub preset: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 600)]
    pub tokens: usize,
    /// Attention nodes of each kind (attn_q, attn_v) whose backward is timed; also g of the
    /// residual attribution.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Runs the benchmark and prints a table (seconds and multiples of one plain forward).
pub fn run(args: &BenchArgs) -> Result<()> {
    let _tmp;
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => {
            let preset: Preset = args.preset.parse()?;
            let tmp = tempfile::tempdir().context("creating a temp dir")?;
            let t = Instant::now();
            write_model(tmp.path(), &preset.config(), 0, 1)?;
            crate::tokenizer::write_fixture_tokenizer(tmp.path())?;
            eprintln!("wrote preset {} in {:.1} s", preset.name(), secs(t));
            let p = tmp.path().to_path_buf();
            _tmp = tmp;
            p
        }
    };
    let t = Instant::now();
    let local = Local::load(&dir, DType::F32, &Device::Cpu)?;
    eprintln!("loaded {} in {:.1} s", local.describe(), secs(t));
    let cfg = local.config().clone();
    let (nl, nh, v) = (
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.vocab_size,
    );
    let s = args.tokens;
    if s < 20 || !(1..=crate::model::cli::MAX_REPS).contains(&args.nodes) {
        bail!(
            "need --tokens ≥ 20 and --nodes in 1..={}",
            crate::model::cli::MAX_REPS
        );
    }
    // deterministic pseudo-random tokens; 8 answers near the end
    let ids: Vec<u32> = (0..s).map(|i| ((i * 7919 + 13) % v) as u32).collect();
    let answers: Vec<usize> = (0..8).map(|i| s - 2 - 2 * i).rev().collect();
    let input = SampleInput {
        index: 0,
        prompt: String::new(),
        labels: answers.iter().map(|&a| ids[a]).collect(),
        candidate_ids: (0..10)
            .map(|c| ((c * 31 + 5) % v) as u32)
            .chain(answers.iter().map(|&a| ids[a]))
            .collect(),
        answer_indices: answers,
        objective: Default::default(),
    };
    // one plain forward (best of 2)
    let mut fwd = f64::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        local.model().forward(&ids)?;
        fwd = fwd.min(secs(t));
    }
    let t = Instant::now();
    local.forward_ids("bench", &input, &ids, &CaptureSpec::full(), true)?;
    let cap = secs(t);
    let r = SampleRef::new(SampleKey::new("bench", 0), None);
    let mut g = Graph::new(&cfg, 1);
    let lm = g.lm_head_id();
    g.add_node(lm, None)?;
    let t = Instant::now();
    let attr = attribute_step(&mut g, &local, &r, &[lm])?;
    let step = secs(t);
    // attention nodes on the top layers, fed by lm_head
    let mut qs: Vec<NodeId> = Vec::new();
    let mut vs: Vec<NodeId> = Vec::new();
    for i in 0..args.nodes {
        let (l, h) = (nl - 1 - (i / nh) % nl, i % nh);
        let q = g.node(l, Some(h), NodeType::AttnQ, Some("A-->A-"))?;
        let vn = g.node(l, Some(h), NodeType::AttnV, Some("A-->A-"))?;
        g.add_edge(q, lm, 1.0)?;
        g.add_edge(vn, lm, 1.0)?;
        qs.push(q);
        vs.push(vn);
    }
    for &id in qs.iter().chain(&vs) {
        set_pos_ids(&mut g, &local, id, &r)?;
        super::step::accum_output_grad(&mut g, id, 0)?;
    }
    let t = Instant::now();
    for &id in &qs {
        backward(&mut g, &local, id, &r)?;
    }
    let tq = secs(t);
    let t = Instant::now();
    for &id in &vs {
        backward(&mut g, &local, id, &r)?;
    }
    let tv = secs(t);
    let req = residual_request(&g, &qs, 0)?;
    let t = Instant::now();
    let res = local.attribute_residual(&r.key, &req)?;
    let tr = secs(t);
    let n = args.nodes;
    println!("attribution benchmark: {} tokens, {}", s, local.describe());
    println!("{:<44} {:>9} {:>10}", "operation", "seconds", "× forward");
    let row = |name: &str, t: f64| println!("{name:<44} {t:>9.3} {:>10.2}", t / fwd);
    row("plain forward (no capture)", fwd);
    row("forward with full capture", cap);
    row(
        &format!("attribute_step(lm_head) → {:?}", attr.dims()),
        step,
    );
    row(&format!("{n} attn_q backwards (4 IG steps)"), tq);
    row(&format!("{n} attn_v backwards (plain gradient)"), tv);
    row(&format!("attribute_residual g={n} → {:?}", res.dims()), tr);
    // interventions (logits at the answers): the clean set and a last-layer edit start from the
    // cached residual of the last layer, a layer-0 edit runs the whole forward
    let zero = |layer: usize| {
        vec![Intervention {
            site: Site::Head { layer, head: 0 },
            positions: None,
            edit: Edit::Zero,
        }]
    };
    let opts = InterveneOptions::default();
    for (name, set) in [
        ("intervene: clean set (nothing edited)".to_string(), vec![]),
        (format!("intervene: head {}.0 zeroed", nl - 1), zero(nl - 1)),
        ("intervene: head 0.0 zeroed".to_string(), zero(0)),
    ] {
        let t = Instant::now();
        local.intervene(&r.key, &[set], &opts)?;
        row(&name, secs(t));
    }
    Ok(())
}
