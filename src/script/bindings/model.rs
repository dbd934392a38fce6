//! Model bindings (spec §2, M3): `load_model` (memoised by canonical path), `forward` of a
//! dataset into the activation cache (skipping cached samples, with progress and interrupts)
//! and the accessors `get_hidden_states`, `get_attn_output`, `get_mlp_output`,
//! `get_head_output`, `get_attn_weights`, `get_logits`.

use super::args::{guard, options, usize_list};
use super::puzzle::{ScriptSample, ScriptTokenizer};
use crate::backend::{Backend, HeadSel, Local, SampleKey};
use crate::model::LoadOptions;
use crate::model::fixture::Preset;
use crate::script::docs::Registrar;
use crate::script::state::HostState;
use crate::script::tensor::Tensor;
use anyhow::{Result, anyhow, bail, ensure};
use candle_core::{DType, Device};
use rhai::{Array, Dynamic, INT, Map};
use std::path::PathBuf;
use std::sync::Arc;

/// A loaded model as a script value (shared; cloning is cheap).
#[derive(Clone)]
pub struct ScriptModel(pub Arc<dyn Backend>);

/// A sample forwarded into a model's cache under a dataset name (the seed's `r`): pass it to
/// the accessors.
#[derive(Clone)]
pub struct Cached {
    /// Dataset name the sample is cached under.
    pub dataset: String,
    /// The sample.
    pub sample: ScriptSample,
    /// Whether the call that returned this handle ran the forward (false: it was cached).
    pub fresh: bool,
    /// The model holding the activations, for handles from `forward(models: Array, ...)`:
    /// getters and attribution on such a handle read from it whatever model is passed.
    pub home: Option<ScriptModel>,
}

impl Cached {
    fn key(&self) -> SampleKey {
        SampleKey::new(self.dataset.clone(), self.sample.0.index)
    }

    /// The backend to read this handle's activations from: its home model when it has one
    /// (a spread forward), else the model passed by the script.
    pub fn backend<'a>(&'a self, passed: &'a ScriptModel) -> &'a dyn Backend {
        self.home.as_ref().unwrap_or(passed).0.as_ref()
    }
}

fn load(st: &HostState, path: &str) -> Result<ScriptModel> {
    load_with(st, path, &Map::new())
}

/// `"default"` (or an empty path) is the project's default model folder, created if absent;
/// `"smollm2"` the SmolLM2 GGUF file fetched by scripts/fetch-smollm2.sh.
fn resolve_model_path(path: &str) -> Result<PathBuf> {
    match path {
        "" | "default" => crate::model::fixture::default_model_dir(),
        "smollm2" => crate::model::fixture::smollm2_path(),
        _ => Ok(PathBuf::from(path)),
    }
}

/// Options of `load_model(path, opts)`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadModelOptions {
    /// Compute dtype: "f32", "f16" or "bf16".
    #[serde(default = "default_dtype")]
    dtype: String,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    device: String,
    /// Scan the weights for NaN/inf (default: on unless MINARC_SKIP_WEIGHT_CHECK is set).
    #[serde(default)]
    check_weights: Option<bool>,
    /// GPTQ: "packed" (dequantise one layer at a time when used) or "dense" (on load);
    /// default: packed on CUDA, dense on the CPU.
    #[serde(default)]
    gptq: Option<String>,
    /// Bytes of dequantised layers a packed GPTQ model keeps (default 4 GiB).
    #[serde(default)]
    gptq_cache_bytes: Option<u64>,
    /// The dtype of the decoder layers' projection weights (default: the compute dtype).
    #[serde(default)]
    weights_dtype: Option<String>,
}

fn default_dtype() -> String {
    "f32".into()
}

fn default_device() -> String {
    "cpu".into()
}

