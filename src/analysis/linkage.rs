//! SciPy's hierarchical-clustering conventions on top of `kodama` (a fastcluster port, the
//! same algorithms SciPy uses: minimum spanning tree for single, nearest-neighbour chain for the
//! others).
//!
//! * [`linkage`] returns SciPy's linkage matrix: rows sorted (stably) by merge height, each row
//!   lists the smaller cluster id first, leaves are `0..n`, and row `r` creates cluster `n + r`.
//! * [`fcluster_distance`] reproduces `scipy.cluster.hierarchy.fcluster(Z, t,
//!   criterion='distance')` including its cluster numbering (a depth-first walk from the root).
//! * [`dendrogram_leaf_order`] is SciPy's dendrogram leaf order.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail, ensure};

/// Linkage method (SciPy names). Average (UPGMA) is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterMethod {
    /// UPGMA: mean pairwise distance.
    #[default]
    Average,
    /// Nearest pair.
    Single,
    /// Farthest pair.
    Complete,
    /// Ward's minimum variance (Lance–Williams on the given distances, as SciPy).
    Ward,
    /// WPGMA.
    Weighted,
}

impl ClusterMethod {
    fn kodama(self) -> kodama::Method {
        match self {
            ClusterMethod::Average => kodama::Method::Average,
            ClusterMethod::Single => kodama::Method::Single,
            ClusterMethod::Complete => kodama::Method::Complete,
            ClusterMethod::Ward => kodama::Method::Ward,
            ClusterMethod::Weighted => kodama::Method::Weighted,
        }
    }

    /// SciPy's name for the method.
    pub fn name(self) -> &'static str {
        match self {
            ClusterMethod::Average => "average",
            ClusterMethod::Single => "single",
            ClusterMethod::Complete => "complete",
            ClusterMethod::Ward => "ward",
            ClusterMethod::Weighted => "weighted",
        }
    }
}

impl fmt::Display for ClusterMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ClusterMethod {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "average" | "upgma" => ClusterMethod::Average,
            "single" => ClusterMethod::Single,
            "complete" => ClusterMethod::Complete,
            "ward" => ClusterMethod::Ward,
            "weighted" | "wpgma" => ClusterMethod::Weighted,
            other => bail!(
                "unknown linkage method '{other}' (expected average, single, complete, ward or weighted)"
            ),
        })
    }
}

/// One row of a SciPy linkage matrix: clusters `a < b` merged at `height` into a cluster of `size` leaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkageRow {
    /// Smaller cluster id.
    pub a: usize,
    /// Larger cluster id.
    pub b: usize,
    /// Merge distance.
    pub height: f64,
    /// Number of leaves under the new cluster.
    pub size: usize,
}

/// SciPy linkage matrix for `n` observations from a condensed distance vector (`i < j`, row-major).
///
/// The condensed values must be finite and non-negative. `n = 1` gives an empty linkage.
pub fn linkage(condensed: &[f64], n: usize, method: ClusterMethod) -> Result<Vec<LinkageRow>> {
    ensure!(n > 0, "cannot cluster zero observations");
    ensure!(
        condensed.len() == n * (n - 1) / 2,
        "condensed distance vector has {} values, expected n(n-1)/2 = {} for n = {n}",
        condensed.len(),
        n * (n - 1) / 2
    );
    if let Some(bad) = condensed.iter().find(|v| !v.is_finite() || **v < 0.0) {
        bail!("distance {bad} is not a finite non-negative number");
    }
    if n == 1 {
        return Ok(Vec::new());
    }
    let mut work = condensed.to_vec();
    let dendrogram = kodama::linkage(&mut work, n, method.kodama());
    to_scipy(dendrogram.steps(), n)
}

/// Converts kodama's steps to SciPy's linkage matrix conventions.
///
/// kodama already labels clusters as SciPy does (union-find relabelling after a stable sort by
/// dissimilarity), but this function does not rely on it: it re-sorts stably by height, relabels
/// every merge from its leaf sets, and orders each pair smaller id first.
fn to_scipy(steps: &[kodama::Step<f64>], n: usize) -> Result<Vec<LinkageRow>> {
    ensure!(
        steps.len() == n - 1,
        "linkage produced {} merges for {n} observations",
        steps.len()
    );
    // Leaf sets of each kodama label, so relabelling does not depend on kodama's numbering.
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    for s in steps {
        ensure!(
            s.cluster1 < members.len() && s.cluster2 < members.len(),
            "linkage refers to an unknown cluster"
        );
        let mut m = members[s.cluster1].clone();
        m.extend_from_slice(&members[s.cluster2]);
        members.push(m);
    }
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by(|&x, &y| steps[x].dissimilarity.total_cmp(&steps[y].dissimilarity));
    // Map "smallest leaf of a cluster" → its current SciPy id, via union-find over leaves.
    let mut parent: Vec<usize> = (0..n).collect();
    let mut id_of_root: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut rows = Vec::with_capacity(n - 1);
    for (r, &k) in order.iter().enumerate() {
        let s = &steps[k];
        let la = members[s.cluster1][0];
        let lb = members[s.cluster2][0];
        let (ra, rb) = (find(&mut parent, la), find(&mut parent, lb));
        ensure!(ra != rb, "linkage merges a cluster with itself");
        let (ia, ib) = (id_of_root[ra], id_of_root[rb]);
        parent[rb] = ra;
        id_of_root[ra] = n + r;
        rows.push(LinkageRow {
            a: ia.min(ib),
            b: ia.max(ib),
            height: s.dissimilarity,
            size: s.size,
        });
    }
    Ok(rows)
}

