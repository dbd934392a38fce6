//! Sharded runs on a cluster scheduler and the one implementation of `mr`'s mean.
//!
//! `minarc run SCRIPT --shard i/N --shard-dir DIR` gives `forward` and `mr` the i-th contiguous
//! slice of their items; each `mr` call writes its partial result (f64 sums and the item count,
//! safetensors) to `DIR/shard-i-of-N/mr-KKKK.safetensors`. `minarc reduce DIR` adds the
//! partials of every call into `DIR/reduced/`, and `minarc run SCRIPT --reduced DIR` runs the
//! script once more with every `mr` call answered from those sums (and `forward` computing
//! nothing), so its output is what one unsharded run gives.
//!
//! The unsharded `mr` takes its mean through the same [`Acc`] (f64 sums in item order, divided
//! by the count, cast back to each tensor's dtype): sharded and unsharded results differ only in
//! how the f64 additions associate.

use crate::limits::COUNT;
use crate::script::tensor::Tensor;
use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor as CTensor};
use rhai::{Array, Dynamic, FLOAT, Map};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Most shards of one run.
pub const MAX_SHARDS: usize = 1 << 20;
/// Most `mr` calls of one sharded script.
pub const MAX_CALLS: usize = 100_000;
/// Largest partial-result file read.
pub const MAX_PARTIAL_BYTES: u64 = 16 << 30;
/// Safetensors metadata key holding the partial's description.
const META_KEY: &str = "minarc_partial";

/// Shard `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard index, < count.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// A checked shard.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        ensure!(count >= 1, "the shard count must be at least 1");
        ensure!(
            count <= MAX_SHARDS,
            "{count} shards exceed the limit of {MAX_SHARDS}"
        );
        ensure!(
            index < count,
            "shard index {index} is out of range for {count} shards (0..{count})"
        );
        Ok(Shard { index, count })
    }

    /// Parses `i/N` (0-based i).
    pub fn parse(s: &str) -> Result<Shard> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("--shard {s:?}: expected i/N, e.g. 0/4 (0-based index)"))?;
        let i: usize = i
            .trim()
            .parse()
            .map_err(|_| anyhow!("--shard {s:?}: the index {i:?} is not a whole number"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| anyhow!("--shard {s:?}: the count {n:?} is not a whole number"))?;
        Shard::new(i, n)
    }

    /// The shard a scheduler assigned through the environment: a Slurm job array
    /// (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`) or a
    /// Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` of `MINARC_SHARD_COUNT`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let num = |name: &str| -> Result<Option<usize>> {
            match get(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| anyhow!("{name}={v:?} is not a whole number")),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                anyhow!("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
            })?;
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            ensure!(
                id >= min,
                "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
            );
            return Shard::new(id - min, count).context(
                "the Slurm array must be contiguous with step 1 (e.g. --array=0-7) for --shard auto",
            );
        }
        if let Some(id) = num("JOB_COMPLETION_INDEX")? {
            let count = num("MINARC_SHARD_COUNT")?.ok_or_else(|| {
                anyhow!(
                    "JOB_COMPLETION_INDEX is set: set MINARC_SHARD_COUNT to the Job's completions"
                )
            })?;
            return Shard::new(id, count);
        }
        bail!(
            "--shard auto: no scheduler index in the environment (SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with MINARC_SHARD_COUNT)"
        )
    }

    /// Items `[i·n/N, (i+1)·n/N)` of `n`: contiguous, in order, every item in exactly one shard.
    pub fn range(&self, n: usize) -> Range<usize> {
        let at = |k: usize| ((k as u128 * n as u128) / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The folder of this shard's partials under `dir`.
    pub fn dir(&self, dir: &Path) -> PathBuf {
        dir.join(format!("shard-{}-of-{}", self.index, self.count))
    }
}

/// How `forward` and `mr` treat their items in this process.
#[derive(Clone, Debug, Default)]
pub enum ShardMode {
    /// Every item (an ordinary run).
    #[default]
    Whole,
    /// One shard's items; `mr` partials go to `dir`.
    Shard {
        /// Which shard.
        shard: Shard,
        /// The run's folder (the shard writes into `shard.dir(dir)`).
        dir: PathBuf,
    },
    /// No items: `mr` answers from the reduced sums in this folder.
    Replay(PathBuf),
}

impl ShardMode {
    /// The items of `n` this process computes.
    pub fn range(&self, n: usize) -> Range<usize> {
        match self {
            ShardMode::Whole => 0..n,
            ShardMode::Shard { shard, .. } => shard.range(n),
            ShardMode::Replay(_) => 0..0,
        }
    }
}

/// Running f64 sums with the structure of an `mr` result: a number, a tensor, a map of results
/// or an array of results.
#[derive(Clone, Debug, PartialEq)]
pub enum Acc {
    /// Sum of numbers (ints count as floats).
    Num(f64),
    /// Elementwise sum of equally shaped tensors, with the dtype the mean is cast back to.
    Tensor {
        /// Shape of every item.
        shape: Vec<usize>,
        /// The items' dtype.
        dtype: DType,
        /// Sums, row-major.
        sum: Vec<f64>,
    },
    /// Per key (the keys of the first item).
    Map(BTreeMap<String, Acc>),
    /// Per element.
    Array(Vec<Acc>),
}

fn number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as FLOAT))
}

