//! Attribution bindings (spec §3): `Graph`, `Node`, `attribute_step`, `add_edges`,
//! `get_top_heads`, `get_attn_attrs_on_dataset`, circuit evaluation (`forward` on a graph),
//! graph export. Map-reduce over samples is the util domain's `mr`.

use super::args::{guard, options, usize_list};
use super::model::{Cached, ScriptModel};
use crate::attribution::export::save_graph_json;
use crate::attribution::{
    AttrTree, Graph, HeadRanking, NodeId, NodeType, SampleRef, TreeOptions, add_edges,
    add_tree_node, attribute_step, forward as graph_forward, get_attn_attrs_on_dataset,
    get_top_heads, rank_heads,
};
use crate::script::docs::Registrar;
use crate::script::state::HostState;
use crate::script::state::lock;
use crate::script::tensor::Tensor;
use anyhow::{Result, anyhow, ensure};
use rhai::{Array, Dynamic, INT, Map};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The attribution graph as a script value: clones share the same graph.
#[derive(Clone)]
pub struct ScriptGraph(pub Arc<Mutex<Graph>>);

/// The attribution tree (A24) as a script value: clones share the same tree.
#[derive(Clone)]
pub struct ScriptTree(pub Arc<Mutex<AttrTree>>);

/// A node identity `(layer, head, type)` as a script value.
#[derive(Clone)]
pub struct ScriptNode(pub NodeId);

pub(crate) fn head_arg(head: &Dynamic) -> Result<Option<usize>> {
    if head.is_unit() {
        return Ok(None);
    }
    let h = head
        .as_int()
        .map_err(|t| anyhow!("head must be an int or (), got {t}"))?;
    ensure!(h >= 0, "head must be >= 0, got {h}");
    Ok(Some(h as usize))
}

pub(crate) fn node_ids(arr: &Array) -> Result<Vec<NodeId>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<ScriptNode>()
                .map(|n| n.0)
                .ok_or_else(|| anyhow!("element {k} is a {}, expected a Node", v.type_name()))
        })
        .collect()
}

fn make_node(
    g: &ScriptGraph,
    layer: INT,
    head: &Dynamic,
    ty: &str,
    pattern: Option<&str>,
) -> Result<ScriptNode> {
    ensure!(layer >= 0, "layer must be >= 0, got {layer}");
    let ty: NodeType = ty.parse()?;
    Ok(ScriptNode(lock(&g.0).node(
        layer as usize,
        head_arg(head)?,
        ty,
        pattern,
    )?))
}

pub(crate) fn sample_ref(r: &Cached) -> SampleRef {
    SampleRef::new(
        crate::backend::SampleKey::new(r.dataset.clone(), r.sample.0.index),
        Some(r.sample.0.clone()),
    )
}

fn node_head(n: &NodeId) -> Dynamic {
    n.head
        .map_or(Dynamic::UNIT, |h| Dynamic::from_int(h as INT))
}

/// Register the attribution domain.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    r.type_named::<ScriptGraph>(
        "Graph",
        "The attribution graph (nodes, edges, per-sample gradients); clones share it.",
    )
    .type_named::<ScriptNode>("Node", "A node identity: (layer, head, type).");
    register_graph(r);
    register_nodes(r);
    register_steps(r);
    register_dataset_steps(r);
    register_tree(r, state);
}

/// Options of `add_tnode(.., parent, opts)` (defaults: [`TreeOptions::default`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeNodeOptions {
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    until_k: Option<bool>,
    #[serde(default)]
    attn_data: Option<bool>,
}

fn tree_opts(map: &Map, st: &HostState) -> Result<TreeOptions> {
    let d = TreeOptions::default();
    let o: TreeNodeOptions = options(map)?;
    Ok(TreeOptions {
        progress: st.show_progress(),
        top_k: o.top_k.unwrap_or(d.top_k),
        until_k: o.until_k.unwrap_or(d.until_k),
        attn_data: o.attn_data.unwrap_or(d.attn_data),
    })
}

#[allow(clippy::too_many_arguments)]
fn add_tnode(
    st: &HostState,
    t: &ScriptTree,
    g: &ScriptGraph,
    m: &ScriptModel,
    rs: &Array,
    nodes: &Array,
    parent: Option<INT>,
    opts: &Map,
) -> super::RResult<INT> {
    guard("add_tnode", || {
        let parent = match parent {
            Some(p) if p < 0 => anyhow::bail!("parent must be >= 0, got {p}"),
            Some(p) => Some(p as usize),
            None => None,
        };
        let idx = add_tree_node(
            &mut lock(&t.0),
            &mut lock(&g.0),
            m.0.as_ref(),
            &cached_list(rs)?,
            &node_ids(nodes)?,
            parent,
            &tree_opts(opts, st)?,
        )?;
        Ok(idx as INT)
    })
}

