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
use crate::model::cli::TorchTime;
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
    /// The JSON written by `scripts/reference/bench_torch.py --attribution --json` on the same
    /// model folder, tokens and nodes: prints the torch seed algorithm's times, minarc's ratios
    /// to them, and how far the two results differ.
    #[arg(long)]
    pub torch: Option<PathBuf>,
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
    let torch_lines = match &args.torch {
        Some(path) => {
            let text = crate::limits::read_text_file_max(path, 16 << 20)
                .with_context(|| format!("reading {}", path.display()))?;
            let vsum = |id: &NodeId| -> Result<f64> {
                let t = g
                    .get(*id)?
                    .data
                    .grad
                    .get(&0)
                    .context("attn_v node without a gradient")?;
                Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
            };
            let measured = TorchCompare {
                tokens: s,
                nodes: n,
                times: [step, tq, tv, tr],
                step: attr.to_dtype(DType::F64)?.squeeze(2)?.to_vec2()?,
                // [to, H+1, g] → [g, to, H+1]
                residual: res.to_dtype(DType::F64)?.permute((2, 0, 1))?.to_vec3()?,
                v_sums: vs.iter().map(vsum).collect::<Result<_>>()?,
            };
            measured
                .lines(&text)
                .with_context(|| format!("--torch {}", path.display()))?
        }
        None => Vec::new(),
    };
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
    for line in torch_lines {
        println!("{line}");
    }
    Ok(())
}

/// minarc's attribution times and results, to set beside the torch seed algorithm's.
pub struct TorchCompare {
    /// Prompt length.
    pub tokens: usize,
    /// attn_q / attn_v nodes timed (and g of the residual attribution).
    pub nodes: usize,
    /// attribute_step, attn_q backwards, attn_v backwards, attribute_residual (seconds).
    pub times: [f64; 4],
    /// attribute_step(lm_head) `[L, H+1]`.
    pub step: Vec<Vec<f64>>,
    /// attribute_residual of the attn_q nodes `[g, to_layer, H+1]`.
    pub residual: Vec<Vec<Vec<f64>>>,
    /// Σ of each attn_v node's gradient.
    pub v_sums: Vec<f64>,
}

/// The `attribution` part of `bench_torch.py`'s JSON.
#[derive(serde::Deserialize)]
struct TorchAttrFile {
    attribution: TorchAttr,
}

#[derive(serde::Deserialize)]
struct TorchAttr {
    tokens: usize,
    nodes: usize,
    attribute_step: TorchTime,
    attn_q: TorchTime,
    attn_v: TorchTime,
    attribute_residual: TorchTime,
    values: TorchValues,
}

#[derive(serde::Deserialize)]
struct TorchValues {
    attribute_step: Vec<Vec<f64>>,
    attribute_residual: Vec<Vec<Vec<f64>>>,
    attn_v_grad_sum: Vec<f64>,
}

