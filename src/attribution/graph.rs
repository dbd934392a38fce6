//! The attribution graph (A16): an ordered node registry with interning, edges with scores,
//! freezing of edge endpoints, traversal (topological sort, reachability) and a plain view for
//! JSON export and visualisation. Circuit evaluation (A17) is [`super::step::forward`].

use std::collections::{BTreeSet, HashMap, VecDeque};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::node::{Node, NodeId, NodeType};
use super::pattern::Spans;
use crate::ig::SinkMode;
use crate::ig::{Adaptive, IgRule};
use crate::model::ModelConfig;

/// One edge: upstream feeds downstream with an attribution score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// The upstream node.
    pub upstream: NodeId,
    /// The downstream node.
    pub downstream: NodeId,
    /// Its score.
    pub score: f64,
}

/// The attribution graph, owned by the host (M4: an explicit handle, no global).
#[derive(Debug, Clone)]
pub struct Graph {
    /// Number of samples N.
    pub dataset_size: usize,
    /// Hidden size e.
    pub hidden_size: usize,
    /// Decoder layers L.
    pub num_layers: usize,
    /// Query heads H.
    pub num_heads: usize,
    /// Span resolution (built-in and user-defined spans).
    pub spans: Spans,
    /// Path rule for every backward; None = each type's default (A13).
    pub ig_rule: Option<IgRule>,
    /// Adaptive IG for lm_head nodes.
    pub adaptive: Option<Adaptive>,
    /// Sink handling of attn_qns nodes.
    pub sink: SinkMode,
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    edges: Vec<Edge>,
}

/// A plain view of the graph (nodes, edges, scores, patterns) for JSON and visualisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphView {
    /// Layers L.
    pub num_layers: usize,
    /// Heads H.
    pub num_heads: usize,
    /// Nodes in graph order.
    pub nodes: Vec<NodeView>,
    /// Edges in insertion order.
    pub edges: Vec<Edge>,
}

/// One node of a [`GraphView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Identity.
    #[serde(flatten)]
    pub id: NodeId,
    /// `DST->SRC` pattern.
    pub attn_pattern: Option<String>,
    /// Output span.
    pub span: Option<String>,
    /// Input span.
    pub src_span: Option<String>,
}

impl Graph {
    /// An empty graph for a model and a dataset of `dataset_size` samples.
    pub fn new(cfg: &ModelConfig, dataset_size: usize) -> Self {
        Self {
            dataset_size,
            hidden_size: cfg.hidden_size,
            num_layers: cfg.num_hidden_layers,
            num_heads: cfg.num_attention_heads,
            spans: Spans::default(),
            ig_rule: None,
            adaptive: None,
            sink: SinkMode::default(),
            nodes: Vec::new(),
            index: HashMap::new(),
            edges: Vec::new(),
        }
    }

    /// A validated node id for this graph's model (MLP head defaults to H).
    pub fn id(&self, layer: usize, head: Option<usize>, ty: NodeType) -> Result<NodeId> {
        NodeId::new(layer, head, ty, self.num_layers, self.num_heads)
    }

    /// The lm_head node id (layer L).
    pub fn lm_head_id(&self) -> NodeId {
        NodeId {
            layer: self.num_layers,
            head: None,
            ty: NodeType::LmHead,
        }
    }

    /// Interning constructor (A10): returns the existing node with the same (layer, head, type),
    /// filling its pattern only if unset, or adds a new one.
    pub fn node(
        &mut self,
        layer: usize,
        head: Option<usize>,
        ty: NodeType,
        attn_pattern: Option<&str>,
    ) -> Result<NodeId> {
        let id = self.id(layer, head, ty)?;
        self.add_node(id, attn_pattern)?;
        Ok(id)
    }

    /// Adds a node; a duplicate is not added again (its pattern is filled if unset). Returns
    /// whether it was new.
    pub fn add_node(&mut self, id: NodeId, attn_pattern: Option<&str>) -> Result<bool> {
        NodeId::new(id.layer, id.head, id.ty, self.num_layers, self.num_heads)?;
        if let Some(p) = attn_pattern {
            super::pattern::Pattern::parse(p)?;
        }
        if let Some(&i) = self.index.get(&id) {
            let d = &mut self.nodes[i].data;
            if d.attn_pattern.is_none() {
                d.attn_pattern = attn_pattern.map(str::to_string);
            }
            return Ok(false);
        }
        self.index.insert(id, self.nodes.len());
        self.nodes.push(Node::new(id, attn_pattern));
        Ok(true)
    }