/// Load options: dtype, device, the memo variant ("" for f32 on the CPU) and how to read.
fn load_options(opts: &Map) -> Result<(DType, Device, String, LoadOptions)> {
    let o: LoadModelOptions = options(opts)?;
    let dt = crate::model::config::parse_dtype(&o.dtype)?;
    let dev = crate::model::config::home_device(&o.device)?;
    let mut load = LoadOptions::for_device(&dev);
    if crate::model::config::is_device_map(&o.device) {
        load.device_map = Some(o.device.clone());
    }
    if let Some(c) = o.check_weights {
        load.check_finite = c;
    }
    let budget = match o.gptq_cache_bytes {
        Some(b) => usize::try_from(b).map_err(|_| anyhow!("gptq_cache_bytes {b} is too large"))?,
        None => crate::model::loader::default_gptq_cache_bytes(),
    };
    match o.gptq.as_deref() {
        None if o.gptq_cache_bytes.is_some() => load.gptq_packed = Some(budget),
        None => load.gptq_packed = load.gptq_packed.map(|_| budget),
        Some("packed") => load.gptq_packed = Some(budget),
        Some("dense") => load.gptq_packed = None,
        Some(other) => anyhow::bail!("gptq {other:?}: \"packed\" or \"dense\""),
    }
    load.weights_dtype = o
        .weights_dtype
        .as_deref()
        .map(crate::model::config::parse_dtype)
        .transpose()?
        .filter(|w| *w != dt);
    let mut variant = if (dt, o.device.as_str()) == (DType::F32, "cpu") {
        String::new()
    } else {
        format!("{dt:?}@{}", o.device)
    };
    if let Some(w) = load.weights_dtype {
        variant.push_str(&format!("+weights-{w:?}"));
    }
    if let Some(b) = load.gptq_packed {
        variant.push_str(&format!("+gptq-packed-{b}"));
    }
    Ok((dt, dev, variant, load))
}

fn load_with(st: &HostState, path: &str, opts: &Map) -> Result<ScriptModel> {
    let dir = resolve_model_path(path)?;
    let (dtype, device, variant, load) = load_options(opts)?;
    let local = st.load_memo_variant(&dir, &variant, |p| {
        Local::load_with(p, dtype, &device, &load)
    })?;
    Ok(ScriptModel(local))
}

/// The fixture folder (written once, see [`crate::model::fixture::ensure_fixture`]), loaded
/// (memoised).
fn init(st: &HostState, preset: &str, seed: INT) -> Result<ScriptModel> {
    ensure!(seed >= 0, "seed must be >= 0, got {seed}");
    let preset: Preset = preset.parse()?;
    let dir = crate::model::fixture::ensure_fixture(preset, seed as u64)?;
    load(st, &dir.display().to_string())
}

/// Remote models by URL, connected once per session.
type RemoteCache = std::sync::Mutex<std::collections::HashMap<String, Arc<crate::remote::Remote>>>;

fn connect(st: &HostState, url: &str, token: Option<&str>) -> Result<ScriptModel> {
    let cache = st.slot::<RemoteCache>("model.remotes", Default::default)?;
    let key = url.trim_end_matches('/').to_string();
    if let Some(r) = crate::script::state::lock(&cache).get(&key) {
        return Ok(ScriptModel(r.clone()));
    }
    let remote = Arc::new(crate::remote::Remote::connect(url, token)?);
    crate::script::state::lock(&cache).insert(key, remote.clone());
    Ok(ScriptModel(remote))
}

/// Token texts of a cached sample's prompt (each id decoded alone).
pub fn token_texts(b: &dyn Backend, c: &Cached) -> Result<Array> {
    let tok = b.tokenizer();
    let enc = tok
        .encode(c.sample.0.prompt.as_str(), true)
        .map_err(|e| anyhow!("tokenization failed: {e}"))?;
    enc.get_ids()
        .iter()
        .map(|&id| {
            let t = tok
                .decode(&[id], false)
                .map_err(|e| anyhow!("cannot decode token {id}: {e}"))?;
            Ok(Dynamic::from(t))
        })
        .collect()
}

