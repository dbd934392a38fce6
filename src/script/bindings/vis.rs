//! Visualisation bindings (spec §5): the attribution graph as a view (GQA merge, HTML / DOT /
//! JSON export), the attention heatmap of chosen query rows, and token views (ANSI, HTML).

use super::args::{guard, options};
use super::attribution::ScriptGraph;
use super::model::ScriptModel;
use crate::script::docs::Registrar;
use crate::script::state::lock;
use crate::script::tensor::Tensor;
use crate::vis::GqaConfig;
use crate::vis::graph::{GraphView, from_attribution, merge_gqa_groups, render_dot, to_json};
use crate::vis::html::{HtmlOptions, write_html};
use crate::vis::layout::minimize_crossings;
use anyhow::{Context, Result, anyhow, bail, ensure};
use rhai::{Array, INT, Map};
use std::path::Path;
use std::sync::Arc;

/// A graph view (nodes by layer, scored edges), possibly GQA-merged, as a script value.
#[derive(Clone)]
pub struct ScriptView {
    /// The view.
    pub view: Arc<GraphView>,
    /// The CONFLICT / MERGE lines of the merge that produced it (empty otherwise).
    pub log: String,
}

fn view_of(g: &ScriptGraph) -> ScriptView {
    ScriptView {
        view: Arc::new(from_attribution(&lock(&g.0).to_view())),
        log: String::new(),
    }
}

fn merge(v: &ScriptView, heads: INT, kv_heads: INT) -> Result<ScriptView> {
    ensure!(
        heads > 0 && kv_heads > 0,
        "heads and kv_heads must be positive"
    );
    let (view, log) = merge_gqa_groups(&v.view, heads as usize, kv_heads as usize)?;
    Ok(ScriptView {
        view: Arc::new(view),
        log,
    })
}

fn model_heads(m: &ScriptModel) -> (INT, INT) {
    let c = m.0.config();
    (c.num_attention_heads as INT, c.num_kv_heads() as INT)
}

/// Options of `visualize_graph(g, path, opts)`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphHtmlOptions {
    #[serde(default)]
    title: Option<String>,
    #[serde(default, deserialize_with = "super::args::number")]
    node_size: Option<f64>,
    #[serde(default)]
    gqa_layout: Option<Vec<usize>>,
}

/// Writes the view by the file extension: .html (self-contained page), .dot, .json.
fn write_view(v: &ScriptView, path: &str, opts: &Map) -> Result<String> {
    let mut html = HtmlOptions::default();
    let o: GraphHtmlOptions = options(opts)?;
    if let Some(t) = o.title {
        html.title = t;
    }
    if let Some(n) = o.node_size {
        html.node_size = n;
    }
    let kv = match o.gqa_layout.as_deref() {
        None => None,
        Some([h, k]) => Some((*h, *k)),
        Some(_) => bail!("gqa_layout must be [heads, kv_heads]"),
    };
    if let Some((h, k)) = kv {
        html.gqa = Some(GqaConfig {
            num_attention_heads: h,
            num_key_value_heads: k,
        });
        html.reduce_crossings = false;
    }
    let p = Path::new(path);
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html") | Some("htm") => {
            write_html(&v.view, &html, p)?;
        }
        Some("dot") | Some("gv") => {
            let layout = minimize_crossings(&v.view, html.max_iterations)?;
            std::fs::write(p, render_dot(&v.view, Some(&layout))?)
                .with_context(|| format!("writing {path}"))?;
        }
        Some("json") => {
            std::fs::write(p, to_json(&v.view)?).with_context(|| format!("writing {path}"))?
        }
        _ => bail!("unknown graph file type for {path:?} (use .html, .dot or .json)"),
    }
    Ok(path.to_string())
}

/// Register the vis domain.
pub fn register(r: &mut Registrar) {
    register_graph_views(r);
    register_token_views(r);
}

