//! One head's attention over chosen query rows, with token labels.

use super::*;

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
