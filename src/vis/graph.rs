//! A plain view of an attribution graph (nodes by layer, scored edges) and its GQA merge (V14),
//! DOT and JSON exports. The attribution graph converts into [`GraphView`]; the HTML renderer is
//! in [`super::html`], the layout in [`super::layout`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use super::GqaConfig;
use super::layout::Layout;

/// A node of the view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewNode {
    /// Unique id, `"{layer}-{head}-{type}"` (`None` for a missing head, e.g. `80-None-lm_head`).
    pub id: String,
    /// Layer (L for lm_head).
    pub layer: usize,
    /// Query head; for a GQA-merged (virtual) node, the KV group; H for MLP nodes; `None` for lm_head.
    pub head: Option<usize>,
    /// The real heads merged into a virtual node (sorted); `None` for real nodes.
    pub heads: Option<Vec<usize>>,
    /// `lm_head`, `mlp`, `mlp_i`, `mlp_g`, `attn_q`, `attn_k`, `attn_v`, `attn_a`, `attn_qns`, ...
    pub node_type: String,
    /// Attention pattern `"DST->SRC"`, if any.
    pub pattern: Option<String>,
}

/// A scored edge `from → to` (upstream → downstream).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewEdge {
    /// Upstream node id.
    pub from: String,
    /// Downstream node id.
    pub to: String,
    /// Attribution score.
    pub score: f32,
}

/// Nodes and edges of an attribution graph, ready to merge, lay out and render.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphView {
    /// Nodes, in a stable order.
    pub nodes: Vec<ViewNode>,
    /// Edges.
    pub edges: Vec<ViewEdge>,
}

/// Formats an optional value as Python prints it (`None` when absent).
fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("None".to_string(), |x| x.to_string())
}

impl ViewNode {
    /// A real node with the id `"{layer}-{head}-{type}"`.
    pub fn new(layer: usize, head: Option<usize>, node_type: &str, pattern: Option<&str>) -> Self {
        Self {
            id: format!("{layer}-{}-{node_type}", opt(&head)),
            layer,
            head,
            heads: None,
            node_type: node_type.to_string(),
            pattern: pattern.map(str::to_string),
        }
    }

    /// Attention node (type prefix `attn`).
    pub fn is_attn(&self) -> bool {
        self.node_type.starts_with("attn")
    }

    /// MLP node (type prefix `mlp`).
    pub fn is_mlp(&self) -> bool {
        self.node_type.starts_with("mlp")
    }

    /// The lm_head node.
    pub fn is_lm_head(&self) -> bool {
        self.node_type.starts_with("lm_head")
    }

    /// Number of real heads behind this node (1 for real nodes).
    pub fn n_merged(&self) -> usize {
        self.heads.as_ref().map_or(1, |h| h.len().max(1))
    }

    /// Short label: `79-[10,11]`, `79-10`, `62-mlp`, `lm_head`.
    pub fn short_label(&self) -> String {
        if self.is_lm_head() {
            "lm_head".into()
        } else if self.is_mlp() {
            if self.node_type == "mlp" || self.node_type == "mlp_i" {
                format!("{}-mlp", self.layer)
            } else {
                format!("{}-{}", self.layer, self.node_type)
            }
        } else if let Some(hs) = &self.heads {
            format!("{}-[{}]", self.layer, join(hs))
        } else {
            format!("{}-{}", self.layer, opt(&self.head))
        }
    }

    /// Hover title (V16): `"{layer}-[{heads}] {type}"` or `"{layer}-{head} {type}"` plus
    /// `"\n{pattern}"` for attention nodes; `"{layer}-mlp"` for `mlp`/`mlp_i`, `"{layer}-{type}"`
    /// for other MLP types (the seed crashed on plain `mlp`, defect 10); `"lm_head"`.
    pub fn title(&self) -> String {
        let base = if self.is_attn() {
            format!("{} {}", self.short_label(), self.node_type)
        } else if self.is_mlp() || self.is_lm_head() {
            self.short_label()
        } else {
            format!("{}-{} {}", self.layer, opt(&self.head), self.node_type)
        };
        match &self.pattern {
            Some(p) if !self.is_mlp() && !self.is_lm_head() => format!("{base}\n{p}"),
            _ => base,
        }
    }
}

