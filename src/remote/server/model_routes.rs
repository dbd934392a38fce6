//! Model, forward, getter and dataset routes.

use super::*;

pub(super) async fn status(State(st): State<Shared>) -> ApiResult<Response> {
    let local = st.local();
    let datasets = dataset_infos(&local)?;
    let (attn_cache_entries, attn_cache_bytes) = local.attn_cache_stats();
    let m = local.model();
    json(&Status {
        model: local.describe(),
        dtype: wire::dtype_name(m.dtype()).to_string(),
        device: format!("{:?}", m.device().location()),
        config: local.config().clone(),
        dataset_sizes: datasets
            .iter()
            .map(|d| (d.dataset.clone(), d.count))
            .collect(),
        datasets,
        cache: local.cache_stats(),
        attn_cache_entries,
        attn_cache_bytes,
        version: env!("CARGO_PKG_VERSION").to_string(),
        dataset_options: local.dataset_options().cloned(),
    })
}

pub(super) async fn tokenizer(State(st): State<Shared>) -> ApiResult<Response> {
    let tok =
        st.tokenizer_json.read().map(|t| t.clone()).map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "tokenizer lock poisoned")
        })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, wire::JSON)],
        tok.as_str().to_owned(),
    )
        .into_response())
}

pub(super) async fn load_model(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<LoadModelRequest>,
) -> ApiResult<Response> {
    let dtype = match &req.dtype {
        None => st.opts.dtype,
        Some(d) => parse_dtype(d).map_err(|e| ApiError::bad(format!("dtype: {e}")))?,
    };
    let dir = PathBuf::from(&req.model_path);
    if !dir.join("config.json").is_file() {
        return Err(ApiError::bad(format!(
            "model_path {:?} is not a model folder (no config.json)",
            req.model_path
        )));
    }
    let st2 = st.clone();
    heavy(&st, move || {
        let local = Local::load_with(&dir, dtype, &st2.opts.device, &st2.opts.load)
            .map_err(ApiError::unprocessable)?;
        let fresh = AppState::new(local, st2.opts.clone()).map_err(ApiError::unprocessable)?;
        let backend = fresh.local();
        let tok = fresh.tokenizer_json.read().map(|t| t.clone()).ok();
        if let (Ok(mut b), Ok(mut t), Some(tok)) =
            (st2.backend.write(), st2.tokenizer_json.write(), tok)
        {
            *b = backend;
            *t = tok;
        }
        Ok(())
    })
    .await?;
    status(State(st)).await
}

pub(super) fn forward_one(
    local: &Local,
    dataset: &str,
    sample: &crate::model::SampleInput,
    capture: &crate::model::CaptureSpec,
    force: bool,
) -> ApiResult<ForwardResponse> {
    let seq_len = local
        .forward_sample(dataset, sample, capture, force)
        .map_err(ApiError::unprocessable)?;
    Ok(ForwardResponse {
        dataset: dataset.to_string(),
        index: sample.index,
        seq_len,
    })
}

pub(super) fn check_dataset_name(name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Err(ApiError::bad("dataset name is empty"));
    }
    Ok(())
}

/// The dataset name and capture spec of a forward request, checked.
fn forward_capture(
    dataset: &str,
    capture: &wire::CaptureWire,
) -> ApiResult<crate::model::CaptureSpec> {
    check_dataset_name(dataset)?;
    capture
        .to_spec()
        .map_err(|e| ApiError::bad(format!("{e:#}")))
}

/// A prompt too long for the model is refused (413) before the heavy-work lock.
fn check_prompt(local: &Local, s: &crate::model::SampleInput) -> ApiResult<()> {
    local.check_prompt(&s.prompt).map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("sample {}: {e:#}", s.index),
        )
    })
}

