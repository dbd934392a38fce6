//! Horizontal placement of graph nodes within their layers: the crossing-minimising layered
//! barycentre heuristic (V15, with defect 12 fixed) and the fixed GQA layout (V16).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;

use super::GqaConfig;
use super::graph::GraphView;

/// Node x positions (by node id), plus crossing statistics when the heuristic ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Final x of every node.
    pub x: BTreeMap<String, f64>,
    /// Rank of every node within its layer after the sweeps (dummies of long edges included).
    pub ranks: BTreeMap<String, usize>,
    /// Per edge index (into the view's edges) that spans several layers: the `(layer, x)` points
    /// it passes through, from its lower to its upper end. Empty for the GQA layout.
    pub routes: BTreeMap<usize, Vec<(usize, f64)>>,
    /// Crossings of the initial order (`None` for the GQA layout).
    pub crossings_before: Option<usize>,
    /// Crossings of the kept order (`None` for the GQA layout).
    pub crossings_after: Option<usize>,
    /// Number of improving iterations kept.
    pub iterations: usize,
}

/// Edges as (index of the lower-layer end, index of the upper-layer end); same-layer edges dropped.
fn spans(view: &GraphView, index: &HashMap<&str, usize>) -> Vec<(usize, usize)> {
    view.edges
        .iter()
        .filter_map(|e| {
            let (a, b) = (*index.get(e.from.as_str())?, *index.get(e.to.as_str())?);
            let (la, lb) = (view.nodes[a].layer, view.nodes[b].layer);
            match la.cmp(&lb) {
                std::cmp::Ordering::Less => Some((a, b)),
                std::cmp::Ordering::Greater => Some((b, a)),
                std::cmp::Ordering::Equal => None,
            }
        })
        .collect()
}

/// Crossings of the edges drawn as straight lines between their endpoints at `x` (y = layer).
///
/// An edge spanning several layers passes every intermediate layer at the linearly interpolated
/// x. Two edges cross when their order at the bottom of their common layer span is inverted at
/// its top (strictly: edges sharing an endpoint or touching do not count). For edges between
/// adjacent layers this is the usual inverted-endpoint count; for longer edges it counts the
/// crossings that happen in intermediate layers, which the seed ignored (defect 12).
fn crossings_of(view: &GraphView, spans: &[(usize, usize)], x: &[f64]) -> usize {
    let at = |(lo, hi): (usize, usize), layer: f64| {
        let (l0, l1) = (view.nodes[lo].layer as f64, view.nodes[hi].layer as f64);
        x[lo] + (x[hi] - x[lo]) * (layer - l0) / (l1 - l0)
    };
    let mut count = 0;
    for (i, &e) in spans.iter().enumerate() {
        for &f in &spans[i + 1..] {
            let bottom = view.nodes[e.0].layer.max(view.nodes[f.0].layer) as f64;
            let top = view.nodes[e.1].layer.min(view.nodes[f.1].layer) as f64;
            if bottom >= top {
                continue;
            }
            let d0 = at(e, bottom) - at(f, bottom);
            let d1 = at(e, top) - at(f, top);
            if d0 * d1 < 0.0 {
                count += 1;
            }
        }
    }
    count
}

/// Crossings of `view` drawn with straight edges, nodes at the given x positions (missing nodes
/// count as x = 0). An edge spanning several layers passes every intermediate layer at its
/// linearly interpolated x. Useful to check a drawing; [`minimize_crossings`] counts on its own
/// dummy-node positions instead.
pub fn count_crossings(view: &GraphView, x: &BTreeMap<String, f64>) -> usize {
    let index: HashMap<&str, usize> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let xs: Vec<f64> = view
        .nodes
        .iter()
        .map(|n| x.get(&n.id).copied().unwrap_or(0.0))
        .collect();
    crossings_of(view, &spans(view, &index), &xs)
}

fn mean_of(idx: &[usize], x: &[f64]) -> Option<f64> {
    (!idx.is_empty()).then(|| idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64)
}

