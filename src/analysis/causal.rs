//! Causal checks of an attribution: interventions with values taken from the cache (zero, mean
//! over a reference dataset, resample / patch from another sample, add a vector), the metrics
//! of an intervened run against the clean one, sweeps, circuit faithfulness and the ablation
//! curve. Everything goes through [`Backend::intervene`], so local and remote models give the
//! same numbers.
//!
//! Metrics are read at the positions that predict the answers (`answer_indices − 1`, the `A-`
//! span, as the lm_head objective), against the sample's labels and candidate ids. A sample without answers is judged at its last position against the clean run's own
//! prediction (the seed's `reduction='argmax'`).

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, Device, Tensor};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, HeadSel, InterveneOptions, SampleInput, SampleKey};
use crate::model::intervene::{Edit, Intervention, Site};
use crate::model::ops::objective_value;

/// How a mean ablation averages its reference dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeanOver {
    /// One mean per position: position p gets the mean over the reference samples of their
    /// value at p (every reference sample must be long enough).
    Position,
    /// One mean vector: the mean over every position of every reference sample, set at each
    /// intervened position (works for samples of any length; not for attention patterns).
    All,
}

/// Where the value of an intervention comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Zero ablation.
    Zero,
    /// Mean ablation over the samples of a cached reference dataset.
    Mean {
        /// The reference dataset.
        dataset: String,
        /// Per position or over all positions.
        over: MeanOver,
    },
    /// The value of another cached sample at the same site and positions: resample ablation
    /// and activation patching (clean→corrupt or corrupt→clean) are this one operation.
    From(SampleKey),
    /// Set an explicit value `[k,w]` or `[w]`.
    Set(Tensor),
    /// Add a vector `[k,w]` or `[w]` (steering).
    Add(Tensor),
}

/// One intervention before its value is looked up.
#[derive(Debug, Clone)]
pub struct Ablation {
    /// Where.
    pub site: Site,
    /// Positions (None = all).
    pub positions: Option<Vec<usize>>,
    /// The value.
    pub source: Source,
}

/// A component of a circuit: a head or an MLP (the seed's pseudo-head `(layer, H)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Attention head (layer, head).
    Head(usize, usize),
    /// MLP of a layer.
    Mlp(usize),
}

impl Component {
    /// The site of its output.
    pub fn site(self) -> Site {
        match self {
            Component::Head(layer, head) => Site::Head { layer, head },
            Component::Mlp(layer) => Site::Mlp { layer },
        }
    }

    /// From a seed head key: `head == H` is the MLP of the layer.
    pub fn from_key(layer: usize, head: usize, n_heads: usize) -> Self {
        if head == n_heads {
            Component::Mlp(layer)
        } else {
            Component::Head(layer, head)
        }
    }

    /// Every head and MLP of a model.
    pub fn all(n_layers: usize, n_heads: usize, mlp: bool) -> Vec<Component> {
        let mut v = Vec::new();
        for l in 0..n_layers {
            v.extend((0..n_heads).map(|h| Component::Head(l, h)));
            if mlp {
                v.push(Component::Mlp(l));
            }
        }
        v
    }
}

/// Metrics of one run at the sample's answer positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The sample's lm_head objective (by default the mean log-prob of the labels under the
    /// candidate mask, A2–A4; see [`crate::model::sample::Objective`]).
    pub objective: f64,
    /// Share of answer positions whose (candidate-masked) argmax is the label.
    pub accuracy: f64,
    /// Logit difference: logit(label) − the largest other candidate's (other token's when
    /// there are no candidates), mean over answer positions.
    pub logit_diff: f64,
    /// KL(clean ‖ intervened) of the full next-token distributions, mean over positions.
    pub kl: f64,
}

impl Metrics {
    /// The named metric (`objective`, `accuracy`, `logit_diff`, `kl`).
    pub fn get(&self, name: &str) -> Result<f64> {
        Ok(match name {
            "objective" => self.objective,
            "accuracy" => self.accuracy,
            "logit_diff" => self.logit_diff,
            "kl" => self.kl,
            _ => bail!("unknown metric {name:?} (objective, accuracy, logit_diff or kl)"),
        })
    }

