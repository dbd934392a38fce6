//! Scheduling (the heavy-work lock, with cancellation of dropped requests) and the
//! validation shared by the routes.

use super::*;

/// Runs CPU work on the blocking pool (getters: concurrent).
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })?
}

/// Runs heavy model work on the blocking pool while holding the heavy-work lock. The guard
/// moves into the worker, so the work stays serialised; when the request is dropped (its time
/// limit passed or the client went away) the work is cancelled at its next check
/// ([`crate::cancel`]: between IG chunks, decoder layers and samples), which frees the lock.
pub(super) async fn heavy<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let guard = st.heavy.clone().lock_owned().await;
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = crate::cancel::CancelOnDrop(flag.clone());
    blocking(move || {
        let _guard = guard;
        crate::cancel::with_flag(flag, f)
    })
    .await
}

// ---------------------------------------------------------------- validation

pub(super) fn dataset_samples(local: &Local, dataset: &str) -> ApiResult<Vec<usize>> {
    local
        .datasets()
        .map_err(ApiError::unprocessable)?
        .into_iter()
        .find(|(n, _)| n == dataset)
        .map(|(_, s)| s)
        .ok_or_else(|| ApiError::not_found(format!("dataset {dataset:?} not found")))
}

/// Every cached dataset with its sample ids.
pub(super) fn dataset_infos(local: &Local) -> ApiResult<Vec<DatasetInfo>> {
    Ok(local
        .datasets()
        .map_err(ApiError::unprocessable)?
        .into_iter()
        .map(|(dataset, sample_ids)| DatasetInfo {
            dataset,
            count: sample_ids.len(),
            sample_ids,
        })
        .collect())
}

pub(super) fn check_sample(local: &Local, key: &SampleKey) -> ApiResult<usize> {
    let samples = dataset_samples(local, &key.dataset)?;
    if !samples.contains(&key.index) {
        return Err(ApiError::not_found(format!(
            "sample {} not found in dataset {:?} (it has {} samples)",
            key.index,
            key.dataset,
            samples.len()
        )));
    }
    local.seq_len(key).map_err(ApiError::unprocessable)
}

pub(super) fn check_get(
    local: &Local,
    g: Getter,
    req: &GetRequest,
    seq_len: usize,
) -> ApiResult<()> {
    let cfg = local.config();
    let (n_layers, n_heads) = (cfg.num_hidden_layers, cfg.num_attention_heads);
    if !g.uses_heads() && req.heads.is_some() {
        return Err(ApiError::bad(format!(
            "{} takes no heads (only /head_output and /attn_weights do)",
            g.path()
        )));
    }
    if !g.needs_layer() && req.layer.is_some() {
        return Err(ApiError::bad(format!("{} takes no layer", g.path())));
    }
    if g.needs_layer() {
        let Some(layer) = req.layer else {
            return Err(ApiError::bad(format!("{} needs a layer", g.path())));
        };
        let max = if matches!(g, Getter::HiddenStates | Getter::InputNormVar) {
            n_layers + 1
        } else {
            n_layers
        };
        if layer >= max {
            return Err(ApiError::bad(format!(
                "layer {layer} out of range for {} (0..{max}; the model has {n_layers} layers)",
                g.path()
            )));
        }
    }
    if g.uses_heads() {
        let max = if g == Getter::HeadOutput {
            n_heads + 1
        } else {
            n_heads
        };
        let hs = match &req.heads {
            None => vec![],
            Some(wire::HeadArg::One(h)) => vec![*h],
            Some(wire::HeadArg::Many(hs)) => hs.clone(),
        };
        if matches!(&req.heads, Some(wire::HeadArg::Many(hs)) if hs.is_empty()) {
            return Err(ApiError::bad(
                "heads is an empty list; send null for all heads",
            ));
        }
        if let Some(h) = hs.iter().find(|&&h| h >= max) {
            return Err(ApiError::bad(format!(
                "head {h} out of range for {} (0..{max}; the model has {n_heads} heads{})",
                g.path(),
                if g == Getter::HeadOutput {
                    format!(", {n_heads} = MLP")
                } else {
                    String::new()
                }
            )));
        }
        if hs.len() > 1 && hs.contains(&n_heads) {
            return Err(ApiError::bad(format!(
                "the MLP pseudo-head {n_heads} can only be asked alone"
            )));
        }
    }
    if let Some(p) = &req.pos_ids {
        if p.is_empty() {
            return Err(ApiError::bad(
                "pos_ids is an empty list; send null for all positions",
            ));
        }
        if let Some(bad) = p.iter().find(|&&x| x >= seq_len) {
            return Err(ApiError::bad(format!(
                "position {bad} out of range in pos_ids (sequence has {seq_len} tokens)"
            )));
        }
    }
    Ok(())
}

pub(super) fn wire_dtype(name: &Option<String>) -> ApiResult<DType> {
    match name {
        None => Ok(DType::F32),
        Some(n) => parse_dtype(n).map_err(|e| ApiError::bad(format!("dtype: {e}"))),
    }
}
