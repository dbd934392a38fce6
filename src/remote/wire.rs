//! The wire format of `minarc serve` (S3, S4), shared by the server and the [`super::Remote`]
//! client.
//!
//! * Metadata travels as small JSON bodies (`Content-Type: application/json`).
//! * Tensors travel as **safetensors** bytes (`Content-Type: application/octet-stream`), in any
//!   dtype safetensors knows (f32 by default; f16/bf16 on request). A response carrying one
//!   tensor names it `tensor`; a pair is `first` / `second`.
//! * A request carrying tensors is **one safetensors blob** whose `__metadata__` holds the JSON
//!   request under the key `request` (see [`encode_request`]); its tensors are named by the
//!   endpoint (e.g. `output_grad`).
//! * Every error is a 4xx/5xx with the JSON body `{"error": "..."}` naming the problem.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::attribution::{NodeForwardRequest, NodeGradRequest};
use crate::backend::{Act, CacheStats, HeadSel};
use crate::model::{CaptureSpec, ModelConfig, SampleInput, parse_dtype};

/// Content type of safetensors bodies.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Content type of JSON bodies.
pub const JSON: &str = "application/json";
/// Name of the single tensor in a one-tensor response.
pub const TENSOR: &str = "tensor";
/// `__metadata__` key holding the JSON request in a tensor-carrying request.
pub const REQUEST_KEY: &str = "request";

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the offending field or value.
    pub error: String,
}

/// A cached dataset: its name and sample indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Dataset name.
    pub dataset: String,
    /// Sample indices (sorted).
    pub sample_ids: Vec<usize>,
    /// Number of samples.
    pub count: usize,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The model (path, sizes, dtype, device).
    pub model: String,
    /// Compute dtype name.
    pub dtype: String,
    /// Compute device.
    pub device: String,
    /// The full model configuration (every field of config.json).
    pub config: ModelConfig,
    /// Cached datasets.
    pub datasets: Vec<DatasetInfo>,
    /// Dataset name → sample count.
    pub dataset_sizes: HashMap<String, usize>,
    /// Activation-cache figures (bytes, budget, evictions).
    pub cache: CacheStats,
    /// Attention-weights cache entries.
    pub attn_cache_entries: usize,
    /// Attention-weights cache bytes.
    pub attn_cache_bytes: usize,
    /// Server crate version.
    pub version: String,
    /// The model's `gen_dataset` options (its `minarc.json`), when it records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_options: Option<serde_json::Value>,
}

/// `POST /load_model`: replaces the model (all datasets are dropped).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadModelRequest {
    /// A Hugging Face folder on the server (config.json, safetensors, tokenizer.json).
    pub model_path: String,
    /// Compute dtype (f32, f16, bf16); default: the server's `--dtype`.
    #[serde(default)]
    pub dtype: Option<String>,
}

/// What a forward stores (the wire form of [`CaptureSpec`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureWire {
    /// Layers to store (0..=L); null = all.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Absolute positions to store (strictly increasing); null = all.
    #[serde(default)]
    pub positions: Option<Vec<usize>>,
    /// Storage dtype (f32, f16, bf16); null = f32.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Also store logits.
    #[serde(default)]
    pub logits: bool,
}

impl CaptureWire {
    /// The wire form of a capture spec.
    pub fn from_spec(spec: &CaptureSpec) -> Self {
        Self {
            layers: spec.layers.clone(),
            positions: spec.positions.clone(),
            dtype: Some(dtype_name(spec.dtype).to_string()),
            logits: spec.logits,
        }
    }

    /// The capture spec it describes.
    pub fn to_spec(&self) -> Result<CaptureSpec> {
        Ok(CaptureSpec {
            layers: self.layers.clone(),
            positions: self.positions.clone(),
            dtype: match &self.dtype {
                None => DType::F32,
                Some(d) => parse_dtype(d).context("capture.dtype")?,
            },
            logits: self.logits,
        })
    }
}

