//! Static figures with plotters. The output format follows the file extension: `.png` or `.svg`.
//!
//! * [`plot_clustering`]: V11 dendrogram (cut line, GQA-tinted leaf labels, optional strength bars)
//!   next to the distance heatmap reordered by the dendrogram, in one figure.
//! * [`plot_group_patterns`]: V13 average attention pattern per cluster.
//! * [`plot_logit_lens`]: V5 grouped bars (resid / attn / mlp per layer).
//! * [`plot_attention`]: one head's attention over chosen query rows, with token labels.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::GqaConfig;
use super::colors::{ColorMap, Rgb, TAB10, qualitative};
use crate::analysis::{Clustering, HeadKey, LinkageRow, head_label};

const FONT: &str = "sans-serif";

fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Points to pixels at `dpi`.
fn pt(points: f64, dpi: f64) -> f64 {
    points * dpi / 72.0
}

/// A figure that can be drawn on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `fig` as PNG or SVG, chosen by the extension of `path`.
fn save_figure(path: &Path, size: (u32, u32), fig: &impl Figure) -> Result<()> {
    ensure!(
        size.0 >= 16 && size.1 >= 16 && size.0 <= 30_000 && size.1 <= 30_000,
        "figure size {size:?} is out of range"
    );
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match ext.as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            root.fill(&WHITE)?;
            fig.draw(&root)?;
            root.present()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            root.fill(&WHITE)?;
            fig.draw(&root)?;
            root.present()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        _ => bail!(
            "unsupported plot format for {} (use .png or .svg)",
            path.display()
        ),
    }
    Ok(())
}

/// Text style with an anchor and an optional 90° rotation (reading bottom to top).
fn text_style(
    size: f64,
    color: RGBColor,
    anchor: (HPos, VPos),
    vertical: bool,
) -> TextStyle<'static> {
    let font = (FONT, size).into_font();
    let font = if vertical {
        font.transform(FontTransform::Rotate270)
    } else {
        font
    };
    font.color(&color).pos(Pos::new(anchor.0, anchor.1))
}

/// Draws text at absolute backend coordinates on `area`.
fn text_abs<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &str,
    at: (i32, i32),
    style: &TextStyle,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (xr, yr) = area.get_pixel_range();
    area.draw(&Text::new(
        s.to_string(),
        (at.0 - xr.start, at.1 - yr.start),
        style.clone(),
    ))?;
    Ok(())
}

/// Rough text width in pixels (DejaVu Sans averages ~0.6 em per glyph).
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.6
}

/// Formats a tick value compactly: at most 3 decimals, trailing zeros dropped.
fn tick(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// What [`draw_heatmap`] draws.
struct Heatmap<'a> {
    values: &'a [Vec<f64>],
    cmap: ColorMap,
    vmin: f64,
    vmax: f64,
    row_labels: Vec<(String, RGBColor)>,
    col_labels: Vec<(String, RGBColor)>,
    /// Tick label font size (px).
    font: f64,
    title: Option<String>,
    x_desc: Option<String>,
    y_desc: Option<String>,
    colorbar: bool,
}