fn join(v: &[usize]) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

impl GraphView {
    /// Checks that ids are unique, edges refer to known nodes and scores are finite.
    pub fn validate(&self) -> Result<()> {
        let mut ids = HashSet::new();
        for n in &self.nodes {
            ensure!(
                ids.insert(n.id.as_str()),
                "node id '{}' appears twice",
                n.id
            );
        }
        for e in &self.edges {
            ensure!(
                ids.contains(e.from.as_str()),
                "edge refers to unknown node '{}'",
                e.from
            );
            ensure!(
                ids.contains(e.to.as_str()),
                "edge refers to unknown node '{}'",
                e.to
            );
            ensure!(
                e.score.is_finite(),
                "edge {} -> {} has a non-finite score",
                e.from,
                e.to
            );
        }
        Ok(())
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Nodes that are an endpoint of at least one edge, in node order.
    pub fn connected_nodes(&self) -> Vec<&ViewNode> {
        let used: HashSet<&str> = self
            .edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()])
            .collect();
        self.nodes
            .iter()
            .filter(|n| used.contains(n.id.as_str()))
            .collect()
    }

    /// Σ|score| over each node's outgoing edges (V14's strength).
    pub fn strengths(&self) -> HashMap<&str, f64> {
        let mut s: HashMap<&str, f64> = self.nodes.iter().map(|n| (n.id.as_str(), 0.0)).collect();
        for e in &self.edges {
            *s.entry(e.from.as_str()).or_default() += (e.score as f64).abs();
        }
        s
    }
}