/// max |a − b| / max |b| over equally shaped nested lists (an error when the shapes differ).
fn rel_diff(a: &[f64], b: &[f64], what: &str) -> Result<f64> {
    anyhow::ensure!(
        a.len() == b.len(),
        "{what}: {} values here, {} in the torch file",
        a.len(),
        b.len()
    );
    let scale = b
        .iter()
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    Ok(a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

impl TorchCompare {
    /// The lines of the side-by-side table for `bench_torch.py --attribution`'s JSON.
    pub fn lines(&self, json: &str) -> Result<Vec<String>> {
        let f: TorchAttrFile = serde_json::from_str(json)
            .context("not bench_torch.py's JSON with an attribution section (--attribution)")?;
        let t = f.attribution;
        anyhow::ensure!(
            t.tokens == self.tokens && t.nodes == self.nodes,
            "measured at {} tokens and {} nodes, here {} and {}: run both with the same",
            t.tokens,
            t.nodes,
            self.tokens,
            self.nodes
        );
        let flat2 = |v: &[Vec<f64>]| v.concat();
        let shape2 = |v: &[Vec<f64>]| (v.len(), v.first().map_or(0, |r| r.len()));
        anyhow::ensure!(
            shape2(&self.step) == shape2(&t.values.attribute_step),
            "attribute_step: shape {:?} here, {:?} in the torch file",
            shape2(&self.step),
            shape2(&t.values.attribute_step)
        );
        let d_step = rel_diff(
            &flat2(&self.step),
            &flat2(&t.values.attribute_step),
            "attribute_step",
        )?;
        let flat3 = |v: &[Vec<Vec<f64>>]| v.iter().flat_map(|x| x.concat()).collect::<Vec<_>>();
        let d_res = rel_diff(
            &flat3(&self.residual),
            &flat3(&t.values.attribute_residual),
            "attribute_residual",
        )?;
        let d_v = rel_diff(&self.v_sums, &t.values.attn_v_grad_sum, "attn_v sums")?;
        let mut out = vec![format!(
            "{:<36} {:>10} {:>10} {:>9} {:>14}",
            "vs torch seed algorithm (f32)", "minarc s", "torch s", "ratio", "max rel diff"
        )];
        for ((name, mine), (theirs, diff)) in [
            "attribute_step(lm_head)",
            "attn_q backwards",
            "attn_v backwards",
            "attribute_residual",
        ]
        .iter()
        .zip(self.times)
        .zip([
            (t.attribute_step.median_s, Some(d_step)),
            (t.attn_q.median_s, None),
            (t.attn_v.median_s, Some(d_v)),
            (t.attribute_residual.median_s, Some(d_res)),
        ]) {
            anyhow::ensure!(
                theirs > 0.0 && theirs.is_finite(),
                "{name}: torch time {theirs} is not a positive number"
            );
            out.push(format!(
                "{name:<36} {mine:>10.4} {theirs:>10.4} {:>8.2}× {:>14}",
                mine / theirs,
                diff.map_or("-".to_string(), |d| format!("{d:.1e}"))
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine() -> TorchCompare {
        TorchCompare {
            tokens: 20,
            nodes: 2,
            times: [0.2, 0.04, 0.02, 0.01],
            step: vec![vec![1.0, 2.0], vec![3.0, -4.0]],
            residual: vec![vec![vec![1.0, 0.5]], vec![vec![0.0, 2.0]]],
            v_sums: vec![0.5, -0.25],
        }
    }

    fn json(tokens: usize, step01: f64) -> String {
        format!(
            r#"{{"attribution": {{"tokens": {tokens}, "nodes": 2,
              "attribute_step": {{"median_s": 0.4}}, "attn_q": {{"median_s": 0.04}},
              "attn_v": {{"median_s": 0.01}}, "attribute_residual": {{"median_s": 0.02}},
              "values": {{"attribute_step": [[1.0, {step01}], [3.0, -4.0]],
                          "attribute_residual": [[[1.0, 0.5]], [[0.0, 2.0]]],
                          "attn_v_grad_sum": [0.5, -0.25]}}}}}}"#
        )
    }

    #[test]
    fn ratios_and_differences_against_the_torch_file() {
        let lines = mine().lines(&json(20, 2.4)).unwrap();
        assert_eq!(lines.len(), 5);
        // 0.2 s here, 0.4 s in torch: 0.5×; |2.0 − 2.4| / max|torch| = 0.4 / 4
        assert!(
            lines[1].contains("0.50×") && lines[1].contains("1.0e-1"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("1.00×") && lines[2].ends_with('-'),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("2.00×") && lines[3].contains("0.0e0"),
            "{}",
            lines[3]
        );
        assert!(lines[4].contains("0.50×"), "{}", lines[4]);
    }

    #[test]
    fn other_sizes_shapes_or_files_are_errors() {
        let e = mine().lines(&json(30, 2.0)).unwrap_err().to_string();
        assert!(e.contains("30 tokens"), "{e}");
        let e = mine().lines("{\"body\": {}}").unwrap_err().to_string();
        assert!(e.contains("--attribution"), "{e}");
        let mut m = mine();
        m.step.pop();
        let e = m.lines(&json(20, 2.0)).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        let bad = json(20, 2.0).replace("\"median_s\": 0.04", "\"median_s\": 0.0");
        let e = mine().lines(&bad).unwrap_err().to_string();
        assert!(e.contains("attn_q"), "{e}");
    }
}
