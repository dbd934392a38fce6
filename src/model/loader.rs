//! Memory-mapped safetensors loading: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Every error names the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// How a checkpoint is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Scan every weight for NaN/inf on load (an error names the file, the tensor and the first
    /// bad element). On by default; `MINARC_SKIP_WEIGHT_CHECK=1` turns the default off.
    pub check_finite: bool,
    /// GPTQ checkpoints: `Some(budget)` keeps the decoder layers packed and dequantises one
    /// layer at a time when it is used, holding up to `budget` bytes of dequantised layers
    /// (at least the one in use); None dequantises everything on load. None by default on the
    /// CPU; [`LoadOptions::for_device`] packs on CUDA.
    pub gptq_packed: Option<usize>,
    /// A layer device map (`cuda:0,cuda:1` or `cuda:0=0-39,cuda:1=40-79`, see
    /// [`super::config::parse_device_map`]): decoder layers on several devices, the home device
    /// being the load's `device`. None: every layer on the load's device.
    pub device_map: Option<String>,
    /// Hold the decoder layers' projection weights (q, k, v, o, gate, up, down) in this dtype
    /// instead of the compute dtype: with `bf16` and an f32 compute dtype the products run in
    /// bf16 with f32 accumulation while the residual stream, norms, attention and captures stay
    /// f32 (see [`super::ops::linear`]). None: the compute dtype.
    pub weights_dtype: Option<DType>,
}

/// Default budget of dequantised GPTQ layers when packed: 4 GiB (`MINARC_GPTQ_CACHE_BYTES`).
pub fn default_gptq_cache_bytes() -> usize {
    std::env::var("MINARC_GPTQ_CACHE_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4 << 30)
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            check_finite: !crate::limits::env_flag("MINARC_SKIP_WEIGHT_CHECK"),
            gptq_packed: None,
            device_map: None,
            weights_dtype: None,
        }
    }
}

impl LoadOptions {
    /// The defaults for a device: GPTQ stays packed on CUDA (an int4 72B model fits one 80 GB
    /// GPU only packed), dequantised on load on the CPU.
    pub fn for_device(dev: &candle_core::Device) -> Self {
        Self {
            gptq_packed: dev.is_cuda().then(default_gptq_cache_bytes),
            ..Self::default()
        }
    }
}

/// The safetensors files of a checkpoint folder, memory-mapped, with a tensor → file routing;
/// or tensors already in memory under their HF names (a dequantised GGUF file).
pub struct WeightFiles {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    routing: HashMap<String, usize>,
    memory: Option<(PathBuf, HashMap<String, Tensor>)>,
    check_finite: bool,
    weights_dtype: Option<DType>,
    gptq: Option<super::gptq::GptqConfig>,
}

/// A shard file name from an index must be a plain relative path inside the model folder.
fn check_shard_name(index: &Path, name: &str) -> Result<()> {
    use std::path::Component;
    let p = Path::new(name);
    let plain = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        bail!(
            "{}: shard file name {name:?} must be a relative path inside the model folder \
             (no \"..\", no absolute path)",
            index.display()
        );
    }
    Ok(())
}

/// Index of the first NaN/inf element in raw little-endian float bytes, by exponent bits.
fn first_non_finite(dtype: safetensors::Dtype, data: &[u8]) -> Option<usize> {
    use safetensors::Dtype as D;
    match dtype {
        D::F32 => data.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        D::F16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        D::BF16 => data
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        D::F64 => data.chunks_exact(8).position(|b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                & 0x7ff0_0000_0000_0000
                == 0x7ff0_0000_0000_0000
        }),
        _ => None,
    }
}

