//! Attribution-primitive routes: node gradient / forward, residual attribution, lens logits.

use super::*;

/// The samples a node/residual request runs on (one, or the whole dataset when null), checked.
pub(super) fn request_samples(
    local: &Local,
    dataset: &str,
    sample: Option<usize>,
) -> ApiResult<Vec<SampleKey>> {
    let indices = match sample {
        Some(i) => vec![i],
        None => dataset_samples(local, dataset)?,
    };
    if indices.is_empty() {
        return Err(ApiError::not_found(format!(
            "dataset {dataset:?} has no samples to average over"
        )));
    }
    indices
        .into_iter()
        .map(|i| {
            let key = SampleKey::new(dataset, i);
            check_sample(local, &key).map(|_| key)
        })
        .collect()
}

/// Layer (0..=L; L only for lm_head) and head (< H) of a node.
pub(super) fn check_node(
    local: &Local,
    t: crate::attribution::NodeType,
    layer: usize,
    head: Option<usize>,
) -> ApiResult<()> {
    let cfg = local.config();
    let (nl, nh) = (cfg.num_hidden_layers, cfg.num_attention_heads);
    let max = if t == crate::attribution::NodeType::LmHead {
        nl + 1
    } else {
        nl
    };
    if layer >= max {
        return Err(ApiError::bad(format!(
            "layer {layer} out of range for a {t} node (0..{max}; the model has {nl} layers)"
        )));
    }
    if let Some(h) = head
        && h >= nh
    {
        return Err(ApiError::bad(format!(
            "head {h} out of range (the model has {nh} heads)"
        )));
    }
    Ok(())
}

pub(super) fn mean_tensors(ts: Vec<Tensor>) -> Result<Tensor> {
    <Tensor as crate::attribution::Mean>::mean_of(ts)
}

/// Runs `op` on every sample as heavy work and answers with the mean tensor (metadata
/// `averaged_over` when the request named no sample).
pub(super) async fn mean_tensor_response(
    st: &AppState,
    keys: Vec<SampleKey>,
    averaged: bool,
    op: impl Fn(&SampleKey) -> Result<Tensor> + Send + 'static,
) -> ApiResult<Response> {
    let n = keys.len();
    let t = heavy(st, move || {
        let out = keys
            .iter()
            .map(|k| {
                crate::cancel::check()?;
                op(k)
            })
            .collect::<Result<Vec<_>>>()
            .map_err(ApiError::unprocessable)?;
        mean_tensors(out).map_err(ApiError::unprocessable)
    })
    .await?;
    let mut meta = HashMap::new();
    if averaged {
        meta.insert("averaged_over".to_string(), n.to_string());
    }
    tensor_response(&[(wire::TENSOR, &t)], meta)
}

pub(super) fn mean_opt(ts: Vec<Option<Tensor>>) -> Result<Option<Tensor>> {
    if ts.iter().all(Option::is_none) {
        return Ok(None);
    }
    let all: Option<Vec<Tensor>> = ts.into_iter().collect();
    let all = all.ok_or_else(|| anyhow!("some samples returned a tensor and others did not"))?;
    mean_tensors(all).map(Some)
}

pub(super) async fn node_gradient(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::NodeGradWire>(&body, |n| n == "output_grad")?;
    let mut req = w.request;
    if req.output_grad.is_some() {
        return Err(ApiError::bad(
            "request.output_grad must be null; send the gradient as the safetensors tensor \"output_grad\"",
        ));
    }
    req.output_grad = ts.remove("output_grad");
    if let Some(rule) = &req.ig {
        rule.validate()
            .map_err(|e| ApiError::bad(format!("ig: {e:#}")))?;
    }
    if let Some(ad) = &req.adaptive {
        ad.validate()
            .map_err(|e| ApiError::bad(format!("adaptive: {e:#}")))?;
    }
    let local = st.local();
    check_node(&local, req.node_type, req.layer, req.head)?;
    let keys = request_samples(&local, &w.dataset, w.sample)?;
    let n = keys.len();
    let g = heavy(&st, move || {
        let mut out = keys
            .iter()
            .map(|k| local.node_gradient(k, &req))
            .collect::<Result<Vec<_>>>()
            .map_err(ApiError::unprocessable)?;
        if out.len() == 1 {
            return Ok(out.remove(0));
        }
        let rule = out[0].rule;
        let (mut grad, mut aw, mut grad_aw) = (vec![], vec![], vec![]);
        for g in out {
            grad.push(g.grad);
            aw.push(g.aw);
            grad_aw.push(g.grad_aw);
        }
        let avg = |v| mean_opt(v).map_err(ApiError::unprocessable);
        Ok(crate::attribution::NodeGrad {
            grad: avg(grad)?,
            aw: avg(aw)?,
            grad_aw: avg(grad_aw)?,
            completeness: None,
            converged: None,
            rule,
        })
    })
    .await?;
    let named: Vec<(&str, &Tensor)> = [("grad", &g.grad), ("aw", &g.aw), ("grad_aw", &g.grad_aw)]
        .into_iter()
        .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
        .collect();
    let scalars = crate::attribution::NodeGrad {
        grad: None,
        aw: None,
        grad_aw: None,
        ..g.clone()
    };
    let mut meta = HashMap::from([(
        wire::RESULT_KEY.to_string(),
        serde_json::to_string(&scalars)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    )]);
    if w.sample.is_none() {
        meta.insert("averaged_over".into(), n.to_string());
    }
    tensor_response(&named, meta)
}