/// Draws a heatmap (row 0 at the top) with tick labels, optional axis titles and a colour bar.
/// Labels are thinned when cells are smaller than the font.
fn draw_heatmap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, h: &Heatmap) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (w, ht) = area.dim_in_pixel();
    let (w, ht) = (w as f64, ht as f64);
    let rows = h.values.len();
    let cols = h.values.first().map_or(0, Vec::len);
    ensure!(rows > 0 && cols > 0, "heatmap has no cells");
    ensure!(
        h.values.iter().all(|r| r.len() == cols),
        "heatmap rows have different lengths"
    );
    let f = h.font;
    let desc_font = f * 1.15;
    let title_h = if h.title.is_some() { f * 2.0 } else { f * 0.6 };
    let row_w = h
        .row_labels
        .iter()
        .map(|(s, _)| text_width(s, f))
        .fold(0.0, f64::max)
        + 6.0;
    let y_desc_w = if h.y_desc.is_some() {
        desc_font * 1.6
    } else {
        0.0
    };
    let cbar_w = if h.colorbar {
        18.0 + 10.0 + text_width("0.000", f) + 8.0
    } else {
        8.0
    };
    let cell_w = ((w - row_w - y_desc_w - cbar_w - 6.0) / cols as f64).max(0.5);
    // Column labels: horizontal if they fit between neighbouring non-empty labels, else vertical.
    let max_col = h
        .col_labels
        .iter()
        .map(|(s, _)| text_width(s, f))
        .fold(0.0, f64::max);
    let shown: Vec<usize> = h
        .col_labels
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| !s.is_empty())
        .map(|(i, _)| i)
        .collect();
    let min_gap = shown
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .unwrap_or(cols.max(1));
    let col_vertical = max_col + 4.0 > cell_w * min_gap as f64;
    let col_h = if h.col_labels.is_empty() {
        4.0
    } else if col_vertical {
        max_col + 8.0
    } else {
        f + 8.0
    };
    let x_desc_h = if h.x_desc.is_some() {
        desc_font * 1.7
    } else {
        0.0
    };
    let cell_h = ((ht - title_h - col_h - x_desc_h - 4.0) / rows as f64).max(0.5);
    let x0 = y_desc_w + row_w;
    let y0 = title_h;
    let (gx, gy) = (
        |c: usize| (x0 + c as f64 * cell_w).round() as i32,
        |r: usize| (y0 + r as f64 * cell_h).round() as i32,
    );
    for (r, row) in h.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let color = rgb(h.cmap.scaled(v, h.vmin, h.vmax));
            area.draw(&Rectangle::new(
                [(gx(c), gy(r)), (gx(c + 1), gy(r + 1))],
                color.filled(),
            ))?;
        }
    }
    area.draw(&Rectangle::new(
        [(gx(0), gy(0)), (gx(cols), gy(rows))],
        BLACK.stroke_width(1),
    ))?;
    // tick labels, thinned to one per font height
    let row_step = ((f * 1.05) / cell_h).ceil().max(1.0) as usize;
    for (r, (s, color)) in h.row_labels.iter().enumerate().take(rows) {
        if r % row_step == 0 {
            let y = ((gy(r) + gy(r + 1)) as f64 / 2.0) as i32;
            area.draw(&Text::new(
                s.clone(),
                (gx(0) - 4, y),
                text_style(f, *color, (HPos::Right, VPos::Center), false),
            ))?;
        }
    }
    let col_step = if col_vertical {
        ((f * 1.05) / cell_w).ceil().max(1.0) as usize
    } else {
        1
    };
    for (c, (s, color)) in h.col_labels.iter().enumerate().take(cols) {
        if c % col_step == 0 {
            let x = ((gx(c) + gx(c + 1)) as f64 / 2.0) as i32;
            let style = if col_vertical {
                text_style(f, *color, (HPos::Right, VPos::Center), true)
            } else {
                text_style(f, *color, (HPos::Center, VPos::Top), false)
            };
            area.draw(&Text::new(s.clone(), (x, gy(rows) + 4), style))?;
        }
    }
    if let Some(t) = &h.title {
        area.draw(&Text::new(
            t.clone(),
            (((gx(0) + gx(cols)) / 2), (f * 0.4) as i32),
            text_style(f * 1.2, BLACK, (HPos::Center, VPos::Top), false),
        ))?;
    }
    if let Some(d) = &h.x_desc {
        let y = (gy(rows) as f64 + col_h + 2.0) as i32;
        area.draw(&Text::new(
            d.clone(),
            ((gx(0) + gx(cols)) / 2, y),
            text_style(desc_font, BLACK, (HPos::Center, VPos::Top), false),
        ))?;
    }
    if let Some(d) = &h.y_desc {
        area.draw(&Text::new(
            d.clone(),
            (2, (gy(0) + gy(rows)) / 2),
            text_style(desc_font, BLACK, (HPos::Center, VPos::Top), true),
        ))?;
    }
    if h.colorbar {
        let bx = gx(cols) + 14;
        draw_colorbar(
            area,
            (bx, gy(0)),
            (bx + 16, gy(rows)),
            h.cmap,
            h.vmin,
            h.vmax,
            f,
        )?;
    }
    Ok(())
}

