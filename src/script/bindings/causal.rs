//! Causal bindings: interventions on a cached sample (`intervene`), sweeps (`ablate_each`,
//! `patch_each`), circuit faithfulness and the ablation curve (top-k attributed heads against
//! k random heads), and its figure. Everything runs through the model's `Backend`, so a local
//! model and a `minarc serve` server give the same numbers.

use super::args::{RResult, guard, int_array, options, usize_list};
use super::attribution::{ScriptGraph, ScriptNode};
use super::model::{Cached, ScriptModel};
use crate::analysis::causal::{
    self, Ablation, AblationCurve, Component, CurveOptions, METRICS, MeanOver, Metrics, Resolver,
    Source, SweepRow,
};
use crate::backend::{Backend, SampleKey};
use crate::model::intervene::Site;
use crate::script::docs::Registrar;
use crate::script::state::{HostState, lock};
use crate::script::tensor::Tensor;
use crate::vis::plots::{AblationCurveData, plot_ablation_curve};
use anyhow::{Result, anyhow, bail, ensure};
use rhai::{Array, Dynamic, FLOAT, INT, Map};
use std::path::Path;
use std::sync::Arc;

/// An intervention map without its script-object values (`from`, `value`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteSpec {
    site: String,
    #[serde(default)]
    layer: Option<usize>,
    #[serde(default)]
    head: Option<usize>,
    #[serde(default)]
    positions: Option<Vec<usize>>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    dataset: Option<String>,
    #[serde(default)]
    over: Option<MeanOver>,
}

/// Where the value of an ablation comes from (the `kind` key and its companions).
struct SourceSpec {
    kind: Option<String>,
    dataset: Option<String>,
    over: Option<MeanOver>,
}

const KINDS: &str = "zero, mean, resample, patch, set or add";

/// Takes the script-object values `from` (a Cached sample) and `value` (a Tensor) out of a map.
fn take_objects(map: &Map) -> Result<(Map, Option<SampleKey>, Option<candle_core::Tensor>)> {
    let mut rest = map.clone();
    let from = match rest.remove("from") {
        None => None,
        Some(v) => Some(
            v.read_lock::<Cached>()
                .map(|c| SampleKey::new(c.dataset.clone(), c.sample.0.index))
                .ok_or_else(|| {
                    anyhow!(
                        "from must be a Cached sample (from forward), got {}",
                        v.type_name()
                    )
                })?,
        ),
    };
    let value = match rest.remove("value") {
        None => None,
        Some(v) => Some(
            v.read_lock::<Tensor>()
                .map(|t| causal::host(&t.0))
                .ok_or_else(|| anyhow!("value must be a Tensor, got {}", v.type_name()))??,
        ),
    };
    Ok((rest, from, value))
}

/// The value source of `kind` (default `default_kind`); a mean without a dataset averages
/// `own_dataset`.
fn source(
    spec: &SourceSpec,
    from: Option<SampleKey>,
    value: Option<candle_core::Tensor>,
    default_kind: &str,
    own_dataset: &str,
) -> Result<Source> {
    let kind = spec.kind.as_deref().unwrap_or(default_kind);
    let needs = |what: &str, ok: bool| {
        ensure!(ok, "kind {kind:?} takes no {what}");
        Ok(())
    };
    needs("dataset", spec.dataset.is_none() || kind == "mean")?;
    needs("over", spec.over.is_none() || kind == "mean")?;
    needs(
        "from",
        from.is_none() || matches!(kind, "resample" | "patch"),
    )?;
    needs("value", value.is_none() || matches!(kind, "set" | "add"))?;
    Ok(match kind {
        "zero" => Source::Zero,
        "mean" => Source::Mean {
            dataset: spec
                .dataset
                .clone()
                .unwrap_or_else(|| own_dataset.to_string()),
            over: spec.over.unwrap_or(MeanOver::All),
        },
        "resample" | "patch" => {
            Source::From(from.ok_or_else(|| anyhow!("kind {kind:?} needs from: a Cached sample"))?)
        }
        "set" => Source::Set(value.ok_or_else(|| anyhow!("kind \"set\" needs value: a Tensor"))?),
        "add" => Source::Add(value.ok_or_else(|| anyhow!("kind \"add\" needs value: a Tensor"))?),
        other => bail!("unknown kind {other:?} ({KINDS})"),
    })
}