pub(super) async fn prompt_sample(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<wire::PromptSampleRequest>,
) -> ApiResult<Response> {
    let local = st.local();
    local
        .check_prompt(&req.prompt)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{e:#}")))?;
    let s = blocking(move || {
        req.spec
            .build(local.tokenizer(), &req.prompt)
            .map_err(|e| ApiError::bad(format!("{e:#}")))
    })
    .await?;
    json(&wire::PromptSampleResponse {
        sample: crate::model::SampleInput {
            index: s.index,
            prompt: s.prompt.clone(),
            labels: s.labels.clone(),
            candidate_ids: s.candidate_ids.clone(),
            answer_indices: s.answer_indices.clone(),
            objective: s.objective.clone(),
        },
        answers: s.answers.clone(),
        spans: s.spans.clone(),
        n_tokens: s.n_tokens.unwrap_or(0),
    })
}

pub(super) async fn forward(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<ForwardRequest>,
) -> ApiResult<Response> {
    let capture = forward_capture(&req.dataset, &req.capture)?;
    let local = st.local();
    check_prompt(&local, &req.sample)?;
    let r = heavy(&st, move || {
        forward_one(&local, &req.dataset, &req.sample, &capture, req.force)
    })
    .await?;
    json(&r)
}

pub(super) async fn batch_forward(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<BatchForwardRequest>,
) -> ApiResult<Response> {
    let capture = forward_capture(&req.dataset, &req.capture)?;
    crate::limits::BATCH_SAMPLES
        .check(req.samples.len(), "samples in /batch_forward")
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let captures = match &req.captures {
        None => vec![capture; req.samples.len()],
        Some(c) if c.len() != req.samples.len() => {
            return Err(ApiError::bad(format!(
                "{} captures for {} samples (give one per sample, or none)",
                c.len(),
                req.samples.len()
            )));
        }
        Some(c) => c
            .iter()
            .map(|w| w.to_spec().map_err(|e| ApiError::bad(format!("{e:#}"))))
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let batch = req.batch.unwrap_or(1);
    crate::limits::FORWARD_BATCH
        .check(batch, "batch")
        .map_err(|e| ApiError::bad(e.to_string()))?;
    if batch == 0 {
        return Err(ApiError::bad("batch must be at least 1"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(s) = req.samples.iter().find(|s| !seen.insert(s.index)) {
        return Err(ApiError::bad(format!(
            "sample index {} appears twice in the batch",
            s.index
        )));
    }
    let local = st.local();
    for s in &req.samples {
        check_prompt(&local, s)?;
    }
    let results = heavy(&st, move || {
        let lens = local
            .forward_samples(
                &req.dataset,
                &req.samples,
                &captures,
                req.force,
                batch,
                &mut |_| Ok(()),
            )
            .map_err(ApiError::unprocessable)?;
        Ok(BatchForwardResponse {
            dataset: req.dataset.clone(),
            results: req
                .samples
                .iter()
                .zip(lens)
                .map(|(s, seq_len)| ForwardResponse {
                    dataset: req.dataset.clone(),
                    index: s.index,
                    seq_len,
                })
                .collect(),
        })
    })
    .await?;
    json(&results)
}

/// One getter call on the backend (validated request, one sample).
pub(super) fn run_getter(
    local: &Local,
    g: Getter,
    req: &GetRequest,
    key: &SampleKey,
) -> Result<Tensor> {
    let act = g.act(req.layer.unwrap_or(0), &req.heads);
    local.activation(key, &act, req.pos_ids.as_deref())
}

/// Mean of a getter over samples; every sample must give the same shape.
pub(super) fn mean_getter(
    local: &Local,
    g: Getter,
    req: &GetRequest,
    indices: &[usize],
) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    let mut first_shape = None;
    for &i in indices {
        let key = SampleKey::new(req.dataset.clone(), i);
        let t = run_getter(local, g, req, &key)?;
        match &first_shape {
            None => first_shape = Some((i, t.dims().to_vec())),
            Some((i0, s0)) if s0.as_slice() != t.dims() => bail!(
                "cannot average over dataset {:?}: sample {i0} gives shape {s0:?} but sample {i} \
                 gives {:?} (select the same pos_ids on equal-length prompts, or name a sample)",
                req.dataset,
                t.dims()
            ),
            Some(_) => {}
        }
        sum = Some(match sum {
            None => t,
            Some(s) => (s + t)?,
        });
    }
    let sum = sum.ok_or_else(|| anyhow!("dataset {:?} has no samples", req.dataset))?;
    Ok((sum / indices.len() as f64)?)
}

pub(super) async fn getter(st: Shared, g: Getter, req: GetRequest) -> ApiResult<Response> {
    let local = st.local();
    let dtype = wire_dtype(&req.dtype)?;
    let indices = match req.sample {
        Some(i) => vec![i],
        None => dataset_samples(&local, &req.dataset)?,
    };
    if indices.is_empty() {
        return Err(ApiError::not_found(format!(
            "dataset {:?} has no samples to average over",
            req.dataset
        )));
    }
    for &i in &indices {
        let seq_len = check_sample(&local, &SampleKey::new(req.dataset.clone(), i))?;
        check_get(&local, g, &req, seq_len)?;
    }
    // An evicted sample is recomputed: heavy work, so it takes the heavy lock.
    let all_resident = indices
        .iter()
        .all(|&i| local.is_resident(&SampleKey::new(req.dataset.clone(), i)));
    let averaged = req.sample.is_none();
    let n = indices.len();
    let work = move || -> ApiResult<(Tensor, GetRequest)> {
        let t = match req.sample {
            Some(i) => run_getter(&local, g, &req, &SampleKey::new(req.dataset.clone(), i)),
            None => mean_getter(&local, g, &req, &indices),
        }
        .map_err(ApiError::unprocessable)?;
        let t = t
            .to_dtype(dtype)
            .map_err(|e| ApiError::unprocessable(e.into()))?;
        Ok((t, req))
    };
    let (t, req) = if all_resident {
        blocking(work).await?
    } else {
        heavy(&st, work).await?
    };
    let mut meta = HashMap::from([
        ("dataset".to_string(), req.dataset.clone()),
        (
            "getter".to_string(),
            g.path().trim_start_matches('/').to_string(),
        ),
    ]);
    if averaged {
        meta.insert("averaged_over".into(), n.to_string());
    }
    tensor_response(&[(wire::TENSOR, &t)], meta)
}

macro_rules! getter_handler {
    ($name:ident, $g:expr) => {
        pub(super) async fn $name(
            State(st): State<Shared>,
            JsonBody(req): JsonBody<GetRequest>,
        ) -> ApiResult<Response> {
            getter(st, $g, req).await
        }
    };
}
getter_handler!(hidden_states, Getter::HiddenStates);
getter_handler!(attn_output, Getter::AttnOutput);
getter_handler!(mlp_output, Getter::MlpOutput);
getter_handler!(head_output, Getter::HeadOutput);
getter_handler!(attn_weights, Getter::AttnWeights);
getter_handler!(logits, Getter::Logits);
getter_handler!(attn_out, Getter::AttnOut);
getter_handler!(input_norm_var, Getter::InputNormVar);
getter_handler!(post_attn_norm_var, Getter::PostAttnNormVar);

pub(super) async fn list_datasets(State(st): State<Shared>) -> ApiResult<Response> {
    let list = dataset_infos(&st.local())?;
    json(&list)
}

pub(super) async fn list_samples(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sample_ids = dataset_samples(&st.local(), &id)?;
    json(&DatasetInfo {
        dataset: id,
        count: sample_ids.len(),
        sample_ids,
    })
}

pub(super) async fn sample_info(
    State(st): State<Shared>,
    Path((id, index)): Path<(String, String)>,
) -> ApiResult<Response> {
    let index: usize = index.parse().map_err(|_| {
        ApiError::bad(format!(
            "sample index {index:?} is not a non-negative integer"
        ))
    })?;
    let local = st.local();
    let key = SampleKey::new(id.clone(), index);
    let seq_len = check_sample(&local, &key)?;
    let input = local.sample_meta(&key).map_err(ApiError::unprocessable)?;
    json(&SampleInfo {
        dataset: id,
        index,
        seq_len,
        input,
        resident: local.is_resident(&key),
    })
}

pub(super) async fn delete_dataset(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let local = st.local();
    dataset_samples(&local, &id)?;
    local
        .drop_dataset(&id)
        .map_err(|e| ApiError::not_found(format!("{e:#}")))?;
    json(&Ack {
        status: "ok".into(),
        message: format!("dataset {id:?} deleted"),
    })
}

/// A folder under the server's store: relative, plain names only (no `..`, no root).
fn store_dir(st: &AppState, dir: &str) -> ApiResult<std::path::PathBuf> {
    let Some(root) = &st.opts.store else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this server has no activation store: start minarc serve with --store DIR",
        ));
    };
    let rel = std::path::Path::new(dir);
    let plain = !dir.is_empty()
        && dir.len() <= 255
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(ApiError::bad(format!(
            "store folder {dir:?}: a relative folder name under the server's store (no '..', no absolute path)"
        )));
    }
    if rel.starts_with("spill") {
        return Err(ApiError::bad(
            "the store folder 'spill' is the server's own",
        ));
    }
    Ok(root.join(rel))
}