pub(super) async fn node_forward(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::NodeForwardWire>(&body, |n| n == "upstream_sum")?;
    let mut req = w.request;
    if req.upstream_sum.is_some() {
        return Err(ApiError::bad(
            "request.upstream_sum must be null; send it as the safetensors tensor \"upstream_sum\"",
        ));
    }
    req.upstream_sum = ts.remove("upstream_sum");
    let local = st.local();
    check_node(&local, req.node_type, req.layer, req.head)?;
    let keys = request_samples(&local, &w.dataset, w.sample)?;
    mean_tensor_response(&st, keys, w.sample.is_none(), move |k| {
        local.node_forward(k, &req)
    })
    .await
}

pub(super) async fn lens_logits(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (_, mut ts) = tensor_request::<wire::LensLogitsWire>(&body, |n| n == "x")?;
    let x = ts
        .remove("x")
        .ok_or_else(|| ApiError::bad("missing tensor \"x\" (the residual [b,k,e])"))?;
    let local = st.local();
    let e = local.config().hidden_size;
    match x.dims() {
        [b, k, h] if *b > 0 && *k > 0 && *h == e => {}
        d => {
            return Err(ApiError::bad(format!(
                "tensor \"x\" must be [b,k,{e}] with b, k > 0, got {d:?}"
            )));
        }
    }
    let t = blocking(move || local.lens_logits(&x).map_err(ApiError::unprocessable)).await?;
    tensor_response(&[(wire::TENSOR, &t)], HashMap::new())
}

pub(super) async fn weight(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (w, _) = tensor_request::<wire::WeightWire>(&body, |_| false)?;
    if let Some(r) = &w.rows {
        crate::limits::BATCH_SAMPLES
            .check(r.len(), "rows")
            .map_err(|e| ApiError::bad(e.to_string()))?;
    }
    let local = st.local();
    let t = blocking(move || {
        local
            .weight(&w.name, w.rows.as_deref())
            .map_err(|e| ApiError::bad(format!("{e:#}")))
    })
    .await?;
    tensor_response(&[(wire::TENSOR, &t)], HashMap::new())
}

pub(super) async fn attribute_residual(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::ResidualWire>(&body, |n| {
        n.strip_prefix("grad.")
            .is_some_and(|i| i.parse::<usize>().is_ok())
    })?;
    if w.grads.is_empty() {
        return Err(ApiError::bad(
            "grads is empty: attribute_residual needs at least one gradient",
        ));
    }
    let mut grads = Vec::with_capacity(w.grads.len());
    for (i, g) in w.grads.iter().enumerate() {
        let grad = ts.remove(&wire::grad_name(i)).ok_or_else(|| {
            ApiError::bad(format!(
                "grads has {} entries but tensor {:?} is missing",
                w.grads.len(),
                wire::grad_name(i)
            ))
        })?;
        grads.push(crate::attribution::ResidualGrad {
            pos_ids: g.pos_ids.clone(),
            grad,
            downstream_layer: g.downstream_layer,
        });
    }
    if let Some(extra) = ts.keys().next() {
        return Err(ApiError::bad(format!(
            "tensor {extra:?} has no entry in grads ({} entries)",
            w.grads.len()
        )));
    }
    let req = crate::attribution::ResidualRequest {
        grads,
        from_layer: w.from_layer,
        to_layer: w.to_layer,
    };
    let local = st.local();
    let keys = request_samples(&local, &w.dataset, w.sample)?;
    mean_tensor_response(&st, keys, w.sample.is_none(), move |k| {
        local.attribute_residual(k, &req)
    })
    .await
}

pub(super) async fn intervene(
    State(st): State<Shared>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (w, mut ts) = tensor_request::<wire::InterveneWire>(&body, |n| n.starts_with("value."))?;
    crate::limits::INTERVENTION_SETS
        .check(w.sets.len(), "sets")
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut sets = Vec::with_capacity(w.sets.len());
    for (i, set) in w.sets.iter().enumerate() {
        let mut out = Vec::with_capacity(set.len());
        for (j, iv) in set.iter().enumerate() {
            let value = ts.remove(&wire::value_name(i, j));
            let edit = crate::model::Edit::from_parts(iv.edit, value).map_err(|e| {
                ApiError::bad(format!(
                    "sets[{i}][{j}]: {e:#} (tensor {:?})",
                    wire::value_name(i, j)
                ))
            })?;
            out.push(crate::model::Intervention {
                site: iv.site.clone(),
                positions: iv.positions.clone(),
                edit,
            });
        }
        sets.push(out);
    }
    if let Some(extra) = ts.keys().next() {
        return Err(ApiError::bad(format!(
            "tensor {extra:?} belongs to no set/intervention of the request"
        )));
    }
    let local = st.local();
    let key = SampleKey::new(&w.dataset, w.sample);
    let s = check_sample(&local, &key)?;
    for (i, set) in sets.iter().enumerate() {
        local
            .model()
            .check_interventions(s, set)
            .map_err(|e| ApiError::bad(format!("sets[{i}]: {e:#}")))?;
    }
    let opts = w.options;
    let runs = heavy(&st, move || {
        local
            .intervene(&key, &sets, &opts)
            .map_err(ApiError::unprocessable)
    })
    .await?;
    let mut names = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        names.push((wire::logits_name(i), &r.logits));
        for (l, h) in &r.hidden_states {
            names.push((wire::hidden_name(i, *l), h));
        }
    }
    let named: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    tensor_response(&named, HashMap::new())
}
