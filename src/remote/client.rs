//! [`Remote`]: the [`Backend`] trait over HTTP, talking to `minarc serve` (S8 with its defects
//! fixed: the config and tokenizer come from the server, getters are positional like the
//! trait, errors read "server at URL says: ...").

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{
    self, BatchForwardRequest, BatchForwardResponse, CaptureWire, DatasetInfo, ErrorBody,
    ForwardRequest, ForwardResponse, GetRequest, Getter, LoadModelRequest, SampleInfo, Status,
};
use super::wire::{LensLogitsWire, NodeForwardWire, NodeGradWire, ResidualGradMeta, ResidualWire};
use crate::attribution::{NodeForwardRequest, NodeGrad, NodeGradRequest, ResidualRequest};
use crate::backend::{Act, Backend, HeadSel, InterveneOptions, SampleKey};
use crate::model::{CaptureSpec, ModelConfig, SampleInput};
use crate::model::{IntervenedRun, Intervention};

/// A model served by `minarc serve` on another machine, usable wherever a [`Backend`] is.
pub struct Remote {
    conn: Conn,
    config: ModelConfig,
    tokenizer: tokenizers::Tokenizer,
    model: String,
    info: ModelExtras,
    wire_dtype: DType,
}

/// What the server says about its model beyond config and tokenizer.
#[derive(Default)]
struct ModelExtras {
    dataset_options: Option<serde_json::Value>,
}

/// The HTTP connection: URL, token, agent.
struct Conn {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A body to send.
enum Body<'a> {
    None,
    Json(Vec<u8>),
    Octet(&'a [u8]),
}

impl Remote {
    /// Connects to `url` (e.g. `http://127.0.0.1:8000`) with an optional bearer token, and
    /// fetches the model config and tokenizer from the server.
    pub fn connect(url: &str, token: Option<&str>) -> Result<Self> {
        let url = url.trim_end_matches('/').to_string();
        if !url.starts_with("http://") {
            bail!("server URL {url:?} must start with http:// (TLS is not supported)");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        let conn = Conn {
            url,
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            agent,
        };
        let (config, tokenizer, model, info) = conn.model_info()?;
        Ok(Self {
            conn,
            config,
            tokenizer,
            model,
            info,
            wire_dtype: DType::F32,
        })
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.conn.url
    }

    fn call(&self, method: &str, path: &str, body: Body) -> Result<Vec<u8>> {
        self.conn.call(method, path, body)
    }

    /// Dtype the server sends tensors in (f32 default; f16/bf16 halve the bytes and round).
    /// Tensors are always returned as f32.
    pub fn set_wire_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!("wire dtype {dtype:?} not supported (f32, f16 or bf16)");
        }
        self.wire_dtype = dtype;
        Ok(())
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<Status> {
        self.conn.get_json("/status")
    }

    /// Loads another model on the server (`POST /load_model`; its datasets are dropped).
    pub fn load_model(&mut self, model_path: &str, dtype: Option<&str>) -> Result<()> {
        let req = LoadModelRequest {
            model_path: model_path.to_string(),
            dtype: dtype.map(str::to_string),
        };
        let _: Status = self.post_json("/load_model", &req)?;
        (self.config, self.tokenizer, self.model, self.info) = self.conn.model_info()?;
        Ok(())
    }

