//! The training curve of `minarc train`: the loss per step (and its moving average) above, the
//! train answer accuracy (moving average) and the held-out accuracy below.

use super::*;

/// The data of a training-curve figure.
pub struct TrainingCurveData<'a> {
    /// (step, loss) per optimiser step.
    pub loss: &'a [(usize, f64)],
    /// (step, accuracy) of the train answers per step.
    pub train_acc: &'a [(usize, f64)],
    /// (step, accuracy) of the held-out evaluations.
    pub held_out_acc: &'a [(usize, f64)],
    /// Chance accuracy (1 / number of colours), drawn as a line.
    pub chance: f64,
}

struct TrainingFigure<'a> {
    d: &'a TrainingCurveData<'a>,
    dpi: f64,
}

/// Trailing moving average over `w` points.
fn smooth(v: &[(usize, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(v.len());
    let mut sum = 0.0;
    for (i, &(s, x)) in v.iter().enumerate() {
        sum += x;
        if i >= w {
            sum -= v[i - w].1;
        }
        out.push((s as f64, sum / (i + 1).min(w) as f64));
    }
    out
}

/// Grid and axes of one panel: x is the step, y is `y_desc`.
fn draw_mesh<'a, DB: DrawingBackend + 'a>(
    chart: &mut F64Chart<'a, DB>,
    y_desc: &str,
    f: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FONT, f))
        .axis_desc_style((FONT, f * 1.1))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    Ok(())
}

impl Figure for TrainingFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let d = self.d;
        let f = pt(9.0, self.dpi);
        let last = d
            .loss
            .iter()
            .map(|p| p.0)
            .chain(d.held_out_acc.iter().map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let w = (d.loss.len() / 50).clamp(1, 200);
        let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
        let (blue, orange, grey) = (rgb(TAB10[0]), rgb(TAB10[1]), RGBColor(120, 120, 120));
        let light = RGBColor(190, 210, 235);
        let hi = d.loss.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3);
        let mut chart = ChartBuilder::on(&top)
            .margin(12)
            .x_label_area_size((f * 3.0) as u32)
            .y_label_area_size((f * 5.5) as u32)
            .build_cartesian_2d(0.0..last, 0.0..hi * 1.05)?;
        draw_mesh(&mut chart, "loss (nats)", f)?;
        chart.draw_series(LineSeries::new(
            d.loss.iter().map(|&(s, l)| (s as f64, l)),
            light.stroke_width(1),
        ))?;
        chart
            .draw_series(LineSeries::new(smooth(d.loss, w), blue.stroke_width(2)))?
            .label(format!("loss, mean of {w} steps"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], blue));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, f)?;
        let mut chart = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size((f * 3.0) as u32)
            .y_label_area_size((f * 5.5) as u32)
            .build_cartesian_2d(0.0..last, 0.0..1.02)?;
        draw_mesh(&mut chart, "answer accuracy", f)?;
        chart
            .draw_series(LineSeries::new(
                smooth(d.train_acc, w),
                blue.stroke_width(2),
            ))?
            .label(format!("train, mean of {w} steps"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], blue));
        chart
            .draw_series(LineSeries::new(
                d.held_out_acc.iter().map(|&(s, a)| (s as f64, a)),
                orange.stroke_width(2),
            ))?
            .label("held-out")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], orange));
        chart.draw_series(
            d.held_out_acc
                .iter()
                .map(|&(s, a)| Circle::new((s as f64, a), 3, orange.filled())),
        )?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, d.chance), (last, d.chance)],
                grey.stroke_width(1),
            ))?
            .label("chance")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], grey));
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight, f)?;
        Ok(())
    }
}

/// Writes the training curve (PNG or SVG by extension), 7 × 6 inches at `dpi`.
pub fn plot_training_curve(d: &TrainingCurveData, path: &Path, dpi: f64) -> Result<()> {
    ensure!(!d.loss.is_empty(), "training curve has no steps");
    ensure!(
        d.loss
            .iter()
            .chain(d.train_acc)
            .chain(d.held_out_acc)
            .all(|p| p.1.is_finite())
            && d.chance.is_finite(),
        "training curve has non-finite values"
    );
    save_figure(
        path,
        figure_px((7.0, 6.0), dpi)?,
        &TrainingFigure { d, dpi },
    )
}