    /// The field-wise mean.
    pub fn mean(ms: &[Metrics]) -> Metrics {
        let n = ms.len().max(1) as f64;
        let s = |f: fn(&Metrics) -> f64| ms.iter().map(f).sum::<f64>() / n;
        Metrics {
            objective: s(|m| m.objective),
            accuracy: s(|m| m.accuracy),
            logit_diff: s(|m| m.logit_diff),
            kl: s(|m| m.kl),
        }
    }
}

/// Names of the metrics, in [`Metrics`] order.
pub const METRICS: [&str; 4] = ["objective", "accuracy", "logit_diff", "kl"];

/// What the metrics of a sample are judged against.
struct Target {
    labels: Vec<u32>,
    candidates: Vec<u32>,
    objective: crate::model::sample::Objective,
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f64>>> {
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?; // [k,v]
    Ok(lp
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect())
}

/// The metrics of intervened logits `[k,v]` against the clean logits `[k,v]`.
fn metrics(logits: &Tensor, clean: &Tensor, t: &Target) -> Result<Metrics> {
    let (k, v) = logits.dims2()?;
    let objective = objective_value(
        &logits.unsqueeze(0)?,
        &t.labels,
        &t.candidates,
        &t.objective,
    )?
    .to_vec1::<f32>()?[0] as f64;
    let rows = logits.to_vec2::<f32>()?;
    let allowed: Vec<usize> = if t.candidates.is_empty() {
        (0..v).collect()
    } else {
        t.candidates.iter().map(|&c| c as usize).collect()
    };
    let (mut acc, mut diff) = (0f64, 0f64);
    for (r, &label) in rows.iter().zip(&t.labels) {
        let label = label as usize;
        let best = allowed
            .iter()
            .copied()
            .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
            .unwrap_or(label);
        acc += f64::from(u8::from(best == label));
        let foil = allowed
            .iter()
            .copied()
            .filter(|&c| c != label)
            .map(|c| r[c])
            .fold(f32::NEG_INFINITY, f32::max);
        if foil.is_finite() {
            diff += f64::from(r[label]) - f64::from(foil);
        }
    }
    let (lp, lq) = (log_softmax_rows(clean)?, log_softmax_rows(logits)?);
    let kl: f64 = lp
        .iter()
        .zip(&lq)
        .map(|(p, q)| p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>())
        .sum();
    let n = k as f64;
    Ok(Metrics {
        objective,
        accuracy: acc / n,
        logit_diff: diff / n,
        kl: kl / n,
    })
}

/// The labels a sample is judged by: its own, else the clean run's argmax at the last position.
fn target(input: &SampleInput, clean: &Tensor) -> Result<Target> {
    if !input.labels.is_empty() && !input.answer_indices.is_empty() {
        return Ok(Target {
            labels: input.labels.clone(),
            candidates: input.candidate_ids.clone(),
            objective: input.objective.clone(),
        });
    }
    let top = clean.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(Target {
        labels: top,
        candidates: Vec::new(),
        objective: Default::default(),
    })
}

/// A memoised mean: (reference dataset, site, how averaged, positions for a per-position mean).
type MeanKey = (String, Site, MeanOver, Option<Vec<usize>>);

/// Looks intervention values up in the cache (means are computed once per site and kept).
pub struct Resolver<'a> {
    backend: &'a dyn Backend,
    means: HashMap<MeanKey, Tensor>,
}

impl<'a> Resolver<'a> {
    /// A resolver over one backend.
    pub fn new(backend: &'a dyn Backend) -> Self {
        Self {
            backend,
            means: HashMap::new(),
        }
    }

