//! V11: the dendrogram (cut line, GQA-tinted leaf labels, optional strength bars) next to the
//! distance heatmap reordered by the dendrogram.

use super::*;

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
