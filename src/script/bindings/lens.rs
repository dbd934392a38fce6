//! Lens bindings (spec §5, V3–V8): logit lens, head lens, circuit evaluation of head sets,
//! head pattern-matching scores and the show_attn token view.

use super::args::{guard, int_array, options, usize_list};
use super::attribution::{ScriptGraph, ScriptNode, node_ids, sample_ref};
use super::model::{Cached, ScriptModel};
use crate::analysis::lens::{
    LensNode, eval_head_lens, eval_head_lens_both, eval_logit_lens, eval_nodes,
    get_head_matching_scores, render_logit_lens,
};
use crate::analysis::show_attn::{
    ShowAttn, attn_attr_rows_for, show_attn_ansi, show_attn_data, write_show_attn_html,
};
use crate::puzzle::sample::DEFAULT_LAST_K;
use crate::script::docs::Registrar;
use crate::script::state::lock;
use crate::script::tensor::Tensor;
use anyhow::{Result, anyhow, bail, ensure};
use rhai::{Array, Dynamic, FLOAT, INT, Map};
use std::path::Path;

fn nonneg(what: &str, v: INT) -> Result<usize> {
    ensure!(v >= 0, "{what} must be >= 0, got {v}");
    Ok(v as usize)
}

fn int_opt(k: &str, v: &Dynamic) -> Result<usize> {
    nonneg(
        k,
        v.as_int()
            .map_err(|t| anyhow!("{k} must be an int, got {t}"))?,
    )
}

fn table(rows: &[[f64; 3]]) -> Result<Tensor> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_f32(flat, &[rows.len(), 3])
}

/// Options of `eval_logit_lens(model, r, opts)`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LensOptions {
    #[serde(default)]
    from_layer: usize,
    #[serde(default)]
    to_layer: Option<usize>,
    #[serde(default = "default_topk")]
    topk: usize,
}

fn default_topk() -> usize {
    3
}

fn logit_lens(m: &ScriptModel, c: &Cached, opts: &Map) -> Result<Map> {
    let o: LensOptions = options(opts)?;
    let key = sample_ref(c).key;
    let lens = eval_logit_lens(
        m.0.as_ref(),
        &key,
        &c.sample.0,
        o.from_layer,
        o.to_layer,
        o.topk,
    )?;
    let mut out = Map::new();
    out.insert(
        "from_layer".into(),
        Dynamic::from_int(lens.from_layer as INT),
    );
    out.insert("acc".into(), Dynamic::from(table(&lens.acc)?));
    out.insert("logprobs".into(), Dynamic::from(table(&lens.logprobs)?));
    out.insert(
        "positions".into(),
        Dynamic::from_array(int_array(&lens.positions)),
    );
    out.insert("text".into(), Dynamic::from(render_logit_lens(&lens)));
    Ok(out)
}

/// `nodes`: "embed", "lm_head", [layer, head] (head H = the MLP) or attribution Nodes.
fn lens_nodes(arr: &Array) -> Result<Vec<LensNode>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            if let Some(n) = v.read_lock::<ScriptNode>() {
                return LensNode::try_from(n.0);
            }
            if let Some(a) = v.read_lock::<Array>() {
                let lh = usize_list(&format!("nodes[{k}]"), &a)?;
                ensure!(lh.len() == 2, "nodes[{k}] must be [layer, head]");
                return Ok(LensNode::head(lh[0], lh[1]));
            }
            match v.clone().into_string().as_deref() {
                Ok("embed") => Ok(LensNode::Embed),
                Ok("lm_head") => Ok(LensNode::LmHead),
                _ => bail!(
                    "nodes[{k}] must be \"embed\", \"lm_head\", [layer, head] or a Node, got {}",
                    v.type_name()
                ),
            }
        })
        .collect()
}

