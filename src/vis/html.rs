//! V16 `visualize_graph`: the graph as ONE self-contained HTML file (inline SVG + inline JS, no
//! network reference of any kind), with nodes by layer (higher layers at the top), colours by
//! type, edge width/colour by score, hover details, zoom/pan and a score-threshold slider.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use super::GqaConfig;
use super::graph::{GraphView, ViewNode, edge_color, edge_width, type_color};
use super::layout::{Layout, gqa_layout, minimize_crossings};

/// Options of [`render_html`].
#[derive(Clone, Debug)]
pub struct HtmlOptions {
    /// Page title.
    pub title: String,
    /// Base node radius (V16 default 6); merged nodes grow by 50% per extra head.
    pub node_size: f64,
    /// Use the crossing-minimising layout (default); otherwise the GQA layout (needs `gqa`).
    pub reduce_crossings: bool,
    /// Iterations of the crossing minimisation.
    pub max_iterations: usize,
    /// Head layout, required for the GQA layout.
    pub gqa: Option<GqaConfig>,
}

impl Default for HtmlOptions {
    fn default() -> Self {
        Self {
            title: "minarc attribution graph".into(),
            node_size: 6.0,
            reduce_crossings: true,
            max_iterations: 20,
            gqa: None,
        }
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            _ => out.push(c),
        }
    }
    out
}

/// Canvas of the layout in SVG user units (V16: 800 × 400, higher layers at the top).
const CANVAS_W: f64 = 800.0;
const CANVAS_H: f64 = 400.0;

/// Maps layout coordinates (x, layer) to the screen: `x' = (x − min_x)·800/max(1, x_range)`,
/// `y' = 400 − (layer − min_layer)·400/max(1, layer_range)` (higher layers at the top). The x range
/// covers the nodes and the routes of long edges.
struct Screen {
    min_x: f64,
    x_scale: f64,
    min_l: f64,
    l_scale: f64,
}

impl Screen {
    fn new(nodes: &[&ViewNode], layout: &Layout) -> Self {
        let xs = nodes
            .iter()
            .map(|n| layout.x.get(&n.id).copied().unwrap_or(0.0))
            .chain(layout.routes.values().flatten().map(|p| p.1));
        let (min_x, max_x) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let min_l = nodes.iter().map(|n| n.layer).min().unwrap_or(0) as f64;
        let max_l = nodes.iter().map(|n| n.layer).max().unwrap_or(0) as f64;
        let min_x = if min_x.is_finite() { min_x } else { 0.0 };
        let range = if max_x.is_finite() {
            max_x - min_x
        } else {
            0.0
        };
        Self {
            min_x,
            x_scale: CANVAS_W / range.max(1.0),
            min_l,
            l_scale: CANVAS_H / (max_l - min_l).max(1.0),
        }
    }

    fn at(&self, x: f64, layer: usize) -> (f64, f64) {
        (
            (x - self.min_x) * self.x_scale,
            CANVAS_H - (layer as f64 - self.min_l) * self.l_scale,
        )
    }
}

/// Smooth SVG path through `pts` (Catmull–Rom as cubic Béziers), leaving the first point and
/// entering the last one vertically.
fn smooth_path(pts: &[(f64, f64)]) -> String {
    let n = pts.len();
    let tangent = |i: usize| -> (f64, f64) {
        if i == 0 {
            (0.0, pts[1].1 - pts[0].1)
        } else if i == n - 1 {
            (0.0, pts[n - 1].1 - pts[n - 2].1)
        } else {
            (
                (pts[i + 1].0 - pts[i - 1].0) / 2.0,
                (pts[i + 1].1 - pts[i - 1].1) / 2.0,
            )
        }
    };
    let mut d = format!("M{:.1},{:.1}", pts[0].0, pts[0].1);
    for i in 0..n.saturating_sub(1) {
        let (t0, t1) = (tangent(i), tangent(i + 1));
        let (p0, p1) = (pts[i], pts[i + 1]);
        d.push_str(&format!(
            " C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
            p0.0 + t0.0 / 3.0,
            p0.1 + t0.1 / 3.0,
            p1.0 - t1.0 / 3.0,
            p1.1 - t1.1 / 3.0,
            p1.0,
            p1.1
        ));
    }
    d
}

