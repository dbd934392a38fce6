//! The attribution tree (A24): each level is a node set with its mean attribution, top heads and
//! their attention data; printed in pptree's horizontal style.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use candle_core::Tensor;

use super::graph::Graph;
use super::mr::{MrOptions, mr};
use super::node::NodeId;
use super::pattern::SampleRef;
use super::step::{attribute_step, get_attn_attrs_on_dataset, get_top_heads};
use crate::backend::Backend;

/// Per-level data (the seed's AttrData).
#[derive(Debug, Clone)]
pub struct AttrData {
    /// The level's nodes.
    pub nodes: Vec<NodeId>,
    /// Mean attribution over samples `[L',H+1,g]`.
    pub attr: Tensor,
    /// (l, h) → attention weights `[N,k,s]`.
    pub attn_weights_ds: BTreeMap<(usize, usize), Tensor>,
    /// (l, h) → row-normalised aw·|grad| `[N,k,s]`.
    pub attn_attrs_ds: BTreeMap<(usize, usize), Tensor>,
    /// Top heads in order with Σ|attr|.
    pub top_heads: Vec<((usize, usize), f32)>,
    /// Head groups (filled by clustering).
    pub groups: Vec<Vec<(usize, usize)>>,
    /// Free-form metrics (filled by clustering).
    pub metrics: BTreeMap<String, f64>,
}

/// One tree node.
#[derive(Debug, Clone)]
pub struct TreeNode {
    /// Label (data2str).
    pub label: String,
    /// Data.
    pub data: AttrData,
    /// Parent index.
    pub parent: Option<usize>,
    /// Child indices.
    pub children: Vec<usize>,
}

/// An arena of tree nodes; index 0 is the first root.
#[derive(Debug, Clone, Default)]
pub struct AttrTree {
    /// The nodes.
    pub nodes: Vec<TreeNode>,
}

/// Options of [`add_tree_node`].
#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// Top heads kept (default 30).
    pub top_k: usize,
    /// Keep scanning until `top_k` heads (the seed stops after top_k entries).
    pub until_k: bool,
    /// Compute aw/aa for each top head (A22).
    pub attn_data: bool,
    /// Progress bar.
    pub progress: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        Self {
            top_k: 30,
            until_k: false,
            attn_data: true,
            progress: false,
        }
    }
}

/// `L` + distinct node layers descending, comma-joined; for non-lm_head nodes also
/// ` {first node's pattern} x{count}` (e.g. `L79,78 A-->A- x5`).
pub fn data2str(g: &Graph, nodes: &[NodeId]) -> String {
    let mut layers: Vec<usize> = nodes.iter().map(|n| n.layer).collect();
    layers.sort_unstable_by(|a, b| b.cmp(a));
    layers.dedup();
    let mut s = format!(
        "L{}",
        layers
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    if let Some(first) = nodes.first()
        && !first.ty.is_lm_head()
    {
        let pat = g
            .get(*first)
            .ok()
            .and_then(|n| n.data.attn_pattern.clone())
            .unwrap_or_default();
        s.push_str(&format!(" {pat} x{}", nodes.len()));
    }
    s
}

/// The seed's add_tnode: attr = mean over samples of attribute_step, the top heads, and aw/aa
/// per top head; appended under `parent`. Returns its index.
pub fn add_tree_node(
    tree: &mut AttrTree,
    g: &mut Graph,
    backend: &dyn Backend,
    samples: &[SampleRef],
    nodes: &[NodeId],
    parent: Option<usize>,
    opts: &TreeOptions,
) -> Result<usize> {
    if let Some(p) = parent {
        ensure!(p < tree.nodes.len(), "parent tree node {p} does not exist");
    }
    let mopts = MrOptions {
        progress: opts.progress,
        label: "attribute_step".into(),
        ..Default::default()
    };
    let attr = mr(samples, &mopts, |r| attribute_step(g, backend, r, nodes))?;
    let top_heads = get_top_heads(&attr, opts.top_k, g.num_heads, opts.until_k)?;
    let mut attn_weights_ds = BTreeMap::new();
    let mut attn_attrs_ds = BTreeMap::new();
    if opts.attn_data {
        for &((l, h), _) in &top_heads {
            let (aw, aa) = get_attn_attrs_on_dataset(g, backend, samples, l, h, nodes, true)?;
            attn_weights_ds.insert((l, h), aw);
            attn_attrs_ds.insert((l, h), aa);
        }
    }
    let idx = tree.nodes.len();
    tree.nodes.push(TreeNode {
        label: data2str(g, nodes),
        data: AttrData {
            nodes: nodes.to_vec(),
            attr,
            attn_weights_ds,
            attn_attrs_ds,
            top_heads,
            groups: Vec::new(),
            metrics: BTreeMap::new(),
        },
        parent,
        children: Vec::new(),
    });
    if let Some(p) = parent {
        tree.nodes[p].children.push(idx);
    }
    Ok(idx)
}

impl AttrTree {
    fn size(&self, i: usize) -> usize {
        1 + self.nodes[i]
            .children
            .iter()
            .map(|&c| self.size(c))
            .sum::<usize>()
    }

    /// The tree under `root` in pptree's horizontal layout.
    pub fn render(&self, root: usize) -> String {
        let mut out = String::new();
        if root < self.nodes.len() {
            self.render_node(root, "", "updown", &mut out);
        }
        out
    }

    fn render_node(&self, i: usize, indent: &str, last: &str, out: &mut String) {
        let node = &self.nodes[i];
        let name = &node.label;
        // balanced split of the children into an "up" and a "down" list (pptree)
        let mut up: Vec<usize> = node.children.clone();
        up.sort_by_key(|&c| self.size(c));
        let mut down: Vec<usize> = Vec::new();
        let sum = |v: &[usize]| v.iter().map(|&c| self.size(c)).sum::<usize>();
        while !up.is_empty() && sum(&down) < sum(&up) {
            down.push(up.pop().expect("non-empty"));
        }
        let pad = " ".repeat(name.chars().count());
        for (k, &c) in up.iter().enumerate() {
            let next_last = if k == 0 { "up" } else { "" };
            let bar = if last.contains("up") { " " } else { "│" };
            self.render_node(c, &format!("{indent}{bar}{pad}"), next_last, out);
        }
        let start = match last {
            "up" => "┌",
            "down" => "└",
            "updown" => " ",
            _ => "├",
        };
        let end = if !up.is_empty() {
            "┤"
        } else if !down.is_empty() {
            "┐"
        } else {
            ""
        };
        out.push_str(&format!("{indent}{start}{name}{end}\n"));
        for (k, &c) in down.iter().enumerate() {
            let next_last = if k + 1 == down.len() { "down" } else { "" };
            let bar = if last.contains("down") { " " } else { "│" };
            self.render_node(c, &format!("{indent}{bar}{pad}"), next_last, out);
        }
    }
}