/// `POST /forward`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// Dataset to store the sample in.
    pub dataset: String,
    /// The sample (its `index` is the sample id).
    pub sample: SampleInput,
    /// What to store (default: everything, f32).
    #[serde(default)]
    pub capture: CaptureWire,
    /// Recompute even when cached.
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /forward` (and one entry of a batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardResponse {
    /// Dataset name.
    pub dataset: String,
    /// Sample index.
    pub index: usize,
    /// Token count.
    pub seq_len: usize,
}

/// `POST /batch_forward`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchForwardRequest {
    /// Dataset to store the samples in.
    pub dataset: String,
    /// The samples.
    pub samples: Vec<SampleInput>,
    /// What to store.
    #[serde(default)]
    pub capture: CaptureWire,
    /// What to store of each sample (one per sample; replaces `capture` when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captures: Option<Vec<CaptureWire>>,
    /// Samples per forward on the server (right-padded to the longest; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Recompute even when cached.
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /batch_forward`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchForwardResponse {
    /// Dataset name.
    pub dataset: String,
    /// One entry per sample, in request order.
    pub results: Vec<ForwardResponse>,
}

/// A head selection on the wire: an int, a list of ints, or null (= every head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeadArg {
    /// One head (H = the MLP pseudo-head for `/head_output`).
    One(usize),
    /// Several heads.
    Many(Vec<usize>),
}

/// Converts the wire head selection to a [`HeadSel`] (None = All).
pub fn head_sel(arg: &Option<HeadArg>) -> HeadSel {
    match arg {
        None => HeadSel::All,
        Some(HeadArg::One(h)) => HeadSel::One(*h),
        Some(HeadArg::Many(hs)) => HeadSel::Many(hs.clone()),
    }
}

/// The wire form of a [`HeadSel`].
pub fn head_arg(sel: &HeadSel) -> Option<HeadArg> {
    match sel {
        HeadSel::All => None,
        HeadSel::One(h) => Some(HeadArg::One(*h)),
        HeadSel::Many(hs) => Some(HeadArg::Many(hs.clone())),
    }
}

/// A field that must be present but may be null.
fn required_nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    Option::<usize>::deserialize(d)
}

/// The route, layer and heads that carry an [`Act`] (layer 0 and all heads where unused).
pub fn getter_of(act: &Act) -> (Getter, usize, HeadSel) {
    match act {
        Act::HiddenStates(l) => (Getter::HiddenStates, *l, HeadSel::All),
        Act::AttnOutput(l) => (Getter::AttnOutput, *l, HeadSel::All),
        Act::MlpOutput(l) => (Getter::MlpOutput, *l, HeadSel::All),
        Act::HeadOutput(l, h) => (Getter::HeadOutput, *l, h.clone()),
        Act::AttnWeights(l, h) => (Getter::AttnWeights, *l, h.clone()),
        Act::Logits => (Getter::Logits, 0, HeadSel::All),
        Act::AttnOut(l) => (Getter::AttnOut, *l, HeadSel::All),
        Act::InputNormVar(l) => (Getter::InputNormVar, *l, HeadSel::All),
        Act::PostAttnNormVar(l) => (Getter::PostAttnNormVar, *l, HeadSel::All),
    }
}

/// The tensor getters (`POST /<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Getter {
    /// hidden_states\[layer\] `[1,k,e]` (layer 0..=L).
    HiddenStates,
    /// o_proj(attn_out) `[1,k,e]`.
    AttnOutput,
    /// MLP output `[1,k,e]`.
    MlpOutput,
    /// Head outputs: int `[1,k,e]` (H = MLP), list = sum `[1,k,e]`, null = all `[1,k,n,e]`.
    HeadOutput,
    /// Attention weights: int `[1,k,s]`, list/null `[1,h,k,s]`.
    AttnWeights,
    /// Logits `[1,k,v]` (layer ignored).
    Logits,
    /// Per-head attention output before o_proj `[1,k,n,d]`.
    AttnOut,
    /// input_layernorm variance `[1,k,1]` (layer 0..=L; L = the final norm).
    InputNormVar,
    /// post_attention_layernorm variance `[1,k,1]`.
    PostAttnNormVar,
}

impl Getter {
    /// Every getter.
    pub const ALL: [Getter; 9] = [
        Getter::HiddenStates,
        Getter::AttnOutput,
        Getter::MlpOutput,
        Getter::HeadOutput,
        Getter::AttnWeights,
        Getter::Logits,
        Getter::AttnOut,
        Getter::InputNormVar,
        Getter::PostAttnNormVar,
    ];