fn tree_node<T>(
    t: &ScriptTree,
    i: INT,
    f: impl FnOnce(&crate::attribution::tree::TreeNode) -> T,
) -> Result<T> {
    let tree = lock(&t.0);
    let n = usize::try_from(i)
        .ok()
        .and_then(|i| tree.nodes.get(i))
        .ok_or_else(|| {
            anyhow!(
                "tree node {i} does not exist (the tree has {})",
                tree.nodes.len()
            )
        })?;
    Ok(f(n))
}

fn head_tensors(m: &std::collections::BTreeMap<(usize, usize), candle_core::Tensor>) -> Array {
    m.iter()
        .map(|((l, h), t)| {
            Dynamic::from_array(vec![
                Dynamic::from_int(*l as INT),
                Dynamic::from_int(*h as INT),
                Dynamic::from(Tensor(t.clone())),
            ])
        })
        .collect()
}

fn register_tree(r: &mut Registrar, state: &Arc<HostState>) {
    r.type_named::<ScriptTree>(
        "AttrTree",
        "The attribution tree: one node per expansion level (A24).",
    );
    r.func(
        "AttrTree",
        "AttrTree() -> AttrTree",
        "An empty attribution tree.",
        || ScriptTree(Arc::new(Mutex::new(AttrTree::default()))),
    );
    let st = state.clone();
    r.func(
        "add_tnode",
        "add_tnode(tree: AttrTree, g: Graph, model: Model, rs: Array, nodes: Array) -> int",
        "A root tree node (the seed's add_tnode): attr = mean attribute_step over rs, its top 30 heads and their aw/aa (A22); returns its index.",
        move |t: ScriptTree, g: ScriptGraph, m: ScriptModel, rs: Array, nodes: Array| {
            add_tnode(&st, &t, &g, &m, &rs, &nodes, None, &Map::new())
        },
    );
    let st = state.clone();
    r.func(
        "add_tnode",
        "add_tnode(tree: AttrTree, g: Graph, model: Model, rs: Array, nodes: Array, parent: int, opts: Map) -> int",
        "A tree node under parent (an index from add_tnode); opts: top_k (30), until_k (false), attn_data (true).",
        move |t: ScriptTree, g: ScriptGraph, m: ScriptModel, rs: Array, nodes: Array, parent: INT, opts: Map| {
            add_tnode(&st, &t, &g, &m, &rs, &nodes, Some(parent), &opts)
        },
    );
    r.func(
        "tree_attr",
        "tree_attr(tree: AttrTree, i: int) -> Tensor",
        "Mean attribution [L',H+1,g] of tree node i.",
        |t: ScriptTree, i: INT| {
            guard("tree_attr", || {
                tree_node(&t, i, |n| Tensor(n.data.attr.clone()))
            })
        },
    )
    .func(
        "tree_top_heads",
        "tree_top_heads(tree: AttrTree, i: int) -> Array",
        "Top heads of tree node i as [layer, head, Σ|attr|].",
        |t: ScriptTree, i: INT| {
            guard("tree_top_heads", || {
                tree_node(&t, i, |n| {
                    n.data
                        .top_heads
                        .iter()
                        .map(|((l, h), s)| {
                            Dynamic::from_array(vec![
                                Dynamic::from_int(*l as INT),
                                Dynamic::from_int(*h as INT),
                                Dynamic::from_float(*s as rhai::FLOAT),
                            ])
                        })
                        .collect::<Array>()
                })
            })
        },
    )
    .func(
        "tree_attn_attrs",
        "tree_attn_attrs(tree: AttrTree, i: int) -> Array",
        "[[layer, head, aa [N,k,s]], ...] of tree node i's top heads: the input of cluster_heads.",
        |t: ScriptTree, i: INT| {
            guard("tree_attn_attrs", || {
                tree_node(&t, i, |n| head_tensors(&n.data.attn_attrs_ds))
            })
        },
    )
    .func(
        "tree_attn_weights",
        "tree_attn_weights(tree: AttrTree, i: int) -> Array",
        "[[layer, head, aw [N,k,s]], ...] of tree node i's top heads.",
        |t: ScriptTree, i: INT| {
            guard("tree_attn_weights", || {
                tree_node(&t, i, |n| head_tensors(&n.data.attn_weights_ds))
            })
        },
    )
    .func(
        "print_tree",
        "print_tree(tree: AttrTree) -> String",
        "The tree drawn from its first root, as the seed's print_tree.",
        |t: ScriptTree| {
            guard("print_tree", || {
                let tree = lock(&t.0);
                anyhow::ensure!(!tree.nodes.is_empty(), "the tree is empty");
                Ok(tree.render(0))
            })
        },
    )
    .func(
        "to_string",
        "to_string(t: AttrTree) -> String",
        "Number of tree nodes.",
        |t: &mut ScriptTree| format!("AttrTree({} nodes)", lock(&t.0).nodes.len()),
    )
    .func(
        "to_debug",
        "to_debug(t: AttrTree) -> String",
        "Number of tree nodes.",
        |t: &mut ScriptTree| format!("AttrTree({} nodes)", lock(&t.0).nodes.len()),
    );
}

