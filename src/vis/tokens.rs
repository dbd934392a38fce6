//! Token views for `show_attn` (V8): rows of per-token values drawn as coloured tokens, in the
//! terminal (24-bit ANSI backgrounds) and as a self-contained HTML page (row selector, hover
//! details). Each row is scaled by its own max |value|: positive values shade towards red,
//! negative towards blue.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Result, ensure};

use super::html::escape_html;

/// Full-intensity colour of positive values.
pub const POS_RGB: (u8, u8, u8) = (231, 76, 60);
/// Full-intensity colour of negative values.
pub const NEG_RGB: (u8, u8, u8) = (52, 152, 219);

fn check(tokens: &[String], rows: &[Vec<f32>], labels: &[String]) -> Result<()> {
    ensure!(!tokens.is_empty(), "no tokens to show");
    ensure!(!rows.is_empty(), "no value rows to show");
    ensure!(
        labels.len() == rows.len(),
        "{} row labels for {} rows",
        labels.len(),
        rows.len()
    );
    for (r, row) in rows.iter().enumerate() {
        ensure!(
            row.len() == tokens.len(),
            "row {r} ('{}') has {} values for {} tokens",
            labels[r],
            row.len(),
            tokens.len()
        );
        ensure!(
            row.iter().all(|v| v.is_finite()),
            "row {r} ('{}') has non-finite values",
            labels[r]
        );
    }
    Ok(())
}