    /// The endpoint path.
    pub fn path(self) -> &'static str {
        match self {
            Getter::HiddenStates => "/hidden_states",
            Getter::AttnOutput => "/attn_output",
            Getter::MlpOutput => "/mlp_output",
            Getter::HeadOutput => "/head_output",
            Getter::AttnWeights => "/attn_weights",
            Getter::Logits => "/logits",
            Getter::AttnOut => "/attn_out",
            Getter::InputNormVar => "/input_norm_var",
            Getter::PostAttnNormVar => "/post_attn_norm_var",
        }
    }

    /// The activation a (validated) getter request asks for.
    pub fn act(self, layer: usize, heads: &Option<HeadArg>) -> Act {
        match self {
            Getter::HiddenStates => Act::HiddenStates(layer),
            Getter::AttnOutput => Act::AttnOutput(layer),
            Getter::MlpOutput => Act::MlpOutput(layer),
            Getter::HeadOutput => Act::HeadOutput(layer, head_sel(heads)),
            Getter::AttnWeights => Act::AttnWeights(layer, head_sel(heads)),
            Getter::Logits => Act::Logits,
            Getter::AttnOut => Act::AttnOut(layer),
            Getter::InputNormVar => Act::InputNormVar(layer),
            Getter::PostAttnNormVar => Act::PostAttnNormVar(layer),
        }
    }

    /// Whether the getter needs `layer`.
    pub fn needs_layer(self) -> bool {
        self != Getter::Logits
    }

    /// Whether the getter reads `heads`.
    pub fn uses_heads(self) -> bool {
        matches!(self, Getter::HeadOutput | Getter::AttnWeights)
    }
}

/// Body of the tensor getters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    /// Dataset name.
    pub dataset: String,
    /// Sample index; **null = the mean over every sample of the dataset** (all must give the
    /// same shape, e.g. the same pos_ids on same-length prompts). Required.
    #[serde(deserialize_with = "required_nullable")]
    pub sample: Option<usize>,
    /// Layer (0..L; 0..=L for hidden_states). Required except for logits.
    #[serde(default)]
    pub layer: Option<usize>,
    /// Head selection (head_output, attn_weights): int, list, or null = all heads.
    #[serde(default)]
    pub heads: Option<HeadArg>,
    /// Absolute positions to select; null = all. An empty list is an error.
    #[serde(default)]
    pub pos_ids: Option<Vec<usize>>,
    /// Dtype of the returned tensor (f32 default, f16, bf16).
    #[serde(default)]
    pub dtype: Option<String>,
}

/// `GET /datasets/{id}/samples/{index}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// Dataset name.
    pub dataset: String,
    /// Sample index.
    pub index: usize,
    /// Token count.
    pub seq_len: usize,
    /// The input given at forward time.
    pub input: SampleInput,
    /// Whether its activations are held (false = evicted, recomputed on demand).
    pub resident: bool,
}

/// A plain acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    /// "ok".
    pub status: String,
    /// What was done.
    pub message: String,
}

/// Request of `POST /node_gradient` (A13), carried in `__metadata__.request` of a safetensors
/// body whose optional tensor `output_grad` `[1,k,e]` is the request's output gradient (the
/// JSON `request.output_grad` must be null). Response: tensors `grad`, `aw`, `grad_aw` (those
/// present) and `__metadata__.result` = the [`crate::attribution::NodeGrad`] JSON with its
/// tensors null.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGradWire {
    /// Dataset name.
    pub dataset: String,
    /// Sample index; null = the mean over the dataset's samples (tensors averaged, the
    /// completeness report dropped).
    #[serde(deserialize_with = "required_nullable")]
    pub sample: Option<usize>,
    /// The node backward, without its tensor.
    pub request: NodeGradRequest,
}

/// Request of `POST /node_forward` (A15): like [`NodeGradWire`], optional tensor
/// `upstream_sum`. Response: tensor `tensor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeForwardWire {
    /// Dataset name.
    pub dataset: String,
    /// Sample index; null = the mean over the dataset's samples.
    #[serde(deserialize_with = "required_nullable")]
    pub sample: Option<usize>,
    /// The node forward, without its tensor.
    pub request: NodeForwardRequest,
}