fn radius(n: &ViewNode, node_size: f64) -> f64 {
    node_size * (1.0 + 0.5 * (n.n_merged() as f64 - 1.0))
}

/// Renders the view as one self-contained HTML page (see the module docs). Nodes without
/// edges are skipped. The layout is computed here (crossing-minimising or GQA).
pub fn render_html(view: &GraphView, opts: &HtmlOptions) -> Result<String> {
    view.validate()?;
    ensure!(opts.node_size > 0.0, "node_size must be positive");
    let layout = if opts.reduce_crossings {
        minimize_crossings(view, opts.max_iterations)?
    } else {
        let cfg = opts
            .gqa
            .as_ref()
            .context("the GQA layout needs the model's head layout (HtmlOptions::gqa)")?;
        gqa_layout(view, cfg)?
    };
    let nodes = view.connected_nodes();
    let screen = Screen::new(&nodes, &layout);
    let pos: BTreeMap<String, (f64, f64)> = nodes
        .iter()
        .map(|n| {
            (
                n.id.clone(),
                screen.at(layout.x.get(&n.id).copied().unwrap_or(0.0), n.layer),
            )
        })
        .collect();
    let max_abs = view
        .edges
        .iter()
        .map(|e| e.score.abs())
        .fold(0.0f32, f32::max);
    let node_index: BTreeMap<&str, &ViewNode> = nodes.iter().map(|n| (n.id.as_str(), *n)).collect();

    let mut edges_svg = String::new();
    for (i, e) in view.edges.iter().enumerate() {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&e.from), pos.get(&e.to)) else {
            continue;
        };
        let r_to = radius(node_index[e.to.as_str()], opts.node_size);
        // route points of a long edge, ordered from `from` to `to`
        let mut via: Vec<(f64, f64)> = layout.routes.get(&i).map_or(Vec::new(), |r| {
            r.iter().map(|&(l, x)| screen.at(x, l)).collect()
        });
        if y2 > y1 {
            via.reverse();
        }
        let last = via.last().copied().unwrap_or((x1, y1));
        // end just outside the target's circle, approaching vertically
        let dir = if y2 < last.1 {
            1.0
        } else if y2 > last.1 {
            -1.0
        } else {
            0.0
        };
        let (ex, ey) = if dir == 0.0 {
            (x2 - r_to * (x2 - last.0).signum(), y2)
        } else {
            (x2, y2 + dir * (r_to + 1.5))
        };
        let mut pts = vec![(x1, y1)];
        pts.extend(via);
        pts.push((ex, ey));
        let title = format!(
            "{} → {}\nscore: {:.4}",
            node_index[e.from.as_str()].short_label(),
            node_index[e.to.as_str()].short_label(),
            e.score
        );
        writeln!(
            edges_svg,
            r#"<path class="edge" id="e{i}" d="{d}" stroke="{c}" stroke-width="{w:.2}" marker-end="url(#arrow-{m})" data-from="{f}" data-to="{t}" data-score="{s}" data-title="{tt}"/>"#,
            d = smooth_path(&pts),
            c = edge_color(e.score),
            w = edge_width(e.score, max_abs),
            m = if e.score > 0.0 { "pos" } else { "neg" },
            f = escape_html(&e.from),
            t = escape_html(&e.to),
            s = e.score,
            tt = escape_html(&title),
        )?;
    }
    let mut nodes_svg = String::new();
    for n in &nodes {
        let (x, y) = pos[&n.id];
        let r = radius(n, opts.node_size);
        writeln!(
            nodes_svg,
            r#"<g class="node" data-id="{id}" data-title="{tt}"><circle cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="{c}"/><text class="label" x="{lx:.1}" y="{ly:.1}">{lab}</text></g>"#,
            id = escape_html(&n.id),
            tt = escape_html(&n.title()),
            c = type_color(&n.node_type),
            lx = x + r + 2.0,
            ly = y + 3.5,
            lab = escape_html(&n.short_label()),
        )?;
    }
    // layer guides and labels
    let mut layers_svg = String::new();
    let mut layer_y: BTreeMap<usize, f64> = BTreeMap::new();
    for n in &nodes {
        layer_y.insert(n.layer, pos[&n.id].1);
    }
    for (l, y) in &layer_y {
        writeln!(
            layers_svg,
            r#"<line class="guide" x1="-40" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}"/><text class="layer" x="-46" y="{ty:.1}">L{l}</text>"#,
            x2 = CANVAS_W + 40.0,
            ty = y + 3.5
        )?;
    }
    let mut legend = String::new();
    let mut types: Vec<&str> = nodes.iter().map(|n| n.node_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    for t in types {
        write!(
            legend,
            r#"<span class="key"><i style="background:{}"></i>{}</span>"#,
            type_color(t),
            escape_html(t)
        )?;
    }
    let stats = match (layout.crossings_before, layout.crossings_after) {
        (Some(b), Some(a)) => format!("crossings {b} → {a}"),
        _ => "GQA layout".to_string(),
    };
    let page = TEMPLATE
        .replace("{{TITLE}}", &escape_html(&opts.title))
        .replace("{{LEGEND}}", &legend)
        .replace("{{MAX}}", &format!("{max_abs}"))
        .replace(
            "{{STATS}}",
            &format!("{} nodes, {} edges, {stats}", nodes.len(), view.edges.len()),
        )
        .replace("{{LAYERS}}", &layers_svg)
        .replace("{{EDGES}}", &edges_svg)
        .replace("{{NODES}}", &nodes_svg);
    Ok(page)
}