/// Reorders one layer by the barycentre of the given neighbours (stable; nodes without
/// neighbours keep their x as key) and sets x to the new rank.
fn reorder(order: &mut [usize], neigh: &[Vec<usize>], x: &mut [f64]) {
    let keys: HashMap<usize, f64> = order
        .iter()
        .map(|&i| (i, mean_of(&neigh[i], x).unwrap_or(x[i])))
        .collect();
    order.sort_by(|a, b| keys[a].total_cmp(&keys[b]));
    for (r, &i) in order.iter().enumerate() {
        x[i] = r as f64;
    }
}

/// The graph with one dummy node per intermediate layer of every long edge, so that every
/// segment joins adjacent (sorted) layers.
struct Expanded {
    /// Layer of every node: the view's nodes first, then the dummies.
    layer: Vec<usize>,
    /// Segments (lower node, upper node).
    segments: Vec<(usize, usize)>,
    /// Per view edge: its dummy nodes from the lower to the upper end.
    routes: Vec<(usize, Vec<usize>)>,
}

fn expand(view: &GraphView) -> Expanded {
    let index: HashMap<&str, usize> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut layer: Vec<usize> = view.nodes.iter().map(|n| n.layer).collect();
    let mut sorted: Vec<usize> = layer.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let rank_of: HashMap<usize, usize> = sorted.iter().enumerate().map(|(r, &l)| (l, r)).collect();
    let mut segments = Vec::new();
    let mut routes = Vec::new();
    for (e, edge) in view.edges.iter().enumerate() {
        let (Some(&a), Some(&b)) = (index.get(edge.from.as_str()), index.get(edge.to.as_str()))
        else {
            continue;
        };
        let (lo, hi) = match layer[a].cmp(&layer[b]) {
            std::cmp::Ordering::Less => (a, b),
            std::cmp::Ordering::Greater => (b, a),
            std::cmp::Ordering::Equal => continue,
        };
        let mut prev = lo;
        let mut dummies = Vec::new();
        for &l in &sorted[rank_of[&layer[lo]] + 1..rank_of[&layer[hi]]] {
            let d = layer.len();
            layer.push(l);
            segments.push((prev, d));
            dummies.push(d);
            prev = d;
        }
        segments.push((prev, hi));
        routes.push((e, dummies));
    }
    Expanded {
        layer,
        segments,
        routes,
    }
}

/// Crossings between segments of adjacent layers: pairs whose endpoint orders are inverted.
fn segment_crossings(ex: &Expanded, x: &[f64]) -> usize {
    let mut by_gap: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
    for &(lo, hi) in &ex.segments {
        by_gap.entry(ex.layer[lo]).or_default().push((lo, hi));
    }
    let mut count = 0;
    for segs in by_gap.values() {
        for (i, a) in segs.iter().enumerate() {
            for b in &segs[i + 1..] {
                if (x[a.0] - x[b.0]) * (x[a.1] - x[b.1]) < 0.0 {
                    count += 1;
                }
            }
        }
    }
    count
}