pub(super) async fn save_dataset(
    State(st): State<Shared>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<StoreRequest>,
) -> ApiResult<Response> {
    let dir = store_dir(&st, &req.dir)?;
    let local = st.local();
    dataset_samples(&local, &id)?;
    let dataset = id.clone();
    let count = heavy(&st, move || {
        Local::save_dataset(&local, &id, &dir, &|_, _| {}).map_err(ApiError::unprocessable)
    })
    .await?;
    json(&StoreReply { dataset, count })
}

pub(super) async fn load_dataset(
    State(st): State<Shared>,
    JsonBody(req): JsonBody<StoreRequest>,
) -> ApiResult<Response> {
    let dir = store_dir(&st, &req.dir)?;
    if !dir.join(crate::backend::disk::INDEX).is_file() {
        return Err(ApiError::not_found(format!(
            "no saved dataset {:?} in the store",
            req.dir
        )));
    }
    let local = st.local();
    let name = req.name.clone();
    let (dataset, count) = heavy(&st, move || {
        Local::load_dataset(&local, &dir, name.as_deref(), &|_, _| {})
            .map_err(ApiError::unprocessable)
    })
    .await?;
    json(&StoreReply { dataset, count })
}

pub(super) async fn delete_all(State(st): State<Shared>) -> ApiResult<Response> {
    let local = st.local();
    let names: Vec<String> = local
        .datasets()
        .map_err(ApiError::unprocessable)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in &names {
        // A dataset deleted concurrently is fine to miss.
        let _ = local.drop_dataset(n);
    }
    json(&Ack {
        status: "ok".into(),
        message: format!("{} datasets deleted", names.len()),
    })
}

pub(super) async fn empty_cache(State(st): State<Shared>) -> ApiResult<Response> {
    let local = st.local();
    let (entries, bytes) = local.attn_cache_stats();
    local.clear_attn_cache();
    json(&Ack {
        status: "ok".into(),
        message: format!("attention-weights cache emptied ({entries} entries, {bytes} bytes)"),
    })
}

pub(super) async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no endpoint {} {}", req.method(), req.uri().path()))
}

pub(super) async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}
