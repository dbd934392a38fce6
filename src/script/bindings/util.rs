//! Utility bindings: values memoised across runs, the graph-registry slot, map and
//! map-reduce over datasets with progress and interrupts.

use super::args::{RResult, guard};
use crate::script::docs::Registrar;
use crate::script::state::HostState;
use crate::script::tensor::Tensor;
use anyhow::{anyhow, ensure};
use rhai::{Array, Dynamic, FLOAT, FnPtr, INT, Map, NativeCallContext};
use std::sync::Arc;

/// Register the util domain.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    register_format(r);
    register_memo(r, state);
    register_graph_slot(r, state);
    register_map_reduce(r, state);
}

/// `x` with `d` decimals, or in scientific notation with `d` significant decimals when fixed
/// notation would round a non-zero value to zero or needs more than 12 digits.
pub fn fmt_num(x: f64, d: usize) -> String {
    let d = d.min(17);
    if !x.is_finite() {
        return x.to_string();
    }
    let tiny = x != 0.0 && x.abs() < 0.5 * 10f64.powi(-(d as i32));
    if tiny || x.abs() >= 1e12 {
        format!("{x:.prec$e}", prec = d.saturating_sub(1))
    } else {
        format!("{x:.d$}")
    }
}

fn register_format(r: &mut Registrar) {
    r.func(
        "fmt_num",
        "fmt_num(x: float, decimals: int) -> String",
        "x with the given decimals (0..=17); a non-zero value that would print as 0 (or a huge one) is written in scientific notation instead, e.g. fmt_num(0.0000123, 4) == \"1.230e-5\".",
        |x: FLOAT, d: INT| {
            guard("fmt_num", || {
                ensure!((0..=17).contains(&d), "decimals must be in 0..=17, got {d}");
                Ok(fmt_num(x, d as usize))
            })
        },
    );
}

fn register_memo(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "memo",
        "memo(name: String, f: Fn() -> any) -> any",
        "Return the value stored under name; on first use compute it with f() and keep it for the whole session (survives watch re-runs and :reset).",
        move |ctx: NativeCallContext, name: &str, f: FnPtr| -> RResult<Dynamic> {
            if let Some(v) = st.memo_get(name) {
                return Ok(v);
            }
            let v: Dynamic = f.call_within_context(&ctx, ())?;
            st.memo_set(name, v.clone());
            Ok(v)
        },
    );
    let st = state.clone();
    r.func(
        "forget",
        "forget(name: String) -> bool",
        "Drop the value memoised under name; true if there was one.",
        move |name: &str| st.memo_forget(name),
    );
    let st = state.clone();
    r.func(
        "memo_names",
        "memo_names() -> Array",
        "Names of the memoised values.",
        move || -> Array { st.memo_names().into_iter().map(Dynamic::from).collect() },
    );
    let st = state.clone();
    r.func(
        "loaded_models",
        "loaded_models() -> Array",
        "Canonical paths of the models loaded in this session (each is loaded once).",
        move || -> Array {
            st.loaded_paths()
                .into_iter()
                .map(|p| Dynamic::from(p.display().to_string()))
                .collect()
        },
    );
}

fn register_graph_slot(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "set_current_graph",
        "set_current_graph(g: any)",
        "Make g the current graph of the session (the graph registry; kept across runs).",
        move |g: Dynamic| st.set_graph(g),
    );
    let st = state.clone();
    r.func(
        "current_graph",
        "current_graph() -> any",
        "The current graph of the session, or () when none was set.",
        move || st.graph().unwrap_or(Dynamic::UNIT),
    );
}