    /// The cached value of a site of a sample at positions: `[k,w]` (w = hidden size, or the
    /// sequence length for a pattern).
    pub fn site_value(
        &self,
        key: &SampleKey,
        site: &Site,
        pos: Option<&[usize]>,
    ) -> Result<Tensor> {
        let b = self.backend;
        let nl = b.config().num_hidden_layers;
        let t = match *site {
            Site::Head { layer, head } => b.head_output(key, layer, &HeadSel::One(head), pos)?,
            Site::Pattern { layer, head } => {
                b.attn_weights(key, layer, &HeadSel::One(head), pos)?
            }
            Site::AttnOutput { layer } => b.attn_output(key, layer, pos)?,
            Site::Mlp { layer } => b.mlp_output(key, layer, pos)?,
            Site::Residual { layer } if layer < nl => b.hidden_states(key, layer, pos)?,
            Site::Residual { layer } if layer == nl && nl > 0 => {
                // the residual before the final norm: hs[L-1] + attn[L-1] + mlp[L-1]
                let l = nl - 1;
                ((b.hidden_states(key, l, pos)? + b.attn_output(key, l, pos)?)?
                    + b.mlp_output(key, l, pos)?)?
            }
            Site::Residual { layer } => bail!("residual layer {layer} out of range 0..={nl}"),
        };
        Ok(t.squeeze(0)?)
    }

    fn mean(
        &mut self,
        dataset: &str,
        over: MeanOver,
        site: &Site,
        pos: Option<&[usize]>,
        s: usize,
    ) -> Result<Tensor> {
        let pos_key = match over {
            MeanOver::Position => Some(pos.map_or_else(|| (0..s).collect(), <[usize]>::to_vec)),
            MeanOver::All => None,
        };
        let mkey = (dataset.to_string(), site.clone(), over, pos_key.clone());
        if let Some(t) = self.means.get(&mkey) {
            return Ok(t.clone());
        }
        let samples = self
            .backend
            .datasets()?
            .into_iter()
            .find(|(d, _)| d == dataset)
            .map(|(_, v)| v)
            .unwrap_or_default();
        ensure!(
            !samples.is_empty(),
            "mean ablation: reference dataset {dataset:?} has no cached samples"
        );
        if over == MeanOver::All && matches!(site, Site::Pattern { .. }) {
            bail!(
                "mean ablation of {}: a pattern has one width per sample length, so it can only be \
                 averaged per position (over: \"position\")",
                site.describe()
            );
        }
        let mut sum: Option<Tensor> = None;
        let mut count = 0usize;
        for i in samples {
            crate::cancel::check()?;
            let rk = SampleKey::new(dataset, i);
            let v = match &pos_key {
                Some(p) => {
                    let n = self.backend.seq_len(&rk)?;
                    if let Some(&q) = p.iter().find(|&&q| q >= n) {
                        bail!(
                            "mean ablation per position: reference sample {i} of {dataset:?} has \
                             {n} tokens, no position {q} (use over: \"all\" for samples of other \
                             lengths)"
                        );
                    }
                    count += 1;
                    self.site_value(&rk, site, Some(p))?
                }
                None => {
                    let v = self.site_value(&rk, site, None)?;
                    count += v.dim(0)?;
                    v.sum_keepdim(0)?
                }
            };
            sum = Some(match sum {
                None => v,
                Some(acc) => (acc + v)?,
            });
        }
        let mean = (sum.expect("at least one sample") / count as f64)?;
        self.means.insert(mkey, mean.clone());
        Ok(mean)
    }

    /// The intervention for an ablation on a sample of `s` tokens.
    pub fn resolve(&mut self, s: usize, ab: &Ablation) -> Result<Intervention> {
        let pos = ab.positions.as_deref();
        let edit = match &ab.source {
            Source::Zero => Edit::Zero,
            Source::Set(t) => Edit::Set(t.clone()),
            Source::Add(t) => Edit::Add(t.clone()),
            Source::Mean { dataset, over } => {
                Edit::Set(self.mean(dataset, *over, &ab.site, pos, s)?)
            }
            Source::From(src) => {
                let n = self.backend.seq_len(src)?;
                match pos {
                    Some(p) => {
                        if let Some(&q) = p.iter().find(|&&q| q >= n) {
                            bail!(
                                "{}: source sample {} of {:?} has {n} tokens, no position {q}",
                                ab.site.describe(),
                                src.index,
                                src.dataset
                            );
                        }
                    }
                    None => ensure!(
                        n == s,
                        "{}: patching every position needs a source of the same length ({s} \
                         tokens), sample {} of {:?} has {n} (give positions)",
                        ab.site.describe(),
                        src.index,
                        src.dataset
                    ),
                }
                Edit::Set(self.site_value(src, &ab.site, pos)?)
            }
        };
        Ok(Intervention {
            site: ab.site.clone(),
            positions: ab.positions.clone(),
            edit,
        })
    }

