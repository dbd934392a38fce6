//! [`Local`]: the in-process [`Backend`] — the model, its tokenizer and the sample store with
//! an LRU byte budget.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor};

use super::disk;
use super::lru::{CacheStats, Evicted, Lru};
use super::{Act, Backend, CachedSample, HeadSel, InterveneOptions, SampleInput, SampleKey};
use crate::ig::{self, NodeForwardRequest, NodeGrad, NodeGradRequest, ResidualRequest};
use crate::model::components::{AttnInputs, KvProj, Norm};
use crate::model::config::ModelConfig;
use crate::model::intervene::{IntervenedRun, Intervention};
use crate::model::loader::LoadOptions;
use crate::model::outputs::{CaptureSpec, Outputs};
use crate::model::qwen2::Qwen2;
use crate::model::sample::Objective;

type Store = HashMap<String, BTreeMap<usize, Arc<CachedSample>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AttnKey {
    dataset: String,
    index: usize,
    layer: usize,
    heads: Vec<usize>,
    pos_ids: Vec<usize>,
}

/// The in-process backend: the model, its tokenizer and the sample store.
pub struct Local {
    model: Qwen2,
    tokenizer: tokenizers::Tokenizer,
    dataset_options: Option<serde_json::Value>,
    store: RwLock<Store>,
    attn_cache: Mutex<HashMap<AttnKey, Tensor>>,
    /// Keys and values per (sample, layer), shared by attention-weight reads and attn_a
    /// backwards.
    kv_cache: Mutex<super::kv::KvCache>,
    /// Activation-cache byte budget and LRU order (lock order: store, then lru).
    lru: Mutex<Lru>,
    /// Folder that evicted samples are written to (None: dropped and recomputed on demand).
    spill: Mutex<Option<PathBuf>>,
    /// The model's fingerprint for saved activations (computed on first use).
    fingerprint: OnceLock<String>,
}

/// The `dataset` entry of `dir/minarc.json` (None when the folder has no such file).
fn read_dataset_options(dir: &Path) -> Result<Option<serde_json::Value>> {
    let p = dir.join(crate::model::fixture::MINARC_JSON);
    let meta = match std::fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    anyhow::ensure!(
        meta.len() <= 16 << 20,
        "{} is {} bytes (at most 16 MiB)",
        p.display(),
        meta.len()
    );
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    match v.get("dataset") {
        None => Ok(None),
        Some(d) if d.is_object() => Ok(Some(d.clone())),
        Some(_) => anyhow::bail!(
            "{}: \"dataset\" must be an object of gen_dataset options",
            p.display()
        ),
    }
}