fn register_map_reduce(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "map_progress",
        "map_progress(items: Array, f: Fn(item) -> any) -> Array",
        "f(item) for every item, with a progress bar; Ctrl-C stops it.",
        move |ctx: NativeCallContext, items: Array, f: FnPtr| -> RResult<Array> {
            map_items(&st, &ctx, &items, &f, &[], "map")
        },
    );
    let st = state.clone();
    r.func(
        "mr",
        "mr(items: Array, f: Fn(item) -> any) -> any",
        "Map-reduce (U2): f(item) for every item, then the elementwise mean (numbers, Tensors stacked on a new dim 0, maps per key, arrays per element).",
        move |ctx: NativeCallContext, items: Array, f: FnPtr| -> RResult<Dynamic> {
            let vals = map_items(&st, &ctx, &items, &f, &[], "mr")?;
            guard("mr", || mean_of(&vals))
        },
    );
    let st = state.clone();
    r.func(
        "mr",
        "mr(items: Array, f: Fn(item, ...args) -> any, args: Array) -> any",
        "Map-reduce calling f(item, args[0], args[1], ...) for every item.",
        move |ctx: NativeCallContext, items: Array, f: FnPtr, args: Array| -> RResult<Dynamic> {
            let vals = map_items(&st, &ctx, &items, &f, &args, "mr")?;
            guard("mr", || mean_of(&vals))
        },
    );
}

fn map_items(
    st: &HostState,
    ctx: &NativeCallContext,
    items: &Array,
    f: &FnPtr,
    extra: &[Dynamic],
    label: &str,
) -> RResult<Array> {
    let pb = st.progress(items.len() as u64, label);
    let mut out = Array::with_capacity(items.len());
    for item in items {
        st.check_interrupt()?;
        let mut args: Vec<Dynamic> = Vec::with_capacity(1 + extra.len());
        args.push(item.clone());
        args.extend(extra.iter().cloned());
        out.push(f.call_raw(ctx, None, args)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Elementwise mean of a list of equally structured values.
pub fn mean_of(vals: &[Dynamic]) -> anyhow::Result<Dynamic> {
    ensure!(!vals.is_empty(), "nothing to reduce (empty input)");
    let first = &vals[0];
    if first.as_int().is_ok() || first.as_float().is_ok() {
        let mut sum = 0.0;
        for (k, v) in vals.iter().enumerate() {
            sum += v
                .as_float()
                .or_else(|_| v.as_int().map(|i| i as FLOAT))
                .map_err(|t| anyhow!("item {k} is a {t}, expected a number like item 0"))?;
        }
        return Ok(Dynamic::from_float(sum / vals.len() as FLOAT));
    }
    if first.is::<Tensor>() {
        let ts = vals
            .iter()
            .enumerate()
            .map(|(k, v)| {
                v.read_lock::<Tensor>().map(|t| t.clone()).ok_or_else(|| {
                    anyhow!(
                        "item {k} is a {}, expected a Tensor like item 0",
                        v.type_name()
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Dynamic::from(Tensor::stack(&ts, 0)?.reduce_dim("mean", 0)?));
    }
    if first.is_map() {
        let keys: Vec<_> = first
            .read_lock::<Map>()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut out = Map::new();
        for key in keys {
            let col = vals
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    v.read_lock::<Map>()
                        .and_then(|m| m.get(&key).cloned())
                        .ok_or_else(|| anyhow!("item {k} has no key {key}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.insert(
                key.clone(),
                mean_of(&col).map_err(|e| anyhow!("key {key}: {e}"))?,
            );
        }
        return Ok(Dynamic::from_map(out));
    }
    if first.is_array() {
        let n = first.read_lock::<Array>().map(|a| a.len()).unwrap_or(0);
        let mut out = Array::with_capacity(n);
        for i in 0..n {
            let col = vals
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    v.read_lock::<Array>()
                        .filter(|a| a.len() == n)
                        .map(|a| a[i].clone())
                        .ok_or_else(|| anyhow!("item {k} is not an array of length {n}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.push(mean_of(&col).map_err(|e| anyhow!("element {i}: {e}"))?);
        }
        return Ok(Dynamic::from_array(out));
    }
    Err(anyhow!(
        "cannot average values of type {}",
        first.type_name()
    ))
}

#[cfg(test)]
mod fmt_tests {
    use super::fmt_num;

    #[test]
    fn fmt_num_keeps_small_values_visible() {
        assert_eq!(fmt_num(0.123456, 4), "0.1235");
        assert_eq!(fmt_num(0.0, 4), "0.0000");
        assert_eq!(fmt_num(0.0000123, 4), "1.230e-5");
        assert_eq!(fmt_num(-0.00004, 4), "-4.000e-5");
        assert_eq!(fmt_num(3.0, 0), "3");
    }
}