fn register_graph(r: &mut Registrar) {
    r.func(
        "Graph",
        "Graph(model: Model, dataset_size: int) -> Graph",
        "An empty attribution graph for a model and a dataset of dataset_size samples (A16).",
        |m: ScriptModel, n: INT| {
            guard("Graph", || {
                ensure!(n > 0, "dataset_size must be positive, got {n}");
                Ok(ScriptGraph(Arc::new(Mutex::new(Graph::new(m.0.config(), n as usize)))))
            })
        },
    )
    .getter("nodes", "g.nodes -> Array", "The graph's nodes in insertion order.", |g: &mut ScriptGraph| {
        lock(&g.0).node_ids().into_iter().map(|id| Dynamic::from(ScriptNode(id))).collect::<Array>()
    })
    .getter("edges", "g.edges -> Array", "The edges as #{up: Node, down: Node, score: float}.", |g: &mut ScriptGraph| {
        lock(&g.0)
            .edges()
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("up".into(), Dynamic::from(ScriptNode(e.upstream)));
                m.insert("down".into(), Dynamic::from(ScriptNode(e.downstream)));
                m.insert("score".into(), Dynamic::from_float(e.score));
                Dynamic::from_map(m)
            })
            .collect::<Array>()
    })
    .func(
        "load_graph",
        "load_graph(model: Model, path: String, dataset_size: int) -> Graph",
        "A graph saved by save_graph, rebuilt as a graph for model (same layers and heads): its nodes with patterns and spans, its edges and scores, no per-sample data (attribute again to get gradients), default IG settings.",
        |m: ScriptModel, path: &str, n: INT| {
            guard("load_graph", || {
                ensure!(n > 0, "dataset_size must be positive, got {n}");
                use anyhow::Context as _;
                let text = crate::limits::read_text_file(Path::new(path))
                    .with_context(|| format!("reading {path}"))?;
                let view: crate::attribution::graph::GraphView = serde_json::from_str(&text)
                    .with_context(|| format!("{path} is not a graph written by save_graph"))?;
                let g = Graph::from_view(m.0.config(), &view, n as usize)
                    .with_context(|| format!("graph {path}"))?;
                Ok(ScriptGraph(Arc::new(Mutex::new(g))))
            })
        },
    )
    .func(
        "save_graph",
        "save_graph(g: Graph, path: String)",
        "Write the graph (nodes with patterns, edges with scores) as JSON, e.g. for `minarc graph`.",
        |g: &mut ScriptGraph, path: &str| guard("save_graph", || save_graph_json(&lock(&g.0), Path::new(path))),
    )
    .func("to_string", "to_string(g: Graph) -> String", "Node and edge counts.", |g: &mut ScriptGraph| {
        let g = lock(&g.0);
        format!("Graph({} nodes, {} edges, {} samples)", g.nodes().len(), g.edges().len(), g.dataset_size)
    })
    .func("to_debug", "to_debug(g: Graph) -> String", "Node and edge counts.", |g: &mut ScriptGraph| {
        let g = lock(&g.0);
        format!("Graph({} nodes, {} edges, {} samples)", g.nodes().len(), g.edges().len(), g.dataset_size)
    });
}