fn to_host(t: Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

impl Local {
    /// Loads a HF folder: model (see [`Qwen2::load`]) and `tokenizer.json`; or a `.gguf` file
    /// (model and tokenizer from the file, see [`crate::model::gguf`]).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(dir, dtype, device, &LoadOptions::default())
    }

    /// As [`Local::load`] with explicit [`LoadOptions`].
    pub fn load_with(
        dir: &Path,
        dtype: DType,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        if crate::model::gguf::is_gguf(dir) {
            let g = crate::model::gguf::read(dir)?;
            let tokenizer = g.tokenizer.clone();
            return Ok(Self::new(
                Qwen2::from_gguf(g, dtype, device, opts)?,
                tokenizer,
            ));
        }
        let model = Qwen2::load_with(dir, dtype, device, opts)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", tok_path.display()))?;
        let mut local = Self::new(model, tokenizer);
        local.dataset_options = read_dataset_options(dir)?;
        Ok(local)
    }

    /// Wraps an already loaded model and tokenizer.
    pub fn new(model: Qwen2, tokenizer: tokenizers::Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            dataset_options: None,
            store: RwLock::new(HashMap::new()),
            attn_cache: Mutex::new(HashMap::new()),
            kv_cache: Mutex::new(super::kv::KvCache::default()),
            lru: Mutex::new(Lru::default()),
            spill: Mutex::new(None),
            fingerprint: OnceLock::new(),
        }
    }

    /// The model, for code running inside the local implementation.
    pub fn model(&self) -> &Qwen2 {
        &self.model
    }

    /// A cached sample (its Outputs, tokens and input). A sample evicted by the byte budget
    /// (see [`Local::set_cache_budget`]) is forwarded again from its kept input.
    pub fn sample(&self, key: &SampleKey) -> Result<Arc<CachedSample>> {
        match self.resident(key)? {
            Some(s) => {
                self.lru_lock()?.touch(key);
                Ok(s)
            }
            None => {
                let kept = self.lru_lock()?.evicted(key).cloned();
                let Some(kept) = kept else {
                    bail!(
                        "sample {} not cached in dataset {:?}",
                        key.index,
                        key.dataset
                    );
                };
                if let Some(path) = &kept.spilled {
                    // read back what was spilled; a file gone or damaged is recomputed instead
                    match disk::read_sample(path, self.model.config(), self.fingerprint()?) {
                        Ok((_, s)) => {
                            self.insert(&key.dataset, s)?;
                            let _ = std::fs::remove_file(path);
                            if let Some(s) = self.resident(key)? {
                                return Ok(s);
                            }
                        }
                        Err(e) => eprintln!("{e:#}; recomputing the sample"),
                    }
                }
                self.forward_ids(
                    &key.dataset,
                    &kept.input,
                    &kept.token_ids,
                    &kept.capture,
                    true,
                )
                .with_context(|| {
                    format!(
                        "recomputing evicted sample {} of dataset {:?}",
                        key.index, key.dataset
                    )
                })?;
                self.resident(key)?
                    .ok_or_else(|| anyhow!("sample {} of {:?} evicted again while being recomputed (activation-cache budget too small)", key.index, key.dataset))
            }
        }
    }

    /// The sample if its activations are held; errors for an unknown dataset.
    fn resident(&self, key: &SampleKey) -> Result<Option<Arc<CachedSample>>> {
        let store = self
            .store
            .read()
            .map_err(|_| anyhow!("sample store lock poisoned"))?;
        Ok(store
            .get(&key.dataset)
            .ok_or_else(|| anyhow!("unknown dataset {:?}", key.dataset))?
            .get(&key.index)
            .cloned())
    }

    fn lru_lock(&self) -> Result<std::sync::MutexGuard<'_, Lru>> {
        self.lru
            .lock()
            .map_err(|_| anyhow!("activation-cache lock poisoned"))
    }

    /// (input, seq_len) of a cached sample, resident or evicted, without recomputing it.
    fn sample_info(&self, key: &SampleKey) -> Result<(SampleInput, usize)> {
        if let Some(s) = self.resident(key)? {
            return Ok((s.input.clone(), s.outputs.seq_len));
        }
        match self.lru_lock()?.evicted(key) {
            Some(e) => Ok((e.input.clone(), e.token_ids.len())),
            None => bail!(
                "sample {} not cached in dataset {:?}",
                key.index,
                key.dataset
            ),
        }
    }

    /// Whether the sample's activations are held (false when evicted or unknown).
    pub fn is_resident(&self, key: &SampleKey) -> bool {
        matches!(self.resident(key), Ok(Some(_)))
    }

    /// Sets the activation-cache byte budget (None = unlimited). When a forward would push the
    /// resident bytes ([`Outputs::bytes`]) over it, the least recently used samples' activations
    /// are dropped (their inputs are kept and they are recomputed on demand). A single sample
    /// larger than the whole budget is refused.
    pub fn set_cache_budget(&self, bytes: Option<usize>) -> Result<()> {
        self.lru_lock()?.set_budget(bytes);
        Ok(())
    }

    /// Activation-cache figures.
    pub fn cache_stats(&self) -> CacheStats {
        self.lru.lock().map(|l| l.stats()).unwrap_or_default()
    }

    /// Forward raw token ids (no tokenizer) and store them under (dataset, input.index).
    /// `input.prompt` is kept as metadata only. Returns seq_len.
    pub fn forward_ids(
        &self,
        dataset: &str,
        input: &SampleInput,
        ids: &[u32],
        capture: &CaptureSpec,
        force: bool,
    ) -> Result<usize> {
        let key = SampleKey::new(dataset, input.index);
        if !force && let Ok((_, seq_len)) = self.sample_info(&key) {
            return Ok(seq_len);
        }
        self.check_input(input, ids)?;
        let outputs = self
            .model
            .forward_capture(ids, capture)
            .with_context(|| format!("forward of sample {} of dataset {dataset:?}", input.index))?;
        self.keep(dataset, input, ids, outputs, capture)
    }

    /// The checks of a sample before its forward: labels against answers, label ids and the
    /// objective against the vocabulary, answer positions against the prompt.
    fn check_input(&self, input: &SampleInput, ids: &[u32]) -> Result<()> {
        let argmax = input.objective == Objective::Argmax;
        if input.labels.len() != input.answer_indices.len()
            && !input.answer_indices.is_empty()
            && !(argmax && input.labels.is_empty())
        {
            bail!(
                "sample {}: {} labels but {} answer_indices",
                input.index,
                input.labels.len(),
                input.answer_indices.len()
            );
        }
        crate::model::ops::check_positions(&input.answer_indices, ids.len(), "answer")?;
        check_label_ids(input, self.model.config().vocab_size)?;
        check_objective(input, self.model.config().vocab_size)
    }

    /// Stores a forwarded sample (labels from the model's own predictions for the argmax
    /// objective). Returns seq_len.
    fn keep(
        &self,
        dataset: &str,
        input: &SampleInput,
        ids: &[u32],
        outputs: Outputs,
        capture: &CaptureSpec,
    ) -> Result<usize> {
        let mut input = input.clone();
        if input.objective == Objective::Argmax {
            input.labels = self.own_predictions(&input, &outputs)?;
        }
        let seq_len = outputs.seq_len;
        self.insert(
            dataset,
            CachedSample {
                input,
                token_ids: ids.to_vec(),
                outputs,
                capture: capture.clone(),
            },
        )?;
        Ok(seq_len)
    }

    /// Stores a sample under (dataset, its index) as the most recently used, evicting the least
    /// recently used ones over the budget (spilled to disk when a spill folder is set).
    fn insert(&self, dataset: &str, sample: CachedSample) -> Result<()> {
        let key = SampleKey::new(dataset, sample.input.index);
        let bytes = sample.outputs.bytes();
        self.lru_lock()?.check_fits(&key, bytes)?;
        let spill = self
            .spill
            .lock()
            .map_err(|_| anyhow!("spill lock poisoned"))?
            .clone();
        self.clear_attn_cache_for(Some(&key));
        let mut store = self
            .store
            .write()
            .map_err(|_| anyhow!("sample store lock poisoned"))?;
        store
            .entry(dataset.to_string())
            .or_default()
            .insert(key.index, Arc::new(sample));
        let mut lru = self.lru_lock()?;
        for victim in lru.admit(&key, bytes) {
            let Some(s) = store
                .get_mut(&victim.dataset)
                .and_then(|d| d.remove(&victim.index))
            else {
                continue;
            };
            let spilled = match &spill {
                Some(dir) => {
                    let path = disk::spill_path(dir, &victim.dataset, victim.index);
                    match disk::write_sample(&path, self.fingerprint()?, &victim.dataset, &s) {
                        Ok(()) => Some(path),
                        Err(e) => {
                            eprintln!("{e:#}; the evicted sample will be recomputed instead");
                            None
                        }
                    }
                }
                None => None,
            };
            let kept = Evicted {
                input: s.input.clone(),
                token_ids: s.token_ids.clone(),
                capture: s.capture.clone(),
                spilled,
            };
            lru.mark_evicted(&victim, kept);
            self.clear_attn_cache_for(Some(&victim));
        }
        Ok(())
    }

    /// The model's fingerprint (written into saved activations, checked when they are read).
    pub fn fingerprint(&self) -> Result<&str> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f);
        }
        let f = disk::model_fingerprint(&self.model)?;
        Ok(self.fingerprint.get_or_init(|| f))
    }

    /// Evicted samples are written to `dir` and read back on demand instead of being recomputed
    /// (None: dropped and recomputed). The folder is created.
    pub fn set_spill_dir(&self, dir: Option<PathBuf>) -> Result<()> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        *self
            .spill
            .lock()
            .map_err(|_| anyhow!("spill lock poisoned"))? = dir;
        Ok(())
    }

    /// Writes every sample of `dataset` (evicted ones are read back or recomputed first) to
    /// `dir`: one safetensors file per sample and `index.json`. Returns the number of samples.
    pub fn save_dataset(
        &self,
        dataset: &str,
        dir: &Path,
        progress: &dyn Fn(usize, usize),
    ) -> Result<usize> {
        let mut indices: Vec<usize> = {
            let store = self
                .store
                .read()
                .map_err(|_| anyhow!("sample store lock poisoned"))?;
            store
                .get(dataset)
                .ok_or_else(|| anyhow!("unknown dataset {dataset:?}"))?
                .keys()
                .copied()
                .collect()
        };
        indices.extend(self.lru_lock()?.evicted_indices(dataset));
        indices.sort_unstable();
        indices.dedup();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let fp = self.fingerprint()?.to_string();
        for (k, &i) in indices.iter().enumerate() {
            let s = self.sample(&SampleKey::new(dataset, i))?;
            disk::write_sample(&disk::sample_path(dir, i), &fp, dataset, &s)?;
            progress(k + 1, indices.len());
        }
        disk::write_index(
            dir,
            &disk::Index {
                format: disk::FORMAT,
                model: fp,
                dataset: dataset.to_string(),
                samples: indices.clone(),
            },
        )?;
        Ok(indices.len())
    }

    /// Reads a dataset saved by [`Local::save_dataset`] into the store under `name` (default:
    /// the name it was saved under), without recomputing anything. Every file is checked
    /// against this model first; nothing is stored when one fails. Returns (name, samples).
    pub fn load_dataset(
        &self,
        dir: &Path,
        name: Option<&str>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<(String, usize)> {
        let index = disk::read_index(dir)?;
        let fp = self.fingerprint()?.to_string();
        ensure!(
            index.model == fp,
            "{}: the activations were computed by another model (fingerprint {}, this model {fp})",
            dir.display(),
            index.model
        );
        let name = name.unwrap_or(&index.dataset).to_string();
        ensure!(!name.is_empty(), "the dataset name must not be empty");
        // every file exists, and all of them fit the memory available now
        let mut total = 0u128;
        for &i in &index.samples {
            let p = disk::sample_path(dir, i);
            total += std::fs::metadata(&p)
                .with_context(|| format!("{}: sample {i} of the index is missing", p.display()))?
                .len() as u128;
        }
        crate::limits::check_alloc(total, "the saved activations")?;
        let mut samples = Vec::with_capacity(index.samples.len());
        for (k, &i) in index.samples.iter().enumerate() {
            let (_, s) = disk::read_sample(&disk::sample_path(dir, i), self.model.config(), &fp)?;
            ensure!(
                s.input.index == i,
                "{}: holds sample {}, the index says {i}",
                disk::sample_path(dir, i).display(),
                s.input.index
            );
            samples.push(s);
            progress(k + 1, index.samples.len());
        }
        let n = samples.len();
        for s in samples {
            self.insert(&name, s)?;
        }
        Ok((name, n))
    }

    /// Tokenizes a prompt (special tokens as the tokenizer's post-processor adds them). A prompt
    /// longer than `max_position_embeddings ×` [`crate::limits::PROMPT_BYTES_PER_POSITION`]
    /// bytes cannot fit the model and is refused before it is tokenized.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        self.check_prompt(prompt)?;
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Refuses a prompt too long to fit the model (see [`Local::encode`]) without tokenizing it.
    pub fn check_prompt(&self, prompt: &str) -> Result<()> {
        let max_pos = self.model.config().max_position_embeddings;
        let per = crate::limits::PROMPT_BYTES_PER_POSITION.get();
        let max_bytes = max_pos.saturating_mul(per);
        if prompt.len() > max_bytes {
            bail!(
                "prompt of {} bytes is too long for this model: at most {max_bytes} bytes \
                 (max_position_embeddings {max_pos} × {per} bytes; {} sets the factor)",
                prompt.len(),
                crate::limits::PROMPT_BYTES_PER_POSITION.env
            );
        }
        Ok(())
    }

    /// Empties the attention-weights cache.
    pub fn clear_attn_cache(&self) {
        self.clear_attn_cache_for(None);
    }

    fn clear_attn_cache_for(&self, key: Option<&SampleKey>) {
        if let Ok(mut c) = self.attn_cache.lock() {
            match key {
                None => c.clear(),
                Some(k) => c.retain(|a, _| !(a.dataset == k.dataset && a.index == k.index)),
            }
        }
        if let Ok(mut c) = self.kv_cache.lock() {
            c.forget(key.map(|k| k.dataset.as_str()), key.map(|k| k.index));
        }
    }

    /// (entries, bytes) of the keys-and-values cache.
    pub fn kv_cache_stats(&self) -> (usize, usize) {
        self.kv_cache.lock().map(|c| c.stats()).unwrap_or((0, 0))
    }

    /// The keys and values of `layer` for the cached sample `s` of `key`, from the cache or
    /// computed ([`ig::layer_kv`]) and kept.
    fn kv_of(&self, key: &SampleKey, s: &Arc<CachedSample>, layer: usize) -> Result<Arc<KvProj>> {
        let ck = (key.dataset.clone(), key.index, layer);
        let id = Arc::as_ptr(s) as usize;
        if let Some(kv) = self.kv_cache.lock().ok().and_then(|mut c| c.get(&ck, id)) {
            return Ok(kv);
        }
        let kv = Arc::new(ig::layer_kv(&self.model, s, layer)?);
        if let Ok(mut c) = self.kv_cache.lock() {
            c.insert(ck, id, kv.clone());
        }
        Ok(kv)
    }

    /// (entries, bytes) of the attention-weights cache.
    pub fn attn_cache_stats(&self) -> (usize, usize) {
        self.attn_cache
            .lock()
            .map(|c| (c.len(), c.values().map(|t| t.elem_count() * 4).sum()))
            .unwrap_or((0, 0))
    }

    fn n_heads(&self) -> usize {
        self.model.config().num_attention_heads
    }

    fn head_list(&self, heads: &HeadSel) -> Result<Vec<usize>> {
        let list = match heads {
            HeadSel::One(h) => vec![*h],
            HeadSel::Many(hs) => hs.clone(),
            HeadSel::All => (0..self.n_heads()).collect(),
        };
        self.model.config().check_heads(&list)?;
        Ok(list)
    }

    fn head_output_of(
        &self,
        key: &SampleKey,
        layer: usize,
        heads: &HeadSel,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        let s = self.sample(key)?;
        match heads {
            HeadSel::One(h) if *h == self.n_heads() => s.outputs.mlp_output(layer, pos_ids),
            HeadSel::All => {
                let a = s.outputs.attn_out(layer, pos_ids)?;
                to_host(self.model.head_outputs(layer, &a, None)?)
            }
            sel => {
                let list = self.head_list(sel)?;
                let a = s.outputs.attn_out(layer, pos_ids)?;
                to_host(self.model.heads_output_sum(layer, &a, Some(&list))?)
            }
        }
    }

    fn attn_weights_of(
        &self,
        key: &SampleKey,
        layer: usize,
        heads: &HeadSel,
        pos_ids: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.model.config().check_layer(layer)?;
        let list = self.head_list(heads)?;
        let s = self.sample(key)?;
        let out = &s.outputs;
        let cache_key = pos_ids.map(|p| AttnKey {
            dataset: key.dataset.clone(),
            index: key.index,
            layer,
            heads: list.clone(),
            pos_ids: p.to_vec(),
        });
        if let Some(ck) = &cache_key
            && let Some(t) = self.attn_cache.lock().ok().and_then(|c| c.get(ck).cloned())
        {
            return Ok(t);
        }
        if !out.has_all_positions() {
            bail!(
                "attention weights need the full-sequence hidden_states of layer {layer}, but \
                 sample {} of {:?} was captured at selected positions only",
                key.index,
                key.dataset
            );
        }
        crate::model::ops::check_pos_ids(pos_ids, out.seq_len)?;
        // the query rows only are normed here: the keys come from the (sample, layer) cache
        let hs = out.hidden_state(layer, pos_ids)?; // [1,k,e]
        let var = out.input_norm_var(layer, pos_ids)?;
        let xq = self.model.rms_norm(Norm::Input(layer), &hs, Some(&var))?;
        let all: Vec<usize> = (0..out.seq_len).collect();
        let q_pos = pos_ids.unwrap_or(&all);
        let kv = self.kv_of(key, &s, layer)?;
        let a = AttnInputs::new(&xq, &xq, &xq, q_pos)
            .heads(&list)
            .with_kv(&kv);
        let mut w = to_host(self.model.attention_weights(layer, &a)?)?; // [1,h,k,s]
        if matches!(heads, HeadSel::One(_)) {
            w = w.squeeze(1)?;
        }
        if let Some(ck) = cache_key
            && let Ok(mut c) = self.attn_cache.lock()
        {
            c.insert(ck, w.clone());
        }
        Ok(w)
    }

    fn logits_of(&self, key: &SampleKey, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        let s = self.sample(key)?;
        crate::model::ops::check_pos_ids(pos_ids, s.outputs.seq_len)?;
        if s.outputs.logits.is_some() {
            return s.outputs.logits(pos_ids);
        }
        let h = s
            .outputs
            .hidden_state(self.config().num_hidden_layers, pos_ids)
            .context("logits were not captured, and neither was hidden_states[L]")?;
        to_host(self.model.lm_head(&h)?)
    }
}

