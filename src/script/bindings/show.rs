//! `show` and `show_table`: send a value or a table to the live view (`watch --view`,
//! `repl --view`); without a view they print it.

use super::args::{RResult, guard};
use crate::script::docs::Registrar;
use crate::script::state::{HostState, Shown};
use crate::script::tensor::Tensor;
use anyhow::{Result, anyhow};
use rhai::{Array, Dynamic};
use std::sync::Arc;

/// Cells of a table: the first row is the header; at most this many rows and columns.
const MAX_CELLS: usize = 100_000;

fn text_of(v: &Dynamic) -> String {
    if let Some(t) = v.read_lock::<Tensor>() {
        return t.to_string();
    }
    if let Ok(s) = v.clone().into_string() {
        return s;
    }
    v.to_string()
}

fn table_of(rows: &Array) -> Result<Vec<Vec<String>>> {
    let mut cells = 0usize;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let r = if let Some(m) = r.read_lock::<rhai::Map>() {
                // a map row: its values in key order
                m.values().cloned().collect::<Array>()
            } else {
                r.read_lock::<Array>().map(|a| a.clone()).ok_or_else(|| {
                    anyhow!("row {i} must be an array or a map, got {}", r.type_name())
                })?
            };
            cells += r.len();
            anyhow::ensure!(
                cells <= MAX_CELLS,
                "the table has more than {MAX_CELLS} cells"
            );
            Ok(r.iter().map(text_of).collect())
        })
        .collect()
}

fn show(st: &HostState, label: Option<String>, v: &Dynamic) {
    let label = label.unwrap_or_else(|| "value".into());
    let text = text_of(v);
    st.output().line(&format!("{label}: {text}"));
    st.push_shown(Shown::Text { label, text });
}

fn show_table(st: &HostState, label: Option<String>, rows: &Array) -> Result<()> {
    let mut rows = table_of(rows)?;
    let label = label.unwrap_or_else(|| "table".into());
    st.output().line(&format!("{label}:"));
    for r in &rows {
        st.output().line(&r.join("\t"));
    }
    if rows.is_empty() {
        rows.push(Vec::new());
    }
    st.push_shown(Shown::Table { label, rows });
    Ok(())
}

/// Register `show` and `show_table`.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "show",
        "show(value: Dynamic)",
        "Print a value (a Tensor shows its preview) and send it to the live view (watch --view, repl --view).",
        move |v: Dynamic| show(&st, None, &v),
    );
    let st = state.clone();
    r.func(
        "show",
        "show(label: String, value: Dynamic)",
        "show with a label: the value's heading and its anchor on the live view's page (#show-label).",
        move |label: &str, v: Dynamic| show(&st, Some(label.to_string()), &v),
    );
    let st = state.clone();
    r.func(
        "show_table",
        "show_table(rows: Array)",
        "Print a table and send it to the live view: rows are arrays (or maps) of cells, the first row is the header.",
        move |rows: Array| -> RResult<()> { guard("show_table", || show_table(&st, None, &rows)) },
    );
    let st = state.clone();
    r.func(
        "show_table",
        "show_table(label: String, rows: Array)",
        "show_table with a label (its heading and anchor #show-label on the page).",
        move |label: &str, rows: Array| -> RResult<()> {
            guard("show_table", || {
                show_table(&st, Some(label.to_string()), &rows)
            })
        },
    );
}