/// Request of `POST /lens_logits` (V4 logit lens): a safetensors body whose tensor `x`
/// `[b,k,e]` is any residual; `__metadata__.request` is this (empty) JSON object. Response:
/// tensor `tensor` `[b,k,v]` = lm_head(final_norm(x)), the norm's variance computed from x.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LensLogitsWire {}

/// One downstream gradient of [`ResidualWire`] without its tensor (sent as `grad.{i}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualGradMeta {
    /// Positions of the gradient rows.
    pub pos_ids: Vec<usize>,
    /// The node's downstream layer (layer, + 0.5 for MLP types).
    pub downstream_layer: f64,
}

/// Request of `POST /attribute_residual` (A18): gradient i travels as tensor `grad.{i}`
/// `[1,k_i,e]`. Response: tensor `tensor` `[L',H+1,g]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualWire {
    /// Dataset name.
    pub dataset: String,
    /// Sample index; null = the mean over the dataset's samples.
    #[serde(deserialize_with = "required_nullable")]
    pub sample: Option<usize>,
    /// The g gradients' positions and layers, in order.
    pub grads: Vec<ResidualGradMeta>,
    /// First layer.
    #[serde(default)]
    pub from_layer: usize,
    /// End layer (exclusive); null = ceil(max downstream layer).
    #[serde(default)]
    pub to_layer: Option<usize>,
}

/// Name of gradient `i` in an `/attribute_residual` body.
pub fn grad_name(i: usize) -> String {
    format!("grad.{i}")
}

/// One intervention on the wire: its site, positions and edit kind; a Set/Add value travels as
/// the safetensors tensor [`value_name`]`(set, index)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionWire {
    /// Where.
    pub site: crate::model::Site,
    /// Positions (null = all).
    #[serde(default)]
    pub positions: Option<Vec<usize>>,
    /// zero, set or add.
    pub edit: crate::model::EditKind,
}

/// Request of `POST /intervene`: a safetensors body whose `__metadata__.request` is this JSON
/// and whose tensors are the Set/Add values `value.{set}.{index}`. Response: tensors
/// `logits.{set}` `[k,v]` and `hidden.{set}.{layer}` `[1,s,e]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterveneWire {
    /// Dataset name.
    pub dataset: String,
    /// Sample index.
    pub sample: usize,
    /// Intervention sets (each one forward; an empty set is the clean run).
    pub sets: Vec<Vec<InterventionWire>>,
    /// Logit positions and residual layers to return.
    #[serde(default)]
    pub options: crate::backend::InterveneOptions,
}

/// Request of `POST /prompt_sample`: a sample of any prompt, resolved with the server's
/// tokenizer (see [`crate::puzzle::sample::PromptSpec`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSampleRequest {
    /// The teacher-forced prompt.
    pub prompt: String,
    /// What to explain: answers, answer_tokens, candidates, foils, objective, spans, index.
    #[serde(default)]
    pub spec: crate::puzzle::sample::PromptSpec,
}

/// Answer of `POST /prompt_sample`: the sample to send to `/forward`, and what was resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptSampleResponse {
    /// The sample (labels, answer_indices, candidate_ids, objective filled in).
    pub sample: SampleInput,
    /// The answer tokens' texts.
    pub answers: Vec<String>,
    /// Named spans (token positions).
    pub spans: std::collections::BTreeMap<String, Vec<usize>>,
    /// Prompt length in tokens.
    pub n_tokens: usize,
}

/// Request of `POST /weight`: a safetensors body without tensors whose
/// `__metadata__.request` is this JSON. Response: tensor `tensor` (HF layout, f32).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightWire {
    /// Hugging Face name of the weight.
    pub name: String,
    /// Rows of dim 0 to return (null = all).
    #[serde(default)]
    pub rows: Option<Vec<usize>>,
}

/// Tensor name of the value of intervention `index` of set `set`.
pub fn value_name(set: usize, index: usize) -> String {
    format!("value.{set}.{index}")
}

/// Tensor name of the logits of set `set` in an `/intervene` response.
pub fn logits_name(set: usize) -> String {
    format!("logits.{set}")
}

/// Tensor name of the residual of `layer` of set `set` in an `/intervene` response.
pub fn hidden_name(set: usize, layer: usize) -> String {
    format!("hidden.{set}.{layer}")
}

/// `__metadata__` key of the scalar part of a node-gradient response.
pub const RESULT_KEY: &str = "result";