/// A vertical colour bar from `top_left` to `bottom_right` with 5 ticks.
fn draw_colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    top_left: (i32, i32),
    bottom_right: (i32, i32),
    cmap: ColorMap,
    vmin: f64,
    vmax: f64,
    font: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (x0, y0) = top_left;
    let (x1, y1) = bottom_right;
    let steps = (y1 - y0).max(1);
    for k in 0..steps {
        let t = 1.0 - (k as f64 + 0.5) / steps as f64;
        area.draw(&Rectangle::new(
            [(x0, y0 + k), (x1, y0 + k + 1)],
            rgb(cmap.at(t)).filled(),
        ))?;
    }
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1)))?;
    for k in 0..5 {
        let t = k as f64 / 4.0;
        let y = y1 - ((y1 - y0) as f64 * t).round() as i32;
        area.draw(&PathElement::new(vec![(x1, y), (x1 + 4, y)], BLACK))?;
        let v = vmin + (vmax - vmin) * t;
        area.draw(&Text::new(
            tick(v),
            (x1 + 6, y),
            text_style(font, BLACK, (HPos::Left, VPos::Center), false),
        ))?;
    }
    Ok(())
}

/// GQA colour of each head (V11): heads sharing a `(layer, kv_group)` with at least one other
/// listed head get a qualitative colour (groups coloured in order of first appearance);
/// singletons and MLP pseudo-heads (`head ≥ H`) get `None`.
pub fn gqa_colors(keys: &[HeadKey], cfg: &GqaConfig) -> Result<Vec<Option<Rgb>>> {
    let hpg = cfg.heads_per_group()?;
    let group = |k: &HeadKey| (k.1 < cfg.num_attention_heads).then_some((k.0, k.1 / hpg));
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut count: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for g in keys.iter().filter_map(group) {
        *count.entry(g).or_default() += 1;
        if !order.contains(&g) {
            order.push(g);
        }
    }
    order.retain(|g| count[g] >= 2);
    let palette = qualitative(order.len());
    Ok(keys
        .iter()
        .map(|k| {
            group(k)
                .and_then(|g| order.iter().position(|o| *o == g))
                .map(|i| palette[i])
        })
        .collect())
}

/// Options of [`plot_clustering`] (V11's plotting arguments).
#[derive(Clone, Debug)]
pub struct DendrogramOptions {
    /// Figure size in inches (default 12 × 3).
    pub figsize: (f64, f64),
    /// Dots per inch (default 150).
    pub dpi: f64,
    /// Width ratio of dendrogram : heatmap (default 2 : 1).
    pub width_ratios: (f64, f64),
    /// Height of the tallest strength bar as a fraction of the threshold (default 0.9).
    pub bar_height: f64,
    /// Leaf label font size in points (default 9).
    pub leaf_font_size: f64,
    /// Leaf label rotation: `Some(0)` horizontal, `Some(90)` vertical, `None` vertical only if
    /// horizontal labels would overlap.
    pub leaf_rotation: Option<u32>,
    /// Optional strength per head (same order as the clustering's keys), drawn as bars.
    pub strengths: Option<Vec<f64>>,
    /// Model head layout for GQA colouring of leaf labels.
    pub gqa: Option<GqaConfig>,
}

impl Default for DendrogramOptions {
    fn default() -> Self {
        Self {
            figsize: (12.0, 3.0),
            dpi: 150.0,
            width_ratios: (2.0, 1.0),
            bar_height: 0.9,
            leaf_font_size: 9.0,
            leaf_rotation: None,
            strengths: None,
            gqa: None,
        }
    }
}

struct ClusterFigure<'a> {
    c: &'a Clustering,
    opts: &'a DendrogramOptions,
    leaf_colors: Vec<Option<Rgb>>,
}