fn site(spec: &SiteSpec) -> Result<Site> {
    let layer = || {
        spec.layer
            .ok_or_else(|| anyhow!("site {:?} needs a layer", spec.site))
    };
    let head = || {
        spec.head
            .ok_or_else(|| anyhow!("site {:?} needs a head", spec.site))
    };
    let no_head = || {
        ensure!(spec.head.is_none(), "site {:?} takes no head", spec.site);
        Ok(())
    };
    Ok(match spec.site.as_str() {
        "head" => Site::Head {
            layer: layer()?,
            head: head()?,
        },
        "pattern" => Site::Pattern {
            layer: layer()?,
            head: head()?,
        },
        "attn" => {
            no_head()?;
            Site::AttnOutput { layer: layer()? }
        }
        "mlp" => {
            no_head()?;
            Site::Mlp { layer: layer()? }
        }
        "resid" => {
            no_head()?;
            Site::Residual { layer: layer()? }
        }
        other => bail!("unknown site {other:?} (head, pattern, attn, mlp or resid)"),
    })
}

/// One intervention map → an ablation.
fn ablation(map: &Map, own_dataset: &str) -> Result<Ablation> {
    let (rest, from, value) = take_objects(map)?;
    let spec: SiteSpec = options(&rest)?;
    Ok(Ablation {
        site: site(&spec)?,
        positions: spec.positions.clone(),
        source: source(
            &SourceSpec {
                kind: spec.kind.clone(),
                dataset: spec.dataset.clone(),
                over: spec.over,
            },
            from,
            value,
            "zero",
            own_dataset,
        )?,
    })
}

