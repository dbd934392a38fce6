//! The ablation curve: a metric after ablating the top-k attributed heads against k random
//! heads (mean ± one standard deviation over the draws), with the clean value as a line.

use super::*;

/// The data of an ablation-curve figure.
pub struct AblationCurveData<'a> {
    /// k values (x axis).
    pub ks: &'a [usize],
    /// The metric with the top-k ablated, per k.
    pub top: &'a [f64],
    /// (mean, standard deviation) over the random draws, per k.
    pub random: &'a [(f64, f64)],
    /// The clean model's value.
    pub clean: f64,
    /// The metric's name (y axis).
    pub metric: &'a str,
}

struct CurveFigure<'a> {
    d: &'a AblationCurveData<'a>,
    dpi: f64,
}

impl Figure for CurveFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let d = self.d;
        let f = pt(9.0, self.dpi);
        let vals = d
            .top
            .iter()
            .copied()
            .chain(d.random.iter().flat_map(|(m, s)| [m - s, m + s]))
            .chain([d.clean]);
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let kmax = *d.ks.last().unwrap_or(&1) as f64;
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size((f * 3.2) as u32)
            .y_label_area_size((f * 5.5) as u32)
            .build_cartesian_2d(0.5..kmax + 0.5, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("heads ablated (k)")
            .y_desc(d.metric)
            .x_labels(d.ks.len().min(20))
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .y_label_formatter(&|v| tick(*v))
            .label_style((FONT, f))
            .axis_desc_style((FONT, f * 1.1))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let (blue, orange, grey) = (rgb(TAB10[0]), rgb(TAB10[1]), RGBColor(120, 120, 120));
        // random: ±1 std band, then the mean line
        let mut band: Vec<(f64, f64)> =
            d.ks.iter()
                .zip(d.random)
                .map(|(&k, (m, s))| (k as f64, m + s))
                .collect();
        band.extend(
            d.ks.iter()
                .zip(d.random)
                .rev()
                .map(|(&k, (m, s))| (k as f64, m - s)),
        );
        chart.draw_series(std::iter::once(Polygon::new(
            band,
            orange.mix(0.2).filled(),
        )))?;
        chart
            .draw_series(LineSeries::new(
                d.ks.iter().zip(d.random).map(|(&k, (m, _))| (k as f64, *m)),
                orange.stroke_width(2),
            ))?
            .label("random heads (mean ± std)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], orange.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                d.ks.iter().zip(d.top).map(|(&k, &v)| (k as f64, v)),
                blue.stroke_width(2),
            ))?
            .label("top-k attributed heads")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], blue.stroke_width(2))
            });
        chart.draw_series(
            d.ks.iter()
                .zip(d.top)
                .map(|(&k, &v)| Circle::new((k as f64, v), 3, blue.filled())),
        )?;
        chart
            .draw_series(LineSeries::new(
                [(0.5, d.clean), (kmax + 0.5, d.clean)],
                grey.stroke_width(1),
            ))?
            .label("clean")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], grey));
        draw_legend(&mut chart, SeriesLabelPosition::LowerLeft, f)
    }
}

/// Writes the ablation curve (PNG or SVG by extension), 7 × 4.5 inches at `dpi`.
pub fn plot_ablation_curve(d: &AblationCurveData, path: &Path, dpi: f64) -> Result<()> {
    ensure!(!d.ks.is_empty(), "ablation curve has no points");
    ensure!(
        d.top.len() == d.ks.len() && d.random.len() == d.ks.len(),
        "ablation curve: {} ks, {} top values, {} random values",
        d.ks.len(),
        d.top.len(),
        d.random.len()
    );
    ensure!(
        d.top
            .iter()
            .chain(d.random.iter().flat_map(|(m, s)| [m, s]))
            .chain([&d.clean])
            .all(|v| v.is_finite()),
        "ablation curve has non-finite values"
    );
    save_figure(path, figure_px((7.0, 4.5), dpi)?, &CurveFigure { d, dpi })
}
