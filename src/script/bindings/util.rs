//! Utility bindings: values memoised across runs, the graph-registry slot, map and
//! map-reduce over datasets with progress and interrupts.

use super::args::{RResult, guard};
use crate::script::docs::Registrar;
pub use crate::script::shard::mean_of;
use crate::script::shard::{self, Acc, Partial, ShardMode};
use crate::script::state::HostState;
use anyhow::ensure;
use rhai::{Array, Dynamic, FLOAT, FnPtr, INT, Map, NativeCallContext};
use std::ops::Range;
use std::sync::Arc;

/// Register the util domain.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    register_format(r);
    register_memo(r, state);
    register_graph_slot(r, state);
    register_map_reduce(r, state);
    register_shard_info(r, state);
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
        "Map-reduce (U2): f(item) for every item, then the elementwise mean (numbers, Tensors stacked on a new dim 0, maps per key, arrays per element; f64 sums). In a sharded run (minarc run --shard) only the shard's slice of items, its sums written for minarc reduce.",
        move |ctx: NativeCallContext, items: Array, f: FnPtr| -> RResult<Dynamic> {
            map_reduce(&st, &ctx, &items, &f, &[])
        },
    );
    let st = state.clone();
    r.func(
        "mr",
        "mr(items: Array, f: Fn(item, ...args) -> any, args: Array) -> any",
        "Map-reduce calling f(item, args[0], args[1], ...) for every item.",
        move |ctx: NativeCallContext, items: Array, f: FnPtr, args: Array| -> RResult<Dynamic> {
            map_reduce(&st, &ctx, &items, &f, &args)
        },
    );
}

/// `mr`: the mean of f over the items this process computes.
fn map_reduce(
    st: &HostState,
    ctx: &NativeCallContext,
    items: &Array,
    f: &FnPtr,
    extra: &[Dynamic],
) -> RResult<Dynamic> {
    reduce_items(st, items.len(), |range| {
        map_items(st, ctx, &items[range], f, extra, "mr")
    })
}

/// The reduction of every `mr`: `compute(range)` returns the results of items `range` (all of
/// them in an ordinary run, the shard's slice in a sharded run, whose partial sums are written,
/// or none: a replay answers from the reduced sums).
pub(super) fn reduce_items(
    st: &HostState,
    n_items: usize,
    compute: impl FnOnce(Range<usize>) -> RResult<Vec<Dynamic>>,
) -> RResult<Dynamic> {
    let call = st.next_mr_call();
    match st.shard_mode() {
        ShardMode::Whole => {
            let vals = compute(0..n_items)?;
            guard("mr", || mean_of(&vals))
        }
        ShardMode::Replay(dir) => guard("mr", || shard::replay(&dir, call, n_items)),
        ShardMode::Shard { shard, dir } => {
            let vals = compute(shard.range(n_items))?;
            guard("mr", || {
                let partial = Partial {
                    call,
                    items: n_items as u64,
                    count: vals.len() as u64,
                    sum: Acc::sum_of(&vals)?,
                };
                partial.write(&shard::partial_path(&shard.dir(&dir), call))?;
                match &partial.sum {
                    Some(a) => a.mean(partial.count),
                    None => {
                        st.output().line(&format!(
                            "mr call {call}: shard {}/{} has none of the {n_items} items (its partial is empty)",
                            shard.index, shard.count
                        ));
                        Ok(Dynamic::UNIT)
                    }
                }
            })
        }
    }
}

fn register_shard_info(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "shard_info",
        "shard_info() -> Map",
        "How this run splits forward and mr (minarc run --shard / --reduced): #{mode: \"whole\" | \"shard\" | \"replay\", index, count} (index 0 and count 1 unless sharded). A script skips its figures and files in a shard run, whose results are partial.",
        move || -> Map {
            let (mode, index, count) = match st.shard_mode() {
                ShardMode::Whole => ("whole", 0, 1),
                ShardMode::Shard { shard, .. } => ("shard", shard.index, shard.count),
                ShardMode::Replay(_) => ("replay", 0, 1),
            };
            let mut m = Map::new();
            m.insert("mode".into(), Dynamic::from(mode.to_string()));
            m.insert("index".into(), Dynamic::from(index as INT));
            m.insert("count".into(), Dynamic::from(count as INT));
            m
        },
    );
}

fn map_items(
    st: &HostState,
    ctx: &NativeCallContext,
    items: &[Dynamic],
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
