//! The training loop: steps, held-out evaluations through the inference model, checkpoints and
//! resume, and the outputs (model folder, report, curve).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::config::{NetConfig, TrainConfig};
use super::data::{Sequence, TargetKind};
use super::net::{Net, weighted_nll};
use super::optim::{AdamW, lr_at};
use crate::model::loader::WeightFiles;
use crate::model::ops::linear;
use crate::model::qwen2::Qwen2;
use crate::model::weights::Weights;
use crate::puzzle::Relation;

/// One optimiser step's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Step (0-based).
    pub step: usize,
    /// Training loss of the batch (before the update).
    pub loss: f64,
    /// Accuracy (argmax over the vocabulary) on the batch's answer tokens.
    pub answer_acc: f64,
    /// Accuracy on the batch's query-colour tokens.
    pub query_acc: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// A held-out evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    /// Steps done when it was taken.
    pub step: usize,
    /// Held-out puzzles evaluated.
    pub puzzles: usize,
    /// Accuracy (argmax over the vocabulary) on the evaluated answers (last two examples).
    pub acc: f64,
    /// Mean negative log-likelihood of those answers (full vocabulary).
    pub nll: f64,
    /// (correct, total) answers per relation.
    pub per_relation: BTreeMap<String, (usize, usize)>,
    /// Wrong answers by hidden relation, then by what they read: the name of the relation whose
    /// cell has the predicted colour (names joined by `|` when several do), or `none`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wrong_read_as: BTreeMap<String, BTreeMap<String, usize>>,
    /// (correct, total) by the answer's place among its puzzle's evaluated answers, in prompt
    /// order (0 = the first scored answer): whether later answers, with more evidence of the
    /// relation before them, are more often right.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_answer: Vec<(usize, usize)>,
}

/// What a wrong answer read: the relations of the puzzle's set whose cell has the predicted
/// colour token (`readings` from [`super::data::Sequence::readings`]), joined by `|`, or
/// `none` when no relation's cell has it.
pub fn read_as(pred: u32, readings: &[(Relation, u32)]) -> String {
    let names: Vec<&str> = readings
        .iter()
        .filter(|&&(_, t)| t == pred)
        .map(|(r, _)| r.name())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join("|")
    }
}

/// The layer of a weight named `model.layers.{l}.…`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Steps done.
    pub step: usize,
    /// The configuration trained with (a resume must use the same).
    pub config: TrainConfig,
    /// Per-step numbers so far.
    pub history: Vec<StepLog>,
    /// Held-out evaluations so far.
    pub evals: Vec<EvalLog>,
    /// Training wall time so far (seconds).
    pub elapsed_s: f64,
    /// The checkpoint this run started from (`--init`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitFrom>,
}

/// Where a run's initial weights came from (`minarc train --init CHECKPOINT`): the earlier
/// run's checkpoint, its step and configuration, so a multi-phase recipe is on record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitFrom {
    /// The checkpoint file as given.
    pub checkpoint: String,
    /// Steps the earlier run had done.
    pub step: usize,
    /// The earlier run's configuration.
    pub config: TrainConfig,
    /// Its own init, when it had one (phases before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Box<InitFrom>>,
}

/// Options of one run.
pub struct RunOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `out/checkpoints`.
    pub resume: bool,
    /// Device of the weights.
    pub device: Device,
    /// Stop (with a checkpoint) after this many steps in total, e.g. to split a long run.
    pub stop_after: Option<usize>,
    /// Start a fresh run from this checkpoint's weights (new optimiser state and schedule).
    pub init: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
}

/// How a run ended.
pub struct RunResult {
    /// Steps done.
    pub step: usize,
    /// Whether all configured steps are done (the model folder was written).
    pub finished: bool,
    /// The final held-out evaluation (when finished).
    pub final_eval: Option<EvalLog>,
}