/// V14 `merge_gqa_groups`: merges the attention nodes of each `(layer, kv_group)` into one
/// virtual node and returns the new view and the log text (callers print it).
///
/// * strength(node) = Σ|score| over its outgoing edges; nodes without any edge are dropped.
/// * Groups mixing types or patterns keep only the strongest node (first on ties); the others are
///   discarded with their edges: `L62-G5: CONFLICT - pick H45 (attn_q, V->A-) strength=0.0076`
///   followed by `    discard H40 (attn_v, X->A-) strength=0.0012` lines.
///   Agreeing multi-member groups log `L63-G7: MERGE H[61,62] (attn_q, V->A-) total_strength=0.0280`.
/// * Every group (single-member too) becomes a virtual node with head = kv_group, heads = the sorted
///   real heads, the shared type and pattern. Other nodes are copied with `heads = None`.
/// * Edges are remapped; parallel edges between the same endpoints have their scores summed.
pub fn merge_gqa_groups(
    view: &GraphView,
    heads: usize,
    kv_heads: usize,
) -> Result<(GraphView, String)> {
    view.validate()?;
    let hpg = GqaConfig {
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
    }
    .heads_per_group()?;
    let strength = view.strengths();
    let connected: HashSet<&str> = view
        .connected_nodes()
        .iter()
        .map(|n| n.id.as_str())
        .collect();
    // Groups and plain nodes in order of first appearance.
    enum Slot<'a> {
        Group((usize, usize), Vec<&'a ViewNode>),
        Plain(&'a ViewNode),
    }
    let mut slots: Vec<Slot> = Vec::new();
    let mut group_slot: HashMap<(usize, usize), usize> = HashMap::new();
    for n in view
        .nodes
        .iter()
        .filter(|n| connected.contains(n.id.as_str()))
    {
        if n.is_attn() {
            let h = n
                .head
                .with_context(|| format!("attention node '{}' has no head", n.id))?;
            ensure!(
                h < heads,
                "attention node '{}' has head {h}, but the model has {heads} heads",
                n.id
            );
            let key = (n.layer, h / hpg);
            match group_slot.get(&key) {
                Some(&i) => {
                    if let Slot::Group(_, members) = &mut slots[i] {
                        members.push(n);
                    }
                }
                None => {
                    group_slot.insert(key, slots.len());
                    slots.push(Slot::Group(key, vec![n]));
                }
            }
        } else {
            slots.push(Slot::Plain(n));
        }
    }
    let mut log = String::new();
    let mut out = GraphView::default();
    let mut remap: HashMap<&str, String> = HashMap::new();
    let describe =
        |n: &ViewNode| format!("H{} ({}, {})", opt(&n.head), n.node_type, opt(&n.pattern));
    for slot in &slots {
        match slot {
            Slot::Plain(n) => {
                let mut c = (*n).clone();
                c.heads = None;
                remap.insert(n.id.as_str(), c.id.clone());
                out.nodes.push(c);
            }
            Slot::Group((layer, g), members) => {
                let first = members[0];
                let agree = members
                    .iter()
                    .all(|m| m.node_type == first.node_type && m.pattern == first.pattern);
                let kept: Vec<&ViewNode> = if agree {
                    if members.len() > 1 {
                        let mut hs: Vec<usize> = members.iter().filter_map(|m| m.head).collect();
                        hs.sort_unstable();
                        let total: f64 = members.iter().map(|m| strength[m.id.as_str()]).sum();
                        writeln!(
                            log,
                            "L{layer}-G{g}: MERGE H[{}] ({}, {}) total_strength={total:.4}",
                            join(&hs),
                            first.node_type,
                            opt(&first.pattern)
                        )?;
                    }
                    members.clone()
                } else {
                    let best = members.iter().enumerate().fold(0, |b, (i, m)| {
                        if strength[m.id.as_str()] > strength[members[b].id.as_str()] {
                            i
                        } else {
                            b
                        }
                    });
                    let pick = members[best];
                    writeln!(
                        log,
                        "L{layer}-G{g}: CONFLICT - pick {} strength={:.4}",
                        describe(pick),
                        strength[pick.id.as_str()]
                    )?;
                    for (i, m) in members.iter().enumerate() {
                        if i != best {
                            writeln!(
                                log,
                                "    discard {} strength={:.4}",
                                describe(m),
                                strength[m.id.as_str()]
                            )?;
                        }
                    }
                    vec![pick]
                };
                let mut hs: Vec<usize> = kept.iter().filter_map(|m| m.head).collect();
                hs.sort_unstable();
                let mut v = ViewNode::new(
                    *layer,
                    Some(*g),
                    &kept[0].node_type,
                    kept[0].pattern.as_deref(),
                );
                v.heads = Some(hs);
                for m in &kept {
                    remap.insert(m.id.as_str(), v.id.clone());
                }
                out.nodes.push(v);
            }
        }
    }
    let mut edge_index: HashMap<(String, String), usize> = HashMap::new();
    for e in &view.edges {
        let (Some(from), Some(to)) = (remap.get(e.from.as_str()), remap.get(e.to.as_str())) else {
            continue; // an endpoint was discarded
        };
        match edge_index.get(&(from.clone(), to.clone())) {
            Some(&i) => out.edges[i].score += e.score,
            None => {
                edge_index.insert((from.clone(), to.clone()), out.edges.len());
                out.edges.push(ViewEdge {
                    from: from.clone(),
                    to: to.clone(),
                    score: e.score,
                });
            }
        }
    }
    Ok((out, log))
}

/// Colour of a node type (V16, extended to every type: defect 10).
pub fn type_color(node_type: &str) -> &'static str {
    match node_type {
        "attn_v" => "#3498db",
        "attn_q" => "#9b59b6",
        "attn_k" => "#1abc9c",
        "attn_a" => "#e67e22",
        "attn_qns" => "#34495e",
        "mlp" => "#16a085",
        "mlp_i" => "#2ecc71",
        "mlp_g" => "#f1c40f",
        "lm_head" => "#e74c3c",
        _ => "#95a5a6",
    }
}

/// Edge colour: green for positive scores, red otherwise.
pub fn edge_color(score: f32) -> &'static str {
    if score > 0.0 { "#27ae60" } else { "#c0392b" }
}

/// Edge width: `0.5 + 5.5 · |s| / max|s|`.
pub fn edge_width(score: f32, max_abs: f32) -> f64 {
    if max_abs > 0.0 {
        0.5 + 5.5 * (score.abs() / max_abs) as f64
    } else {
        0.5
    }
}

