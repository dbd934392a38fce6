//! Everything else a forward cached, and the weights: pre-o_proj attention outputs, RMSNorm
//! variances, token ids, model weights by Hugging Face name, a node's gradient, and direct logit
//! attribution in logit units.

use super::args::{guard, int_array, options, usize_list};
use super::attribution::{ScriptGraph, ScriptNode};
use super::model::{Cached, ScriptModel};
use crate::analysis::dla::direct_logit_attribution;
use crate::backend::{Act, SampleKey};
use crate::script::docs::Registrar;
use crate::script::state::lock;
use crate::script::tensor::Tensor;
use anyhow::{Context, Result, anyhow, ensure};
use rhai::{Array, Dynamic, INT, Map};

fn key(c: &Cached) -> SampleKey {
    SampleKey::new(c.dataset.clone(), c.sample.0.index)
}

fn nonneg(what: &str, v: INT) -> Result<usize> {
    ensure!(v >= 0, "{what} must be >= 0, got {v}");
    Ok(v as usize)
}

/// A getter over [`Act`] with optional positions.
fn act(m: &ScriptModel, c: &Cached, a: Act, pos: Option<&Array>) -> Result<Tensor> {
    let pos = pos.map(|p| usize_list("pos_ids", p)).transpose()?;
    Ok(Tensor(c.backend(m).activation(
        &key(c),
        &a,
        pos.as_deref(),
    )?))
}

/// A node's per-sample tensor (its gradient or its summed downstream gradient).
fn node_tensor(g: &ScriptGraph, n: &ScriptNode, c: &Cached, output: bool) -> Result<Tensor> {
    let g = lock(&g.0);
    let d = &g.get(n.0)?.data;
    let map = if output { &d.output_grad } else { &d.grad };
    let t = map.get(&c.sample.0.index).with_context(|| {
        format!(
            "node {} has no {} for sample {} (run attribute_step first)",
            n.0,
            if output {
                "output gradient"
            } else {
                "gradient"
            },
            c.sample.0.index
        )
    })?;
    Ok(Tensor(t.clone()))
}

/// Options of `direct_logit_attribution`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DlaOptions {
    /// Positions (default: those that predict the answers, A-).
    #[serde(default)]
    positions: Option<Vec<usize>>,
    /// Token ids: one per position, or one for all (default: the sample's labels).
    #[serde(default)]
    tokens: Option<Vec<u32>>,
}

fn dla(m: &ScriptModel, c: &Cached, opts: &Map) -> Result<Map> {
    let o: DlaOptions = options(opts)?;
    let b = c.backend(m);
    let k = key(c);
    let meta = b.sample_meta(&k)?;
    let pos = match o.positions {
        Some(p) => p,
        None => meta.answer_positions()?,
    };
    ensure!(
        !pos.is_empty(),
        "no positions (the sample has no answers: give positions)"
    );
    let tokens = match o.tokens {
        Some(t) if t.len() == 1 => vec![t[0]; pos.len()],
        Some(t) => t,
        None if !meta.labels.is_empty() && meta.labels.len() == pos.len() => meta.labels.clone(),
        None => {
            return Err(anyhow!(
                "give tokens: the sample has no labels for these positions"
            ));
        }
    };
    let d = direct_logit_attribution(b, &k, &pos, &tokens)?;
    let mut out = Map::new();
    out.insert("components".into(), Dynamic::from(Tensor(d.components)));
    out.insert("embed".into(), Dynamic::from(Tensor(d.embed)));
    out.insert("total".into(), Dynamic::from(Tensor(d.total)));
    out.insert("logits".into(), Dynamic::from(Tensor(d.logits)));
    out.insert("positions".into(), Dynamic::from_array(int_array(&pos)));
    out.insert(
        "tokens".into(),
        Dynamic::from_array(
            tokens
                .iter()
                .map(|&t| Dynamic::from_int(t as INT))
                .collect(),
        ),
    );
    Ok(out)
}