/// Cluster id of every linkage row whose subtree lies inside one flat cluster.
fn row_cluster(z: &[LinkageRow], n: usize, ids: &[usize], threshold: f64) -> Vec<Option<usize>> {
    let mut first_leaf: Vec<usize> = (0..n).collect();
    let mut max_h: Vec<f64> = vec![0.0; n];
    let mut out = Vec::with_capacity(z.len());
    for row in z {
        let h = row.height.max(max_h[row.a]).max(max_h[row.b]);
        let leaf = first_leaf[row.a];
        first_leaf.push(leaf);
        max_h.push(h);
        out.push((h <= threshold).then_some(ids[leaf]));
    }
    out
}

impl Figure for ClusterFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let c = self.c;
        let o = self.opts;
        let n = c.dist.n();
        let (w, _) = root.dim_in_pixel();
        let split =
            (w as f64 * o.width_ratios.0 / (o.width_ratios.0 + o.width_ratios.1)).round() as i32;
        let (left, right) = root.split_horizontally(split);
        let leaf_px = pt(o.leaf_font_size, o.dpi);
        let tick_px = pt(8.0, o.dpi);
        let labels: Vec<String> = c
            .leaf_order
            .iter()
            .map(|&i| head_label(c.dist.keys[i]))
            .collect();
        let label_color = |i: usize| self.leaf_colors[i].map(rgb).unwrap_or(BLACK);

        // ---- dendrogram ----
        let max_h = c.linkage.iter().map(|r| r.height).fold(0.0, f64::max);
        let ymax = max_h.max(c.threshold).max(1e-6) * 1.08;
        let (lw, _) = left.dim_in_pixel();
        let has_bars = o.strengths.is_some();
        let plot_w = lw as f64 - 90.0 - if has_bars { 80.0 } else { 20.0 };
        let widest = labels
            .iter()
            .map(|s| text_width(s, leaf_px))
            .fold(0.0, f64::max);
        let vertical = match o.leaf_rotation {
            Some(r) => r % 180 == 90,
            None => widest + 4.0 > plot_w / n as f64,
        };
        let label_area = if vertical {
            widest + 12.0
        } else {
            leaf_px + 12.0
        };
        let bar_scale = (c.threshold * o.bar_height).max(1e-12);
        let max_s = o
            .strengths
            .as_ref()
            .map_or(0.0, |s| s.iter().map(|v| v.abs()).fold(0.0, f64::max));
        let sec_max = if max_s > 0.0 {
            max_s * ymax / bar_scale
        } else {
            1.0
        };
        let mut chart = ChartBuilder::on(&left)
            .margin(8)
            .margin_right(if has_bars { 4 } else { 16 })
            .x_label_area_size(label_area as u32)
            .y_label_area_size(80)
            .right_y_label_area_size(if has_bars { 80 } else { 0 })
            .build_cartesian_2d(0f64..(10 * n) as f64, 0f64..ymax)?
            .set_secondary_coord(0f64..(10 * n) as f64, 0f64..sec_max);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_desc(c.dist.kind.axis_label())
            .y_label_formatter(&|v| tick(*v))
            .y_label_style((FONT, tick_px))
            .axis_desc_style((FONT, tick_px * 1.1))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        if let Some(strengths) = &o.strengths {
            ensure!(
                strengths.len() == n,
                "{} strengths for {n} heads",
                strengths.len()
            );
            chart
                .configure_secondary_axes()
                .y_desc("Strength")
                .y_labels(6)
                .y_label_formatter(&|v| tick(*v))
                .label_style((FONT, tick_px))
                .axis_desc_style((FONT, tick_px * 1.1))
                .draw()?;
            let bars = c.leaf_order.iter().enumerate().map(|(p, &i)| {
                let x = 5.0 + 10.0 * p as f64;
                let color = self.leaf_colors[i]
                    .map(rgb)
                    .unwrap_or(RGBColor(0x88, 0x88, 0x88));
                Rectangle::new(
                    [(x - 4.0, 0.0), (x + 4.0, strengths[i].abs())],
                    color.mix(0.3).filled(),
                )
            });
            chart.draw_secondary_series(bars)?;
        }
        // links: x of each cluster id
        let mut xs: Vec<f64> = vec![0.0; n];
        for (p, &i) in c.leaf_order.iter().enumerate() {
            xs[i] = 5.0 + 10.0 * p as f64;
        }
        let mut ys: Vec<f64> = vec![0.0; n];
        let cluster_of_row = row_cluster(&c.linkage, n, &c.ids, c.threshold);
        let link_palette: Vec<RGBColor> = TAB10
            .iter()
            .skip(1)
            .filter(|c| **c != TAB10[7])
            .map(|c| rgb(*c))
            .collect();
        let mut link_color: BTreeMap<usize, RGBColor> = BTreeMap::new();
        for (r, row) in c.linkage.iter().enumerate() {
            let (xa, xb) = (xs[row.a], xs[row.b]);
            let color = match cluster_of_row[r] {
                Some(cid) => {
                    let k = link_color.len();
                    *link_color
                        .entry(cid)
                        .or_insert(link_palette[k % link_palette.len()])
                }
                None => RGBColor(0x44, 0x44, 0x44),
            };
            let pts = vec![
                (xa, ys[row.a]),
                (xa, row.height),
                (xb, row.height),
                (xb, ys[row.b]),
            ];
            chart.draw_series(std::iter::once(PathElement::new(
                pts,
                color.stroke_width(2),
            )))?;
            xs.push((xa + xb) / 2.0);
            ys.push(row.height);
        }
        let cut_label = format!("Cut @ {}", tick(c.threshold));
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, c.threshold), ((10 * n) as f64, c.threshold)],
                8,
                5,
                RED.stroke_width(2),
            ))?
            .label(cut_label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, tick_px))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
        for (p, &i) in c.leaf_order.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(5.0 + 10.0 * p as f64, 0.0));
            let style = if vertical {
                text_style(leaf_px, label_color(i), (HPos::Right, VPos::Center), true)
            } else {
                text_style(leaf_px, label_color(i), (HPos::Center, VPos::Top), false)
            };
            text_abs(&left, &labels[p], (px, py + 6), &style)?;
        }

        // ---- reordered distance heatmap ----
        let positive: Vec<f64> = c.dist.values.iter().copied().filter(|v| *v > 0.0).collect();
        // vmax = min(cap, 95th percentile of positive distances); all-zero distances keep the cap.
        let vmax = if positive.is_empty() {
            c.dist.kind.heatmap_cap()
        } else {
            percentile(&positive, 95.0).min(c.dist.kind.heatmap_cap())
        };
        let values: Vec<Vec<f64>> = c
            .leaf_order
            .iter()
            .map(|&i| c.leaf_order.iter().map(|&j| c.dist.get(i, j)).collect())
            .collect();
        let lab: Vec<(String, RGBColor)> = c
            .leaf_order
            .iter()
            .zip(&labels)
            .map(|(&i, s)| (s.clone(), label_color(i)))
            .collect();
        let right = right.margin(8, 4, 8, 8);
        draw_heatmap(
            &right,
            &Heatmap {
                values: &values,
                cmap: ColorMap::RdYlBu,
                vmin: 0.0,
                vmax,
                row_labels: lab.clone(),
                col_labels: lab,
                font: pt(7.0, o.dpi),
                title: None,
                x_desc: None,
                y_desc: None,
                colorbar: true,
            },
        )?;
        Ok(())
    }
}