    /// Forwards many samples into `dataset`. With `progress`, one `/forward` per sample with a
    /// progress bar; without, one `/batch_forward` call. Returns the seq_len of each sample.
    pub fn batch_forward(
        &self,
        dataset: &str,
        samples: &[SampleInput],
        capture: &CaptureSpec,
        force: bool,
        progress: bool,
    ) -> Result<Vec<usize>> {
        if !progress {
            let req = BatchForwardRequest {
                dataset: dataset.to_string(),
                samples: samples.to_vec(),
                capture: CaptureWire::from_spec(capture),
                captures: None,
                batch: None,
                force,
            };
            let r: BatchForwardResponse = self.post_json("/batch_forward", &req)?;
            return Ok(r.results.iter().map(|r| r.seq_len).collect());
        }
        let bar = indicatif::ProgressBar::new(samples.len() as u64);
        bar.set_message(format!("forward {dataset} on {}", self.url()));
        let mut out = Vec::with_capacity(samples.len());
        for s in samples {
            out.push(self.forward_sample(dataset, s, capture, force)?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// A getter with an optional sample: `sample: None` is the mean over the dataset's samples
    /// (all must give the same shape). `layer` is ignored by [`Getter::Logits`].
    pub fn get(
        &self,
        getter: Getter,
        dataset: &str,
        sample: Option<usize>,
        layer: usize,
        heads: &HeadSel,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        let req = GetRequest {
            dataset: dataset.to_string(),
            sample,
            layer: getter.needs_layer().then_some(layer),
            heads: if getter.uses_heads() {
                wire::head_arg(heads)
            } else {
                None
            },
            pos_ids: pos_ids.map(<[usize]>::to_vec),
            dtype: (self.wire_dtype != DType::F32)
                .then(|| wire::dtype_name(self.wire_dtype).to_string()),
        };
        let bytes = self.call("POST", getter.path(), Body::Json(serde_json::to_vec(&req)?))?;
        wire::single_tensor(&bytes).with_context(|| format!("response of {}", getter.path()))
    }

    /// Sample info (input, seq_len, resident).
    pub fn sample_info(&self, key: &SampleKey) -> Result<SampleInfo> {
        self.get_json(&format!(
            "/datasets/{}/samples/{}",
            path_segment(&key.dataset)?,
            key.index
        ))
    }

    /// Deletes every dataset on the server.
    pub fn clear_all_datasets(&self) -> Result<()> {
        self.call("DELETE", "/datasets", Body::None).map(|_| ())
    }

    /// Empties the server's attention-weights cache.
    pub fn empty_cache(&self) -> Result<()> {
        self.call("POST", "/empty_cache", Body::Json(b"{}".to_vec()))
            .map(|_| ())
    }

    /// POSTs a tensor-carrying request (see [`wire::encode_request`]) and returns the
    /// response's tensors by name (f32) and its metadata.
    pub fn post_tensors<T: Serialize>(
        &self,
        path: &str,
        req: &T,
        tensors: &[(&str, &Tensor)],
    ) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
        let body = wire::encode_request(req, tensors)?;
        let bytes = self.call("POST", path, Body::Octet(&body))?;
        let (ts, meta) =
            wire::decode_tensors(&bytes).with_context(|| format!("response of {path}"))?;
        let ts = ts
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok((ts, meta))
    }

    /// A13 on the server; `sample: None` averages the tensors over the dataset (the
    /// completeness report is then None).
    pub fn node_gradient_on(
        &self,
        dataset: &str,
        sample: Option<usize>,
        req: &NodeGradRequest,
    ) -> Result<NodeGrad> {
        let w = NodeGradWire {
            dataset: dataset.to_string(),
            sample,
            request: NodeGradRequest {
                output_grad: None,
                ..req.clone()
            },
        };
        let named: Vec<(&str, &Tensor)> = req
            .output_grad
            .as_ref()
            .map(|t| ("output_grad", t))
            .into_iter()
            .collect();
        let (mut ts, meta) = self.post_tensors("/node_gradient", &w, &named)?;
        let scalars = meta.get(wire::RESULT_KEY).ok_or_else(|| {
            anyhow!(
                "server at {} sent no node-gradient result metadata",
                self.url()
            )
        })?;
        let mut g: NodeGrad = serde_json::from_str(scalars)
            .with_context(|| format!("node-gradient result from server at {}", self.url()))?;
        g.grad = ts.remove("grad");
        g.aw = ts.remove("aw");
        g.grad_aw = ts.remove("grad_aw");
        Ok(g)
    }

    /// A15 on the server; `sample: None` averages over the dataset.
    pub fn node_forward_on(
        &self,
        dataset: &str,
        sample: Option<usize>,
        req: &NodeForwardRequest,
    ) -> Result<Tensor> {
        let w = NodeForwardWire {
            dataset: dataset.to_string(),
            sample,
            request: NodeForwardRequest {
                upstream_sum: None,
                ..req.clone()
            },
        };
        let named: Vec<(&str, &Tensor)> = req
            .upstream_sum
            .as_ref()
            .map(|t| ("upstream_sum", t))
            .into_iter()
            .collect();
        let (mut ts, _) = self.post_tensors("/node_forward", &w, &named)?;
        ts.remove(wire::TENSOR)
            .ok_or_else(|| anyhow!("server at {} sent no tensor", self.url()))
    }

    /// A18 on the server; `sample: None` averages over the dataset.
    pub fn attribute_residual_on(
        &self,
        dataset: &str,
        sample: Option<usize>,
        req: &ResidualRequest,
    ) -> Result<Tensor> {
        let w = ResidualWire {
            dataset: dataset.to_string(),
            sample,
            grads: req
                .grads
                .iter()
                .map(|g| ResidualGradMeta {
                    pos_ids: g.pos_ids.clone(),
                    downstream_layer: g.downstream_layer,
                })
                .collect(),
            from_layer: req.from_layer,
            to_layer: req.to_layer,
        };
        let names: Vec<String> = (0..req.grads.len()).map(wire::grad_name).collect();
        let named: Vec<(&str, &Tensor)> = names
            .iter()
            .zip(&req.grads)
            .map(|(n, g)| (n.as_str(), &g.grad))
            .collect();
        let (mut ts, _) = self.post_tensors("/attribute_residual", &w, &named)?;
        ts.remove(wire::TENSOR)
            .ok_or_else(|| anyhow!("server at {} sent no tensor", self.url()))
    }

    fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        self.conn.get_json(path)
    }

    /// A sample of any prompt resolved by the server's tokenizer (`POST /prompt_sample`): send
    /// the returned `sample` to `forward_sample`.
    pub fn prompt_sample(
        &self,
        prompt: &str,
        spec: &crate::puzzle::sample::PromptSpec,
    ) -> Result<wire::PromptSampleResponse> {
        self.post_json(
            "/prompt_sample",
            &wire::PromptSampleRequest {
                prompt: prompt.to_string(),
                spec: spec.clone(),
            },
        )
    }

    fn post_json<T: Serialize, R: DeserializeOwned>(&self, path: &str, req: &T) -> Result<R> {
        let bytes = self.call("POST", path, Body::Json(serde_json::to_vec(req)?))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected reply from server at {} for {path}", self.url()))
    }
}

impl Conn {
    /// Config, tokenizer and description of the served model.
    fn model_info(&self) -> Result<(ModelConfig, tokenizers::Tokenizer, String, ModelExtras)> {
        let st: Status = self.get_json("/status")?;
        let tok = self.call("GET", "/tokenizer", Body::None)?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&tok)
            .map_err(|e| anyhow!("tokenizer from server at {}: {e}", self.url))?;
        let extras = ModelExtras {
            dataset_options: st.dataset_options,
        };
        Ok((st.config, tokenizer, st.model, extras))
    }

    fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R> {
        let bytes = self.call("GET", path, Body::None)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected reply from server at {} for {path}", self.url))
    }

    /// One HTTP exchange; a non-2xx answer becomes "server at URL says: <error> (HTTP code)".
    fn call(&self, method: &str, path: &str, body: Body) -> Result<Vec<u8>> {
        let uri = format!("{}{}", self.url, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&uri);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&uri);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self.agent.post(&uri);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Body::None => r.send_empty(),
                    Body::Json(b) => r.header("Content-Type", wire::JSON).send(&b[..]),
                    Body::Octet(b) => r.header("Content-Type", wire::OCTET_STREAM).send(b),
                }
            }
        };
        let mut resp = result
            .map_err(|e| anyhow!("cannot reach server at {} ({method} {path}): {e}", self.url))?;
        let code = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| {
                anyhow!(
                    "reading reply of server at {} ({method} {path}): {e}",
                    self.url
                )
            })?;
        if !(200..300).contains(&code) {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ServerError {
                url: self.url.clone(),
                code,
                message: msg,
                method: method.to_string(),
                path: path.to_string(),
            }
            .into());
        }
        Ok(bytes)
    }
}

/// An error answer of the server (typed, so callers can branch on the status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The server's URL.
    pub url: String,
    /// HTTP status.
    pub code: u16,
    /// The server's `{"error": ...}` message.
    pub message: String,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server at {} says: {} (HTTP {} on {} {})",
            self.url, self.message, self.code, self.method, self.path
        )
    }
}