/// Writes [`render_html`] to `path` and returns the path.
pub fn write_html(view: &GraphView, opts: &HtmlOptions, path: &Path) -> Result<std::path::PathBuf> {
    let html = render_html(view, opts)?;
    super::written::write_file(path, html)?;
    Ok(path.to_path_buf())
}

/// The page. Placeholders `{{...}}` are filled by [`render_html`]. Everything is inline.
const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<style>
  html, body { height: 100%; }
  body { margin: 0; font: 13px sans-serif; color: #222; background: #fafafa; display: flex; flex-direction: column; }
  header { padding: 8px 12px; background: #fff; border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: 14px; align-items: center; }
  header h1 { font-size: 15px; margin: 0 8px 0 0; }
  .key { display: inline-flex; align-items: center; margin-right: 8px; }
  .key i { display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin-right: 4px; }
  .key b { display: inline-block; width: 18px; height: 3px; margin-right: 4px; }
  #wrap { position: relative; flex: 1; min-height: 300px; overflow: hidden; }
  svg { display: block; width: 100%; height: 100%; background: #fff; cursor: grab; user-select: none; }
  svg.panning { cursor: grabbing; }
  .edge { fill: none; opacity: 0.8; }
  .edge:hover { opacity: 1; }
  .node circle { stroke: #fff; stroke-width: 1.5; cursor: pointer; }
  .node:hover circle { stroke: #222; }
  .label { font-size: 10px; fill: #333; pointer-events: none; }
  .nolabels .label { display: none; }
  .guide { stroke: #eee; stroke-width: 1; }
  .layer { font-size: 10px; fill: #999; text-anchor: end; }
  .faded { opacity: 0.12 !important; }
  .hidden { display: none; }
  #tip { position: absolute; pointer-events: none; background: rgba(30,30,30,0.92); color: #fff; padding: 5px 8px; border-radius: 4px; white-space: pre; font: 12px monospace; display: none; }
  #stats { color: #666; }
</style>
</head>
<body>
<header>
  <h1>{{TITLE}}</h1>
  <span>{{LEGEND}}</span>
  <span class="key"><b style="background:#27ae60"></b>positive</span>
  <span class="key"><b style="background:#c0392b"></b>negative</span>
  <label>|score| &ge; <input id="thr" type="range" min="0" max="{{MAX}}" step="any" value="0"> <span id="thrv">0</span></label>
  <label><input id="labels" type="checkbox" checked> labels</label>
  <button id="reset">reset view</button>
  <span id="stats">{{STATS}}</span>
</header>
<div id="wrap">
<svg id="svg" viewBox="-80 -40 960 480" preserveAspectRatio="xMidYMid meet">
  <defs>
    <marker id="arrow-pos" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#27ae60"/></marker>
    <marker id="arrow-neg" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker>
  </defs>
  <g id="viewport">
    <g id="layers">
{{LAYERS}}    </g>
    <g id="edges">
{{EDGES}}    </g>
    <g id="nodes">
{{NODES}}    </g>
  </g>
</svg>
<div id="tip"></div>
</div>
<script>
(function () {
  var svg = document.getElementById('svg');
  var vp = document.getElementById('viewport');
  var tip = document.getElementById('tip');
  var wrap = document.getElementById('wrap');
  var edges = Array.prototype.slice.call(document.querySelectorAll('.edge'));
  var nodes = Array.prototype.slice.call(document.querySelectorAll('.node'));
  var t = { k: 1, x: 0, y: 0 };
  function apply() { vp.setAttribute('transform', 'translate(' + t.x + ',' + t.y + ') scale(' + t.k + ')'); }
  function toUser(ev) {
    var m = svg.getScreenCTM().inverse();
    return { x: m.a * ev.clientX + m.c * ev.clientY + m.e, y: m.b * ev.clientX + m.d * ev.clientY + m.f };
  }
  svg.addEventListener('wheel', function (ev) {
    ev.preventDefault();
    var p = toUser(ev);
    var f = Math.exp(-ev.deltaY * 0.0015);
    var k = Math.min(40, Math.max(0.2, t.k * f));
    f = k / t.k;
    t.x = p.x - (p.x - t.x) * f; t.y = p.y - (p.y - t.y) * f; t.k = k;
    apply();
  }, { passive: false });
  var drag = null;
  svg.addEventListener('mousedown', function (ev) { drag = { p: toUser(ev), x: t.x, y: t.y }; svg.classList.add('panning'); });
  window.addEventListener('mousemove', function (ev) {
    if (!drag) return;
    var p = toUser(ev);
    t.x = drag.x + (p.x - drag.p.x); t.y = drag.y + (p.y - drag.p.y);
    drag.p = p; drag.x = t.x; drag.y = t.y;
    apply();
  });
  window.addEventListener('mouseup', function () { drag = null; svg.classList.remove('panning'); });
  document.getElementById('reset').addEventListener('click', function () { t = { k: 1, x: 0, y: 0 }; apply(); });
  document.getElementById('labels').addEventListener('change', function (ev) { svg.classList.toggle('nolabels', !ev.target.checked); });

  function showTip(ev, text) {
    tip.textContent = text;
    tip.style.display = 'block';
    var r = wrap.getBoundingClientRect();
    tip.style.left = (ev.clientX - r.left + 14) + 'px';
    tip.style.top = (ev.clientY - r.top + 10) + 'px';
  }
  function hideTip() { tip.style.display = 'none'; }
  function highlight(id) {
    var near = {}; near[id] = true;
    edges.forEach(function (e) {
      var on = e.dataset.from === id || e.dataset.to === id;
      if (on) { near[e.dataset.from] = true; near[e.dataset.to] = true; }
      e.classList.toggle('faded', !on);
    });
    nodes.forEach(function (n) { n.classList.toggle('faded', !near[n.dataset.id]); });
  }
  function unhighlight() {
    edges.forEach(function (e) { e.classList.remove('faded'); });
    filter();
  }
  nodes.forEach(function (n) {
    n.addEventListener('mousemove', function (ev) { showTip(ev, n.dataset.title); });
    n.addEventListener('mouseenter', function () { highlight(n.dataset.id); });
    n.addEventListener('mouseleave', function () { hideTip(); unhighlight(); });
  });
  edges.forEach(function (e) {
    e.addEventListener('mousemove', function (ev) { showTip(ev, e.dataset.title); });
    e.addEventListener('mouseleave', hideTip);
  });

  var thr = document.getElementById('thr');
  var thrv = document.getElementById('thrv');
  function filter() {
    var v = parseFloat(thr.value) || 0;
    thrv.textContent = v.toFixed(4);
    var live = {};
    edges.forEach(function (e) {
      var keep = Math.abs(parseFloat(e.dataset.score)) >= v;
      e.classList.toggle('hidden', !keep);
      if (keep) { live[e.dataset.from] = true; live[e.dataset.to] = true; }
    });
    nodes.forEach(function (n) { n.classList.toggle('faded', !live[n.dataset.id]); });
  }
  thr.addEventListener('input', filter);
  filter();
})();
</script>
</body>
</html>
"##;
