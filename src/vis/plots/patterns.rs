//! V13: the average attention pattern of each cluster.

use super::*;

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