/// The training state: weights, optimiser, history.
pub struct Trainer {
    /// The configuration.
    pub cfg: TrainConfig,
    /// The model being trained.
    pub net: Net,
    /// The optimiser.
    pub opt: AdamW,
    /// Steps done.
    pub step: usize,
    /// Per-step numbers.
    pub history: Vec<StepLog>,
    /// Held-out evaluations.
    pub evals: Vec<EvalLog>,
    /// Training wall time of earlier sessions (seconds).
    pub elapsed_before: f64,
    /// The checkpoint the run started from, if any.
    pub init: Option<InitFrom>,
    tok: Tokenizer,
    /// Held-out sequences of the last evaluation size (generated once, reused every evaluation).
    held_out: std::sync::Mutex<Option<(usize, std::sync::Arc<Vec<Sequence>>)>>,
}

impl Trainer {
    /// Replaces the fresh weights with those of checkpoint `st` (a `step-N.safetensors` of any
    /// run whose model section equals this one's); the optimiser starts fresh.
    ///
    /// A checkpoint of a shallower model whose model section differs only in `layers` grows
    /// into this one: its layers are layers `0..L` here, and the layers above are fresh with
    /// zero output projections (o_proj and down_proj), so each adds nothing to the residual
    /// stream and the grown model computes exactly the checkpoint's function at its first step.
    pub fn init_from(&mut self, st: &Path) -> Result<()> {
        let json = st.with_extension("json");
        let text = std::fs::read_to_string(&json).with_context(|| {
            format!(
                "--init: reading {} (next to the checkpoint)",
                json.display()
            )
        })?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
        let from_layers = meta.config.model.layers;
        let same_but_depth = NetConfig {
            layers: self.cfg.model.layers,
            ..meta.config.model.clone()
        } == self.cfg.model;
        ensure!(
            same_but_depth && from_layers <= self.cfg.model.layers,
            "--init {}: its model section differs from this configuration's (the weights must fit the same model, or one with more layers and nothing else changed)",
            st.display()
        );
        let saved = candle_core::safetensors::load(st, self.net.vars()[0].device())
            .with_context(|| format!("reading {}", st.display()))?;
        let mut named = Vec::new();
        for (name, fresh) in self.net.names().iter().zip(self.net.vars()) {
            let w = match layer_of(name) {
                // a grown layer: fresh weights, its output projections zero
                Some(l) if l >= from_layers => {
                    if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                        fresh.zeros_like()?
                    } else {
                        fresh.as_tensor().clone()
                    }
                }
                _ => saved
                    .get(&format!("w.{name}"))
                    .cloned()
                    .with_context(|| format!("{} has no tensor w.{name}", st.display()))?,
            };
            named.push((name.clone(), w));
        }
        let device = self.net.vars()[0].device().clone();
        self.net = Net::from_tensors(self.net.config(), named, DType::F32, &device)?;
        self.opt = AdamW::new(self.net.vars(), self.net.names())?;
        self.init = Some(InitFrom {
            checkpoint: st.display().to_string(),
            step: meta.step,
            config: meta.config,
            init: meta.init.map(Box::new),
        });
        Ok(())
    }

    /// A fresh run.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Trainer> {
        cfg.validate()?;
        crate::model::ops::tune_allocator();
        let tok = cfg.model.tokenizer.build()?;
        let mcfg = cfg.model_config(tok.get_vocab_size(true).div_ceil(64) * 64)?;
        let net = Net::init(&mcfg, cfg.run.seed, device)?;
        let opt = AdamW::new(net.vars(), net.names())?;
        Ok(Trainer {
            cfg,
            net,
            opt,
            step: 0,
            history: Vec::new(),
            evals: Vec::new(),
            elapsed_before: 0.0,
            init: None,
            tok,
            held_out: std::sync::Mutex::new(None),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// One optimiser step on the batch of the current step.
    pub fn train_step(&mut self) -> Result<StepLog> {
        let step = self.step;
        let batch = super::data::batch(&self.cfg, step, &self.tok)?;
        let o = &self.cfg.optim;
        let (loss, answer_acc, query_acc) = batch_loss(
            &self.net,
            &batch,
            o.query_loss_weight,
            o.context_loss_weight,
        )?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        ensure!(loss_v.is_finite(), "step {step}: the loss is {loss_v}");
        let grads = loss.backward()?;
        let lr = lr_at(&self.cfg.optim, step);
        let grad_norm = self
            .opt
            .step(self.net.vars(), &grads, &self.cfg.optim, lr)?;
        let log = StepLog {
            step,
            loss: loss_v,
            answer_acc,
            query_acc,
            lr,
            grad_norm,
        };
        self.history.push(log.clone());
        self.step += 1;
        Ok(log)
    }

    /// The current weights as an inference model (the path every minarc analysis uses).
    pub fn inference_model(&self) -> Result<Qwen2> {
        inference_model(&self.net)
    }

    /// Held-out evaluation on seeds 0..n through the inference model.
    pub fn evaluate(&self, n: usize) -> Result<EvalLog> {
        let seqs = {
            let mut cache = self
                .held_out
                .lock()
                .map_err(|_| anyhow::anyhow!("held-out cache lock poisoned"))?;
            match cache.as_ref() {
                Some((k, s)) if *k == n => s.clone(),
                _ => {
                    let s = std::sync::Arc::new(super::data::held_out(&self.cfg, n, &self.tok)?);
                    *cache = Some((n, s.clone()));
                    s
                }
            }
        };
        let mut e = evaluate(&self.inference_model()?, &seqs)?;
        e.step = self.step;
        Ok(e)
    }

    /// Writes a checkpoint for the current step into `dir` (tensors, then the metadata; a
    /// checkpoint counts only once its metadata is written).
    pub fn save_checkpoint(&self, dir: &Path, elapsed_s: f64) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("step-{:07}", self.step);
        let mut tensors = Vec::new();
        for (i, name) in self.net.names().iter().enumerate() {
            tensors.push((format!("w.{name}"), self.net.vars()[i].as_tensor().detach()));
            tensors.push((format!("m.{name}"), self.opt.m[i].clone()));
            tensors.push((format!("v.{name}"), self.opt.v[i].clone()));
        }
        let st = dir.join(format!("{stem}.safetensors"));
        crate::model::fixture::write_safetensors(&st, &tensors)?;
        let meta = CheckpointMeta {
            step: self.step,
            config: self.cfg.clone(),
            history: self.history.clone(),
            evals: self.evals.clone(),
            elapsed_s,
            init: self.init.clone(),
        };
        let json = dir.join(format!("{stem}.json"));
        let tmp = dir.join(format!(".{stem}.json.tmp"));
        crate::model::fixture::write_json(&tmp, &meta)?;
        std::fs::rename(&tmp, &json).with_context(|| format!("writing {}", json.display()))?;
        // keep the three newest
        let mut all = checkpoints(dir)?;
        while all.len() > 3 {
            let (_, old) = all.remove(0);
            let _ = std::fs::remove_file(old.with_extension("safetensors"));
            let _ = std::fs::remove_file(&old);
        }
        Ok(json)
    }

    /// Restores the newest checkpoint of `dir`; its configuration must equal `cfg`.
    pub fn resume(cfg: TrainConfig, dir: &Path, device: &Device) -> Result<Trainer> {
        let (_, json) = checkpoints(dir)?
            .pop()
            .with_context(|| format!("--resume: no checkpoint in {}", dir.display()))?;
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
        if meta.config != cfg {
            bail!(
                "the configuration differs from the one {} was trained with; resume with that configuration (it is recorded in the checkpoint)",
                json.display()
            );
        }
        let mut t = Trainer::new(cfg, device)?;
        let st = json.with_extension("safetensors");
        let saved = candle_core::safetensors::load(&st, device)
            .with_context(|| format!("reading {}", st.display()))?;
        let get = |k: String| -> Result<Tensor> {
            saved
                .get(&k)
                .cloned()
                .with_context(|| format!("{} has no tensor {k}", st.display()))
        };
        let mut named = Vec::new();
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for name in t.net.names() {
            named.push((name.clone(), get(format!("w.{name}"))?));
            m.push(get(format!("m.{name}"))?);
            v.push(get(format!("v.{name}"))?);
        }
        t.net = Net::from_tensors(t.net.config(), named, DType::F32, device)?;
        t.opt = AdamW::restore(t.net.vars(), t.net.names(), m, v, meta.step)?;
        t.step = meta.step;
        t.history = meta.history;
        t.evals = meta.evals;
        t.elapsed_before = meta.elapsed_s;
        t.init = meta.init;
        ensure!(
            t.history.len() == t.step,
            "{}: {} history rows for {} steps",
            json.display(),
            t.history.len(),
            t.step
        );
        Ok(t)
    }
}