    /// Resolves sets of ablations for one sample.
    pub fn resolve_sets(
        &mut self,
        key: &SampleKey,
        sets: &[Vec<Ablation>],
    ) -> Result<Vec<Vec<Intervention>>> {
        let s = self.backend.seq_len(key)?;
        sets.iter()
            .map(|set| set.iter().map(|ab| self.resolve(s, ab)).collect())
            .collect()
    }
}

/// Intervention sets sent to the backend per call (a progress step and a Ctrl-C point).
const SETS_PER_CALL: usize = 16;

/// The clean run's metrics and logits and each set's metrics on one sample. The clean run is
/// set 0 of the first call, computed by the same batched forward.
pub struct SampleRuns {
    /// Clean metrics (KL 0).
    pub clean: Metrics,
    /// Clean logits `[k,v]` at the metric positions.
    pub clean_logits: Tensor,
    /// Per set: metrics.
    pub metrics: Vec<Metrics>,
    /// Per set: logits `[k,v]`.
    pub logits: Vec<Tensor>,
    /// Per set: the asked residual streams (layer, `[1,s,e]`).
    pub hidden_states: Vec<Vec<(usize, Tensor)>>,
    /// Clean logits `[k',v]` at the asked extra positions (None when none were asked).
    pub clean_asked: Option<Tensor>,
    /// Per set: logits `[k',v]` at the asked extra positions.
    pub asked: Vec<Option<Tensor>>,
}

/// Runs intervention sets on one sample (clean run first), `SETS_PER_CALL` sets per backend
/// call, ticking `bar` by one per set; `hidden_layers` are the residual streams to return and
/// `asked_positions` positions whose logits are returned besides the metric positions (the
/// same forward computes both).
pub fn run_sets(
    backend: &dyn Backend,
    key: &SampleKey,
    sets: &[Vec<Intervention>],
    hidden_layers: &[usize],
    asked_positions: &[usize],
    bar: &ProgressBar,
) -> Result<SampleRuns> {
    crate::limits::INTERVENTION_SETS.check(sets.len(), "intervention sets")?;
    let input = backend.sample_meta(key)?;
    let s = backend.seq_len(key)?;
    let metric_pos = InterveneOptions::default().positions_for(&input, s)?;
    crate::model::ops::check_positions(asked_positions, s, "logit")?;
    let k = metric_pos.len();
    let opts = InterveneOptions {
        logit_positions: Some(
            metric_pos
                .into_iter()
                .chain(asked_positions.iter().copied())
                .collect(),
        ),
        hidden_layers: hidden_layers.to_vec(),
    };
    // [k + k', v] → the metric rows and the asked rows
    let split = |t: Tensor| -> Result<(Tensor, Option<Tensor>)> {
        Ok(if asked_positions.is_empty() {
            (t, None)
        } else {
            (
                t.narrow(0, 0, k)?,
                Some(t.narrow(0, k, asked_positions.len())?),
            )
        })
    };
    let mut all: Vec<Vec<Intervention>> = Vec::with_capacity(sets.len() + 1);
    all.push(Vec::new());
    all.extend_from_slice(sets);
    let mut logits = Vec::with_capacity(all.len());
    let mut asked = Vec::with_capacity(all.len());
    let mut hidden_states = Vec::with_capacity(all.len());
    for (ci, chunk) in all.chunks(SETS_PER_CALL).enumerate() {
        crate::cancel::check()?;
        let runs = backend
            .intervene(key, chunk, &opts)
            .with_context(|| format!("sample {} of {:?}", key.index, key.dataset))?;
        ensure!(
            runs.len() == chunk.len(),
            "backend returned {} runs for {} sets",
            runs.len(),
            chunk.len()
        );
        bar.inc((chunk.len() - usize::from(ci == 0)) as u64);
        for r in runs {
            let (m, a) = split(r.logits)?;
            logits.push(m);
            asked.push(a);
            hidden_states.push(r.hidden_states);
        }
    }
    let clean_logits = logits.remove(0);
    let clean_asked = asked.remove(0);
    hidden_states.remove(0);
    let t = target(&input, &clean_logits)?;
    let clean = metrics(&clean_logits, &clean_logits, &t)?;
    let metrics = logits
        .iter()
        .map(|l| metrics(l, &clean_logits, &t))
        .collect::<Result<_>>()?;
    Ok(SampleRuns {
        clean,
        clean_logits,
        metrics,
        logits,
        hidden_states,
        clean_asked,
        asked,
    })
}