/// Linear-interpolated percentile (numpy's default) of a non-empty slice.
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = (q / 100.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

fn figure_px(figsize: (f64, f64), dpi: f64) -> Result<(u32, u32)> {
    ensure!(
        figsize.0 > 0.0 && figsize.1 > 0.0 && dpi > 0.0,
        "figure size and dpi must be positive"
    );
    Ok((
        (figsize.0 * dpi).round() as u32,
        (figsize.1 * dpi).round() as u32,
    ))
}

/// V11 figure: dendrogram with the dashed red "Cut @ t" line and "l-h" leaf labels (GQA-tinted),
/// optional strength bars on a right "Strength" axis, and the distance heatmap reordered by the
/// dendrogram (RdYlBu, vmin 0, vmax = min(1 JS | 2 cosine, 95th percentile of positive
/// distances)) with a colour bar. Size `figsize · dpi` pixels.
pub fn plot_clustering(c: &Clustering, path: &Path, opts: &DendrogramOptions) -> Result<()> {
    ensure!(opts.bar_height > 0.0, "bar_height must be positive");
    let leaf_colors = match &opts.gqa {
        Some(cfg) => gqa_colors(&c.dist.keys, cfg)?,
        None => vec![None; c.dist.n()],
    };
    save_figure(
        path,
        figure_px(opts.figsize, opts.dpi)?,
        &ClusterFigure {
            c,
            opts,
            leaf_colors,
        },
    )
}

/// Mean over all axes but the last two: `[..., i, j]` → `[i][j]` (f64 rows).
fn mean_pattern(aw: &Tensor) -> Result<Vec<Vec<f64>>> {
    let dims = aw.dims();
    ensure!(
        dims.len() >= 2,
        "attention weights need at least 2 dimensions, got {dims:?}"
    );
    let (i, j) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let m = aw.to_dtype(DType::F32)?.reshape(((), i, j))?.mean(0)?; // [i, j]
    Ok(m.to_vec2::<f32>()?
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect())
}

struct GroupFigure {
    /// (title, pattern [i][cols], first column's absolute position)
    panels: Vec<(String, Vec<Vec<f64>>, usize)>,
    dpi: f64,
}

impl Figure for GroupFigure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let f = pt(8.0, self.dpi);
        let (w, _) = root.dim_in_pixel();
        root.draw(&Text::new(
            "Average Attention Pattern per Group",
            (w as i32 / 2, (f * 0.5) as i32),
            text_style(f * 1.4, BLACK, (HPos::Center, VPos::Top), false),
        ))?;
        let body = root.margin((f * 2.6) as i32, 4, 4, 4);
        let areas = body.split_evenly((1, self.panels.len()));
        for (area, (title, pattern, first)) in areas.iter().zip(&self.panels) {
            let vmax = pattern.iter().flatten().copied().fold(0.0, f64::max);
            let cols = pattern[0].len();
            let step = (cols / 6).max(1);
            let col_labels = (0..cols)
                .map(|c| {
                    (
                        if c % step == 0 {
                            (first + c).to_string()
                        } else {
                            String::new()
                        },
                        BLACK,
                    )
                })
                .collect();
            let row_labels = (0..pattern.len()).map(|r| (r.to_string(), BLACK)).collect();
            draw_heatmap(
                &area.margin(4, 4, 4, 8),
                &Heatmap {
                    values: pattern,
                    cmap: ColorMap::Blues,
                    vmin: 0.0,
                    vmax: if vmax > 0.0 { vmax } else { 1.0 },
                    row_labels,
                    col_labels,
                    font: f,
                    title: Some(title.clone()),
                    x_desc: Some("KV pos".into()),
                    y_desc: Some("Query pos".into()),
                    colorbar: true,
                },
            )?;
        }
        Ok(())
    }
}