/// `head`: an int (one head; H = the MLP pseudo-head for get_head_output), an array of ints,
/// or `()` for all heads.
fn head_sel(head: &Dynamic) -> Result<HeadSel> {
    if head.is_unit() {
        return Ok(HeadSel::All);
    }
    if let Ok(h) = head.as_int() {
        ensure!(h >= 0, "head must be >= 0, got {h}");
        return Ok(HeadSel::One(h as usize));
    }
    if let Some(arr) = head.read_lock::<Array>() {
        return Ok(HeadSel::Many(usize_list("head", &arr)?));
    }
    bail!(
        "head must be an int, an array of ints or (), got {}",
        head.type_name()
    )
}

fn layer_of(layer: INT) -> Result<usize> {
    ensure!(layer >= 0, "layer must be >= 0, got {layer}");
    Ok(layer as usize)
}

type LayerGetter =
    fn(&dyn Backend, &SampleKey, usize, Option<&[usize]>) -> Result<candle_core::Tensor>;

fn register_layer_getter(r: &mut Registrar, name: &'static str, what: &str, f: LayerGetter) {
    let sig = format!("{name}(model: Model, r: Cached, layer: int) -> Tensor");
    r.func(
        name,
        &sig,
        &format!("{what} at every position, [1,s,e]."),
        move |m: ScriptModel, c: Cached, layer: INT| {
            guard(name, || {
                Ok(Tensor(f(c.backend(&m), &c.key(), layer_of(layer)?, None)?))
            })
        },
    );
    let sig = format!("{name}(model: Model, r: Cached, layer: int, pos_ids: Array) -> Tensor");
    r.func(
        name,
        &sig,
        &format!("{what} at the given positions, [1,k,e]."),
        move |m: ScriptModel, c: Cached, layer: INT, pos: Array| {
            guard(name, || {
                let pos = usize_list("pos_ids", &pos)?;
                Ok(Tensor(f(
                    c.backend(&m),
                    &c.key(),
                    layer_of(layer)?,
                    Some(&pos),
                )?))
            })
        },
    );
}

/// Register the model domain.
pub fn register(r: &mut Registrar, state: &Arc<HostState>) {
    r.type_named::<ScriptModel>(
        "Model",
        "A loaded Qwen2 model with its tokenizer and activation cache.",
    )
    .type_named::<Cached>(
        "Cached",
        "A sample forwarded into a model's cache under a dataset name (the seed's r).",
    );
    register_loading(r, state);
    register_model_info(r);
    register_cached_getters(r);
    register_layer_getter(
        r,
        "get_hidden_states",
        "hidden_states[layer] (the residual stream entering layer; layer L is after the final norm)",
        |b, k, l, p| b.hidden_states(k, l, p),
    );
    register_layer_getter(
        r,
        "get_attn_output",
        "The attention block's residual contribution o_proj(attn_out) of layer",
        |b, k, l, p| b.attn_output(k, l, p),
    );
    register_layer_getter(
        r,
        "get_mlp_output",
        "The MLP output of layer",
        |b, k, l, p| b.mlp_output(k, l, p),
    );
    register_head_getters(r);
}