fn register_nodes(r: &mut Registrar) {
    r.func(
        "Node",
        "Node(g: Graph, layer: int, head: int|(), type: String) -> Node",
        "The node (layer, head, type) of g, added if new (interned, A10). Types: lm_head (layer L), mlp, mlp_i, mlp_g (head () or H), attn_q, attn_k, attn_v, attn_a, attn_qns, embed.",
        |g: ScriptGraph, layer: INT, head: Dynamic, ty: &str| guard("Node", || make_node(&g, layer, &head, ty, None)),
    )
    .func(
        "Node",
        "Node(g: Graph, layer: int, head: int|(), type: String, pattern: String) -> Node",
        "As Node(g, layer, head, type) with a DST->SRC attention pattern such as \"A-->A-\" (kept if the node already has one).",
        |g: ScriptGraph, layer: INT, head: Dynamic, ty: &str, pattern: &str| {
            guard("Node", || make_node(&g, layer, &head, ty, Some(pattern)))
        },
    )
    .getter("layer", "n.layer -> int", "The node's layer (L for lm_head).", |n: &mut ScriptNode| n.0.layer as INT)
    .getter("head", "n.head -> int", "The node's head (H for MLP types), or () for lm_head and embed.", |n: &mut ScriptNode| node_head(&n.0))
    .getter("type", "n.type -> String", "The node's type name.", |n: &mut ScriptNode| n.0.ty.name().to_string())
    .func("to_string", "to_string(n: Node) -> String", "\"layer-head type\".", |n: &mut ScriptNode| n.0.to_string())
    .func("to_debug", "to_debug(n: Node) -> String", "\"layer-head type\".", |n: &mut ScriptNode| n.0.to_string())
    .func("==", "Node == Node -> bool", "Same (layer, head, type).", |a: ScriptNode, b: ScriptNode| a.0 == b.0)
    .func("!=", "Node != Node -> bool", "Different (layer, head, type).", |a: ScriptNode, b: ScriptNode| a.0 != b.0);
}

fn register_steps(r: &mut Registrar) {
    r.func(
        "attribute_step",
        "attribute_step(g: Graph, model: Model, r: Cached, nodes: Array) -> Tensor",
        "Attribute the nodes' objective to every head and MLP below them on one sample (A19): [L',H+1,g], MLP in column H; average over samples with mr.",
        |g: ScriptGraph, m: ScriptModel, c: Cached, nodes: Array| {
            guard("attribute_step", || {
                let ids = node_ids(&nodes)?;
                let mut g = lock(&g.0);
                Ok(Tensor(attribute_step(&mut g, c.backend(&m), &sample_ref(&c), &ids)?))
            })
        },
    )
    .func(
        "add_edges",
        "add_edges(g: Graph, upstream: Node, downstreams: Array, attr: Tensor) -> int",
        "Add an edge upstream -> downstreams[i] with score attr[layer, head, i] for every positive score (A20); returns how many were added.",
        |g: ScriptGraph, up: ScriptNode, downs: Array, attr: Tensor| {
            guard("add_edges", || {
                let downs = node_ids(&downs)?;
                Ok(add_edges(&mut lock(&g.0), up.0, &downs, &attr.0)? as INT)
            })
        },
    )
    .func(
        "get_top_heads",
        "get_top_heads(attr: Tensor, k: int, n_heads: int) -> Array",
        "The top heads of attr [L',H+1,g] as [layer, head, Σ|attr|] (A23, MLP column dropped; may return fewer than k, as the seed).",
        |attr: Tensor, k: INT, h: INT| top_heads(&attr, k, h, false),
    )
    .func(
        "get_top_heads",
        "get_top_heads(attr: Tensor, k: int, n_heads: int, until_k: bool) -> Array",
        "As get_top_heads(attr, k, n_heads); with until_k, keeps scanning until k heads are found.",
        |attr: Tensor, k: INT, h: INT, until_k: bool| top_heads(&attr, k, h, until_k),
    )
    .func(
        "rank_heads",
        "rank_heads(attr: Tensor, k: int, n_heads: int, by: String) -> Array",
        "The k top heads of attr [L',H+1,g] as [layer, head, score, abs] rows: score = Σ_g attr[l,h,g] (signed), abs = Σ_g |attr[l,h,g]|. by: \"abs\" (largest magnitude first, every head considered), \"signed\" (largest signed score first) or \"seed\" (the seed's get_top_heads order, A23).",
        |attr: Tensor, k: INT, h: INT, by: &str| {
            guard("rank_heads", || {
                let kh = usize_list(
                    "k, n_heads",
                    &vec![Dynamic::from_int(k), Dynamic::from_int(h)],
                )?;
                let by: HeadRanking = by.parse()?;
                Ok(rank_heads(&attr.0, kh[0], kh[1], by)?
                    .into_iter()
                    .map(|s| {
                        Dynamic::from_array(vec![
                            Dynamic::from_int(s.layer as INT),
                            Dynamic::from_int(s.head as INT),
                            Dynamic::from_float(s.score as rhai::FLOAT),
                            Dynamic::from_float(s.abs as rhai::FLOAT),
                        ])
                    })
                    .collect::<Array>())
            })
        },
    );
}