/// V13: one panel per group (5 × 4 inches each at `dpi`) with the group's average attention
/// pattern: each head's `aw [N, i, s]` is averaged over the sample axis (all leading axes), then
/// over the group's heads, and the last `last_n_pos` key columns are shown (Blues, colour bar).
/// Titles: "Group c (n heads): L79H10, L77H54, L76H35 ...".
pub fn plot_group_patterns(
    groups: &BTreeMap<usize, Vec<HeadKey>>,
    aw: &[(HeadKey, Tensor)],
    last_n_pos: usize,
    path: &Path,
    dpi: f64,
) -> Result<()> {
    ensure!(!groups.is_empty(), "no groups to plot");
    ensure!(last_n_pos > 0, "last_n_pos must be positive");
    let mut panels = Vec::new();
    for (cid, heads) in groups {
        ensure!(!heads.is_empty(), "group {cid} is empty");
        let mut sum: Option<Vec<Vec<f64>>> = None;
        for k in heads {
            let t = aw
                .iter()
                .find(|(k2, _)| k2 == k)
                .map(|(_, t)| t)
                .with_context(|| format!("no attention weights for head {}", head_label(*k)))?;
            let m = mean_pattern(t)?;
            match &mut sum {
                None => sum = Some(m),
                Some(s) => {
                    ensure!(
                        s.len() == m.len() && s[0].len() == m[0].len(),
                        "head {} has a different attention shape within group {cid}",
                        head_label(*k)
                    );
                    s.iter_mut()
                        .flatten()
                        .zip(m.iter().flatten())
                        .for_each(|(a, b)| *a += b);
                }
            }
        }
        let mut mean = sum.unwrap_or_default();
        let nh = heads.len() as f64;
        let cols = mean[0].len();
        let keep = last_n_pos.min(cols);
        for row in &mut mean {
            row.iter_mut().for_each(|v| *v /= nh);
            row.drain(..cols - keep);
        }
        let names: Vec<String> = heads
            .iter()
            .take(3)
            .map(|k| format!("L{}H{}", k.0, k.1))
            .collect();
        let more = if heads.len() > 3 { " ..." } else { "" };
        let title = format!(
            "Group {cid} ({} heads): {}{more}",
            heads.len(),
            names.join(", ")
        );
        panels.push((title, mean, cols - keep));
    }
    let size = figure_px((5.0 * panels.len() as f64, 4.0), dpi)?;
    save_figure(path, size, &GroupFigure { panels, dpi })
}