/// Labels and candidate ids must be token ids of the model, and with candidates given every
/// label must be one of them (otherwise the masked objective is silently −10⁴).
/// The objective's own requirements: one foil token per label for a logit difference, answers
/// for argmax.
fn check_objective(input: &SampleInput, vocab: usize) -> Result<()> {
    match &input.objective {
        Objective::LogitDiff { foils } => {
            ensure!(
                foils.len() == input.labels.len(),
                "sample {}: logit_diff needs one foil per label ({} foils, {} labels)",
                input.index,
                foils.len(),
                input.labels.len()
            );
            if let Some(&t) = foils.iter().find(|&&t| t as usize >= vocab) {
                bail!(
                    "sample {}: foil {t} is not a token id (vocab size {vocab})",
                    input.index
                );
            }
        }
        Objective::Argmax => ensure!(
            !input.answer_indices.is_empty(),
            "sample {}: the argmax objective needs answer positions",
            input.index
        ),
        Objective::LogProb | Objective::FullVocab => {}
    }
    Ok(())
}

fn check_label_ids(input: &SampleInput, vocab: usize) -> Result<()> {
    for (what, ids) in [
        ("label", &input.labels),
        ("candidate id", &input.candidate_ids),
    ] {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
            bail!(
                "sample {}: {what} {t} is not a token id (vocab size {vocab})",
                input.index
            );
        }
    }
    if !input.candidate_ids.is_empty()
        && input.objective == Objective::LogProb
        && let Some(l) = input
            .labels
            .iter()
            .find(|l| !input.candidate_ids.contains(l))
    {
        bail!(
            "sample {}: label {l} is not among the candidate_ids {:?} (the candidate-masked \
             objective could never predict it)",
            input.index,
            input.candidate_ids
        );
    }
    Ok(())
}