fn register_loading(r: &mut Registrar, state: &Arc<HostState>) {
    let st = state.clone();
    r.func(
        "load_model",
        "load_model(path: String) -> Model",
        "Load a Hugging Face Qwen2 or Llama folder (config.json, safetensors, tokenizer.json) or a .gguf file (model and tokenizer from the file) in f32 on the CPU; memoised: the same path returns the loaded model. \"default\" is the project's default model, \"smollm2\" SmolLM2-135M-Instruct fetched by scripts/fetch-smollm2.sh.",
        move |path: &str| guard("load_model", || load(&st, path)),
    );
    let st = state.clone();
    r.func(
        "load_model",
        "load_model() -> Model",
        "The project's default model (the folder of fixture::default_model_dir, created with the small fixture when absent); same as load_model(\"default\").",
        move || guard("load_model", || load(&st, "default")),
    );
    let st = state.clone();
    r.func(
        "load_model",
        "load_model(path: String, opts: Map) -> Model",
        "Load with options: dtype (\"f32\", \"f16\", \"bf16\"; default f32), device (\"cpu\", \"cuda\", \"cuda:N\", or a layer map: \"cuda:0,cuda:1\" splits the layers in order, \"cuda:0=0-39,cuda:1=40-79\" places them explicitly; the first device holds embeddings and lm_head), check_weights (scan every weight for NaN/inf, default true; env MINARC_SKIP_WEIGHT_CHECK=1 changes the default), gptq (\"packed\": a GPTQ model's layers stay packed and are dequantised one at a time when used, the default on CUDA; \"dense\": dequantised on load, the default on the CPU) and gptq_cache_bytes (dequantised layers a packed model keeps, default 4 GiB), weights_dtype (\"bf16\" or \"f16\": the decoder layers' projection weights held in that dtype and multiplied in it with f32 accumulation, while activations, attention and captures stay in dtype; the fastest CPU forward with AVX512_BF16, see performance.md); memoised per path, dtype, device, packing and weights dtype. path \"default\" is the default model.",
        move |path: &str, opts: Map| guard("load_model", || load_with(&st, path, &opts)),
    );
    let st = state.clone();
    r.func(
        "connect",
        "connect(url: String) -> Model",
        "A model served by `minarc serve` at url (http://host:port); the same accessors work on it. Connected once per session. Sends the bearer token in env MINARC_TOKEN when it is set.",
        move |url: &str| {
            guard("connect", || {
                let token = std::env::var("MINARC_TOKEN").ok();
                connect(&st, url, token.as_deref())
            })
        },
    );
    let st = state.clone();
    r.func(
        "connect",
        "connect(url: String, token: String) -> Model",
        "As connect(url), with a bearer token.",
        move |url: &str, token: &str| guard("connect", || connect(&st, url, Some(token))),
    );
    let st = state.clone();
    r.func(
        "init_model",
        "init_model(preset: String) -> Model",
        "A built-in fixture model (\"tiny\", \"small\" or \"qwen05b-shape\", seed 0), written once to $MINARC_HOME/models (or ~/.cache/minarc/models) and loaded (memoised).",
        move |preset: &str| guard("init_model", || init(&st, preset, 0)),
    );
    let st = state.clone();
    r.func(
        "init_model",
        "init_model(preset: String, seed: int) -> Model",
        "A fixture model with deterministic random weights from seed.",
        move |preset: &str, seed: INT| guard("init_model", || init(&st, preset, seed)),
    );
}