/// A set: an array of intervention maps (or one map).
fn ablation_set(v: &Dynamic, own_dataset: &str) -> Result<Vec<Ablation>> {
    if let Some(m) = v.read_lock::<Map>() {
        return Ok(vec![ablation(&m, own_dataset)?]);
    }
    let arr = v.read_lock::<Array>().ok_or_else(|| {
        anyhow!(
            "an intervention set is an array of maps, got {}",
            v.type_name()
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            let m = x
                .read_lock::<Map>()
                .ok_or_else(|| anyhow!("intervention {i} must be a map, got {}", x.type_name()))?;
            ablation(&m, own_dataset).map_err(|e| anyhow!("intervention {i}: {e:#}"))
        })
        .collect()
}

fn metrics_map(m: &Metrics) -> Map {
    let mut out = Map::new();
    for name in METRICS {
        out.insert(
            name.into(),
            Dynamic::from_float(m.get(name).unwrap_or(f64::NAN) as FLOAT),
        );
    }
    out
}

fn keys_of(rs: &Array) -> Result<Vec<SampleKey>> {
    ensure!(!rs.is_empty(), "no samples");
    rs.iter()
        .enumerate()
        .map(|(i, v)| {
            v.read_lock::<Cached>()
                .map(|c| SampleKey::new(c.dataset.clone(), c.sample.0.index))
                .ok_or_else(|| {
                    anyhow!(
                        "samples[{i}] is a {}, expected a Cached sample",
                        v.type_name()
                    )
                })
        })
        .collect()
}

/// The backend a list of handles lives in (a handle from a spread forward reads from its
/// home model; all handles must share it).
fn backend_of(m: &ScriptModel, rs: &Array) -> Result<Arc<dyn Backend>> {
    let home = |v: &Dynamic| {
        v.read_lock::<Cached>()
            .and_then(|c| c.home.as_ref().map(|h| h.0.clone()))
    };
    let first = rs.first().and_then(home);
    for (i, v) in rs.iter().enumerate() {
        let same = match (home(v), &first) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        ensure!(
            same,
            "samples[{i}] lives in another model than samples[0] (handles of a spread forward): \
             run one call per model"
        );
    }
    Ok(first.unwrap_or_else(|| m.0.clone()))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InterveneOpts {
    #[serde(default)]
    hidden_layers: Vec<usize>,
    #[serde(default)]
    logit_positions: Vec<usize>,
}

fn intervene(
    st: &HostState,
    m: &ScriptModel,
    c: &Cached,
    set: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let o: InterveneOpts = options(opts)?;
    let b = c.backend(m);
    let key = SampleKey::new(c.dataset.clone(), c.sample.0.index);
    let set = ablation_set(set, &c.dataset)?;
    let ivs = Resolver::new(b).resolve_sets(&key, &[set])?;
    let bar = st.progress(1, "intervene");
    let r = causal::run_sets(b, &key, &ivs, &o.hidden_layers, &o.logit_positions, &bar)?;
    bar.finish_and_clear();
    let mut out = Map::new();
    out.insert(
        "metrics".into(),
        Dynamic::from_map(metrics_map(&r.metrics[0])),
    );
    out.insert("clean".into(), Dynamic::from_map(metrics_map(&r.clean)));
    out.insert("logits".into(), Dynamic::from(Tensor(r.logits[0].clone())));
    out.insert("clean_logits".into(), Dynamic::from(Tensor(r.clean_logits)));
    let mut hidden = Map::new();
    for (l, t) in &r.hidden_states[0] {
        hidden.insert(l.to_string().into(), Dynamic::from(Tensor(t.clone())));
    }
    out.insert("hidden_states".into(), Dynamic::from_map(hidden));
    if let (Some(a), Some(c)) = (&r.asked[0], &r.clean_asked) {
        out.insert("asked_logits".into(), Dynamic::from(Tensor(a.clone())));
        out.insert(
            "clean_asked_logits".into(),
            Dynamic::from(Tensor(c.clone())),
        );
    }
    Ok(out)
}

fn sweep_rows(clean: &Metrics, rows: &[SweepRow], n_heads: usize) -> Array {
    rows.iter()
        .map(|r| {
            let mut m = metrics_map(&r.metrics);
            let (layer, head) = match r.site {
                Site::Head { layer, head } | Site::Pattern { layer, head } => (layer, head),
                Site::Mlp { layer } => (layer, n_heads),
                Site::AttnOutput { layer } | Site::Residual { layer } => (layer, n_heads),
            };
            m.insert("site".into(), r.site.describe().into());
            m.insert("layer".into(), Dynamic::from_int(layer as INT));
            if matches!(r.site, Site::Head { .. } | Site::Mlp { .. }) {
                m.insert("head".into(), Dynamic::from_int(head as INT));
            }
            if let Some(p) = r.position {
                m.insert("position".into(), Dynamic::from_int(p as INT));
            }
            for name in METRICS {
                let d = r.metrics.get(name).unwrap_or(f64::NAN) - clean.get(name).unwrap_or(0.0);
                m.insert(format!("d_{name}").into(), Dynamic::from_float(d as FLOAT));
            }
            Dynamic::from_map(m)
        })
        .collect()
}

/// Options of the sweeps, faithfulness and the curve: the ablation (kind + companions), and
/// what each call adds.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CausalOpts {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    dataset: Option<String>,
    #[serde(default)]
    over: Option<MeanOver>,
    #[serde(default)]
    positions: Option<Vec<usize>>,
    #[serde(default)]
    layers: Option<Vec<usize>>,
    #[serde(default)]
    mlp: Option<bool>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    draws: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
}

impl CausalOpts {
    fn parse(map: &Map, allowed: &[&str]) -> Result<(Self, Option<SampleKey>)> {
        let (rest, from, value) = take_objects(map)?;
        ensure!(
            value.is_none(),
            "option value: sweeps ablate, they take no value"
        );
        for k in rest.keys() {
            ensure!(
                allowed.contains(&k.as_str()),
                "unknown option `{k}`, known: {}",
                allowed.join(", ")
            );
        }
        Ok((options(&rest)?, from))
    }

    fn source(&self, from: Option<SampleKey>, default_kind: &str, own: &str) -> Result<Source> {
        let spec = SourceSpec {
            kind: self.kind.clone(),
            dataset: self.dataset.clone(),
            over: self.over,
        };
        source(&spec, from, None, default_kind, own)
    }

    fn metric(&self) -> Result<String> {
        let m = self.metric.clone().unwrap_or_else(|| "objective".into());
        Metrics::default().get(&m)?;
        Ok(m)
    }
}

/// Words for a source, as printed in tables and returned as `ablation`.
fn describe(s: &Source) -> String {
    match s {
        Source::Zero => "zero".into(),
        Source::Mean { dataset, over } => format!(
            "mean over dataset {dataset:?} ({})",
            match over {
                MeanOver::Position => "per position",
                MeanOver::All => "over all positions",
            }
        ),
        Source::From(k) => format!("resample from sample {} of {:?}", k.index, k.dataset),
        Source::Set(_) => "set".into(),
        Source::Add(_) => "add".into(),
    }
}

const SOURCE_KEYS: [&str; 4] = ["kind", "dataset", "over", "from"];

fn opt_keys(more: &[&'static str]) -> Vec<&'static str> {
    SOURCE_KEYS.iter().chain(more).copied().collect()
}

fn ablate_each(st: &HostState, m: &ScriptModel, rs: &Array, opts: &Map) -> Result<Map> {
    let (o, from) = CausalOpts::parse(opts, &opt_keys(&["positions", "mlp", "metric"]))?;
    let b = backend_of(m, rs)?;
    let b = b.as_ref();
    let keys = keys_of(rs)?;
    let src = o.source(from, "mean", &keys[0].dataset)?;
    let metric = o.metric()?;
    let cfg = b.config();
    let (nl, nh) = (cfg.num_hidden_layers, cfg.num_attention_heads);
    let comps = Component::all(nl, nh, o.mlp.unwrap_or(true));
    let bar = st.progress((comps.len() * keys.len()) as u64, "ablate_each");
    let (clean, rows) = causal::ablate_each(b, &keys, &comps, &src, o.positions.as_deref(), &bar)?;
    bar.finish_and_clear();
    // effect [L, H+1] of the metric (MLP in column H; 0 where nothing was ablated)
    let mut eff = vec![0f32; nl * (nh + 1)];
    for (c, r) in comps.iter().zip(&rows) {
        let (l, h) = match *c {
            Component::Head(l, h) => (l, h),
            Component::Mlp(l) => (l, nh),
        };
        eff[l * (nh + 1) + h] = (r.metrics.get(&metric)? - clean.get(&metric)?) as f32;
    }
    let mut out = Map::new();
    out.insert("clean".into(), Dynamic::from_map(metrics_map(&clean)));
    out.insert(
        "rows".into(),
        Dynamic::from_array(sweep_rows(&clean, &rows, nh)),
    );
    out.insert(
        "effect".into(),
        Dynamic::from(Tensor::from_f32(eff, &[nl, nh + 1])?),
    );
    out.insert("metric".into(), metric.into());
    out.insert("ablation".into(), describe(&src).into());
    Ok(out)
}

fn patch_each(
    st: &HostState,
    m: &ScriptModel,
    c: &Cached,
    src: &Cached,
    opts: &Map,
) -> Result<Map> {
    let (o, _) = CausalOpts::parse(opts, &["layers", "positions", "metric"])?;
    let b = c.backend(m);
    let key = SampleKey::new(c.dataset.clone(), c.sample.0.index);
    let from = SampleKey::new(src.dataset.clone(), src.sample.0.index);
    let metric = o.metric()?;
    let nl = b.config().num_hidden_layers;
    let layers = o.layers.clone().unwrap_or_else(|| (0..nl).collect());
    let s = b.seq_len(&key)?;
    let positions = o.positions.clone().unwrap_or_else(|| (0..s).collect());
    ensure!(
        !layers.is_empty() && !positions.is_empty(),
        "no layers or no positions to patch"
    );
    let bar = st.progress((layers.len() * positions.len()) as u64, "patch_each");
    let (clean, rows) = causal::patch_each_position(b, &key, &from, &layers, &positions, &bar)?;
    bar.finish_and_clear();
    let eff: Vec<f32> = rows
        .iter()
        .map(|r| Ok((r.metrics.get(&metric)? - clean.get(&metric)?) as f32))
        .collect::<Result<_>>()?;
    let mut out = Map::new();
    out.insert("clean".into(), Dynamic::from_map(metrics_map(&clean)));
    out.insert(
        "rows".into(),
        Dynamic::from_array(sweep_rows(&clean, &rows, b.config().num_attention_heads)),
    );
    out.insert(
        "effect".into(),
        Dynamic::from(Tensor::from_f32(eff, &[layers.len(), positions.len()])?),
    );
    out.insert("layers".into(), Dynamic::from_array(int_array(&layers)));
    out.insert(
        "positions".into(),
        Dynamic::from_array(int_array(&positions)),
    );
    out.insert("metric".into(), metric.into());
    Ok(out)
}

/// Components from a Graph (its head and MLP nodes) or an array of `[layer, head, ...]` rows
/// (head H = the MLP; rank_heads rows work as they are) or Nodes.
fn components(v: &Dynamic, n_heads: usize) -> Result<Vec<Component>> {
    if let Some(g) = v.read_lock::<ScriptGraph>() {
        let g = lock(&g.0);
        let mut out: Vec<Component> = g
            .node_ids()
            .into_iter()
            .filter_map(|id| id.head.map(|h| Component::from_key(id.layer, h, n_heads)))
            .collect();
        out.sort_unstable();
        out.dedup();
        return Ok(out);
    }
    let arr = v.read_lock::<Array>().ok_or_else(|| {
        anyhow!(
            "expected a Graph or an array of [layer, head] rows or Nodes, got {}",
            v.type_name()
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            if let Some(n) = x.read_lock::<ScriptNode>() {
                let h = n.0.head.ok_or_else(|| {
                    anyhow!("element {i}: a {} node is not a head or an MLP", n.0.ty)
                })?;
                return Ok(Component::from_key(n.0.layer, h, n_heads));
            }
            let row = x
                .read_lock::<Array>()
                .ok_or_else(|| anyhow!("element {i} must be [layer, head] or a Node"))?;
            ensure!(row.len() >= 2, "element {i} must be [layer, head, ...]");
            let lh = usize_list(&format!("element {i}"), &row[..2].to_vec())?;
            ensure!(
                lh[1] <= n_heads,
                "element {i}: head {} out of range (model has {n_heads} heads; head {n_heads} is the MLP)",
                lh[1]
            );
            Ok(Component::from_key(lh[0], lh[1], n_heads))
        })
        .collect()
}

fn faithfulness(
    st: &HostState,
    m: &ScriptModel,
    rs: &Array,
    circuit: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let (o, from) = CausalOpts::parse(opts, &opt_keys(&["mlp"]))?;
    let b = backend_of(m, rs)?;
    let b = b.as_ref();
    let keys = keys_of(rs)?;
    let src = o.source(from, "mean", &keys[0].dataset)?;
    let nh = b.config().num_attention_heads;
    let circ = components(circuit, nh)?;
    let bar = st.progress(2 * keys.len() as u64, "faithfulness");
    let f = causal::faithfulness(b, &keys, &circ, &src, o.mlp.unwrap_or(true), &bar)?;
    bar.finish_and_clear();
    let mut out = Map::new();
    out.insert("full".into(), Dynamic::from_map(metrics_map(&f.full)));
    out.insert("empty".into(), Dynamic::from_map(metrics_map(&f.empty)));
    out.insert("circuit".into(), Dynamic::from_map(metrics_map(&f.circuit)));
    let mut score = Map::new();
    for (n, v) in &f.score {
        score.insert(n.as_str().into(), Dynamic::from_float(*v as FLOAT));
    }
    out.insert("score".into(), Dynamic::from_map(score));
    out.insert("kept".into(), Dynamic::from_int(f.kept as INT));
    out.insert("total".into(), Dynamic::from_int(f.total as INT));
    out.insert("ablation".into(), describe(&src).into());
    Ok(out)
}

fn curve_map(c: &AblationCurve, src: &Source) -> Result<Map> {
    let mut out = Map::new();
    out.insert("ks".into(), Dynamic::from_array(int_array(&c.ks)));
    out.insert("clean".into(), Dynamic::from_map(metrics_map(&c.clean)));
    let (mut top, mut mean, mut std) = (Map::new(), Map::new(), Map::new());
    for name in METRICS {
        let t: Array = c
            .top
            .iter()
            .map(|m| Dynamic::from_float(m.get(name).unwrap_or(f64::NAN) as FLOAT))
            .collect();
        top.insert(name.into(), Dynamic::from_array(t));
        let st = c.random_stats(name)?;
        mean.insert(
            name.into(),
            Dynamic::from_array(
                st.iter()
                    .map(|s| Dynamic::from_float(s.0 as FLOAT))
                    .collect(),
            ),
        );
        std.insert(
            name.into(),
            Dynamic::from_array(
                st.iter()
                    .map(|s| Dynamic::from_float(s.1 as FLOAT))
                    .collect(),
            ),
        );
    }
    out.insert("top".into(), Dynamic::from_map(top));
    out.insert("random_mean".into(), Dynamic::from_map(mean));
    out.insert("random_std".into(), Dynamic::from_map(std));
    out.insert(
        "ranked".into(),
        Dynamic::from_array(
            c.ranked
                .iter()
                .map(|&(l, h)| Dynamic::from_array(int_array(&[l, h])))
                .collect(),
        ),
    );
    out.insert(
        "draws".into(),
        Dynamic::from_int(c.random.first().map_or(0, Vec::len) as INT),
    );
    out.insert("ablation".into(), describe(src).into());
    Ok(out)
}

fn ablation_curve(
    st: &HostState,
    m: &ScriptModel,
    rs: &Array,
    ranking: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let (o, from) = CausalOpts::parse(opts, &opt_keys(&["k", "draws", "seed", "mlp"]))?;
    let b = backend_of(m, rs)?;
    let b = b.as_ref();
    let keys = keys_of(rs)?;
    let src = o.source(from, "mean", &keys[0].dataset)?;
    let cfg = b.config();
    let nh = cfg.num_attention_heads;
    let ranked = components(ranking, nh)?;
    let pool = Component::all(cfg.num_hidden_layers, nh, o.mlp.unwrap_or(false));
    let k_max = o.k.unwrap_or(ranked.len().min(10));
    let draws = o.draws.unwrap_or(5);
    let copts = CurveOptions {
        k_max,
        draws,
        seed: o.seed.unwrap_or(0),
        source: src.clone(),
    };
    let steps = k_max
        .saturating_mul(draws.saturating_add(1))
        .saturating_mul(keys.len());
    let bar = st.progress(steps as u64, "ablation_curve");
    let c = causal::ablation_curve(b, &keys, &ranked, &pool, &copts, &bar)?;
    bar.finish_and_clear();
    curve_map(&c, &src)
}

fn float_list(map: &Map, key: &str, metric: &str) -> Result<Vec<f64>> {
    let by = map
        .get(key)
        .and_then(|v| v.read_lock::<Map>().map(|m| m.clone()))
        .ok_or_else(|| anyhow!("curve lacks {key} (pass the map ablation_curve returned)"))?;
    let arr = by
        .get(metric)
        .and_then(|v| v.read_lock::<Array>().map(|a| a.clone()))
        .ok_or_else(|| anyhow!("curve.{key} lacks metric {metric:?}"))?;
    arr.iter()
        .map(|v| {
            v.as_float()
                .map_err(|t| anyhow!("curve.{key}.{metric} holds a {t}"))
        })
        .collect()
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PlotOpts {
    #[serde(default)]
    metric: Option<String>,
}

fn plot_curve(curve: &Map, path: &str, opts: &Map) -> Result<()> {
    let o: PlotOpts = options(opts)?;
    let metric = o.metric.unwrap_or_else(|| "objective".into());
    Metrics::default().get(&metric)?;
    let ks: Vec<usize> = usize_list(
        "curve.ks",
        &curve
            .get("ks")
            .and_then(|v| v.read_lock::<Array>().map(|a| a.clone()))
            .ok_or_else(|| anyhow!("curve lacks ks (pass the map ablation_curve returned)"))?,
    )?;
    let top = float_list(curve, "top", &metric)?;
    let mean = float_list(curve, "random_mean", &metric)?;
    let std = float_list(curve, "random_std", &metric)?;
    ensure!(
        top.len() == ks.len() && mean.len() == ks.len() && std.len() == ks.len(),
        "curve lists differ in length"
    );
    let clean = curve
        .get("clean")
        .and_then(|v| v.read_lock::<Map>().map(|m| m.clone()))
        .and_then(|m| m.get(metric.as_str()).and_then(|v| v.as_float().ok()))
        .ok_or_else(|| anyhow!("curve lacks clean.{metric}"))?;
    let random: Vec<(f64, f64)> = mean.into_iter().zip(std).collect();
    plot_ablation_curve(
        &AblationCurveData {
            ks: &ks,
            top: &top,
            random: &random,
            clean,
            metric: &metric,
        },
        Path::new(path),
        super::analysis::PLOT_DPI,
    )
}

/// Register the causal domain.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "intervene",
        "intervene(model: Model, r: Cached, set: Array) -> Map",
        "Forward r's tokens with a set of interventions (an array of maps, see docs/src/causal.md: site head|pattern|attn|mlp|resid, layer, head, positions, kind zero|mean|resample|patch|set|add with dataset/over, from or value); the clean cache is untouched. Returns #{metrics, clean (objective, accuracy, logit_diff, kl), logits, clean_logits [k,v] at the answer positions, hidden_states}.",
        move |m: ScriptModel, c: Cached, set: Dynamic| {
            guard("intervene", || intervene(&st, &m, &c, &set, &Map::new()))
        },
    );
    let st = state.clone();
    r.func(
        "intervene",
        "intervene(model: Model, r: Cached, set: Array, opts: Map) -> Map",
        "intervene with options: hidden_layers ([int]: residual streams returned as hidden_states[\"l\"], [1,s,e]; L = after the final norm), logit_positions ([int]: logits [k,v] there returned as asked_logits and clean_asked_logits, from the same forward).",
        move |m: ScriptModel, c: Cached, set: Dynamic, opts: Map| {
            guard("intervene", || intervene(&st, &m, &c, &set, &opts))
        },
    );
    let st = state.clone();
    r.func(
        "ablate_each",
        "ablate_each(model: Model, rs: Array, opts: Map) -> Map",
        "Ablate every head (and MLP unless mlp: false) in turn over the samples rs: #{clean, rows (site, layer, head, metrics and d_metric = change from clean), effect: Tensor [L,H+1] of the change in metric (MLP in column H), ablation}. Options: kind (mean (default), zero, resample with from), dataset, over (\"all\" (default) or \"position\"), positions, mlp, metric (objective).",
        move |m: ScriptModel, rs: Array, opts: Map| guard("ablate_each", || ablate_each(&st, &m, &rs, &opts)),
    );
    let st = state.clone();
    r.func(
        "patch_each",
        "patch_each(model: Model, r: Cached, source: Cached, opts: Map) -> Map",
        "Activation patching of the residual stream entering each layer at each position, one at a time, from source into r (clean→corrupt or corrupt→clean, as you pass them): #{clean, rows, effect: Tensor [layers, positions] of the change in metric}. Options: layers (all), positions (all), metric (objective).",
        move |m: ScriptModel, c: Cached, src: Cached, opts: Map| {
            guard("patch_each", || patch_each(&st, &m, &c, &src, &opts))
        },
    );
    let st = state.clone();
    r.func(
        "faithfulness",
        "faithfulness(model: Model, rs: Array, circuit: Dynamic, opts: Map) -> Map",
        "Circuit faithfulness (circuit − empty) / (full − empty) per metric: keep the circuit (a Graph's head and MLP nodes, or [layer, head] rows with head H = MLP, or Nodes), ablate every other head and MLP (mlp: false keeps MLPs), metrics averaged over rs: #{score, full, empty, circuit, kept, total, ablation}. Options: kind (mean (default), zero, resample with from), dataset, over, mlp.",
        move |m: ScriptModel, rs: Array, circuit: Dynamic, opts: Map| {
            guard("faithfulness", || faithfulness(&st, &m, &rs, &circuit, &opts))
        },
    );
    let st = state.clone();
    r.func(
        "ablation_curve",
        "ablation_curve(model: Model, rs: Array, ranking: Array, opts: Map) -> Map",
        "Ablate the top-k of ranking (rank_heads rows or [layer, head]) for k = 1..K and k random heads (draws per k), metrics averaged over rs: #{ks, clean, top, random_mean, random_std (per metric name, one value per k), ranked, draws, ablation}. Options: k (min(10, ranking)), draws (5), seed (0), mlp (false: the random pool holds heads only), kind (mean), dataset, over.",
        move |m: ScriptModel, rs: Array, ranking: Dynamic, opts: Map| {
            guard("ablation_curve", || ablation_curve(&st, &m, &rs, &ranking, &opts))
        },
    )
    .func(
        "spearman",
        "spearman(a: Tensor, b: Tensor) -> float",
        "Spearman rank correlation of the elements of two tensors of equal size (ties get their average rank, as scipy.stats.spearmanr; NaN when one is constant).",
        |a: Tensor, b: Tensor| -> RResult<FLOAT> {
            guard("spearman", || {
                let v = |t: &Tensor| -> Result<Vec<f64>> {
                    Ok(causal::host(&t.0)?
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .into_iter()
                        .map(f64::from)
                        .collect())
                };
                Ok(causal::spearman(&v(&a)?, &v(&b)?)? as FLOAT)
            })
        },
    )
    .func(
        "plot_ablation_curve",
        "plot_ablation_curve(curve: Map, path: String, opts: Map)",
        "Figure (PNG or SVG by extension) of an ablation_curve result: the metric (option metric, objective) with the top-k ablated against k random heads (mean ± one standard deviation), the clean value as a line.",
        |curve: Map, path: &str, opts: Map| -> RResult<()> {
            guard("plot_ablation_curve", || plot_curve(&curve, path, &opts))
        },
    );
}