/// The safetensors / user-facing name of a dtype.
pub fn dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        DType::U32 => "u32",
        DType::I64 => "i64",
        DType::U8 => "u8",
        _ => "other",
    }
}

/// Serialises named tensors (any dtype, any device) to safetensors bytes with optional
/// string metadata.
pub fn encode_tensors(
    named: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let host: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| Ok((n.to_string(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| anyhow!("cannot serialise tensors: {e}"))
}

/// Parses safetensors bytes: the tensors (CPU, stored dtype) and the metadata.
pub fn decode_tensors(bytes: &[u8]) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("malformed safetensors body: {e}"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("malformed safetensors header: {e}"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = DType::try_from(view.dtype())
            .map_err(|e| anyhow!("tensor {name:?}: unsupported dtype: {e}"))?;
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .with_context(|| format!("tensor {name:?}"))?;
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// A tensor-carrying request: one safetensors blob, the JSON request in `__metadata__.request`.
pub fn encode_request<T: Serialize>(req: &T, tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let json = serde_json::to_string(req)?;
    encode_tensors(
        tensors,
        Some(HashMap::from([(REQUEST_KEY.to_string(), json)])),
    )
}

/// Parses a tensor-carrying request (see [`encode_request`]).
pub fn decode_request<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, HashMap<String, Tensor>)> {
    let (tensors, meta) = decode_tensors(bytes)?;
    let Some(json) = meta.get(REQUEST_KEY) else {
        bail!("safetensors body has no __metadata__.{REQUEST_KEY} holding the JSON request");
    };
    let req = serde_json::from_str(json)
        .map_err(|e| anyhow!("bad JSON in __metadata__.{REQUEST_KEY}: {e}"))?;
    Ok((req, tensors))
}

/// The single tensor of a one-tensor response, as f32.
pub fn single_tensor(bytes: &[u8]) -> Result<Tensor> {
    let (mut t, _) = decode_tensors(bytes)?;
    let t = t
        .remove(TENSOR)
        .ok_or_else(|| anyhow!("response has no tensor named {TENSOR:?}"))?;
    Ok(t.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_in_every_float_dtype() -> Result<()> {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((2, 3, 4))?;
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = t.to_dtype(dt)?;
            let bytes = encode_tensors(&[("a", &x)], None)?;
            let (back, meta) = decode_tensors(&bytes)?;
            assert!(meta.is_empty());
            let b = &back["a"];
            assert_eq!(b.dtype(), dt);
            assert_eq!(b.dims(), &[2, 3, 4]);
            // Small integers are exact in every float dtype.
            let v: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let want: Vec<f32> = (0..24).map(|i| i as f32).collect();
            assert_eq!(v, want);
        }
        Ok(())
    }

    #[test]
    fn request_round_trip_and_required_sample() -> Result<()> {
        let req = GetRequest {
            dataset: "d".into(),
            sample: None,
            layer: Some(1),
            heads: Some(HeadArg::Many(vec![0, 2])),
            pos_ids: Some(vec![3]),
            dtype: None,
        };
        let g = Tensor::ones((1, 2), DType::F32, &Device::Cpu)?;
        let bytes = encode_request(&req, &[("output_grad", &g)])?;
        let (back, ts): (GetRequest, _) = decode_request(&bytes)?;
        assert_eq!(back, req);
        assert_eq!(ts["output_grad"].dims(), &[1, 2]);
        // `sample` may be null but not missing.
        let err = serde_json::from_str::<GetRequest>(r#"{"dataset":"d","layer":0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sample"), "{err}");
        let ok: GetRequest = serde_json::from_str(r#"{"dataset":"d","sample":null}"#)?;
        assert_eq!(ok.sample, None);
        assert!(decode_request::<GetRequest>(b"not safetensors").is_err());
        Ok(())
    }
}

/// Request of `POST /datasets/{id}/save` and `POST /datasets/load`: a folder under the
/// server's `--store` (relative, no `..`), and for a load the name to cache the samples under.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreRequest {
    /// Folder name relative to the server's store.
    pub dir: String,
    /// Dataset name for a load (default: the saved one).
    #[serde(default)]
    pub name: Option<String>,
}

/// Reply of the store routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreReply {
    /// The dataset.
    pub dataset: String,
    /// Samples written or read.
    pub count: usize,
}