pub(crate) fn cached_list(arr: &Array) -> Result<Vec<SampleRef>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<Cached>()
                .map(|c| sample_ref(&c))
                .ok_or_else(|| {
                    anyhow!(
                        "element {k} is a {}, expected a Cached sample (from forward)",
                        v.type_name()
                    )
                })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn attn_attrs(
    g: &ScriptGraph,
    m: &ScriptModel,
    rs: &Array,
    layer: INT,
    head: INT,
    downs: &Array,
    normalize: bool,
) -> super::RResult<Map> {
    guard("get_attn_attrs_on_dataset", || {
        let lh = usize_list(
            "layer, head",
            &vec![Dynamic::from_int(layer), Dynamic::from_int(head)],
        )?;
        let (aw, aa) = get_attn_attrs_on_dataset(
            &lock(&g.0),
            m.0.as_ref(),
            &cached_list(rs)?,
            lh[0],
            lh[1],
            &node_ids(downs)?,
            normalize,
        )?;
        let mut out = Map::new();
        out.insert("aw".into(), Dynamic::from(Tensor(aw)));
        out.insert("aa".into(), Dynamic::from(Tensor(aa)));
        Ok(out)
    })
}

fn register_dataset_steps(r: &mut Registrar) {
    r.func(
        "get_attn_attrs_on_dataset",
        "get_attn_attrs_on_dataset(g: Graph, model: Model, rs: Array, layer: int, head: int, downstreams: Array) -> Map",
        "Over samples (A22): #{aw: [N,k,s] attention weights of the head at the downstreams' positions, aa: aw * |grad aw| with rows normalised}; run attribute_step on the downstreams first.",
        |g: ScriptGraph, m: ScriptModel, rs: Array, layer: INT, head: INT, downs: Array| {
            attn_attrs(&g, &m, &rs, layer, head, &downs, true)
        },
    )
    .func(
        "get_attn_attrs_on_dataset",
        "get_attn_attrs_on_dataset(g: Graph, model: Model, rs: Array, layer: int, head: int, downstreams: Array, normalize: bool) -> Map",
        "As above; normalize = false keeps aa = aw * |grad aw| unnormalised.",
        |g: ScriptGraph, m: ScriptModel, rs: Array, layer: INT, head: INT, downs: Array, normalize: bool| {
            attn_attrs(&g, &m, &rs, layer, head, &downs, normalize)
        },
    )
    .func(
        "forward",
        "forward(g: Graph, r: Cached, model: Model) -> float",
        "Circuit evaluation (A17, the seed's graph.forward): lm_head's mean answer log-prob when only the graph's paths feed the residual.",
        |g: ScriptGraph, c: Cached, m: ScriptModel| {
            guard("forward", || Ok(graph_forward(&mut lock(&g.0), c.backend(&m), &sample_ref(&c), None)? as rhai::FLOAT))
        },
    )
    .func(
        "forward",
        "forward(g: Graph, r: Cached, model: Model, leaf_nodes: Array) -> float",
        "Circuit evaluation processing only the nodes reachable from leaf_nodes.",
        |g: ScriptGraph, c: Cached, m: ScriptModel, leaves: Array| {
            guard("forward", || {
                let leaves = node_ids(&leaves)?;
                Ok(graph_forward(&mut lock(&g.0), c.backend(&m), &sample_ref(&c), Some(&leaves))? as rhai::FLOAT)
            })
        },
    );
}

fn top_heads(attr: &Tensor, k: INT, h: INT, until_k: bool) -> super::RResult<Array> {
    guard("get_top_heads", || {
        let kh = usize_list(
            "k, n_heads",
            &vec![Dynamic::from_int(k), Dynamic::from_int(h)],
        )?;
        Ok(get_top_heads(&attr.0, kh[0], kh[1], until_k)?
            .into_iter()
            .map(|((l, hd), s)| {
                Dynamic::from_array(vec![
                    Dynamic::from_int(l as INT),
                    Dynamic::from_int(hd as INT),
                    Dynamic::from_float(s as rhai::FLOAT),
                ])
            })
            .collect())
    })
}