/// Register the functions.
pub fn register(r: &mut Registrar) {
    r.func(
        "get_attn_out",
        "get_attn_out(model: Model, r: Cached, layer: int) -> Tensor",
        "Per-head attention output before o_proj (the seed's attn_out), [1,s,n,d].",
        |m: ScriptModel, c: Cached, layer: INT| {
            guard("get_attn_out", || act(&m, &c, Act::AttnOut(nonneg("layer", layer)?), None))
        },
    )
    .func(
        "get_attn_out",
        "get_attn_out(model: Model, r: Cached, layer: int, pos_ids: Array) -> Tensor",
        "Per-head attention output before o_proj at the given positions, [1,k,n,d].",
        |m: ScriptModel, c: Cached, layer: INT, pos: Array| {
            guard("get_attn_out", || act(&m, &c, Act::AttnOut(nonneg("layer", layer)?), Some(&pos)))
        },
    )
    .func(
        "get_norm_var",
        "get_norm_var(model: Model, r: Cached, norm: String, layer: int, pos_ids: Array) -> Tensor",
        "The cached RMSNorm variance (mean square of its input) [1,k,1]: norm \"input\" (input_layernorm of layer; layer L = the final norm) or \"post_attention\".",
        |m: ScriptModel, c: Cached, norm: &str, layer: INT, pos: Array| {
            guard("get_norm_var", || {
                let l = nonneg("layer", layer)?;
                let a = match norm {
                    "input" => Act::InputNormVar(l),
                    "post_attention" => Act::PostAttnNormVar(l),
                    other => anyhow::bail!("unknown norm {other:?} (input or post_attention)"),
                };
                act(&m, &c, a, Some(&pos))
            })
        },
    )
    .func(
        "token_ids",
        "token_ids(model: Model, r: Cached) -> Array",
        "The token ids of the forwarded sample's prompt (as the model tokenized it).",
        |m: ScriptModel, c: Cached| {
            guard("token_ids", || {
                let enc = c
                    .backend(&m)
                    .tokenizer()
                    .encode(c.sample.0.prompt.as_str(), true)
                    .map_err(|e| anyhow!("tokenizing: {e}"))?;
                Ok(enc.get_ids().iter().map(|&i| Dynamic::from_int(i as INT)).collect::<Array>())
            })
        },
    )
    .func(
        "get_weight",
        "get_weight(model: Model, name: String) -> Tensor",
        "A model weight by its Hugging Face name (model.layers.3.self_attn.o_proj.weight, lm_head.weight, model.norm.weight, ...), read-only, in HF layout ([out, in]), f32.",
        |m: ScriptModel, name: &str| guard("get_weight", || Ok(Tensor(m.0.weight(name, None)?))),
    )
    .func(
        "get_weight",
        "get_weight(model: Model, name: String, rows: Array) -> Tensor",
        "Some rows (dim 0) of a weight, e.g. the unembedding rows of a few tokens: get_weight(model, \"lm_head.weight\", [id]).",
        |m: ScriptModel, name: &str, rows: Array| {
            guard("get_weight", || {
                let rows = usize_list("rows", &rows)?;
                crate::limits::COUNT.check(rows.len(), "rows")?;
                Ok(Tensor(m.0.weight(name, Some(&rows))?))
            })
        },
    )
    .func(
        "direct_logit_attribution",
        "direct_logit_attribution(model: Model, r: Cached, opts: Map) -> Map",
        "Each head's, MLP's and the embedding's direct contribution to the logit of a token, in logit units (final norm linearised at the cached scale): #{components: [L,H+1,k] (MLP in column H), embed [k], total [k] (their sum), logits [k] (the model's), positions, tokens}. Options: positions (default A-), tokens (one per position or one for all; default the labels).",
        |m: ScriptModel, c: Cached, opts: Map| guard("direct_logit_attribution", || dla(&m, &c, &opts)),
    )
    .func(
        "node_grad",
        "node_grad(g: Graph, node: Node, r: Cached) -> Tensor",
        "The residual-space gradient attribute_step used for the node on sample r, [1,k',e] at its source positions.",
        |g: ScriptGraph, n: ScriptNode, c: Cached| guard("node_grad", || node_tensor(&g, &n, &c, false)),
    )
    .func(
        "node_output_grad",
        "node_output_grad(g: Graph, node: Node, r: Cached) -> Tensor",
        "The sum of the node's downstream gradients on sample r (A12), [1,k,e].",
        |g: ScriptGraph, n: ScriptNode, c: Cached| guard("node_output_grad", || node_tensor(&g, &n, &c, true)),
    );
}