/// Background colour of `v` in a row whose max |value| is `max_abs`: white blended towards
/// [`POS_RGB`] or [`NEG_RGB`] by |v| / max_abs.
pub fn token_rgb(v: f32, max_abs: f32) -> (u8, u8, u8) {
    let t = if max_abs > 0.0 {
        (v.abs() / max_abs).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let target = if v >= 0.0 { POS_RGB } else { NEG_RGB };
    let mix = |c: u8| (255.0 + (c as f32 - 255.0) * t).round() as u8;
    (mix(target.0), mix(target.1), mix(target.2))
}

fn row_max(row: &[f32]) -> f32 {
    row.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Terminal rendering: for each row a header line `── label (max |v| = …) ──`, then the tokens
/// with 24-bit background colours (newline tokens show as ↵ and break the line).
pub fn render_tokens_ansi(
    tokens: &[String],
    rows: &[Vec<f32>],
    labels: &[String],
) -> Result<String> {
    render_rows(tokens, rows, labels, true)
}

/// Plain-text rendering (no escape codes): the same header lines; tokens whose |v| is at least a
/// quarter of the row's max |v| are shown as `[text:NN]` with NN = 100·v/max, the rest as is.
pub fn render_tokens_plain(
    tokens: &[String],
    rows: &[Vec<f32>],
    labels: &[String],
) -> Result<String> {
    render_rows(tokens, rows, labels, false)
}

fn render_rows(
    tokens: &[String],
    rows: &[Vec<f32>],
    labels: &[String],
    color: bool,
) -> Result<String> {
    check(tokens, rows, labels)?;
    let mut s = String::new();
    for (row, label) in rows.iter().zip(labels) {
        let m = row_max(row);
        writeln!(s, "── {label} (max |v| = {m:.4}) ──")?;
        for (tok, &v) in tokens.iter().zip(row) {
            let text = tok.replace('\n', "↵");
            if color {
                let (r, g, b) = token_rgb(v, m);
                write!(s, "\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{text}\x1b[0m")?;
            } else if m > 0.0 && v.abs() >= 0.25 * m {
                write!(s, "[{text}:{:.0}]", 100.0 * v / m)?;
            } else {
                s.push_str(&text);
            }
            if tok.contains('\n') {
                s.push('\n');
            }
        }
        s.push_str(if color { "\x1b[0m\n" } else { "\n" });
    }
    Ok(s)
}

/// Whether terminal output may use colours: `NO_COLOR` unset or empty (no-color.org) and
/// standard output a terminal.
pub fn color_enabled() -> bool {
    use std::io::IsTerminal;
    color_wanted(
        std::env::var_os("NO_COLOR"),
        std::io::stdout().is_terminal(),
    )
}

fn color_wanted(no_color: Option<std::ffi::OsString>, is_terminal: bool) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The terminal view: [`render_tokens_ansi`] when [`color_enabled`], else
/// [`render_tokens_plain`].
pub fn render_tokens_term(
    tokens: &[String],
    rows: &[Vec<f32>],
    labels: &[String],
) -> Result<String> {
    if color_enabled() {
        render_tokens_ansi(tokens, rows, labels)
    } else {
        render_tokens_plain(tokens, rows, labels)
    }
}

/// Self-contained HTML page: a row selector, the tokens coloured by the selected row, and a
/// tooltip with every row's value for the hovered token. No network references.
pub fn render_tokens_html(
    tokens: &[String],
    rows: &[Vec<f32>],
    labels: &[String],
    title: &str,
) -> Result<String> {
    check(tokens, rows, labels)?;
    let mut buttons = String::new();
    for (r, l) in labels.iter().enumerate() {
        write!(
            buttons,
            r#"<button class="row{}" data-row="{r}">{}</button>"#,
            if r == 0 { " on" } else { "" },
            escape_html(l)
        )?;
    }
    let m0 = row_max(&rows[0]);
    let mut spans = String::new();
    for (i, tok) in tokens.iter().enumerate() {
        let (r, g, b) = token_rgb(rows[0][i], m0);
        let text = escape_html(&tok.replace('\n', "↵"));
        write!(
            spans,
            r#"<span class="tok" data-i="{i}" style="background:rgb({r},{g},{b})">{text}</span>"#
        )?;
        if tok.contains('\n') {
            spans.push_str("<br>");
        }
    }
    let values = serde_json::to_string(rows)?;
    let labels_json = serde_json::to_string(labels)?;
    let tokens_json = serde_json::to_string(tokens)?;
    Ok(TOKENS_TEMPLATE
        .replace("{{TITLE}}", &escape_html(title))
        .replace("{{BUTTONS}}", &buttons)
        .replace("{{SPANS}}", &spans)
        .replace("{{VALUES}}", &values.replace("</", "<\\/"))
        .replace("{{LABELS}}", &labels_json.replace("</", "<\\/"))
        .replace("{{TOKENS}}", &tokens_json.replace("</", "<\\/")))
}

/// Writes [`render_tokens_html`] to `path`.
pub fn write_tokens_html(
    path: &Path,
    tokens: &[String],
    rows: &[Vec<f32>],
    labels: &[String],
    title: &str,
) -> Result<()> {
    let html = render_tokens_html(tokens, rows, labels, title)?;
    super::written::write_file(path, html)
}

const TOKENS_TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<style>
  body { font: 13px sans-serif; margin: 16px; color: #222; }
  h1 { font-size: 15px; }
  button { margin: 0 4px 6px 0; border: 1px solid #bbb; background: #f4f4f4; border-radius: 3px; padding: 3px 8px; cursor: pointer; font: 12px monospace; }
  button.on { background: #333; color: #fff; border-color: #333; }
  #text { font: 13px/1.9 monospace; white-space: pre-wrap; border: 1px solid #ddd; padding: 8px; }
  .tok { border-radius: 2px; padding: 1px 0; }
  .tok:hover { outline: 1px solid #222; }
  #tip { position: fixed; pointer-events: none; background: rgba(30,30,30,0.92); color: #fff; padding: 5px 8px; border-radius: 4px; white-space: pre; font: 12px monospace; display: none; }
</style>
</head>
<body>
<h1>{{TITLE}}</h1>
<div id="rows">{{BUTTONS}}</div>
<div id="text">{{SPANS}}</div>
<div id="tip"></div>
<script>
(function () {
  var VALUES = {{VALUES}};
  var LABELS = {{LABELS}};
  var TOKENS = {{TOKENS}};
  var spans = Array.prototype.slice.call(document.querySelectorAll('.tok'));
  var buttons = Array.prototype.slice.call(document.querySelectorAll('button.row, button[data-row]'));
  var tip = document.getElementById('tip');
  function colour(v, m) {
    var t = m > 0 ? Math.min(1, Math.abs(v) / m) : 0;
    var c = v >= 0 ? [231, 76, 60] : [52, 152, 219];
    return 'rgb(' + c.map(function (x) { return Math.round(255 + (x - 255) * t); }).join(',') + ')';
  }
  function show(r) {
    var row = VALUES[r];
    var m = row.reduce(function (a, v) { return Math.max(a, Math.abs(v)); }, 0);
    spans.forEach(function (s, i) { s.style.background = colour(row[i], m); });
    buttons.forEach(function (b) { b.classList.toggle('on', +b.dataset.row === r); });
  }
  buttons.forEach(function (b) { b.addEventListener('click', function () { show(+b.dataset.row); }); });
  spans.forEach(function (s, i) {
    s.addEventListener('mousemove', function (ev) {
      var lines = ['#' + i + ' ' + JSON.stringify(TOKENS[i])];
      LABELS.forEach(function (l, r) { lines.push(l + ': ' + VALUES[r][i].toFixed(4)); });
      tip.textContent = lines.join('\n');
      tip.style.display = 'block';
      tip.style.left = (ev.clientX + 14) + 'px';
      tip.style.top = (ev.clientY + 10) + 'px';
    });
    s.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
})();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn toks() -> Vec<String> {
        ["<|im_start|>", "(3,3):", "B", "\n", "Answer", ":", "<R&>"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn colours_by_hand() {
        assert_eq!(token_rgb(2.0, 2.0), POS_RGB);
        assert_eq!(token_rgb(-2.0, 2.0), NEG_RGB);
        assert_eq!(token_rgb(0.0, 2.0), (255, 255, 255));
        // half intensity: 255 + (231 − 255)/2 = 243, 255 + (76 − 255)/2 = 165.5 → 166, 157.5 → 158
        assert_eq!(token_rgb(1.0, 2.0), (243, 166, 158));
        assert_eq!(token_rgb(1.0, 0.0), (255, 255, 255));
    }

    #[test]
    fn colours_follow_no_color_and_the_terminal() {
        assert!(color_wanted(None, true));
        assert!(color_wanted(Some("".into()), true));
        assert!(!color_wanted(Some("1".into()), true));
        assert!(!color_wanted(None, false));
        let rows = vec![vec![0.1, 0.1, 1.0, -0.5, 0.0, 0.0, 0.0]];
        let s = render_tokens_plain(&toks(), &rows, &["act".into()]).unwrap();
        assert!(!s.contains('\x1b'), "{s:?}");
        assert!(s.contains("[B:100]") && s.contains("[↵:-50]"), "{s:?}");
    }

    #[test]
    fn ansi_rows() {
        let rows = vec![
            vec![0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0, 0.0, 0.0, -3.0, 0.0],
        ];
        let s = render_tokens_ansi(&toks(), &rows, &["act".into(), "B ✓".into()]).unwrap();
        assert!(s.contains("── act (max |v| = 1.0000) ──"));
        assert!(
            s.contains("\x1b[48;2;231;76;60m\x1b[38;2;0;0;0mB\x1b[0m"),
            "{s:?}"
        );
        assert!(
            s.contains("\x1b[48;2;52;152;219m\x1b[38;2;0;0;0m:\x1b[0m"),
            "{s:?}"
        );
        assert!(s.contains("↵\x1b[0m\n"));
        assert!(render_tokens_ansi(&toks(), &[vec![0.0; 3]], &["x".into()]).is_err());
        assert!(render_tokens_ansi(&toks(), &rows, &["x".into()]).is_err());
    }

    #[test]
    fn html_page() {
        let rows = vec![vec![0.1, 0.5, 1.0, 0.0, 0.0, 0.0, 0.2]];
        let s = render_tokens_html(&toks(), &rows, &["A ✓".into()], "Head 58-3 </script>").unwrap();
        assert!(s.contains("&lt;|im_start|&gt;"));
        assert!(s.contains("&lt;R&amp;&gt;"));
        assert!(s.contains(
            r#"<span class="tok" data-i="2" style="background:rgb(231,76,60)">B</span>"#
        ));
        assert!(s.contains("Head 58-3 &lt;/script&gt;"));
        assert_eq!(s.matches(r#"<span class="tok""#).count(), 7);
        assert!(!s.contains("http://") && !s.contains("https://"));
    }
}