fn dot_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// Graphviz DOT export: lower layers at the bottom (`rankdir=BT`), one rank per layer, node
/// colours by type, edge pen width and colour by score. With a layout, nodes get `pos` hints
/// (used by `neato -n`). Nodes without edges are skipped.
pub fn render_dot(view: &GraphView, layout: Option<&Layout>) -> Result<String> {
    view.validate()?;
    let max_abs = view
        .edges
        .iter()
        .map(|e| e.score.abs())
        .fold(0.0f32, f32::max);
    let mut s = String::new();
    writeln!(s, "digraph minarc {{")?;
    writeln!(s, "  rankdir=BT;")?;
    writeln!(
        s,
        "  node [shape=circle, style=filled, fontsize=10, fontname=\"sans-serif\", fontcolor=\"#222222\"];"
    )?;
    writeln!(s, "  edge [arrowsize=0.5];")?;
    let nodes = view.connected_nodes();
    let mut by_layer: BTreeMap<usize, Vec<&ViewNode>> = BTreeMap::new();
    for n in &nodes {
        by_layer.entry(n.layer).or_default().push(n);
    }
    for (layer, ns) in &by_layer {
        writeln!(s, "  subgraph layer_{layer} {{ rank=same;")?;
        for n in ns {
            let size = 0.3 * (1.0 + 0.5 * (n.n_merged() as f64 - 1.0));
            let label = match (&n.pattern, n.is_attn()) {
                (Some(p), true) => format!("{}\n{}\n{}", n.short_label(), n.node_type, p),
                _ if n.is_attn() => format!("{}\n{}", n.short_label(), n.node_type),
                _ => n.short_label(),
            };
            write!(
                s,
                "    {} [label={}, tooltip={}, fillcolor={}, width={size:.2}",
                dot_str(&n.id),
                dot_str(&label),
                dot_str(&n.title()),
                dot_str(type_color(&n.node_type))
            )?;
            if let Some(x) = layout.and_then(|l| l.x.get(&n.id)) {
                write!(s, ", pos=\"{:.1},{:.1}!\"", x * 72.0, *layer as f64 * 72.0)?;
            }
            writeln!(s, "];")?;
        }
        writeln!(s, "  }}")?;
    }
    for e in &view.edges {
        writeln!(
            s,
            "  {} -> {} [penwidth={:.2}, color={}, tooltip={}];",
            dot_str(&e.from),
            dot_str(&e.to),
            edge_width(e.score, max_abs),
            dot_str(edge_color(e.score)),
            dot_str(&format!("score: {:.4}", e.score))
        )?;
    }
    writeln!(s, "}}")?;
    Ok(s)
}

/// JSON export of the view (pretty-printed).
pub fn to_json(view: &GraphView) -> Result<String> {
    view.validate()?;
    Ok(serde_json::to_string_pretty(view)?)
}

/// Reads a view from JSON and validates it. Accepts this view's own format and the
/// attribution graph's JSON (`save_graph`, [`crate::attribution::export::save_graph_json`]).
pub fn from_json(text: &str) -> Result<GraphView> {
    let v: GraphView = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => match serde_json::from_str::<crate::attribution::GraphView>(text) {
            Ok(a) => from_attribution(&a),
            Err(_) => return Err(e).context("graph JSON is malformed"),
        },
    };
    v.validate()?;
    Ok(v)
}

/// The view of an attribution graph: node ids `"{layer}-{head}-{type}"`, patterns kept,
/// edges upstream → downstream with their scores.
pub fn from_attribution(g: &crate::attribution::GraphView) -> GraphView {
    let node = |id: &crate::attribution::NodeId, pattern: Option<&str>| {
        ViewNode::new(id.layer, id.head, id.ty.name(), pattern)
    };
    GraphView {
        nodes: g
            .nodes
            .iter()
            .map(|n| node(&n.id, n.attn_pattern.as_deref()))
            .collect(),
        edges: g
            .edges
            .iter()
            .map(|e| ViewEdge {
                from: node(&e.upstream, None).id,
                to: node(&e.downstream, None).id,
                score: e.score as f32,
            })
            .collect(),
    }
}

/// Reads a view from a JSON file.
pub fn read_json(path: &std::path::Path) -> Result<GraphView> {
    let text = crate::limits::read_text_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    from_json(&text).with_context(|| format!("in {}", path.display()))
}

/// The virtual node id a merged group gets, for callers that need to address it.
pub fn virtual_id(layer: usize, kv_group: usize, node_type: &str) -> String {
    format!("{layer}-{kv_group}-{node_type}")
}