impl Backend for Local {
    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn describe(&self) -> String {
        format!("local: {}", self.model.describe())
    }

    fn dataset_options(&self) -> Option<&serde_json::Value> {
        self.dataset_options.as_ref()
    }

    fn forward_sample(
        &self,
        dataset: &str,
        input: &SampleInput,
        capture: &CaptureSpec,
        force: bool,
    ) -> Result<usize> {
        let key = SampleKey::new(dataset, input.index);
        if !force && let Ok((_, seq_len)) = self.sample_info(&key) {
            return Ok(seq_len);
        }
        let ids = self.encode(&input.prompt)?;
        self.forward_ids(dataset, input, &ids, capture, force)
    }

    /// Forwards samples `batch` at a time (each batch right-padded to its longest prompt; the
    /// prompts are grouped by length so little is padded) and stores each under (dataset, its
    /// index), skipping cached ones unless `force`. `on_done(n)` is called after each batch with
    /// the number of samples it held. Returns each sample's seq_len in order. Every sample is
    /// checked before any forward runs; a failed batch stores none of its samples.
    fn forward_samples(
        &self,
        dataset: &str,
        inputs: &[SampleInput],
        captures: &[CaptureSpec],
        force: bool,
        batch: usize,
        on_done: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Vec<usize>> {
        super::check_forward_samples(inputs, captures, batch)?;
        let mut seq_lens = vec![0; inputs.len()];
        let mut todo: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, input) in inputs.iter().enumerate() {
            ensure!(
                seen.insert(input.index),
                "sample index {} appears twice in one forward",
                input.index
            );
            let key = SampleKey::new(dataset, input.index);
            if !force && let Ok((_, seq_len)) = self.sample_info(&key) {
                seq_lens[k] = seq_len;
                on_done(1)?;
                continue;
            }
            let ids = self.encode(&input.prompt)?;
            self.check_input(input, &ids)
                .and_then(|()| captures[k].validate(self.config().num_hidden_layers, ids.len()))
                .with_context(|| format!("sample {} of dataset {dataset:?}", input.index))?;
            todo.push((k, ids));
        }
        // batches of similar lengths, longest first (the first batch fails early when memory is
        // short); one at a time keeps the given order
        if batch > 1 {
            todo.sort_by_key(|(k, ids)| (std::cmp::Reverse(ids.len()), *k));
        }
        for chunk in todo.chunks(batch) {
            crate::cancel::check()?;
            let seqs: Vec<&[u32]> = chunk.iter().map(|(_, ids)| ids.as_slice()).collect();
            let specs: Vec<CaptureSpec> = chunk.iter().map(|(k, _)| captures[*k].clone()).collect();
            let outs = self
                .model
                .forward_capture_batch(&seqs, &specs)
                .with_context(|| {
                    let idx: Vec<usize> = chunk.iter().map(|(k, _)| inputs[*k].index).collect();
                    format!("batched forward of samples {idx:?} of dataset {dataset:?}")
                })?;
            for ((k, ids), outputs) in chunk.iter().zip(outs) {
                seq_lens[*k] = self.keep(dataset, &inputs[*k], ids, outputs, &captures[*k])?;
            }
            on_done(chunk.len())?;
        }
        Ok(seq_lens)
    }