fn register_model_info(r: &mut Registrar) {
    r.getter(
        "config",
        "m.config -> Map",
        "The model's config.json values.",
        |m: &mut ScriptModel| rhai::serde::to_dynamic(m.0.config()).unwrap_or(Dynamic::UNIT),
    )
    .getter(
        "n_layers",
        "m.n_layers -> int",
        "Number of layers L (hidden_states has L+1 entries).",
        |m: &mut ScriptModel| m.0.config().num_hidden_layers as INT,
    )
    .getter(
        "n_heads",
        "m.n_heads -> int",
        "Number of query heads H (head H is the MLP pseudo-head).",
        |m: &mut ScriptModel| m.0.config().num_attention_heads as INT,
    )
    .func(
        "tokenizer",
        "tokenizer(model: Model) -> Tokenizer",
        "The model's tokenizer (use it in gen_dataset so token positions match).",
        |m: ScriptModel| ScriptTokenizer(Arc::new(m.0.tokenizer().clone())),
    )
    .func(
        "dataset_options",
        "dataset_options(model: Model) -> Map",
        "The gen_dataset options of the puzzle distribution the model was trained on (the `dataset` entry of its minarc.json, which minarc train writes); for a model without one, the notebook's W1 options (side+at, 5x5 corner grids, 5 colours, n_train 5, Q_train 4, default prompt). Add seeds and tokenizer and pass it to gen_dataset.",
        |m: ScriptModel| {
            guard("dataset_options", || {
                let v = m.0.dataset_options().cloned().unwrap_or_else(|| {
                    serde_json::json!({
                        "relations": "side+at", "n": 5, "m": 5, "n_color": 5,
                        "n_train": 5, "Q_train": 4
                    })
                });
                rhai::serde::to_dynamic(v)?
                    .try_cast::<Map>()
                    .ok_or_else(|| anyhow::anyhow!("the model's dataset options are not a map"))
            })
        },
    )
    .func(
        "tokens",
        "tokens(model: Model, r: Cached) -> Array",
        "The text of every token of the forwarded sample's prompt, as the model's tokenizer decodes each one alone.",
        |m: ScriptModel, c: Cached| guard("tokens", || token_texts(c.backend(&m), &c)),
    )
    .func(
        "datasets",
        "datasets(model: Model) -> Map",
        "Cached datasets: name -> array of sample indices.",
        |m: ScriptModel| {
            guard("datasets", || {
                let mut out = Map::new();
                for (name, idx) in m.0.datasets()? {
                    let arr: Array = idx
                        .into_iter()
                        .map(|i| Dynamic::from_int(i as INT))
                        .collect();
                    out.insert(name.into(), Dynamic::from_array(arr));
                }
                Ok(out)
            })
        },
    )
    .func(
        "drop_dataset",
        "drop_dataset(model: Model, dataset: String)",
        "Remove a dataset's cached activations.",
        |m: ScriptModel, name: &str| guard("drop_dataset", || m.0.drop_dataset(name)),
    )
    .func(
        "save_activations",
        "save_activations(model: Model, dataset: String, dir: String) -> int",
        "Write a dataset's captured activations to the folder dir (one safetensors file per sample + index.json; for a served model, a folder name under the server's --store); returns the number of samples. load_activations reads them back in a later session without recomputing.",
        |m: ScriptModel, dataset: &str, dir: &str| {
            guard("save_activations", || {
                Ok(m.0.save_dataset(dataset, dir)? as INT)
            })
        },
    )
    .func(
        "load_activations",
        "load_activations(model: Model, dir: String) -> String",
        "Read activations written by save_activations into the model's cache under the dataset name they were saved with (returned); refused when another model computed them. A forward of that dataset then finds its samples cached and computes nothing.",
        |m: ScriptModel, dir: &str| {
            guard("load_activations", || Ok(m.0.load_dataset(dir, None)?.0))
        },
    )
    .func(
        "load_activations",
        "load_activations(model: Model, dir: String, dataset: String) -> String",
        "load_activations under another dataset name.",
        |m: ScriptModel, dir: &str, dataset: &str| {
            guard("load_activations", || Ok(m.0.load_dataset(dir, Some(dataset))?.0))
        },
    )
    .func(
        "to_string",
        "to_string(m: Model) -> String",
        "Model path, dtype and device.",
        |m: &mut ScriptModel| m.0.describe(),
    )
    .func(
        "to_debug",
        "to_debug(m: Model) -> String",
        "Model path, dtype and device.",
        |m: &mut ScriptModel| m.0.describe(),
    );
}

fn register_cached_getters(r: &mut Registrar) {
    r.getter(
        "dataset",
        "r.dataset -> String",
        "Dataset name the sample is cached under.",
        |c: &mut Cached| c.dataset.clone(),
    )
    .getter(
        "sample",
        "r.sample -> Sample",
        "The forwarded sample.",
        |c: &mut Cached| c.sample.clone(),
    )
    .getter(
        "fresh",
        "r.fresh -> bool",
        "Whether this forward call computed it (false: it was already cached).",
        |c: &mut Cached| c.fresh,
    )
    .getter(
        "index",
        "r.index -> int",
        "Sample index.",
        |c: &mut Cached| c.sample.0.index as INT,
    )
    .getter(
        "answer_indices",
        "r.answer_indices -> Array",
        "Token positions of the answers.",
        |c: &mut Cached| {
            c.sample
                .0
                .answer_indices
                .iter()
                .map(|&i| Dynamic::from_int(i as INT))
                .collect::<Array>()
        },
    )
    .func(
        "positions",
        "positions(r: Cached, span: String) -> Array",
        "Token positions of a span (A9) of the forwarded sample.",
        |c: &mut Cached, span: &str| {
            guard("positions", || {
                Ok(c.sample
                    .0
                    .positions(span, crate::puzzle::sample::DEFAULT_LAST_K)?
                    .into_iter()
                    .map(|i| Dynamic::from_int(i as INT))
                    .collect::<Array>())
            })
        },
    )
    .func(
        "to_string",
        "to_string(r: Cached) -> String",
        "Dataset and sample summary.",
        |c: &mut Cached| format!("Cached[{}#{}]", c.dataset, c.sample.0.index),
    )
    .func(
        "to_debug",
        "to_debug(r: Cached) -> String",
        "Dataset and sample summary.",
        |c: &mut Cached| format!("Cached[{}#{}]", c.dataset, c.sample.0.index),
    );
}