impl std::error::Error for ServerError {}

/// Whether `e` is the server's 404 (unknown dataset or sample).
fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ServerError>()
        .is_some_and(|s| s.code == 404)
}

/// A dataset name as one URL path segment (percent-encoding the few unsafe bytes).
fn path_segment(name: &str) -> Result<String> {
    if name.is_empty() {
        bail!("empty dataset name");
    }
    Ok(name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect())
}

impl Backend for Remote {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn describe(&self) -> String {
        format!("remote {}: {}", self.url(), self.model)
    }

    fn dataset_options(&self) -> Option<&serde_json::Value> {
        self.info.dataset_options.as_ref()
    }

    /// One `/batch_forward` request per batch, so the server forwards `batch` samples at once.
    fn forward_samples(
        &self,
        dataset: &str,
        inputs: &[SampleInput],
        captures: &[CaptureSpec],
        force: bool,
        batch: usize,
        on_done: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Vec<usize>> {
        crate::backend::check_forward_samples(inputs, captures, batch)?;
        let mut out = Vec::with_capacity(inputs.len());
        for (chunk, caps) in inputs.chunks(batch).zip(captures.chunks(batch)) {
            crate::cancel::check()?;
            let req = BatchForwardRequest {
                dataset: dataset.to_string(),
                samples: chunk.to_vec(),
                capture: CaptureWire::default(),
                captures: Some(caps.iter().map(CaptureWire::from_spec).collect()),
                batch: Some(batch),
                force,
            };
            let r: BatchForwardResponse = self.post_json("/batch_forward", &req)?;
            anyhow::ensure!(
                r.results.len() == chunk.len(),
                "the server answered {} results for {} samples",
                r.results.len(),
                chunk.len()
            );
            out.extend(r.results.iter().map(|r| r.seq_len));
            on_done(chunk.len())?;
        }
        Ok(out)
    }

    fn forward_sample(
        &self,
        dataset: &str,
        input: &SampleInput,
        capture: &CaptureSpec,
        force: bool,
    ) -> Result<usize> {
        let req = ForwardRequest {
            dataset: dataset.to_string(),
            sample: input.clone(),
            capture: CaptureWire::from_spec(capture),
            force,
        };
        let r: ForwardResponse = self.post_json("/forward", &req)?;
        Ok(r.seq_len)
    }

    fn has_sample(&self, key: &SampleKey) -> Result<bool> {
        match self.sample_info(key) {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn datasets(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(self
            .get_json::<Vec<DatasetInfo>>("/datasets")?
            .into_iter()
            .map(|d| (d.dataset, d.sample_ids))
            .collect())
    }

    fn save_dataset(&self, dataset: &str, dir: &str) -> Result<usize> {
        let r: crate::remote::wire::StoreReply = self.post_json(
            &format!("/datasets/{}/save", path_segment(dataset)?),
            &crate::remote::wire::StoreRequest {
                dir: dir.to_string(),
                name: None,
            },
        )?;
        Ok(r.count)
    }

    fn load_dataset(&self, dir: &str, name: Option<&str>) -> Result<(String, usize)> {
        let r: crate::remote::wire::StoreReply = self.post_json(
            "/datasets/load",
            &crate::remote::wire::StoreRequest {
                dir: dir.to_string(),
                name: name.map(str::to_string),
            },
        )?;
        Ok((r.dataset, r.count))
    }

    fn drop_dataset(&self, dataset: &str) -> Result<()> {
        self.call(
            "DELETE",
            &format!("/datasets/{}", path_segment(dataset)?),
            Body::None,
        )
        .map(|_| ())
    }

    fn seq_len(&self, key: &SampleKey) -> Result<usize> {
        Ok(self.sample_info(key)?.seq_len)
    }

    fn activation(&self, key: &SampleKey, act: &Act, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        let (getter, layer, heads) = wire::getter_of(act);
        self.get(
            getter,
            &key.dataset,
            Some(key.index),
            layer,
            &heads,
            pos_ids,
        )
    }

    fn lens_logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let (mut ts, _) = self.post_tensors("/lens_logits", &LensLogitsWire {}, &[("x", &x)])?;
        ts.remove(wire::TENSOR)
            .ok_or_else(|| anyhow!("server at {} sent no tensor", self.url()))
    }

    fn sample_meta(&self, key: &SampleKey) -> Result<SampleInput> {
        Ok(self.sample_info(key)?.input)
    }

    fn weight(&self, name: &str, rows: Option<&[usize]>) -> Result<Tensor> {
        let w = wire::WeightWire {
            name: name.to_string(),
            rows: rows.map(<[usize]>::to_vec),
        };
        let (mut ts, _) = self.post_tensors("/weight", &w, &[])?;
        ts.remove(wire::TENSOR)
            .ok_or_else(|| anyhow!("server at {} sent no tensor", self.url()))
    }

    fn node_gradient(&self, key: &SampleKey, req: &NodeGradRequest) -> Result<NodeGrad> {
        self.node_gradient_on(&key.dataset, Some(key.index), req)
    }

    fn node_forward(&self, key: &SampleKey, req: &NodeForwardRequest) -> Result<Tensor> {
        self.node_forward_on(&key.dataset, Some(key.index), req)
    }

    fn attribute_residual(&self, key: &SampleKey, req: &ResidualRequest) -> Result<Tensor> {
        self.attribute_residual_on(&key.dataset, Some(key.index), req)
    }

    fn intervene(
        &self,
        key: &SampleKey,
        sets: &[Vec<Intervention>],
        opts: &InterveneOptions,
    ) -> Result<Vec<IntervenedRun>> {
        let w = wire::InterveneWire {
            dataset: key.dataset.clone(),
            sample: key.index,
            sets: sets
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|iv| wire::InterventionWire {
                            site: iv.site.clone(),
                            positions: iv.positions.clone(),
                            edit: iv.edit.kind(),
                        })
                        .collect()
                })
                .collect(),
            options: opts.clone(),
        };
        let mut names = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            for (j, iv) in set.iter().enumerate() {
                if let Some(t) = iv.edit.value() {
                    names.push((wire::value_name(i, j), t.to_dtype(DType::F32)?));
                }
            }
        }
        let named: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let (mut ts, _) = self.post_tensors("/intervene", &w, &named)?;
        (0..sets.len())
            .map(|i| {
                let logits = ts.remove(&wire::logits_name(i)).ok_or_else(|| {
                    anyhow!("server at {} sent no logits for set {i}", self.url())
                })?;
                let hidden_states = opts
                    .hidden_layers
                    .iter()
                    .map(|&l| {
                        ts.remove(&wire::hidden_name(i, l))
                            .map(|t| (l, t))
                            .ok_or_else(|| {
                                anyhow!(
                                    "server at {} sent no layer-{l} residual for set {i}",
                                    self.url()
                                )
                            })
                    })
                    .collect::<Result<_>>()?;
                Ok(IntervenedRun {
                    logits,
                    hidden_states,
                })
            })
            .collect()
    }
}