struct LensFigure<'a> {
    matrix: &'a [[f64; 3]],
    from_layer: usize,
    y_desc: &'a str,
    dpi: f64,
}

impl Figure for LensFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.matrix.len();
        let f = pt(8.0, self.dpi);
        let group_w = 3.0 * 0.25 + 0.3;
        let lo = self.matrix.iter().flatten().copied().fold(0.0, f64::min);
        let hi = self.matrix.iter().flatten().copied().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let (ylo, yhi) = (
            if lo < 0.0 { lo - pad } else { 0.0 },
            if hi > 0.0 { hi + pad } else { pad },
        );
        let xmax = n as f64 * group_w;
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size((f * 3.2) as u32)
            .y_label_area_size((f * 5.0) as u32)
            .build_cartesian_2d(-0.15..xmax, ylo..yhi)?;
        let (w, _) = root.dim_in_pixel();
        let every = ((n as f64 * f * 2.5) / w as f64).ceil().max(1.0) as usize;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("Layer")
            .y_desc(self.y_desc)
            .y_label_formatter(&|v| tick(*v))
            .label_style((FONT, f))
            .axis_desc_style((FONT, f * 1.1))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(220, 220, 220))
            .draw()?;
        // layer ticks at the centre bar of each group
        for l in (0..n).step_by(every) {
            let (px, py) = chart.backend_coord(&(l as f64 * group_w + 0.375, ylo));
            root.draw(&PathElement::new(vec![(px, py), (px, py + 5)], BLACK))?;
            let label = (self.from_layer + l).to_string();
            text_abs(
                root,
                &label,
                (px, py + 7),
                &text_style(f, BLACK, (HPos::Center, VPos::Top), false),
            )?;
        }
        let names = ["resid", "attn", "mlp"];
        for (b, name) in names.iter().enumerate() {
            let color = rgb(TAB10[b]);
            chart
                .draw_series(self.matrix.iter().enumerate().map(|(l, row)| {
                    let x = l as f64 * group_w + b as f64 * 0.25;
                    Rectangle::new([(x, 0.0), (x + 0.25, row[b])], color.filled())
                }))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, f))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
        Ok(())
    }
}