/// The leaves under each cluster id (`0..2n-1`) of a linkage matrix, left child first.
fn leaves_under(z: &[LinkageRow], n: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    for row in z {
        let mut m = out[row.a].clone();
        m.extend_from_slice(&out[row.b]);
        out.push(m);
    }
    out
}

fn check_linkage(z: &[LinkageRow], n: usize) -> Result<()> {
    ensure!(n > 0, "linkage for zero observations");
    ensure!(
        z.len() + 1 == n,
        "linkage has {} rows, expected {} for {n} observations",
        z.len(),
        n - 1
    );
    for (r, row) in z.iter().enumerate() {
        ensure!(
            row.a < n + r && row.b < n + r && row.a != row.b,
            "linkage row {r} refers to clusters {} and {} that do not exist yet",
            row.a,
            row.b
        );
        ensure!(
            row.height.is_finite(),
            "linkage row {r} has a non-finite height"
        );
    }
    Ok(())
}

/// `scipy.cluster.hierarchy.fcluster(Z, threshold, criterion='distance')`: flat cluster ids
/// (1-based) per observation.
///
/// A cluster is the largest subtree whose maximum merge height is ≤ `threshold`. Numbering follows
/// SciPy's `cluster_monocrit`: a depth-first walk from the root visits the left non-leaf child,
/// then the right non-leaf child; a new id is allocated on entering the first node whose subtree
/// height is ≤ threshold; after a node's non-leaf children are done, its leaf children that are not
/// inside such a subtree get fresh singleton ids (left leaf before right leaf). Ids therefore need
/// not follow the dendrogram's left-to-right leaf order.
pub fn fcluster_distance(z: &[LinkageRow], n: usize, threshold: f64) -> Result<Vec<usize>> {
    check_linkage(z, n)?;
    ensure!(!threshold.is_nan(), "threshold is NaN");
    if n == 1 {
        return Ok(vec![1]);
    }
    // Maximum merge height within each non-leaf subtree (SciPy's get_max_dist_for_each_cluster).
    let mut max_dist = vec![0.0f64; n - 1];
    for (r, row) in z.iter().enumerate() {
        let mut m = row.height;
        for c in [row.a, row.b] {
            if c >= n {
                m = m.max(max_dist[c - n]);
            }
        }
        max_dist[r] = m;
    }
    let mut ids = vec![0usize; n];
    let mut visited = vec![false; 2 * n - 1];
    let mut stack = vec![2 * n - 2];
    let mut n_cluster = 0usize;
    let mut leader: Option<usize> = None;
    while let Some(&node) = stack.last() {
        let root = node - n;
        let (lc, rc) = (z[root].a, z[root].b);
        if leader.is_none() && max_dist[root] <= threshold {
            leader = Some(root);
            n_cluster += 1;
        }
        if lc >= n && !visited[lc] {
            visited[lc] = true;
            stack.push(lc);
            continue;
        }
        if rc >= n && !visited[rc] {
            visited[rc] = true;
            stack.push(rc);
            continue;
        }
        for c in [lc, rc] {
            if c < n {
                if leader.is_none() {
                    n_cluster += 1;
                }
                ids[c] = n_cluster;
            }
        }
        if leader == Some(root) {
            leader = None;
        }
        stack.pop();
    }
    Ok(ids)
}

/// Left-to-right leaf order of SciPy's `dendrogram(Z)` (no count/distance sorting): each merge
/// draws `Z[r, 0]` (the smaller id) on the left.
pub fn dendrogram_leaf_order(z: &[LinkageRow], n: usize) -> Result<Vec<usize>> {
    check_linkage(z, n)?;
    if n == 1 {
        return Ok(vec![0]);
    }
    Ok(leaves_under(z, n).pop().unwrap_or_default())
}