/// Runs ablation sets on several samples and averages the metrics over the samples.
pub fn mean_over_samples(
    backend: &dyn Backend,
    keys: &[SampleKey],
    sets: &[Vec<Ablation>],
    bar: &ProgressBar,
) -> Result<(Metrics, Vec<Metrics>)> {
    ensure!(!keys.is_empty(), "no samples");
    let mut res = Resolver::new(backend);
    let (mut clean, mut per) = (Vec::new(), vec![Vec::new(); sets.len()]);
    for key in keys {
        let ivs = res.resolve_sets(key, sets)?;
        let r = run_sets(backend, key, &ivs, &[], &[], bar)?;
        clean.push(r.clean);
        for (p, m) in per.iter_mut().zip(r.metrics) {
            p.push(m);
        }
    }
    Ok((
        Metrics::mean(&clean),
        per.iter().map(|m| Metrics::mean(m)).collect(),
    ))
}

/// One row of a sweep: what was intervened and the metrics of that run.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// The site.
    pub site: Site,
    /// The position (position sweeps) or None (every position).
    pub position: Option<usize>,
    /// Metrics of the run (mean over the samples).
    pub metrics: Metrics,
}

/// Ablates each component in turn (one set per component) with `source`.
pub fn ablate_each(
    backend: &dyn Backend,
    keys: &[SampleKey],
    components: &[Component],
    source: &Source,
    positions: Option<&[usize]>,
    bar: &ProgressBar,
) -> Result<(Metrics, Vec<SweepRow>)> {
    let sets: Vec<Vec<Ablation>> = components
        .iter()
        .map(|c| {
            vec![Ablation {
                site: c.site(),
                positions: positions.map(<[usize]>::to_vec),
                source: source.clone(),
            }]
        })
        .collect();
    let (clean, ms) = mean_over_samples(backend, keys, &sets, bar)?;
    Ok((
        clean,
        components
            .iter()
            .zip(ms)
            .map(|(c, metrics)| SweepRow {
                site: c.site(),
                position: None,
                metrics,
            })
            .collect(),
    ))
}

/// Patches the residual stream entering each layer at each position, one at a time, from
/// sample `from` into sample `key` (layer×position activation patching).
pub fn patch_each_position(
    backend: &dyn Backend,
    key: &SampleKey,
    from: &SampleKey,
    layers: &[usize],
    positions: &[usize],
    bar: &ProgressBar,
) -> Result<(Metrics, Vec<SweepRow>)> {
    crate::limits::INTERVENTION_SETS.check(
        layers.len().saturating_mul(positions.len()),
        "layers × positions",
    )?;
    let mut sets = Vec::new();
    let mut what = Vec::new();
    for &l in layers {
        for &p in positions {
            sets.push(vec![Ablation {
                site: Site::Residual { layer: l },
                positions: Some(vec![p]),
                source: Source::From(from.clone()),
            }]);
            what.push((l, p));
        }
    }
    let (clean, ms) = mean_over_samples(backend, std::slice::from_ref(key), &sets, bar)?;
    Ok((
        clean,
        what.into_iter()
            .zip(ms)
            .map(|((layer, p), metrics)| SweepRow {
                site: Site::Residual { layer },
                position: Some(p),
                metrics,
            })
            .collect(),
    ))
}