/// V5 `show_logit_lens`: grouped bars, 3 per layer (resid, attn, mlp in blue, orange, green; bar
/// width 0.25, group gap 0.3), layer ticks at the centre bar, y grid and legend; 12 × 3 inches.
/// `matrix[l]` holds the three values for layer `from_layer + l` (accuracy or log-prob;
/// negative values draw downwards). `y_desc` labels the y axis.
pub fn plot_logit_lens(
    matrix: &[[f64; 3]],
    from_layer: usize,
    y_desc: &str,
    path: &Path,
    dpi: f64,
) -> Result<()> {
    ensure!(!matrix.is_empty(), "logit lens matrix is empty");
    ensure!(
        matrix.iter().flatten().all(|v| v.is_finite()),
        "logit lens matrix has non-finite values"
    );
    save_figure(
        path,
        figure_px((12.0, 3.0), dpi)?,
        &LensFigure {
            matrix,
            from_layer,
            y_desc,
            dpi,
        },
    )
}

/// Converts a `[n_layers, 3]` tensor (e.g. V4's `acc` or `logprobs`) to rows for [`plot_logit_lens`].
pub fn lens_rows(t: &Tensor) -> Result<Vec<[f64; 3]>> {
    let dims = t.dims();
    ensure!(
        dims.len() == 2 && dims[1] == 3,
        "expected a [n_layers, 3] tensor, got {dims:?}"
    );
    Ok(t.to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| [r[0] as f64, r[1] as f64, r[2] as f64])
        .collect())
}

/// Makes a token readable as a tick label: newlines as ↵, tabs as →, spaces as ·.
pub fn display_token(t: &str) -> String {
    t.replace('\n', "↵").replace('\t', "→").replace(' ', "·")
}

struct AttentionFigure<'a> {
    tokens: &'a [String],
    rows: Vec<Vec<f64>>,
    row_labels: &'a [String],
    title: &'a str,
    vmax: f64,
}

impl Figure for AttentionFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw_heatmap(
            &root.margin(6, 6, 6, 6),
            &Heatmap {
                values: &self.rows,
                cmap: ColorMap::Blues,
                vmin: 0.0,
                vmax: self.vmax,
                row_labels: self.row_labels.iter().map(|s| (s.clone(), BLACK)).collect(),
                col_labels: self
                    .tokens
                    .iter()
                    .map(|s| (display_token(s), BLACK))
                    .collect(),
                font: 13.0,
                title: Some(self.title.to_string()),
                x_desc: Some("Key token".into()),
                y_desc: None,
                colorbar: true,
            },
        )
    }
}

/// Attention heatmap of one head over chosen query rows: `values[r][t]` is the weight of query
/// row `r` on token `t`; columns are labelled with the tokens, rows with `row_labels`. The
/// width grows with the number of tokens (about 16 px per token, at least 800 px).
pub fn plot_attention(
    tokens: &[String],
    values: &[Vec<f32>],
    row_labels: &[String],
    title: &str,
    path: &Path,
) -> Result<()> {
    ensure!(!tokens.is_empty(), "no tokens to plot");
    ensure!(!values.is_empty(), "no query rows to plot");
    ensure!(
        row_labels.len() == values.len(),
        "{} row labels for {} rows",
        row_labels.len(),
        values.len()
    );
    for (r, row) in values.iter().enumerate() {
        ensure!(
            row.len() == tokens.len(),
            "row {r} has {} values for {} tokens",
            row.len(),
            tokens.len()
        );
        ensure!(
            row.iter().all(|v| v.is_finite()),
            "row {r} has non-finite values"
        );
    }
    let rows: Vec<Vec<f64>> = values
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let vmax = rows.iter().flatten().copied().fold(0.0, f64::max);
    let label_w = row_labels
        .iter()
        .map(|s| text_width(s, 13.0))
        .fold(0.0, f64::max);
    let tok_h = tokens
        .iter()
        .map(|s| text_width(&display_token(s), 13.0))
        .fold(0.0, f64::max);
    let w = (label_w + 150.0 + 16.0 * tokens.len() as f64).clamp(800.0, 20_000.0) as u32;
    let h = (60.0 + tok_h + 30.0 + 28.0 * values.len() as f64).max(240.0) as u32;
    let fig = AttentionFigure {
        tokens,
        rows,
        row_labels,
        title,
        vmax: if vmax > 0.0 { vmax } else { 1.0 },
    };
    save_figure(path, (w, h), &fig)
}