    fn has_sample(&self, key: &SampleKey) -> Result<bool> {
        Ok(self.sample_info(key).is_ok())
    }

    fn datasets(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let store = self
            .store
            .read()
            .map_err(|_| anyhow!("sample store lock poisoned"))?;
        let lru = self.lru.lock().ok();
        let mut v: Vec<(String, Vec<usize>)> = store
            .iter()
            .map(|(name, m)| {
                let mut idx: Vec<usize> = m.keys().copied().collect();
                if let Some(l) = &lru {
                    idx.extend(l.evicted_indices(name));
                    idx.sort_unstable();
                }
                (name.clone(), idx)
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn save_dataset(&self, dataset: &str, dir: &str) -> Result<usize> {
        Local::save_dataset(self, dataset, Path::new(dir), &|_, _| {})
    }

    fn load_dataset(&self, dir: &str, name: Option<&str>) -> Result<(String, usize)> {
        Local::load_dataset(self, Path::new(dir), name, &|_, _| {})
    }

    fn drop_dataset(&self, dataset: &str) -> Result<()> {
        let mut store = self
            .store
            .write()
            .map_err(|_| anyhow!("sample store lock poisoned"))?;
        if store.remove(dataset).is_none() {
            bail!("unknown dataset {dataset:?}");
        }
        self.lru_lock()?.forget_dataset(dataset);
        if let Ok(mut c) = self.attn_cache.lock() {
            c.retain(|a, _| a.dataset != dataset);
        }
        if let Ok(mut c) = self.kv_cache.lock() {
            c.forget(Some(dataset), None);
        }
        Ok(())
    }

    fn seq_len(&self, key: &SampleKey) -> Result<usize> {
        Ok(self.sample_info(key)?.1)
    }

    fn activation(&self, key: &SampleKey, act: &Act, pos_ids: Option<&[usize]>) -> Result<Tensor> {
        match act {
            Act::HiddenStates(layer) => self.sample(key)?.outputs.hidden_state(*layer, pos_ids),
            Act::AttnOutput(layer) => {
                let s = self.sample(key)?;
                let a = s.outputs.attn_out(*layer, pos_ids)?;
                to_host(self.model.heads_output_sum(*layer, &a, None)?)
            }
            Act::MlpOutput(layer) => self.sample(key)?.outputs.mlp_output(*layer, pos_ids),
            Act::HeadOutput(layer, heads) => self.head_output_of(key, *layer, heads, pos_ids),
            Act::AttnWeights(layer, heads) => self.attn_weights_of(key, *layer, heads, pos_ids),
            Act::Logits => self.logits_of(key, pos_ids),
            Act::AttnOut(layer) => self.sample(key)?.outputs.attn_out(*layer, pos_ids),
            Act::InputNormVar(layer) => {
                let s = self.sample(key)?;
                if *layer == self.model.config().num_hidden_layers {
                    s.outputs.final_norm_var(pos_ids)
                } else {
                    s.outputs.input_norm_var(*layer, pos_ids)
                }
            }
            Act::PostAttnNormVar(layer) => self
                .sample(key)?
                .outputs
                .post_attn_norm_var(*layer, pos_ids),
        }
    }

    fn lens_logits(&self, x: &Tensor) -> Result<Tensor> {
        let xn = self.model.rms_norm(Norm::Final, x, None)?; // [b,k,e]
        to_host(self.model.lm_head(&xn)?) // [b,k,v]
    }

    fn sample_meta(&self, key: &SampleKey) -> Result<SampleInput> {
        Ok(self.sample_info(key)?.0)
    }

    fn node_gradient(&self, key: &SampleKey, req: &NodeGradRequest) -> Result<NodeGrad> {
        let s = self.sample(key)?;
        ig::node_gradient_kv(&self.model, &s, req, &|l| self.kv_of(key, &s, l))
    }

    fn node_forward(&self, key: &SampleKey, req: &NodeForwardRequest) -> Result<Tensor> {
        ig::node_forward(&self.model, &*self.sample(key)?, req)
    }

    fn attribute_residual(&self, key: &SampleKey, req: &ResidualRequest) -> Result<Tensor> {
        ig::attribute_residual(&self.model, &*self.sample(key)?, req)
    }

    fn weight(&self, name: &str, rows: Option<&[usize]>) -> Result<Tensor> {
        self.model
            .weights()
            .by_name(self.model.config(), name, rows)
    }

    fn intervene(
        &self,
        key: &SampleKey,
        sets: &[Vec<Intervention>],
        opts: &InterveneOptions,
    ) -> Result<Vec<IntervenedRun>> {
        crate::limits::INTERVENTION_SETS.check(sets.len(), "intervention sets")?;
        let sample = self.sample(key)?;
        let ids = &sample.token_ids;
        let s = ids.len();
        let logit_pos = opts.positions_for(&sample.input, s)?;
        for (i, set) in sets.iter().enumerate() {
            self.model
                .check_interventions(s, set)
                .with_context(|| format!("intervention set {i}"))?;
        }
        let cfg = self.model.config();
        // one chunk's activations stay near 256 MiB: per set ≈ s·(2·inter + 8·e + n·s) f32
        let per_set =
            s * (2 * cfg.intermediate_size + 8 * cfg.hidden_size + cfg.num_attention_heads * s) * 4;
        let chunk = ((256usize << 20) / per_set.max(1)).clamp(1, 16);
        // Layers below a set's first edited layer are the clean run's: start there from the
        // cached residual when the cache holds it exactly (all positions, compute dtype). Sets
        // are run in order of that layer so a chunk skips as much as its sets allow.
        let nl = cfg.num_hidden_layers;
        let lowest_kept = opts.hidden_layers.iter().copied().min().unwrap_or(nl);
        let first = |set: &[Intervention]| {
            set.iter()
                .map(|iv| iv.site.layer())
                .min()
                .unwrap_or(nl)
                .min(lowest_kept)
                .min(nl.saturating_sub(1))
        };
        let mut order: Vec<usize> = (0..sets.len()).collect();
        order.sort_by_key(|&i| first(&sets[i]));
        let mut out: Vec<Option<IntervenedRun>> = (0..sets.len()).map(|_| None).collect();
        for idx in order.chunks(chunk) {
            crate::cancel::check()?;
            let c: Vec<Vec<Intervention>> = idx.iter().map(|&i| sets[i].clone()).collect();
            let l0 = first(&sets[idx[0]]);
            let start = self.cached_residual(&sample, l0)?;
            let runs = self
                .model
                .forward_intervened(ids, &c, &logit_pos, &opts.hidden_layers, start.as_ref())
                .with_context(|| {
                    format!(
                        "intervened forward of sample {} of dataset {:?}",
                        key.index, key.dataset
                    )
                })?;
            for (&i, r) in idx.iter().zip(runs) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| anyhow!("intervention set without a run")))
            .collect()
    }
}

impl Local {
    /// The seed's `reduction='argmax'`: the model's own prediction (over the candidates when
    /// given) at the positions that predict the answers, from the captured final hidden states.
    fn own_predictions(&self, input: &SampleInput, outputs: &Outputs) -> Result<Vec<u32>> {
        let pos = input.answer_positions()?;
        let nl = self.model.config().num_hidden_layers;
        let x = outputs.hidden_state(nl, Some(&pos)).with_context(|| {
            format!(
                "sample {}: the argmax objective needs the final hidden states at the answer \
                 positions in the capture",
                input.index
            )
        })?;
        let x = x
            .to_device(self.model.device())?
            .to_dtype(self.model.dtype())?;
        let logits = self.model.lm_head(&x)?.to_dtype(DType::F32)?.squeeze(0)?; // [k,v]
        let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        let v = self.model.config().vocab_size;
        let allowed: Vec<usize> = if input.candidate_ids.is_empty() {
            (0..v).collect()
        } else {
            input.candidate_ids.iter().map(|&c| c as usize).collect()
        };
        Ok(rows
            .iter()
            .map(|r| {
                allowed
                    .iter()
                    .copied()
                    .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
                    .unwrap_or(0) as u32
            })
            .collect())
    }

    /// The cached residual entering layer `l` `[1,s,e]` on the model's device, when the cache
    /// holds it exactly as the forward computed it (every position, in the compute dtype);
    /// None for layer 0 (the embedding is cheap) or when it does not.
    fn cached_residual(&self, sample: &CachedSample, l: usize) -> Result<Option<(usize, Tensor)>> {
        let o = &sample.outputs;
        if l == 0 || o.positions.is_some() || o.dtype != self.model.dtype() {
            return Ok(None);
        }
        match o.hidden_states.get(l) {
            Some(Some(h)) => Ok(Some((l, h.to_device(self.model.device())?))),
            _ => Ok(None),
        }
    }
}