fn register_head_getters(r: &mut Registrar) {
    r.func(
        "get_head_output",
        "get_head_output(model: Model, r: Cached, layer: int, head: int|Array|()) -> Tensor",
        "Per-head residual contribution at every position: one head [1,s,e] (head H = the MLP output), the sum of a list of heads [1,s,e], or () for all heads [1,s,n,e].",
        |m: ScriptModel, c: Cached, layer: INT, head: Dynamic| {
            guard("get_head_output", || Ok(Tensor(c.backend(&m).head_output(&c.key(), layer_of(layer)?, &head_sel(&head)?, None)?)))
        },
    )
    .func(
        "get_head_output",
        "get_head_output(model: Model, r: Cached, layer: int, head: int|Array|(), pos_ids: Array) -> Tensor",
        "Per-head residual contribution at the given positions ([1,k,e] or [1,k,n,e]).",
        |m: ScriptModel, c: Cached, layer: INT, head: Dynamic, pos: Array| {
            guard("get_head_output", || {
                let pos = usize_list("pos_ids", &pos)?;
                Ok(Tensor(c.backend(&m).head_output(&c.key(), layer_of(layer)?, &head_sel(&head)?, Some(&pos))?))
            })
        },
    )
    .func(
        "get_attn_weights",
        "get_attn_weights(model: Model, r: Cached, layer: int, head: int|Array|()) -> Tensor",
        "Attention probabilities of every query position: one head [1,s,s], several or () for all [1,h,s,s].",
        |m: ScriptModel, c: Cached, layer: INT, head: Dynamic| {
            guard("get_attn_weights", || Ok(Tensor(c.backend(&m).attn_weights(&c.key(), layer_of(layer)?, &head_sel(&head)?, None)?)))
        },
    )
    .func(
        "get_attn_weights",
        "get_attn_weights(model: Model, r: Cached, layer: int, head: int|Array|(), pos_ids: Array) -> Tensor",
        "Attention probabilities of the given query positions ([1,k,s] or [1,h,k,s]); cached per (dataset, sample, layer, heads, pos_ids).",
        |m: ScriptModel, c: Cached, layer: INT, head: Dynamic, pos: Array| {
            guard("get_attn_weights", || {
                let pos = usize_list("pos_ids", &pos)?;
                Ok(Tensor(c.backend(&m).attn_weights(&c.key(), layer_of(layer)?, &head_sel(&head)?, Some(&pos))?))
            })
        },
    )
    .func(
        "get_logits",
        "get_logits(model: Model, r: Cached) -> Tensor",
        "Logits at every position, [1,s,v].",
        |m: ScriptModel, c: Cached| guard("get_logits", || Ok(Tensor(c.backend(&m).logits(&c.key(), None)?))),
    )
    .func(
        "get_logits",
        "get_logits(model: Model, r: Cached, pos_ids: Array) -> Tensor",
        "Logits at the given positions, [1,k,v].",
        |m: ScriptModel, c: Cached, pos: Array| {
            guard("get_logits", || {
                let pos = usize_list("pos_ids", &pos)?;
                Ok(Tensor(c.backend(&m).logits(&c.key(), Some(&pos))?))
            })
        },
    );
}