    /// Removes a node that is no edge's downstream, with its outgoing edges.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Node> {
        let i = *self
            .index
            .get(&id)
            .with_context(|| format!("node {id} not in graph"))?;
        if let Some(e) = self.edges.iter().find(|e| e.downstream == id) {
            bail!(
                "cannot remove {id}: it is the downstream of an edge from {}",
                e.upstream
            );
        }
        self.edges.retain(|e| e.upstream != id);
        let node = self.nodes.remove(i);
        self.reindex();
        Ok(node)
    }

    fn reindex(&mut self) {
        self.index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i))
            .collect();
    }

    /// Adds (or re-scores) edge upstream → downstream; adds the upstream if missing; the
    /// downstream must exist. Both endpoints become frozen.
    pub fn add_edge(&mut self, upstream: NodeId, downstream: NodeId, score: f64) -> Result<()> {
        if !self.index.contains_key(&downstream) {
            bail!("downstream node {downstream} not in graph");
        }
        if upstream == downstream {
            bail!("self edge on {upstream}");
        }
        if upstream.ty.is_lm_head() {
            bail!("lm_head cannot be an upstream node");
        }
        self.add_node(upstream, None)?;
        match self
            .edges
            .iter_mut()
            .find(|e| e.upstream == upstream && e.downstream == downstream)
        {
            Some(e) => e.score = score,
            None => self.edges.push(Edge {
                upstream,
                downstream,
                score,
            }),
        }
        for id in [upstream, downstream] {
            let i = self.index[&id];
            self.nodes[i].frozen = true;
        }
        Ok(())
    }

    /// Removes an edge; returns whether it existed.
    pub fn remove_edge(&mut self, upstream: NodeId, downstream: NodeId) -> bool {
        let before = self.edges.len();
        self.edges
            .retain(|e| !(e.upstream == upstream && e.downstream == downstream));
        self.edges.len() != before
    }

    /// Changes a node's identity; an error once it is frozen or if the new id exists.
    pub fn set_node_id(&mut self, old: NodeId, new: NodeId) -> Result<()> {
        let i = *self
            .index
            .get(&old)
            .with_context(|| format!("node {old} not in graph"))?;
        if self.nodes[i].frozen {
            bail!("node {old} is an edge endpoint: its layer, head and type are frozen");
        }
        NodeId::new(new.layer, new.head, new.ty, self.num_layers, self.num_heads)?;
        if self.index.contains_key(&new) {
            bail!("node {new} already exists");
        }
        self.nodes[i].id = new;
        self.reindex();
        Ok(())
    }

    /// Whether the node exists.
    pub fn contains(&self, id: NodeId) -> bool {
        self.index.contains_key(&id)
    }
    /// A node.
    pub fn get(&self, id: NodeId) -> Result<&Node> {
        self.index
            .get(&id)
            .map(|&i| &self.nodes[i])
            .with_context(|| format!("node {id} not in graph"))
    }
    /// A node, mutable.
    pub fn get_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        let i = *self
            .index
            .get(&id)
            .with_context(|| format!("node {id} not in graph"))?;
        Ok(&mut self.nodes[i])
    }
    /// Nodes in insertion order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Node ids in insertion order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }
    /// Edges in insertion order.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }
    /// The score of an edge.
    pub fn edge_score(&self, upstream: NodeId, downstream: NodeId) -> Option<f64> {
        self.edges
            .iter()
            .find(|e| e.upstream == upstream && e.downstream == downstream)
            .map(|e| e.score)
    }

    /// Downstream nodes of `id`, in edge order.
    pub fn get_downstreams(&self, id: NodeId) -> Vec<NodeId> {
        self.edges
            .iter()
            .filter(|e| e.upstream == id)
            .map(|e| e.downstream)
            .collect()
    }

    /// Upstream nodes of `id`, in edge order.
    pub fn get_upstreams(&self, id: NodeId) -> Vec<NodeId> {
        self.edges
            .iter()
            .filter(|e| e.downstream == id)
            .map(|e| e.upstream)
            .collect()
    }

    /// Kahn's algorithm from the leaves (no upstream; seeded in node order) towards lm_head,
    /// with a FIFO queue. Errors on a cycle.
    pub fn topological_sort(&self) -> Result<Vec<NodeId>> {
        let mut indeg: HashMap<NodeId, usize> = self.nodes.iter().map(|n| (n.id, 0)).collect();
        for e in &self.edges {
            *indeg.entry(e.downstream).or_default() += 1;
        }
        let mut q: VecDeque<NodeId> = self
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| indeg[id] == 0)
            .collect();
        let mut out = Vec::with_capacity(self.nodes.len());
        while let Some(id) = q.pop_front() {
            out.push(id);
            for d in self.get_downstreams(id) {
                let c = indeg.get_mut(&d).expect("edge endpoint in graph");
                *c -= 1;
                if *c == 0 {
                    q.push_back(d);
                }
            }
        }
        if out.len() != self.nodes.len() {
            bail!("the graph has a cycle");
        }
        Ok(out)
    }

    /// Nodes reachable from `starts` along downstream edges (BFS, starts included).
    pub fn get_reachable(&self, starts: &[NodeId]) -> Result<BTreeSet<NodeId>> {
        let mut seen = BTreeSet::new();
        let mut q = VecDeque::new();
        for &s in starts {
            self.get(s)?;
            if seen.insert(s) {
                q.push_back(s);
            }
        }
        while let Some(id) = q.pop_front() {
            for d in self.get_downstreams(id) {
                if seen.insert(d) {
                    q.push_back(d);
                }
            }
        }
        Ok(seen)
    }

    /// The plain view (nodes, edges, scores, patterns).
    pub fn to_view(&self) -> GraphView {
        GraphView {
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id,
                    attn_pattern: n.data.attn_pattern.clone(),
                    span: n.data.span.clone(),
                    src_span: n.data.src_span.clone(),
                })
                .collect(),
            edges: self.edges.clone(),
        }
    }

    /// A graph rebuilt from its saved view (`save_graph`'s JSON): the same nodes with their
    /// patterns and spans, the same edges and scores, no per-sample data, the default IG
    /// settings. The view must be of a model with `cfg`'s layers and heads.
    pub fn from_view(cfg: &ModelConfig, view: &GraphView, dataset_size: usize) -> Result<Self> {
        ensure!(
            view.num_layers == cfg.num_hidden_layers && view.num_heads == cfg.num_attention_heads,
            "the graph is of a model with {} layers and {} heads, this model has {} and {}",
            view.num_layers,
            view.num_heads,
            cfg.num_hidden_layers,
            cfg.num_attention_heads
        );
        let mut g = Graph::new(cfg, dataset_size);
        for (k, n) in view.nodes.iter().enumerate() {
            let new = g
                .add_node(n.id, n.attn_pattern.as_deref())
                .with_context(|| format!("node {k}"))?;
            ensure!(new, "node {k} ({:?}) appears twice", n.id);
            let d = &mut g.get_mut(n.id)?.data;
            d.span = n.span.clone();
            d.src_span = n.src_span.clone();
        }
        let n = view.nodes.len();
        ensure!(
            view.edges.len() <= n.saturating_mul(n),
            "{} edges between {n} nodes",
            view.edges.len()
        );
        let mut seen = std::collections::HashSet::new();
        for (k, e) in view.edges.iter().enumerate() {
            ensure!(e.score.is_finite(), "edge {k} has a non-finite score");
            ensure!(
                g.contains(e.upstream),
                "edge {k}: upstream node {} is not among the nodes",
                e.upstream
            );
            ensure!(
                seen.insert((e.upstream, e.downstream)),
                "edge {k} ({} -> {}) appears twice",
                e.upstream,
                e.downstream
            );
            g.add_edge(e.upstream, e.downstream, e.score)
                .with_context(|| format!("edge {k}"))?;
        }
        Ok(g)
    }

    /// Drops every per-sample position and gradient (keeps nodes, edges and spans).
    pub fn clear_sample_data(&mut self) {
        for n in &mut self.nodes {
            n.data.pos_ids.clear();
            n.data.src_pos_ids.clear();
            n.data.output_grad.clear();
            n.data.grad.clear();
            n.data.completeness.clear();
        }
    }
}