/// V15 `minimize_crossings`: layered barycentre heuristic.
///
/// Edges spanning several layers get a dummy node in every intermediate layer (present in the
/// view), so their crossings are counted by their positions in each intermediate layer and they
/// get their own slot there instead of running through other nodes (defect 12). Initial x = index
/// within the layer (node order, dummies after the real nodes). Each iteration sweeps down
/// (layers from the second-highest to the lowest, each reordered by the mean x of its neighbours
/// in the layer above) and up (from the second-lowest upward, by the neighbours below); sorts are
/// stable and x becomes the rank. Crossings are pairs of segments between adjacent layers whose
/// endpoint orders are inverted; if an iteration does not decrease them, the order is **rolled
/// back** to the best one and the loop stops.
///
/// Final placement, layers in ascending order using the positions placed so far: a node alone
/// in its layer moves to the mean x of all its neighbours; a layer with several nodes keeps its
/// order and is centred on the mean of its nodes' neighbour barycentres, at unit spacing.
/// [`Layout::routes`] gives the dummy positions each long edge should pass through.
pub fn minimize_crossings(view: &GraphView, max_iterations: usize) -> Result<Layout> {
    view.validate()?;
    let ex = expand(view);
    let n = ex.layer.len();
    let mut up = vec![Vec::new(); n];
    let mut down = vec![Vec::new(); n];
    for &(lo, hi) in &ex.segments {
        up[lo].push(hi);
        down[hi].push(lo);
    }
    let mut layers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut x = vec![0.0; n];
    for (i, &l) in ex.layer.iter().enumerate() {
        let members = layers.entry(l).or_default();
        x[i] = members.len() as f64;
        members.push(i);
    }
    let keys: Vec<usize> = layers.keys().copied().collect();
    let before = segment_crossings(&ex, &x);
    let (mut best_x, mut best_layers, mut best) = (x.clone(), layers.clone(), before);
    let mut iterations = 0;
    for _ in 0..max_iterations {
        if best == 0 {
            break;
        }
        for &l in keys.iter().rev().skip(1) {
            reorder(layers.get_mut(&l).expect("layer"), &up, &mut x);
        }
        for &l in keys.iter().skip(1) {
            reorder(layers.get_mut(&l).expect("layer"), &down, &mut x);
        }
        let c = segment_crossings(&ex, &x);
        if c < best {
            best = c;
            best_x = x.clone();
            best_layers = layers.clone();
            iterations += 1;
        } else {
            break; // roll back to the best order
        }
    }
    let ranks: BTreeMap<String, usize> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, nd)| (nd.id.clone(), best_x[i] as usize))
        .collect();
    let mut x = best_x;
    let all: Vec<Vec<usize>> = (0..n)
        .map(|i| up[i].iter().chain(&down[i]).copied().collect())
        .collect();
    for order in best_layers.values() {
        if let [only] = order.as_slice() {
            if let Some(m) = mean_of(&all[*only], &x) {
                x[*only] = m;
            }
        } else {
            let centre = order
                .iter()
                .map(|&i| mean_of(&all[i], &x).unwrap_or(x[i]))
                .sum::<f64>()
                / order.len() as f64;
            let half = (order.len() - 1) as f64 / 2.0;
            for (r, &i) in order.iter().enumerate() {
                x[i] = centre + r as f64 - half;
            }
        }
    }
    Ok(Layout {
        x: view
            .nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| (nd.id.clone(), x[i]))
            .collect(),
        ranks,
        routes: ex
            .routes
            .iter()
            .map(|(e, d)| (*e, d.iter().map(|&k| (ex.layer[k], x[k])).collect()))
            .collect(),
        crossings_before: Some(before),
        crossings_after: Some(best),
        iterations,
    })
}

/// V16's fixed GQA layout: a real head at `kv_group·(hpg+2) + pos_in_group`, a virtual (merged)
/// node at `kv_group·(hpg+2) + hpg/2`, MLP nodes at `num_kv·(hpg+2) + 5`, lm_head (and nodes
/// without a head) at `num_kv·(hpg+2)/2`.
pub fn gqa_layout(view: &GraphView, cfg: &GqaConfig) -> Result<Layout> {
    view.validate()?;
    let hpg = cfg.heads_per_group()?;
    let width = (hpg + 2) as f64;
    let nkv = cfg.num_key_value_heads as f64;
    let x = view
        .nodes
        .iter()
        .map(|nd| {
            let x = if nd.is_mlp() {
                nkv * width + 5.0
            } else {
                match (nd.head, &nd.heads) {
                    (Some(g), Some(_)) => g as f64 * width + (hpg / 2) as f64,
                    (Some(h), None) => (h / hpg) as f64 * width + (h % hpg) as f64,
                    (None, _) => (nkv * width / 2.0).floor(),
                }
            };
            (nd.id.clone(), x)
        })
        .collect::<BTreeMap<_, _>>();
    let mut ranks = BTreeMap::new();
    let mut by_layer: BTreeMap<usize, Vec<(f64, &str)>> = BTreeMap::new();
    for nd in &view.nodes {
        by_layer
            .entry(nd.layer)
            .or_default()
            .push((x[&nd.id], nd.id.as_str()));
    }
    for v in by_layer.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (r, (_, id)) in v.iter().enumerate() {
            ranks.insert(id.to_string(), r);
        }
    }
    Ok(Layout {
        x,
        ranks,
        routes: BTreeMap::new(),
        crossings_before: None,
        crossings_after: None,
        iterations: 0,
    })
}