impl WeightFiles {
    /// Opens `dir/model.safetensors.index.json` (sharded) if present, else `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.exists() {
            return Self::open_sharded(dir, &index);
        }
        let single = dir.join(SINGLE_FILE);
        if !single.exists() {
            bail!(
                "no weights in {}: neither {SINGLE_FILE} nor {INDEX_FILE} exists",
                dir.display()
            );
        }
        Self::from_paths(vec![single])
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self> {
        let text = crate::limits::read_text_file(index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("malformed shard index {}", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: missing object \"weight_map\"", index.display()))?;
        let mut shards: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                anyhow!("{}: weight_map[{name:?}] is not a string", index.display())
            })?;
            check_shard_name(index, file)?;
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        shards.sort();
        let files = Self::from_paths(shards.iter().map(|s| dir.join(s)).collect())?;
        for name in map.keys() {
            if !files.routing.contains_key(name) {
                bail!(
                    "{}: tensor {name:?} is listed in weight_map but missing from its shard {}",
                    index.display(),
                    map[name].as_str().unwrap_or("?")
                );
            }
        }
        Ok(files)
    }

    /// Memory-maps the given safetensors files (header parsed and checked against the file size).
    pub fn from_paths(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            if !path.exists() {
                bail!("weights file {} does not exist", path.display());
            }
            // SAFETY: the file is only read; the usual mmap caveat (external modification while
            // mapped) applies, as with every memory-mapped checkpoint loader.
            let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| {
                anyhow!(
                    "cannot read safetensors file {} (truncated or corrupt?): {e}",
                    path.display()
                )
            })?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push((path, st));
        }
        Ok(Self {
            files,
            routing,
            memory: None,
            check_finite: LoadOptions::default().check_finite,
            weights_dtype: None,
            gptq: None,
        })
    }

    /// Reads the quantised linears as GPTQ with these settings.
    pub fn with_gptq(mut self, q: Option<super::gptq::GptqConfig>) -> Self {
        self.gptq = q;
        self
    }

    /// The GPTQ settings, for a quantised checkpoint.
    pub fn gptq(&self) -> Option<&super::gptq::GptqConfig> {
        self.gptq.as_ref()
    }

    /// The mapped file and the view of tensor `name`.
    fn view(&self, name: &str) -> Result<(&Path, safetensors::tensor::TensorView<'_>)> {
        let idx = *self
            .routing
            .get(name)
            .ok_or_else(|| anyhow!("missing tensor {name:?} in {}", self.describe()))?;
        let (path, st) = &self.files[idx];
        let view = st
            .get(name)
            .map_err(|e| anyhow!("tensor {name:?} in {}: {e}", path.display()))?;
        Ok((path, view))
    }

    /// A tensor's raw little-endian bytes with its dtype and shape (integer tensors of
    /// quantised checkpoints).
    pub fn raw(&self, name: &str) -> Result<(safetensors::Dtype, Vec<usize>, Vec<u8>)> {
        let (_, view) = self.view(name)?;
        Ok((view.dtype(), view.shape().to_vec(), view.data().to_vec()))
    }

    /// Float tensors already in memory under their HF names, read from `source` (named in
    /// errors).
    pub fn from_tensors(source: PathBuf, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            files: Vec::new(),
            routing: HashMap::new(),
            memory: Some((source, tensors)),
            check_finite: LoadOptions::default().check_finite,
            weights_dtype: None,
            gptq: None,
        }
    }

    /// Sets how tensors are read (see [`LoadOptions`]).
    pub fn with_options(mut self, opts: &LoadOptions) -> Self {
        self.check_finite = opts.check_finite;
        self.weights_dtype = opts.weights_dtype;
        self
    }

    /// The dtype the decoder layers' projection weights are held in (None: the compute dtype).
    pub fn weights_dtype(&self) -> Option<DType> {
        self.weights_dtype
    }

    /// Whether the checkpoint contains `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
            || self
                .memory
                .as_ref()
                .is_some_and(|(_, m)| m.contains_key(name))
    }

    /// All tensor names.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routing.keys().cloned().collect();
        if let Some((_, m)) = &self.memory {
            v.extend(m.keys().cloned());
        }
        v.sort();
        v
    }

    /// Paths of the mapped files (or of the file the in-memory tensors came from).
    pub fn paths(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = self.files.iter().map(|(p, _)| p.as_path()).collect();
        if let Some((p, _)) = &self.memory {
            v.push(p.as_path());
        }
        v
    }

    fn describe(&self) -> String {
        if let Some((p, _)) = &self.memory {
            return p.display().to_string();
        }
        match self.files.as_slice() {
            [(p, _)] => p.display().to_string(),
            fs => format!(
                "{} shards in {}",
                fs.len(),
                fs.first()
                    .and_then(|(p, _)| p.parent())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }

    /// Loads tensor `name`, checks its shape is `shape` and its dtype a float type, and converts it
    /// to `dtype` on `device`.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if let Some((path, m)) = &self.memory {
            return self.memory_tensor(path, m, name, shape, dtype, device);
        }
        let (path, view) = self.view(name)?;
        let st_dtype = view.dtype();
        use safetensors::Dtype as D;
        if !matches!(st_dtype, D::F32 | D::F16 | D::BF16 | D::F64) {
            bail!(
                "tensor {name:?} in {} has non-float dtype {st_dtype:?}",
                path.display()
            );
        }
        if view.shape() != shape {
            bail!(
                "tensor {name:?} in {} has shape {:?}, expected {shape:?}",
                path.display(),
                view.shape()
            );
        }
        if self.check_finite
            && let Some(i) = first_non_finite(st_dtype, view.data())
        {
            bail!(
                "tensor {name:?} in {} has a NaN or infinite value at element {i} (of {}); \
                 the checkpoint is damaged (set MINARC_SKIP_WEIGHT_CHECK=1 to load it anyway)",
                path.display(),
                view.shape().iter().product::<usize>()
            );
        }
        let t = view
            .load(device)
            .map_err(|e| anyhow!("cannot load tensor {name:?} from {}: {e}", path.display()))?;
        t.to_dtype(dtype).map_err(|e| {
            anyhow!(
                "cannot convert tensor {name:?} from {}: {e}",
                path.display()
            )
        })
    }

    fn memory_tensor(
        &self,
        path: &Path,
        m: &HashMap<String, Tensor>,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = m
            .get(name)
            .ok_or_else(|| anyhow!("missing tensor {name:?} in {}", path.display()))?;
        if t.dims() != shape {
            bail!(
                "tensor {name:?} in {} has shape {:?}, expected {shape:?}",
                path.display(),
                t.dims()
            );
        }
        if self.check_finite {
            let flat = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if let Some(i) = flat.iter().position(|x| !x.is_finite()) {
                bail!(
                    "tensor {name:?} in {} has a NaN or infinite value at element {i} (of {}); \
                     the checkpoint is damaged (set MINARC_SKIP_WEIGHT_CHECK=1 to load it anyway)",
                    path.display(),
                    flat.len()
                );
            }
        }
        t.to_device(device)?.to_dtype(dtype).map_err(|e| {
            anyhow!(
                "cannot convert tensor {name:?} from {}: {e}",
                path.display()
            )
        })
    }
}