/// Circuit faithfulness of one metric: (circuit − empty) / (full − empty).
#[derive(Debug, Clone, Serialize)]
pub struct Faithfulness {
    /// The clean model (nothing ablated).
    pub full: Metrics,
    /// Every head and MLP ablated.
    pub empty: Metrics,
    /// Everything outside the circuit ablated.
    pub circuit: Metrics,
    /// Per metric name (objective, accuracy, logit_diff): the faithfulness ratio (NaN when
    /// full = empty).
    pub score: Vec<(String, f64)>,
    /// Components in the circuit / in the model.
    pub kept: usize,
    /// All components.
    pub total: usize,
}

/// Keeps `circuit`, ablates every other head (and MLP, when `mlp`) with `baseline`, and
/// compares with the full model and with everything ablated. Metrics are averaged over the
/// samples before the ratio is taken.
pub fn faithfulness(
    backend: &dyn Backend,
    keys: &[SampleKey],
    circuit: &[Component],
    baseline: &Source,
    mlp: bool,
    bar: &ProgressBar,
) -> Result<Faithfulness> {
    let cfg = backend.config();
    let all = Component::all(cfg.num_hidden_layers, cfg.num_attention_heads, mlp);
    for c in circuit {
        ensure!(
            all.contains(c),
            "circuit component {c:?} is not in the model{}",
            if mlp {
                ""
            } else {
                " (MLPs are not ablated: pass mlp: true)"
            }
        );
    }
    let ablate = |keep: &[Component]| -> Vec<Ablation> {
        all.iter()
            .filter(|c| !keep.contains(c))
            .map(|c| Ablation {
                site: c.site(),
                positions: None,
                source: baseline.clone(),
            })
            .collect()
    };
    let sets = vec![ablate(&[]), ablate(circuit)];
    let (full, ms) = mean_over_samples(backend, keys, &sets, bar)?;
    let (empty, circ) = (ms[0], ms[1]);
    let score = METRICS[..3]
        .iter()
        .map(|&n| {
            let (f, e, c) = (
                full.get(n).unwrap_or(f64::NAN),
                empty.get(n).unwrap_or(f64::NAN),
                circ.get(n).unwrap_or(f64::NAN),
            );
            let den = f - e;
            (
                n.to_string(),
                if den.abs() < 1e-12 {
                    f64::NAN
                } else {
                    (c - e) / den
                },
            )
        })
        .collect();
    let mut kept: Vec<Component> = circuit.to_vec();
    kept.sort_unstable();
    kept.dedup();
    Ok(Faithfulness {
        full,
        empty,
        circuit: circ,
        score,
        kept: kept.len(),
        total: all.len(),
    })
}

/// Options of [`ablation_curve`].
#[derive(Debug, Clone)]
pub struct CurveOptions {
    /// Largest k.
    pub k_max: usize,
    /// Random draws per k.
    pub draws: usize,
    /// Seed of the random draws (ChaCha8).
    pub seed: u64,
    /// The ablation.
    pub source: Source,
}

/// The ablation curve: metrics after ablating the top-k ranked heads and k random heads.
#[derive(Debug, Clone, Serialize)]
pub struct AblationCurve {
    /// k = 1..=K.
    pub ks: Vec<usize>,
    /// Clean metrics.
    pub clean: Metrics,
    /// Top-k ablated (mean over samples).
    pub top: Vec<Metrics>,
    /// Per k, per draw: k random components ablated.
    pub random: Vec<Vec<Metrics>>,
    /// The ranking's first K components, as seed head keys (MLP = head H).
    pub ranked: Vec<(usize, usize)>,
}

