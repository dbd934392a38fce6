//! V5: logit-lens grouped bars (resid / attn / mlp per layer).

use super::*;

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