/// (step, metadata path) of every complete checkpoint in `dir`, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in rd {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|n| n.parse::<usize>().ok())
            && p.with_extension("safetensors").is_file()
        {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// The loss of a batch — the weighted mean NLL over the answer tokens and, with weight
/// `query_weight`, the query-colour tokens; plus `context_weight` times the mean NLL of every
/// other token when positive — and the accuracies on answers and queries.
pub fn batch_loss(
    net: &Net,
    batch: &[Sequence],
    query_weight: f64,
    context_weight: f64,
) -> Result<(Tensor, f64, f64)> {
    let b = batch.len();
    let s = batch[0].ids.len();
    let dev = net.device();
    let ids: Vec<u32> = batch.iter().flat_map(|q| q.ids.iter().copied()).collect();
    let ids = Tensor::from_vec(ids, (b, s), dev)?;
    let (mut rows, mut labels, mut weights, mut is_answer) = (vec![], vec![], vec![], vec![]);
    for (i, q) in batch.iter().enumerate() {
        for t in &q.targets {
            let w = match t.kind {
                TargetKind::Answer { .. } => 1.0,
                TargetKind::Query => query_weight,
            };
            if w == 0.0 {
                continue;
            }
            rows.push((i * s + t.pos - 1) as u32);
            labels.push(t.label);
            weights.push(w as f32);
            is_answer.push(matches!(t.kind, TargetKind::Answer { .. }));
        }
    }
    let k = rows.len();
    ensure!(k > 0, "the batch has no target tokens");
    // the context rows follow the target rows in one lm_head pass
    let (mut c_labels, mut c_rows) = (vec![], vec![]);
    if context_weight > 0.0 {
        for (i, q) in batch.iter().enumerate() {
            let targeted: std::collections::HashSet<usize> =
                q.targets.iter().map(|t| t.pos).collect();
            for p in 1..s {
                if !targeted.contains(&p) {
                    c_rows.push((i * s + p - 1) as u32);
                    c_labels.push(q.ids[p]);
                }
            }
        }
    }
    let nc = c_rows.len();
    let all_rows: Vec<u32> = rows.iter().copied().chain(c_rows).collect();
    let all_logits = net.logits_at(&ids, &Tensor::from_vec(all_rows, k + nc, dev)?)?;
    let logits = all_logits.narrow(0, 0, k)?;
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let labels_t = Tensor::from_vec(labels.clone(), k, dev)?;
    let mut loss = weighted_nll(&logits, &labels_t, &Tensor::from_vec(weights, k, dev)?)?;
    if nc > 0 {
        let ctx = weighted_nll(
            &all_logits.narrow(0, k, nc)?,
            &Tensor::from_vec(c_labels, nc, dev)?,
            &Tensor::ones(nc, DType::F32, dev)?,
        )?;
        loss = (loss + (ctx * context_weight)?)?;
    }
    let acc = |want: bool| {
        let (mut hit, mut all) = (0usize, 0usize);
        for i in 0..k {
            if is_answer[i] == want {
                all += 1;
                hit += (pred[i] == labels[i]) as usize;
            }
        }
        if all == 0 {
            f64::NAN
        } else {
            hit as f64 / all as f64
        }
    };
    Ok((loss, acc(true), acc(false)))
}

/// The inference model (fused kernels, minarc's analysis path) of the net's current weights.
pub fn inference_model(net: &Net) -> Result<Qwen2> {
    let cfg = net.config().clone();
    let tensors: HashMap<String, Tensor> = net.tensors()?.into_iter().collect();
    let files = WeightFiles::from_tensors(PathBuf::from("<training>"), tensors);
    let dev = net.device().clone();
    let w = Weights::load(&files, &cfg, DType::F32, &dev)?;
    Qwen2::from_weights(cfg, w, DType::F32, &dev)
}

/// Accuracy and NLL of `model` on the evaluated answers (last two examples) of `seqs`.
pub fn evaluate(model: &Qwen2, seqs: &[Sequence]) -> Result<EvalLog> {
    let mut per_relation: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut wrong_read_as: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut by_answer: Vec<(usize, usize)> = Vec::new();
    let (mut hit, mut all, mut nll) = (0usize, 0usize, 0f64);
    for q in seqs {
        crate::cancel::check()?;
        let targets: Vec<_> = q
            .targets
            .iter()
            .filter(|t| matches!(t.kind, TargetKind::Answer { evaluated: true }))
            .collect();
        let rows: Vec<usize> = targets.iter().map(|t| t.pos - 1).collect();
        let h = model.forward(&q.ids)?; // [1,s,e]
        let rows_t = crate::model::ops::index_tensor(&rows, model.device())?;
        let logits = linear(
            &h.index_select(&rows_t, 1)?,
            &model.weights().lm_head_t,
            None,
        )?
        .squeeze(0)?
        .to_dtype(DType::F32)?; // [k,v]
        let logp = candle_nn::ops::log_softmax(&logits, 1)?.to_vec2::<f32>()?;
        let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        let entry = per_relation
            .entry(q.relation.name().to_string())
            .or_default();
        for (i, t) in targets.iter().enumerate() {
            let ok = pred[i] == t.label;
            if !ok {
                let readings = q
                    .readings
                    .iter()
                    .find(|(p, _)| *p == t.pos)
                    .map_or(&[][..], |(_, r)| r.as_slice());
                *wrong_read_as
                    .entry(q.relation.name().to_string())
                    .or_default()
                    .entry(read_as(pred[i], readings))
                    .or_default() += 1;
            }
            if by_answer.len() <= i {
                by_answer.resize(i + 1, (0, 0));
            }
            by_answer[i].0 += ok as usize;
            by_answer[i].1 += 1;
            hit += ok as usize;
            entry.0 += ok as usize;
            entry.1 += 1;
            all += 1;
            nll -= logp[i][t.label as usize] as f64;
        }
    }
    ensure!(all > 0, "no evaluated answers");
    Ok(EvalLog {
        step: 0,
        puzzles: seqs.len(),
        acc: hit as f64 / all as f64,
        nll: nll / all as f64,
        per_relation,
        wrong_read_as,
        by_answer,
    })
}

/// The `gen_dataset` options of the evaluation variant (written to `minarc.json`): the
/// distribution the model was trained on, for the shipped scripts' datasets.
pub fn dataset_options(cfg: &TrainConfig) -> serde_json::Value {
    let v = cfg.eval_variant();
    let o = cfg.prompt_options();
    let mut m = serde_json::json!({
        "relations": v.relations,
        "n": v.n,
        "m": v.m,
        "frame": v.frame,
        "n_color": v.n_color,
        "n_train": v.n_train,
        "Q_train": v.q_train,
        "style": o.style,
        "remove_instructions": o.remove_instructions,
    });
    if !v.filter.is_unique() {
        m["filter"] = v.filter.name().into();
    }
    if let Some(t) = &o.template {
        m["template"] = serde_json::to_value(t).unwrap_or_default();
    }
    m
}

/// Writes the trained model as a Hugging Face folder: config.json, generation_config.json,
/// model.safetensors, the tokenizer files and minarc.json (dataset options, training summary).
pub fn write_model(
    net: &Net,
    cfg: &TrainConfig,
    tok: &Tokenizer,
    summary: serde_json::Value,
    dir: &Path,
) -> Result<()> {
    use crate::model::fixture::{write_configs, write_json, write_safetensors};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_configs(dir, net.config())?;
    write_safetensors(
        &dir.join(crate::model::loader::SINGLE_FILE),
        &net.tensors()?,
    )?;
    crate::tokenizer::write_tokenizer_files(dir, tok)?;
    write_json(
        &dir.join(crate::model::fixture::MINARC_JSON),
        &serde_json::json!({
            "dataset": dataset_options(cfg),
            "training": summary,
        }),
    )
}

/// Runs (or resumes) training to the end or to `stop_after`, with a progress bar, periodic
/// held-out evaluations and checkpoints; at the end writes `out/model`, `out/train.json`
/// (the report) and the curve `out/curve.png` / `out/curve.svg`. Ctrl-C stops after the
/// current step with a checkpoint.
pub fn run(cfg: TrainConfig, opts: &RunOptions) -> Result<RunResult> {
    let ck_dir = opts.out.join("checkpoints");
    let mut t = if opts.resume {
        Trainer::resume(cfg, &ck_dir, &opts.device)?
    } else {
        if !checkpoints(&ck_dir)?.is_empty() {
            bail!(
                "{} already holds checkpoints: continue with --resume, or choose another --out",
                ck_dir.display()
            );
        }
        let mut t = Trainer::new(cfg, &opts.device)?;
        if let Some(st) = &opts.init {
            t.init_from(st)?;
        }
        t
    };
    let steps = t.cfg.optim.steps;
    let end = opts.stop_after.map_or(steps, |s| s.min(steps));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // a second handler cannot be installed in one process (tests train twice): ignore that
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    eprintln!(
        "training {} parameters ({} layers, hidden {}, {} heads) for {steps} steps of {} puzzles, from step {}",
        t.net.num_params(),
        t.cfg.model.layers,
        t.cfg.model.hidden,
        t.cfg.model.heads,
        t.cfg.optim.batch,
        t.step
    );
    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new(steps as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_position(t.step as u64);
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let elapsed = |t: &Trainer| t.elapsed_before + started.elapsed().as_secs_f64();
    let (mut loss_avg, mut acc_avg) = (f64::NAN, f64::NAN);
    while t.step < end {
        let log = t.train_step()?;
        let a = 0.05;
        loss_avg = if loss_avg.is_nan() {
            log.loss
        } else {
            (1.0 - a) * loss_avg + a * log.loss
        };
        acc_avg = if acc_avg.is_nan() {
            log.answer_acc
        } else {
            (1.0 - a) * acc_avg + a * log.answer_acc
        };
        let held = t
            .evals
            .last()
            .map(|e| format!(" held-out {:.3}", e.acc))
            .unwrap_or_default();
        pb.set_message(format!("loss {loss_avg:.4} acc {acc_avg:.3}{held}"));
        pb.set_position(t.step as u64);
        let every = |n: usize| n > 0 && t.step % n == 0;
        if every(t.cfg.run.eval_every) && t.step < steps {
            let e = t.evaluate(t.cfg.run.eval_samples)?;
            let line = format!(
                "step {:>6}  loss {loss_avg:.4}  train acc {acc_avg:.3}  held-out acc {:.3} (nll {:.3}, {} puzzles)  {:.0} s",
                t.step,
                e.acc,
                e.nll,
                e.puzzles,
                elapsed(&t)
            );
            if pb.is_hidden() {
                eprintln!("{line}");
            } else {
                pb.println(line);
            }
            t.evals.push(e);
        }
        let interrupted = stop.load(Ordering::SeqCst);
        if every(t.cfg.run.checkpoint_every) || t.step == end || interrupted {
            t.save_checkpoint(&ck_dir, elapsed(&t))?;
        }
        if interrupted {
            pb.abandon();
            eprintln!(
                "interrupted at step {}: checkpoint saved; continue with --resume",
                t.step
            );
            return Ok(RunResult {
                step: t.step,
                finished: false,
                final_eval: None,
            });
        }
    }
    pb.finish_and_clear();
    if t.step < steps {
        eprintln!(
            "stopped at step {} of {steps}: continue with --resume",
            t.step
        );
        return Ok(RunResult {
            step: t.step,
            finished: false,
            final_eval: None,
        });
    }
    let total = elapsed(&t);
    finish(&mut t, &opts.out, total)
}

/// The end of a run: final evaluation, model folder, report and curve.
fn finish(t: &mut Trainer, out: &Path, elapsed_s: f64) -> Result<RunResult> {
    let n = t.cfg.run.final_eval_samples;
    eprintln!("final held-out evaluation on {n} puzzles …");
    let e = t.evaluate(n)?;
    if t.evals
        .last()
        .is_none_or(|l| l.step != t.step || l.puzzles != e.puzzles)
    {
        t.evals.push(e.clone());
    }
    let per_relation: BTreeMap<String, f64> = e
        .per_relation
        .iter()
        .map(|(k, &(h, a))| (k.clone(), h as f64 / a.max(1) as f64))
        .collect();
    let acc_by_answer: Vec<f64> = e
        .by_answer
        .iter()
        .map(|&(h, a)| h as f64 / a.max(1) as f64)
        .collect();
    let tail = t.history.len().saturating_sub(100);
    let last = &t.history[tail..];
    let train_acc = last.iter().map(|l| l.answer_acc).sum::<f64>() / last.len().max(1) as f64;
    let summary = serde_json::json!({
        "command": "minarc train",
        "steps": t.step,
        "puzzles_seen": t.step * t.cfg.optim.batch,
        "wall_time_s": elapsed_s,
        "init": t.init,
        "parameters": t.net.num_params(),
        "train_answer_acc_last_100_steps": train_acc,
        "held_out": {
            "seeds": format!("0..{n}"),
            "puzzles": e.puzzles,
            "answers": e.per_relation.values().map(|v| v.1).sum::<usize>(),
            "acc": e.acc,
            "nll": e.nll,
            "per_relation_acc": per_relation,
            "wrong_answers_read_as": e.wrong_read_as,
            "acc_by_answer": acc_by_answer,
        },
        "config": t.cfg,
    });
    write_model(&t.net, &t.cfg, &t.tok, summary.clone(), &out.join("model"))?;
    crate::model::fixture::write_json(
        &out.join("train.json"),
        &serde_json::json!({"summary": summary, "evals": t.evals, "history": t.history}),
    )?;
    let loss: Vec<(usize, f64)> = t.history.iter().map(|l| (l.step + 1, l.loss)).collect();
    let acc: Vec<(usize, f64)> = t
        .history
        .iter()
        .map(|l| (l.step + 1, l.answer_acc))
        .collect();
    let held: Vec<(usize, f64)> = t.evals.iter().map(|e| (e.step, e.acc)).collect();
    let data = crate::vis::plots::TrainingCurveData {
        loss: &loss,
        train_acc: &acc,
        held_out_acc: &held,
        chance: 1.0 / t.cfg.puzzles.n_color as f64,
    };
    for ext in ["png", "svg"] {
        crate::vis::plots::plot_training_curve(&data, &out.join(format!("curve.{ext}")), 100.0)?;
    }
    eprintln!(
        "held-out accuracy {:.3} on {} puzzles ({}); model in {}",
        e.acc,
        e.puzzles,
        per_relation
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        out.join("model").display()
    );
    let by: Vec<String> = acc_by_answer.iter().map(|a| format!("{a:.3}")).collect();
    eprintln!(
        "  accuracy by scored answer, in prompt order: {}",
        by.join(" ")
    );
    for (rel, reads) in &e.wrong_read_as {
        let parts: Vec<String> = reads.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!(
            "  wrong answers on {rel} read the cell of: {}",
            parts.join(", ")
        );
    }
    Ok(RunResult {
        step: t.step,
        finished: true,
        final_eval: Some(e),
    })
}