impl AblationCurve {
    /// Per k: (mean, sample standard deviation) of a metric over the random draws.
    pub fn random_stats(&self, metric: &str) -> Result<Vec<(f64, f64)>> {
        self.random
            .iter()
            .map(|draws| {
                let v = draws
                    .iter()
                    .map(|m| m.get(metric))
                    .collect::<Result<Vec<_>>>()?;
                let n = v.len() as f64;
                let mean = v.iter().sum::<f64>() / n;
                let var = if v.len() > 1 {
                    v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
                } else {
                    0.0
                };
                Ok((mean, var.sqrt()))
            })
            .collect()
    }
}

/// Ablates the top-k of `ranking` for k = 1..=K, and k components drawn at random from
/// `pool` (without replacement, `draws` times per k).
pub fn ablation_curve(
    backend: &dyn Backend,
    keys: &[SampleKey],
    ranking: &[Component],
    pool: &[Component],
    opts: &CurveOptions,
    bar: &ProgressBar,
) -> Result<AblationCurve> {
    ensure!(opts.k_max >= 1, "k must be at least 1");
    ensure!(opts.draws >= 1, "draws must be at least 1");
    ensure!(
        ranking.len() >= opts.k_max,
        "the ranking has {} components, fewer than k = {}",
        ranking.len(),
        opts.k_max
    );
    ensure!(
        pool.len() >= opts.k_max,
        "the random pool has {} components, fewer than k = {}",
        pool.len(),
        opts.k_max
    );
    crate::limits::INTERVENTION_SETS.check(
        opts.k_max.saturating_mul(opts.draws.saturating_add(1)),
        "k × (draws + 1)",
    )?;
    let set = |cs: &[Component]| -> Vec<Ablation> {
        cs.iter()
            .map(|c| Ablation {
                site: c.site(),
                positions: None,
                source: opts.source.clone(),
            })
            .collect()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut sets = Vec::new();
    for k in 1..=opts.k_max {
        sets.push(set(&ranking[..k]));
    }
    for k in 1..=opts.k_max {
        for _ in 0..opts.draws {
            let pick: Vec<Component> = pool.choose_multiple(&mut rng, k).copied().collect();
            sets.push(set(&pick));
        }
    }
    let (clean, ms) = mean_over_samples(backend, keys, &sets, bar)?;
    let top = ms[..opts.k_max].to_vec();
    let random = ms[opts.k_max..]
        .chunks(opts.draws)
        .map(<[Metrics]>::to_vec)
        .collect();
    let n_heads = backend.config().num_attention_heads;
    Ok(AblationCurve {
        ks: (1..=opts.k_max).collect(),
        clean,
        top,
        random,
        ranked: ranking[..opts.k_max]
            .iter()
            .map(|c| match *c {
                Component::Head(l, h) => (l, h),
                Component::Mlp(l) => (l, n_heads),
            })
            .collect(),
    })
}

/// Ranks 1..=n of `v` with ties given their average rank (NaN is an error).
fn ranks(v: &[f64]) -> Result<Vec<f64>> {
    ensure!(v.iter().all(|x| !x.is_nan()), "NaN in a ranked list");
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f64; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    Ok(r)
}

/// Spearman's rank correlation of two equally long lists: the Pearson correlation of their
/// ranks (ties averaged, as scipy.stats.spearmanr). NaN when either list is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Result<f64> {
    ensure!(
        a.len() == b.len(),
        "lists of different lengths ({} and {})",
        a.len(),
        b.len()
    );
    ensure!(a.len() >= 2, "need at least 2 values, got {}", a.len());
    let (ra, rb) = (ranks(a)?, ranks(b)?);
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0f64, 0f64, 0f64);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    Ok(if saa == 0.0 || sbb == 0.0 {
        f64::NAN
    } else {
        sab / (saa * sbb).sqrt()
    })
}

/// Moves a value to the host as f32 (values handed to interventions are host tensors).
pub fn host(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?)
}