fn register_graph_views(r: &mut Registrar) {
    r.type_named::<ScriptView>(
        "GraphView",
        "A drawable view of an attribution graph (nodes \"layer-head-type\", scored edges), possibly GQA-merged.",
    )
    .func(
        "graph_view",
        "graph_view(g: Graph) -> GraphView",
        "The view of the graph's current nodes and edges.",
        |g: ScriptGraph| view_of(&g),
    )
    .func(
        "merge_gqa_groups",
        "merge_gqa_groups(g: Graph, model: Model) -> GraphView",
        "V14: merge the attention nodes of each (layer, KV group) that agree on type and pattern into one node (edges summed); the CONFLICT / MERGE lines are in .log.",
        |g: ScriptGraph, m: ScriptModel| {
            let (h, k) = model_heads(&m);
            guard("merge_gqa_groups", || merge(&view_of(&g), h, k))
        },
    )
    .func(
        "merge_gqa_groups",
        "merge_gqa_groups(v: GraphView, heads: int, kv_heads: int) -> GraphView",
        "Merge a view by GQA group for a model with heads query heads and kv_heads KV heads.",
        |v: ScriptView, h: INT, k: INT| guard("merge_gqa_groups", || merge(&v, h, k)),
    )
    .getter(
        "log",
        "v.log -> String",
        "The CONFLICT / MERGE lines of the merge that made the view.",
        |v: &mut ScriptView| v.log.clone(),
    )
    .getter(
        "n_nodes",
        "v.n_nodes -> int",
        "Number of nodes of the view.",
        |v: &mut ScriptView| v.view.nodes.len() as INT,
    )
    .getter(
        "n_edges",
        "v.n_edges -> int",
        "Number of edges of the view.",
        |v: &mut ScriptView| v.view.edges.len() as INT,
    )
    .func(
        "to_string",
        "to_string(v: GraphView) -> String",
        "Node and edge counts.",
        |v: &mut ScriptView| format!("GraphView({} nodes, {} edges)", v.view.nodes.len(), v.view.edges.len()),
    )
    .func(
        "to_debug",
        "to_debug(v: GraphView) -> String",
        "Node and edge counts.",
        |v: &mut ScriptView| format!("GraphView({} nodes, {} edges)", v.view.nodes.len(), v.view.edges.len()),
    )
    .func(
        "visualize_graph",
        "visualize_graph(g: Graph|GraphView, path: String) -> String",
        "Write the graph by extension: .html (one self-contained page: layers bottom to top, hover details, zoom, score slider), .dot (Graphviz) or .json (the view); returns path.",
        |g: ScriptGraph, path: &str| guard("visualize_graph", || write_view(&view_of(&g), path, &Map::new())),
    )
    .func(
        "visualize_graph",
        "visualize_graph(g: Graph|GraphView, path: String, opts: Map) -> String",
        "As visualize_graph(g, path) with options: title, node_size (6), gqa_layout [heads, kv_heads] (place nodes by GQA group).",
        |g: ScriptGraph, path: &str, opts: Map| guard("visualize_graph", || write_view(&view_of(&g), path, &opts)),
    );
    // The GraphView overloads share the docs of the Graph ones (`Graph|GraphView`).
    r.engine()
        .register_fn("visualize_graph", |v: ScriptView, path: &str| {
            guard("visualize_graph", || write_view(&v, path, &Map::new()))
        })
        .register_fn("visualize_graph", |v: ScriptView, path: &str, opts: Map| {
            guard("visualize_graph", || write_view(&v, path, &opts))
        });
}

fn strings(what: &str, arr: &Array) -> Result<Vec<String>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.clone()
                .into_string()
                .map_err(|t| anyhow!("{what}[{k}] must be a string, got {t}"))
        })
        .collect()
}

/// Rows `[r, s]` (a leading batch dim of 1 is dropped) as f32 vectors, checked against s tokens.
fn rows_of(t: &Tensor, n_tokens: usize) -> Result<Vec<Vec<f32>>> {
    let mut x = t.0.clone();
    if x.rank() == 3 && x.dim(0)? == 1 {
        x = x.squeeze(0)?;
    }
    if x.rank() == 1 {
        x = x.unsqueeze(0)?;
    }
    ensure!(
        x.rank() == 2,
        "values must be [rows, s] (or [1, rows, s]), got {:?}",
        t.0.dims()
    );
    ensure!(
        x.dim(1)? == n_tokens,
        "values have {} columns for {n_tokens} tokens",
        x.dim(1)?
    );
    let rows = x.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    ensure!(
        rows.iter().flatten().all(|v| v.is_finite()),
        "values contain a non-finite number"
    );
    Ok(rows)
}

fn register_token_views(r: &mut Registrar) {
    r.func(
        "plot_attention",
        "plot_attention(tokens: Array, values: Tensor, row_labels: Array, title: String, path: String)",
        "Heatmap of one head's attention over chosen query rows: values [rows, s] (e.g. get_attn_weights at some positions), columns labelled with the tokens; .png or .svg.",
        |tokens: Array, values: Tensor, labels: Array, title: &str, path: &str| {
            guard("plot_attention", || {
                let tokens = strings("tokens", &tokens)?;
                let rows = rows_of(&values, tokens.len())?;
                crate::vis::plots::plot_attention(&tokens, &rows, &strings("row_labels", &labels)?, title, Path::new(path))
            })
        },
    )
    .func(
        "render_tokens",
        "render_tokens(tokens: Array, values: Tensor, labels: Array) -> String",
        "The tokens coloured by value (one block per row of values [rows, s], labelled), for the terminal: ANSI colours on a terminal, plain text ([token:NN] for |v| >= max/4) when NO_COLOR is set or output is not a terminal.",
        |tokens: Array, values: Tensor, labels: Array| {
            guard("render_tokens", || {
                let tokens = strings("tokens", &tokens)?;
                let rows = rows_of(&values, tokens.len())?;
                crate::vis::tokens::render_tokens_term(&tokens, &rows, &strings("labels", &labels)?)
            })
        },
    )
    .func(
        "write_tokens_html",
        "write_tokens_html(path: String, tokens: Array, values: Tensor, labels: Array, title: String)",
        "The same token view as one self-contained HTML page with a row selector and per-token tooltips.",
        |path: &str, tokens: Array, values: Tensor, labels: Array, title: &str| {
            guard("write_tokens_html", || {
                let tokens = strings("tokens", &tokens)?;
                let rows = rows_of(&values, tokens.len())?;
                crate::vis::tokens::write_tokens_html(Path::new(path), &tokens, &rows, &strings("labels", &labels)?, title)
            })
        },
    );
}