impl Acc {
    /// Zero sums shaped like `v`.
    pub fn zeros_like(v: &Dynamic) -> Result<Acc> {
        if number(v).is_some() {
            return Ok(Acc::Num(0.0));
        }
        if let Some(t) = v.read_lock::<Tensor>() {
            let shape = t.shape();
            crate::limits::check_tensor(&shape, 8, "an mr sum")?;
            let n = shape.iter().product();
            return Ok(Acc::Tensor {
                shape,
                dtype: t.inner().dtype(),
                sum: vec![0.0; n],
            });
        }
        if let Some(m) = v.read_lock::<Map>() {
            return m
                .iter()
                .map(|(k, x)| Ok((k.to_string(), Acc::zeros_like(x)?)))
                .collect::<Result<_>>()
                .map(Acc::Map);
        }
        if let Some(a) = v.read_lock::<Array>() {
            return a
                .iter()
                .map(Acc::zeros_like)
                .collect::<Result<_>>()
                .map(Acc::Array);
        }
        bail!("cannot average values of type {}", v.type_name())
    }

    /// Adds one item (equally structured as the first).
    pub fn add(&mut self, v: &Dynamic) -> Result<()> {
        match self {
            Acc::Num(s) => {
                *s += number(v)
                    .ok_or_else(|| anyhow!("is a {}, expected a number", v.type_name()))?;
            }
            Acc::Tensor { shape, sum, .. } => {
                let t = v
                    .read_lock::<Tensor>()
                    .ok_or_else(|| anyhow!("is a {}, expected a Tensor", v.type_name()))?;
                ensure!(
                    t.shape() == *shape,
                    "cannot average tensors of shapes {shape:?} and {:?}",
                    t.shape()
                );
                let x = t
                    .inner()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                for (s, x) in sum.iter_mut().zip(x) {
                    *s += x;
                }
            }
            Acc::Map(m) => {
                let item = v
                    .read_lock::<Map>()
                    .ok_or_else(|| anyhow!("is a {}, expected a map", v.type_name()))?;
                for (k, acc) in m.iter_mut() {
                    let x = item
                        .get(k.as_str())
                        .ok_or_else(|| anyhow!("has no key {k}"))?;
                    acc.add(x).map_err(|e| anyhow!("key {k}: {e}"))?;
                }
            }
            Acc::Array(a) => {
                let item = v
                    .read_lock::<Array>()
                    .filter(|x| x.len() == a.len())
                    .ok_or_else(|| anyhow!("is not an array of length {}", a.len()))?;
                for (i, (acc, x)) in a.iter_mut().zip(item.iter()).enumerate() {
                    acc.add(x).map_err(|e| anyhow!("element {i}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Adds another sum of the same structure (another shard's partial).
    pub fn merge(&mut self, other: &Acc) -> Result<()> {
        match (self, other) {
            (Acc::Num(a), Acc::Num(b)) => *a += b,
            (
                Acc::Tensor {
                    shape: sa,
                    dtype: da,
                    sum: a,
                },
                Acc::Tensor {
                    shape: sb,
                    dtype: db,
                    sum: b,
                },
            ) => {
                ensure!(
                    sa == sb && da == db,
                    "tensor {sa:?} {da:?} vs {sb:?} {db:?}"
                );
                for (a, b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }
            (Acc::Map(a), Acc::Map(b)) => {
                ensure!(
                    a.len() == b.len() && a.keys().all(|k| b.contains_key(k)),
                    "maps with keys {:?} vs {:?}",
                    a.keys().collect::<Vec<_>>(),
                    b.keys().collect::<Vec<_>>()
                );
                for (k, x) in a.iter_mut() {
                    x.merge(&b[k]).map_err(|e| anyhow!("key {k}: {e}"))?;
                }
            }
            (Acc::Array(a), Acc::Array(b)) => {
                ensure!(a.len() == b.len(), "arrays of {} vs {}", a.len(), b.len());
                for (i, (x, y)) in a.iter_mut().zip(b).enumerate() {
                    x.merge(y).map_err(|e| anyhow!("element {i}: {e}"))?;
                }
            }
            (a, b) => bail!("a {} vs a {}", a.kind(), b.kind()),
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self {
            Acc::Num(_) => "number",
            Acc::Tensor { .. } => "tensor",
            Acc::Map(_) => "map",
            Acc::Array(_) => "array",
        }
    }

    /// The mean over `count` items: numbers as floats, tensors in their dtype.
    pub fn mean(&self, count: u64) -> Result<Dynamic> {
        ensure!(count > 0, "nothing to reduce (empty input)");
        let n = count as f64;
        Ok(match self {
            Acc::Num(s) => Dynamic::from_float(s / n),
            Acc::Tensor { shape, dtype, sum } => {
                let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
                let t =
                    CTensor::from_vec(mean, shape.as_slice(), &Device::Cpu)?.to_dtype(*dtype)?;
                Dynamic::from(Tensor::new(t))
            }
            Acc::Map(m) => {
                let mut out = Map::new();
                for (k, a) in m {
                    out.insert(k.as_str().into(), a.mean(count)?);
                }
                Dynamic::from_map(out)
            }
            Acc::Array(a) => Dynamic::from_array(
                a.iter()
                    .map(|x| x.mean(count))
                    .collect::<Result<Vec<_>>>()?,
            ),
        })
    }

    /// The f64 sums of `vals` in order (None when there are none).
    pub fn sum_of(vals: &[Dynamic]) -> Result<Option<Acc>> {
        let Some(first) = vals.first() else {
            return Ok(None);
        };
        let mut acc = Acc::zeros_like(first)?;
        for (k, v) in vals.iter().enumerate() {
            acc.add(v)
                .map_err(|e| anyhow!("item {k} {e} (like item 0)"))?;
        }
        Ok(Some(acc))
    }
}

/// Elementwise mean of a list of equally structured values (`mr`'s reduction).
pub fn mean_of(vals: &[Dynamic]) -> Result<Dynamic> {
    match Acc::sum_of(vals)? {
        Some(acc) => acc.mean(vals.len() as u64),
        None => bail!("nothing to reduce (empty input)"),
    }
}

/// One `mr` call's partial result: the sums over `count` of its `items` items.
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    /// Index of the `mr` call in the script (0-based, in call order).
    pub call: usize,
    /// Number of items the call was given (all shards together).
    pub items: u64,
    /// Items summed here.
    pub count: u64,
    /// The sums (None when this shard had no items).
    pub sum: Option<Acc>,
}

/// The structure of an [`Acc`] as stored in a partial file: leaves name tensors `t{leaf}`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
enum Tree {
    Num {
        leaf: usize,
    },
    Tensor {
        leaf: usize,
        shape: Vec<usize>,
        dtype: String,
    },
    Map(Vec<(String, Tree)>),
    Array(Vec<Tree>),
}

#[derive(Serialize, Deserialize, Debug)]
struct Meta {
    version: u32,
    call: usize,
    items: u64,
    count: u64,
    tree: Option<Tree>,
}

fn dtype_name(d: DType) -> &'static str {
    d.as_str()
}

fn dtype_of(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "u8" => DType::U8,
        "u32" => DType::U32,
        "i64" => DType::I64,
        _ => bail!("unknown dtype {name:?}"),
    })
}

fn flatten(acc: &Acc, leaves: &mut Vec<(Vec<usize>, Vec<f64>)>) -> Tree {
    match acc {
        Acc::Num(s) => {
            leaves.push((vec![], vec![*s]));
            Tree::Num {
                leaf: leaves.len() - 1,
            }
        }
        Acc::Tensor { shape, dtype, sum } => {
            leaves.push((shape.clone(), sum.clone()));
            Tree::Tensor {
                leaf: leaves.len() - 1,
                shape: shape.clone(),
                dtype: dtype_name(*dtype).to_string(),
            }
        }
        Acc::Map(m) => Tree::Map(
            m.iter()
                .map(|(k, a)| (k.clone(), flatten(a, leaves)))
                .collect(),
        ),
        Acc::Array(a) => Tree::Array(a.iter().map(|x| flatten(x, leaves)).collect()),
    }
}

fn unflatten(tree: &Tree, st: &safetensors::SafeTensors) -> Result<Acc> {
    let leaf = |leaf: usize, shape: &[usize]| -> Result<Vec<f64>> {
        let name = format!("t{leaf}");
        let v = st
            .tensor(&name)
            .map_err(|e| anyhow!("tensor {name}: {e}"))?;
        ensure!(v.dtype() == StDtype::F64, "tensor {name} is not f64");
        ensure!(
            v.shape() == shape,
            "tensor {name} has shape {:?}, the description says {shape:?}",
            v.shape()
        );
        Ok(v.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect())
    };
    Ok(match tree {
        Tree::Num { leaf: l } => Acc::Num(leaf(*l, &[])?[0]),
        Tree::Tensor {
            leaf: l,
            shape,
            dtype,
        } => Acc::Tensor {
            sum: leaf(*l, shape)?,
            shape: shape.clone(),
            dtype: dtype_of(dtype)?,
        },
        Tree::Map(m) => {
            let mut out = BTreeMap::new();
            for (k, t) in m {
                ensure!(
                    out.insert(k.clone(), unflatten(t, st)?).is_none(),
                    "key {k} appears twice"
                );
            }
            Acc::Map(out)
        }
        Tree::Array(a) => Acc::Array(a.iter().map(|t| unflatten(t, st)).collect::<Result<_>>()?),
    })
}

/// File of call `call` in a shard's (or the reduced) folder.
pub fn partial_path(dir: &Path, call: usize) -> PathBuf {
    dir.join(format!("mr-{call:04}.safetensors"))
}

impl Partial {
    /// Writes the partial as safetensors (f64 sums `t0`, `t1`, … and a JSON description).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut leaves = Vec::new();
        let tree = self.sum.as_ref().map(|a| flatten(a, &mut leaves));
        let meta = Meta {
            version: 1,
            call: self.call,
            items: self.items,
            count: self.count,
            tree,
        };
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = leaves
            .into_iter()
            .enumerate()
            .map(|(i, (shape, v))| {
                let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (format!("t{i}"), shape, b)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(StDtype::F64, s.clone(), b)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut md = HashMap::new();
        md.insert(META_KEY.to_string(), serde_json::to_string(&meta)?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(md), &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads a partial written by [`Partial::write`], checking its description against its tensors.
    pub fn read(path: &Path) -> Result<Partial> {
        let ctx = || format!("reading the partial result {}", path.display());
        let (mmap, text) = crate::backend::disk::open_described(
            path,
            META_KEY,
            "partial result",
            MAX_PARTIAL_BYTES,
        )?;
        let meta: Meta = serde_json::from_str(&text).with_context(ctx)?;
        ensure!(
            meta.version == 1,
            "{}: partial format version {} (this minarc reads 1)",
            path.display(),
            meta.version
        );
        ensure!(
            meta.count <= meta.items,
            "{}: {} items summed of {}",
            path.display(),
            meta.count,
            meta.items
        );
        let st = safetensors::SafeTensors::deserialize(&mmap)
            .map_err(|e| anyhow!("{e}"))
            .with_context(ctx)?;
        let sum = match &meta.tree {
            Some(t) => Some(unflatten(t, &st).with_context(ctx)?),
            None => None,
        };
        ensure!(
            sum.is_some() == (meta.count > 0),
            "{}: {} items summed but {}",
            path.display(),
            meta.count,
            if sum.is_some() {
                "sums present"
            } else {
                "no sums"
            }
        );
        Ok(Partial {
            call: meta.call,
            items: meta.items,
            count: meta.count,
            sum,
        })
    }
}

/// The shard folders `shard-i-of-N` under `dir`: all N of them, in index order.
fn shard_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut found: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let mut count = None;
    for e in rd {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name.strip_prefix("shard-") else {
            continue;
        };
        let Some((i, n)) = rest.split_once("-of-") else {
            continue;
        };
        let s = Shard::parse(&format!("{i}/{n}"))
            .with_context(|| format!("shard folder {}", p.display()))?;
        if let Some(c) = count
            && c != s.count
        {
            bail!(
                "{} holds shards of two runs ({c} and {} shards); give each run its own --shard-dir",
                dir.display(),
                s.count
            );
        }
        count = Some(s.count);
        found.insert(s.index, p);
    }
    let Some(n) = count else {
        bail!(
            "{}: no shard-i-of-N folders (written by minarc run --shard)",
            dir.display()
        );
    };
    let missing: Vec<usize> = (0..n).filter(|i| !found.contains_key(i)).collect();
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(10).map(|i| i.to_string()).collect();
        bail!(
            "{}: {} of {n} shards missing (shard {}{}): wait for them or rerun them",
            dir.display(),
            missing.len(),
            shown.join(", "),
            if missing.len() > 10 { ", …" } else { "" }
        );
    }
    Ok(found.into_values().collect())
}

/// Calls (mr-KKKK files) in one folder: 0..K, complete.
fn calls_in(dir: &Path) -> Result<usize> {
    let mut ks = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(k) = name
            .strip_prefix("mr-")
            .and_then(|r| r.strip_suffix(".safetensors"))
        {
            let k: usize = k
                .parse()
                .with_context(|| format!("unexpected file {}", p.display()))?;
            ensure!(
                k < MAX_CALLS,
                "{}: call index over {MAX_CALLS}",
                p.display()
            );
            ks.push(k);
        }
    }
    ks.sort_unstable();
    for (i, k) in ks.iter().enumerate() {
        ensure!(
            *k == i,
            "{}: mr call {i} has no partial (the shard stopped early?)",
            dir.display()
        );
    }
    Ok(ks.len())
}

/// What [`reduce`] did.
#[derive(Debug)]
pub struct Reduced {
    /// Number of shards merged.
    pub shards: usize,
    /// One (items, structure) line per `mr` call.
    pub calls: Vec<String>,
    /// The folder written.
    pub out: PathBuf,
}

/// Merges the partials of every shard under `dir` into `dir/reduced/`.
pub fn reduce(dir: &Path) -> Result<Reduced> {
    let shards = shard_dirs(dir)?;
    let counts: Vec<usize> = shards.iter().map(|d| calls_in(d)).collect::<Result<_>>()?;
    let k = counts[0];
    if let Some((i, c)) = counts.iter().enumerate().find(|(_, c)| **c != k) {
        bail!(
            "shard 0 made {k} mr calls but shard {i} made {c}: rerun the shard that stopped early"
        );
    }
    ensure!(k > 0, "{}: the shards made no mr calls", dir.display());
    COUNT.check(k, "mr calls").map_err(|e| anyhow!("{e}"))?;
    let out = dir.join("reduced");
    let mut lines = Vec::new();
    for call in 0..k {
        let mut merged: Option<Partial> = None;
        for (i, d) in shards.iter().enumerate() {
            let p = Partial::read(&partial_path(d, call))?;
            ensure!(
                p.call == call,
                "{}: describes call {}",
                partial_path(d, call).display(),
                p.call
            );
            match &mut merged {
                None => merged = Some(p),
                Some(m) => {
                    ensure!(
                        m.items == p.items,
                        "mr call {call}: shard 0 had {} items, shard {i} {} — the shards ran different inputs",
                        m.items,
                        p.items
                    );
                    m.count += p.count;
                    match (&mut m.sum, p.sum) {
                        (_, None) => {}
                        (None, Some(s)) => m.sum = Some(s),
                        (Some(a), Some(b)) => a.merge(&b).map_err(|e| {
                            anyhow!("mr call {call}, shard {i} differs in structure: {e}")
                        })?,
                    }
                }
            }
        }
        let m = merged.expect("at least one shard");
        ensure!(
            m.count == m.items,
            "mr call {call}: the shards summed {} of {} items",
            m.count,
            m.items
        );
        m.write(&partial_path(&out, call))?;
        lines.push(format!(
            "mr call {call}: {} items, {}",
            m.items,
            m.sum.as_ref().map_or("empty", |a| a.kind())
        ));
    }
    Ok(Reduced {
        shards: shards.len(),
        calls: lines,
        out,
    })
}

/// The reduced result of `mr` call `call` over `items` items, from `dir` (a run folder with
/// `reduced/`, or the `reduced` folder itself).
pub fn replay(dir: &Path, call: usize, items: usize) -> Result<Dynamic> {
    let sub = dir.join("reduced");
    let base = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let path = partial_path(&base, call);
    ensure!(
        path.is_file(),
        "mr call {call} has no reduced result ({} is missing): the script makes more mr calls than the sharded run did",
        path.display()
    );
    let p = Partial::read(&path)?;
    ensure!(
        p.items == items as u64 && p.count == p.items,
        "mr call {call} has {items} items here but the reduced result covers {} of {}: replay with the same script and arguments",
        p.count,
        p.items
    );
    match p.sum {
        Some(a) => a.mean(p.count),
        None => bail!("nothing to reduce (empty input)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_cover_every_item_once_in_order() {
        for n in 0..40 {
            for count in 1..12 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard::new(index, count).unwrap().range(n);
                    assert_eq!(r.start, next, "n {n} shard {index}/{count}");
                    assert!(r.len() <= n / count + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    fn t(v: &[f32], shape: &[usize]) -> Dynamic {
        Dynamic::from(Tensor::from_f32(v.to_vec(), shape).unwrap())
    }

    fn vals(d: &Dynamic) -> Vec<f32> {
        let t = d.read_lock::<Tensor>().unwrap();
        t.inner().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn mean_of_structured_values_by_hand() {
        let item = |a: f32, b: f32, x: i64| {
            let mut m = Map::new();
            m.insert("t".into(), t(&[a, b], &[2, 1]));
            m.insert("n".into(), Dynamic::from(x));
            Dynamic::from_array(vec![Dynamic::from_map(m), Dynamic::from_float(a as f64)])
        };
        let items = [item(1.0, 2.0, 3), item(2.0, -4.0, 4), item(6.0, 0.5, 5)];
        let m = mean_of(&items).unwrap();
        let a = m.read_lock::<Array>().unwrap();
        let map = a[0].read_lock::<Map>().unwrap();
        assert_eq!(vals(&map["t"]), vec![3.0, -0.5]);
        assert_eq!(map["t"].read_lock::<Tensor>().unwrap().shape(), vec![2, 1]);
        assert_eq!(map["n"].as_float().unwrap(), 4.0);
        assert_eq!(a[1].as_float().unwrap(), 3.0);
        // mismatches name the item
        let e = mean_of(&[t(&[1.0], &[1]), t(&[1.0, 2.0], &[2])]).unwrap_err();
        assert!(e.to_string().contains("item 1"), "{e}");
        let e = mean_of(&[Dynamic::from_float(1.0), Dynamic::from("x")]).unwrap_err();
        assert!(e.to_string().contains("expected a number"), "{e}");
        assert!(mean_of(&[]).is_err());
    }

    #[test]
    fn partials_round_trip_and_merge_to_the_whole_sum() {
        let items: Vec<Dynamic> = (0..5)
            .map(|k| {
                let mut m = Map::new();
                m.insert("x".into(), t(&[k as f32, 0.1 * k as f32, 3.0], &[3]));
                m.insert("acc".into(), Dynamic::from_float((k % 2) as f64));
                Dynamic::from_map(m)
            })
            .collect();
        let whole = Acc::sum_of(&items).unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let shard = |i: usize| {
            let r = Shard::new(i, 2).unwrap().range(items.len());
            let p = Partial {
                call: 0,
                items: 5,
                count: r.len() as u64,
                sum: Acc::sum_of(&items[r]).unwrap(),
            };
            let path = partial_path(&Shard::new(i, 2).unwrap().dir(dir.path()), 0);
            p.write(&path).unwrap();
            assert_eq!(Partial::read(&path).unwrap(), p);
        };
        shard(0);
        shard(1);
        let r = reduce(dir.path()).unwrap();
        assert_eq!(r.shards, 2);
        let merged = Partial::read(&partial_path(&r.out, 0)).unwrap();
        assert_eq!(merged.count, 5);
        let (Acc::Map(a), Acc::Map(b)) = (merged.sum.unwrap(), whole) else {
            panic!("maps expected")
        };
        assert_eq!(a.len(), b.len());
        for (k, x) in &a {
            match (x, &b[k]) {
                (Acc::Num(x), Acc::Num(y)) => assert!((x - y).abs() < 1e-12),
                (Acc::Tensor { sum: x, .. }, Acc::Tensor { sum: y, .. }) => {
                    for (x, y) in x.iter().zip(y) {
                        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
                    }
                }
                _ => panic!("structure changed"),
            }
        }
        let m = replay(dir.path(), 0, 5).unwrap();
        let m = m.read_lock::<Map>().unwrap();
        assert_eq!(m["acc"].as_float().unwrap(), 0.4);
        assert_eq!(vals(&m["x"]), vec![2.0, 0.2, 3.0]);
        assert!(replay(dir.path(), 1, 5).is_err());
        assert!(replay(dir.path(), 0, 4).is_err());
    }

    #[test]
    fn the_environment_names_the_shard() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]))
        .unwrap();
        assert_eq!(s, Shard { index: 3, count: 4 });
        let s = Shard::from_env(env(&[
            ("JOB_COMPLETION_INDEX", "2"),
            ("MINARC_SHARD_COUNT", "8"),
        ]))
        .unwrap();
        assert_eq!(s, Shard { index: 2, count: 8 });
        assert!(Shard::from_env(env(&[("SLURM_ARRAY_TASK_ID", "1")])).is_err());
        assert!(
            Shard::from_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_MIN", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "4")
            ]))
            .is_err()
        );
        assert!(Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "x")])).is_err());
        assert!(Shard::parse(&format!("0/{}", MAX_SHARDS + 1)).is_err());
    }
}
