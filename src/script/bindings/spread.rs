//! Work spread over several models (issue 7, `mr` over a list of models): `forward(models,
//! dataset, samples)` sends sample `j` to `models[j % n]` (one thread per model) and returns
//! `Cached` handles bound to the model that holds them; `mr(models, items, f)` calls
//! `f(item, model)` with each item's model, one thread per model, and averages in item order.

use super::args::{RResult, guard};
use super::forward::{ForwardOptions, forward_one, forward_options, samples_of};
use super::model::{Cached, ScriptModel};
use super::util::reduce_items;
use crate::backend::Backend;
use crate::backend::spread::{run_shares, shares_of, spread_map};
use crate::script::docs::Registrar;
use crate::script::state::HostState;
use anyhow::{Result, anyhow, bail, ensure};
use rhai::{Array, Dynamic, EvalAltResult, FnPtr, Map, NativeCallContext};
use std::sync::Arc;

/// The models of a script array (at least one).
fn models_of(arr: &Array) -> Result<Vec<ScriptModel>> {
    ensure!(!arr.is_empty(), "the list of models is empty");
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<ScriptModel>()
                .map(|m| m.clone())
                .ok_or_else(|| anyhow!("models[{k}] is a {}, expected a Model", v.type_name()))
        })
        .collect()
}

/// `forward(models, dataset, samples[, opts])`: sample `j` on `models[j % n]`, in parallel.
fn forward_spread(
    st: &HostState,
    models: &Array,
    dataset: &str,
    samples: &Array,
    opts: &ForwardOptions,
) -> RResult<Array> {
    let (models, samples) = guard("forward", || {
        ensure!(!dataset.is_empty(), "the dataset name must not be empty");
        ensure!(
            opts.batch == 1,
            "batch applies to forward(model, ...): over several models each model takes one \
             sample at a time"
        );
        Ok((models_of(models)?, samples_of(samples)?))
    })?;
    let backends: Vec<&dyn Backend> = models.iter().map(|m| m.0.as_ref()).collect();
    // A sharded run forwards its slice (as forward(model, ...)); the others come back unforwarded.
    let mine = st.shard_mode().range(samples.len());
    let pb = st.progress(mine.len() as u64, &format!("forward {dataset}"));
    let fresh = guard("forward", || {
        spread_map(&backends, &samples[mine.clone()], &|b, s| {
            if st.interrupted() {
                bail!("interrupted");
            }
            let fresh = forward_one(b, dataset, s, opts)?;
            pb.inc(1);
            Ok(fresh)
        })
    });
    pb.finish_and_clear();
    st.check_interrupt()?;
    let fresh = fresh?;
    let n = models.len();
    Ok(samples
        .into_iter()
        .enumerate()
        .map(|(j, sample)| {
            Dynamic::from(Cached {
                dataset: dataset.to_string(),
                sample,
                fresh: mine.contains(&j) && fresh[j - mine.start],
                home: Some(models[j % n].clone()),
            })
        })
        .collect())
}

/// Item `j`'s model: the home model of a bound `Cached` handle, else `models[j % n]`.
fn item_models(models: &[ScriptModel], items: &Array) -> Vec<ScriptModel> {
    items
        .iter()
        .enumerate()
        .map(|(j, it)| {
            it.read_lock::<Cached>()
                .and_then(|c| c.home.clone())
                .unwrap_or_else(|| models[j % models.len()].clone())
        })
        .collect()
}

/// Prefix an error with the item and its model (interrupts pass through unchanged).
fn name_item(e: Box<EvalAltResult>, j: usize, m: &ScriptModel) -> Box<EvalAltResult> {
    if matches!(*e, EvalAltResult::ErrorTerminated(..)) {
        return e;
    }
    format!("mr(): item {j} on {}: {e}", m.0.describe()).into()
}

/// `mr(models, items, f)`: each model's share on its own thread, mean in item order.
fn mr_spread(
    st: &HostState,
    ctx: &NativeCallContext,
    models: &Array,
    items: &Array,
    f: &FnPtr,
) -> RResult<Dynamic> {
    let models = guard("mr", || {
        ensure!(!items.is_empty(), "map-reduce over an empty list of items");
        models_of(models)
    })?;
    let item_models = item_models(&models, items);
    let keys: Vec<*const ()> = item_models
        .iter()
        .map(|m| Arc::as_ptr(&m.0) as *const ())
        .collect();
    reduce_items(st, items.len(), |range| {
        spread_items(st, ctx, items, f, &item_models, &keys, range)
    })
}

/// f(item, model) for items `range`, each model's share on its own thread, in item order.
fn spread_items(
    st: &HostState,
    ctx: &NativeCallContext,
    items: &Array,
    f: &FnPtr,
    item_models: &[ScriptModel],
    keys: &[*const ()],
    range: std::ops::Range<usize>,
) -> RResult<Vec<Dynamic>> {
    let start = range.start;
    let shares = shares_of(&keys[range.clone()]);
    let pb = st.progress(range.len() as u64, "mr");
    let vals: RResult<Vec<Dynamic>> = run_shares(
        range.len(),
        &shares,
        &|j| {
            let j = start + j;
            st.check_interrupt()?;
            let m = &item_models[j];
            let args = [items[j].clone(), Dynamic::from(m.clone())];
            let v = f
                .call_raw(ctx, None, args)
                .map_err(|e| name_item(e, j, m))?;
            pb.inc(1);
            Ok::<Dynamic, Box<EvalAltResult>>(v)
        },
        &|j, msg| {
            let j = start + j;
            let m = &item_models[j];
            format!(
                "mr(): item {j} on {}: internal error (panic): {msg}",
                m.0.describe()
            )
            .into()
        },
        &|j| format!("mr(): no result for item {}", start + j).into(),
    );
    pb.finish_and_clear();
    st.check_interrupt()?;
    vals
}

/// Register `forward(models: Array, ...)` (model domain).
pub fn register_forward(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "forward",
        "forward(models: Array, dataset: String, samples: Array) -> Array",
        "Spread a forward over several models (e.g. connected servers): sample j goes to models[j % n], one thread per model; returns Cached handles bound to the model holding them (getters and attribution on a bound handle read from that model, whatever model is passed).",
        move |models: Array, dataset: &str, samples: Array| {
            forward_spread(&st, &models, dataset, &samples, &ForwardOptions::default())
        },
    );
    let st = state.clone();
    r.func(
        "forward",
        "forward(models: Array, dataset: String, samples: Array, opts: Map) -> Array",
        "Spread forward with the capture options of forward(model, dataset, samples, opts).",
        move |models: Array, dataset: &str, samples: Array, opts: Map| {
            let o = guard("forward", || forward_options(&opts))?;
            forward_spread(&st, &models, dataset, &samples, &o)
        },
    );
}

/// Register `mr(models: Array, items: Array, f)` (util domain).
pub fn register_mr(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "mr",
        "mr(models: Array, items: Array, f: Fn(item, model) -> any) -> any",
        "Map-reduce over several models: f(item, model) with item j's model (the model a Cached handle from forward(models, ...) is bound to, else models[j % n]), each model's share on its own thread; elementwise mean in item order, as mr(items, f).",
        move |ctx: NativeCallContext, models: Array, items: Array, f: FnPtr| {
            mr_spread(&st, &ctx, &models, &items, &f)
        },
    );
}