fn matching(m: &ScriptModel, c: &Cached, patterns: &Array, layer: INT, head: INT) -> Result<Map> {
    let pats: Vec<String> = patterns
        .iter()
        .map(|p| {
            p.clone()
                .into_string()
                .map_err(|t| anyhow!("patterns must be strings, got {t}"))
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&str> = pats.iter().map(String::as_str).collect();
    let scores = get_head_matching_scores(
        m.0.as_ref(),
        &sample_ref(c).key,
        &c.sample.0,
        &refs,
        nonneg("layer", layer)?,
        nonneg("head", head)?,
        DEFAULT_LAST_K,
    )?;
    let mut out = Map::new();
    for s in scores {
        let mut e = Map::new();
        e.insert("mean".into(), Dynamic::from_float(s.mean() as FLOAT));
        e.insert(
            "scores".into(),
            Dynamic::from_array(
                s.scores
                    .iter()
                    .map(|&x| Dynamic::from_float(x as FLOAT))
                    .collect(),
            ),
        );
        out.insert(s.pattern.as_str().into(), Dynamic::from_map(e));
    }
    Ok(out)
}

/// show_attn options: aa (Tensor [k,s]), graph + downstreams (computes aa via A21), last_k,
/// start, stop, title (HTML).
fn show(
    m: &ScriptModel,
    c: &Cached,
    layer: INT,
    head: INT,
    opts: &Map,
) -> Result<(ShowAttn, Option<String>)> {
    let (layer, head) = (nonneg("layer", layer)?, nonneg("head", head)?);
    let mut aa: Option<candle_core::Tensor> = None;
    let mut graph: Option<ScriptGraph> = None;
    let mut downs: Option<Array> = None;
    let (mut last_k, mut start, mut stop, mut title) = (DEFAULT_LAST_K, None, None, None);
    for (k, v) in opts {
        match k.as_str() {
            "aa" => {
                aa = Some(
                    v.read_lock::<Tensor>()
                        .map(|t| t.0.clone())
                        .ok_or_else(|| anyhow!("aa must be a Tensor"))?,
                )
            }
            "graph" => {
                graph = Some(
                    v.read_lock::<ScriptGraph>()
                        .map(|g| g.clone())
                        .ok_or_else(|| anyhow!("graph must be a Graph"))?,
                )
            }
            "downstreams" => {
                downs = Some(
                    v.read_lock::<Array>()
                        .map(|a| a.clone())
                        .ok_or_else(|| anyhow!("downstreams must be an array of Nodes"))?,
                )
            }
            "last_k" => last_k = int_opt(k, v)?,
            "start" => start = Some(int_opt(k, v)?),
            "stop" => stop = Some(int_opt(k, v)?),
            "title" => {
                title = Some(
                    v.clone()
                        .into_string()
                        .map_err(|t| anyhow!("title must be a string, got {t}"))?,
                )
            }
            other => bail!(
                "unknown option {other:?} (known: aa, graph, downstreams, last_k, start, stop, title)"
            ),
        }
    }
    let r = sample_ref(c);
    match (graph, downs) {
        (Some(g), Some(d)) => {
            ensure!(
                aa.is_none(),
                "give either aa or graph + downstreams, not both"
            );
            aa = Some(attn_attr_rows_for(
                &lock(&g.0),
                m.0.as_ref(),
                &r,
                layer,
                head,
                &node_ids(&d)?,
            )?);
        }
        (None, None) => {}
        _ => bail!("graph and downstreams go together"),
    }
    let v = show_attn_data(
        m.0.as_ref(),
        &r.key,
        &c.sample.0,
        layer,
        head,
        aa.as_ref(),
        last_k,
        start,
        stop,
    )?;
    Ok((v, title))
}

/// Register the lens domain.
pub fn register(r: &mut Registrar) {
    r.func(
        "eval_logit_lens",
        "eval_logit_lens(model: Model, r: Cached) -> Map",
        "V4 logit lens at the A- positions for every layer: #{acc, logprobs: Tensor [L,3] (columns resid, +attn, +mlp), from_layer, positions, text (per-layer table with the top-3 tokens)}.",
        |m: ScriptModel, c: Cached| guard("eval_logit_lens", || logit_lens(&m, &c, &Map::new())),
    )
    .func(
        "eval_logit_lens",
        "eval_logit_lens(model: Model, r: Cached, opts: Map) -> Map",
        "The logit lens with options: from_layer (0), to_layer (L), topk (3).",
        |m: ScriptModel, c: Cached, opts: Map| guard("eval_logit_lens", || logit_lens(&m, &c, &opts)),
    )
    .func(
        "eval_head_lens",
        "eval_head_lens(model: Model, r: Cached, layer: int, head: int) -> Array",
        "V6 head lens: per answer, whether the head's output alone (head H = the MLP) read through final norm + lm_head predicts the answer letter (decoded, case-insensitive).",
        |m: ScriptModel, c: Cached, layer: INT, head: INT| {
            guard("eval_head_lens", || head_lens(&m, &c, layer, head, false))
        },
    )
    .func(
        "eval_head_lens",
        "eval_head_lens(model: Model, r: Cached, layer: int, head: int, strict: bool) -> Array",
        "The head lens; strict compares the argmax id with the label id.",
        |m: ScriptModel, c: Cached, layer: INT, head: INT, strict: bool| {
            guard("eval_head_lens", || head_lens(&m, &c, layer, head, strict))
        },
    )
    .func(
        "eval_head_lens_both",
        "eval_head_lens_both(model: Model, r: Cached, layer: int, head: int) -> Map",
        "#{loose, strict}: both head-lens readings from one lm_head projection (half the work of two eval_head_lens calls).",
        |m: ScriptModel, c: Cached, layer: INT, head: INT| {
            guard("eval_head_lens_both", || {
                let (loose, strict) = eval_head_lens_both(
                    m.0.as_ref(),
                    &sample_ref(&c).key,
                    &c.sample.0,
                    nonneg("layer", layer)?,
                    nonneg("head", head)?,
                )?;
                let arr = |v: Vec<bool>| -> Array { v.into_iter().map(Dynamic::from_bool).collect() };
                let mut out = Map::new();
                out.insert("loose".into(), Dynamic::from_array(arr(loose)));
                out.insert("strict".into(), Dynamic::from_array(arr(strict)));
                Ok(out)
            })
        },
    )
    .func(
        "eval_nodes",
        "eval_nodes(model: Model, r: Cached, nodes: Array) -> float",
        "V7: accuracy at the A- positions of lm_head(final_norm(sum of the nodes' outputs)); nodes are \"embed\", \"lm_head\" (the model itself), [layer, head] (head H = MLP) or Nodes.",
        |m: ScriptModel, c: Cached, nodes: Array| {
            guard("eval_nodes", || {
                Ok(eval_nodes(m.0.as_ref(), &sample_ref(&c).key, &c.sample.0, &lens_nodes(&nodes)?)? as FLOAT)
            })
        },
    )
    .func(
        "get_head_matching_scores",
        "get_head_matching_scores(model: Model, r: Cached, patterns: Array, layer: int, head: int) -> Map",
        "V3: per DST->SRC pattern (e.g. \"A-->V\", \"A-->A-\"), #{mean, scores}: the head's attention mass on the expected source for each labelled row.",
        |m: ScriptModel, c: Cached, patterns: Array, layer: INT, head: INT| {
            guard("get_head_matching_scores", || matching(&m, &c, &patterns, layer, head))
        },
    )
    .func(
        "show_attn",
        "show_attn(model: Model, r: Cached, layer: int, head: int) -> String",
        "V8: one head's attention over the last examples as coloured tokens for the terminal: act, q-> and the answers' attention rows with head-lens marks.",
        |m: ScriptModel, c: Cached, layer: INT, head: INT| {
            guard("show_attn", || show_attn_ansi(&show(&m, &c, layer, head, &Map::new())?.0))
        },
    )
    .func(
        "show_attn",
        "show_attn(model: Model, r: Cached, layer: int, head: int, opts: Map) -> String",
        "show_attn with options: aa (Tensor [k,s]) or graph + downstreams (aa rows via A21), last_k (2), start, stop.",
        |m: ScriptModel, c: Cached, layer: INT, head: INT, opts: Map| {
            guard("show_attn", || show_attn_ansi(&show(&m, &c, layer, head, &opts)?.0))
        },
    )
    .func(
        "write_show_attn_html",
        "write_show_attn_html(model: Model, r: Cached, layer: int, head: int, path: String, opts: Map)",
        "The show_attn view as one self-contained HTML page (same options, plus title).",
        |m: ScriptModel, c: Cached, layer: INT, head: INT, path: &str, opts: Map| {
            guard("write_show_attn_html", || {
                let (v, title) = show(&m, &c, layer, head, &opts)?;
                write_show_attn_html(&v, Path::new(path), title.as_deref())
            })
        },
    );
}

fn head_lens(m: &ScriptModel, c: &Cached, layer: INT, head: INT, strict: bool) -> Result<Array> {
    Ok(eval_head_lens(
        m.0.as_ref(),
        &sample_ref(c).key,
        &c.sample.0,
        nonneg("layer", layer)?,
        nonneg("head", head)?,
        strict,
    )?
    .into_iter()
    .map(Dynamic::from_bool)
    .collect())
}
