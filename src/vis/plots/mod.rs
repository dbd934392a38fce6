//! Static figures with plotters. The output format follows the file extension: `.png` or `.svg`.
//!
//! * [`plot_clustering`]: V11 dendrogram (cut line, GQA-tinted leaf labels, optional strength bars)
//!   next to the distance heatmap reordered by the dendrogram, in one figure.
//! * [`plot_group_patterns`]: V13 average attention pattern per cluster.
//! * [`plot_logit_lens`]: V5 grouped bars (resid / attn / mlp per layer).
//! * [`plot_attention`]: one head's attention over chosen query rows, with token labels.
//! * [`plot_ablation_curve`]: a metric after ablating the top-k vs k random heads.
//! * [`plot_training_curve`]: loss and accuracy of a `minarc train` run.

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

mod ablation;
mod attention;
mod clustering;
mod logit_lens;
mod patterns;
mod training;

pub use ablation::{AblationCurveData, plot_ablation_curve};
pub use attention::{display_token, plot_attention};
pub use clustering::{DendrogramOptions, gqa_colors, plot_clustering};
pub use logit_lens::{lens_rows, plot_logit_lens};
pub use patterns::plot_group_patterns;
pub use training::{TrainingCurveData, plot_training_curve};

pub(super) const FONT: &str = "sans-serif";

pub(super) fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Points to pixels at `dpi`.
pub(super) fn pt(points: f64, dpi: f64) -> f64 {
    points * dpi / 72.0
}

/// A chart over f64 × f64 coordinates.
pub(super) type F64Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The series legend in the house style (font size `f`, white translucent box, grey border).
pub(super) fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut F64Chart<'a, DB>,
    pos: SeriesLabelPosition,
    f: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(pos)
        .label_font((FONT, f))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

/// A figure that can be drawn on any plotters backend.
pub(super) trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `fig` as PNG or SVG, chosen by the extension of `path`.
pub(super) fn save_figure(path: &Path, size: (u32, u32), fig: &impl Figure) -> Result<()> {
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
    super::written::record(path);
    Ok(())
}

/// Text style with an anchor and an optional 90° rotation (reading bottom to top).
pub(super) fn text_style(
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
pub(super) fn text_abs<DB: DrawingBackend>(
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
pub(super) fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.6
}

/// Formats a tick value compactly: at most 3 decimals, trailing zeros dropped.
pub(super) fn tick(v: f64) -> String {
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
pub(super) struct Heatmap<'a> {
    pub(super) values: &'a [Vec<f64>],
    pub(super) cmap: ColorMap,
    pub(super) vmin: f64,
    pub(super) vmax: f64,
    pub(super) row_labels: Vec<(String, RGBColor)>,
    pub(super) col_labels: Vec<(String, RGBColor)>,
    /// Tick label font size (px).
    pub(super) font: f64,
    pub(super) title: Option<String>,
    pub(super) x_desc: Option<String>,
    pub(super) y_desc: Option<String>,
    pub(super) colorbar: bool,
}

/// Draws a heatmap (row 0 at the top) with tick labels, optional axis titles and a colour bar.
/// Labels are thinned when cells are smaller than the font.
pub(super) fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    h: &Heatmap,
) -> Result<()>
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
pub(super) fn draw_colorbar<DB: DrawingBackend>(
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

/// Linear-interpolated percentile (numpy's default) of a non-empty slice.
pub(super) fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = (q / 100.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

pub(super) fn figure_px(figsize: (f64, f64), dpi: f64) -> Result<(u32, u32)> {
    ensure!(
        figsize.0 > 0.0 && figsize.1 > 0.0 && dpi > 0.0,
        "figure size and dpi must be positive"
    );
    Ok((
        (figsize.0 * dpi).round() as u32,
        (figsize.1 * dpi).round() as u32,
    ))
}
