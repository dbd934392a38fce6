//! `Tensor`: the opaque script type wrapping a [`candle_core::Tensor`].
//!
//! Every operation validates its arguments (dims and indices may be negative, counted from
//! the end) and returns an error instead of panicking; the bindings turn errors into Rhai
//! errors carrying the script position. Arithmetic is done in f32.

use anyhow::{Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor as CTensor};
use rhai::{Array, Dynamic, FLOAT, INT};
use std::fmt;

/// Largest number of entries shown per dimension by the preview (first half ... last half).
const PREVIEW_PER_DIM: usize = 6;

/// A tensor visible to scripts. Cheap to clone (candle tensors are reference counted).
#[derive(Clone)]
pub struct Tensor(pub CTensor);

impl From<CTensor> for Tensor {
    fn from(t: CTensor) -> Self {
        Tensor(t)
    }
}

/// Resolve a possibly negative dimension against `rank`.
pub fn norm_dim(dim: INT, rank: usize) -> Result<usize> {
    let r = rank as INT;
    let d = if dim < 0 { dim + r } else { dim };
    ensure!(
        (0..r).contains(&d),
        "dim {dim} out of range for a tensor with {rank} dims"
    );
    Ok(d as usize)
}

/// Resolve a possibly negative index against a dimension of `size`.
pub fn norm_index(idx: INT, size: usize) -> Result<usize> {
    let s = size as INT;
    let i = if idx < 0 { idx + s } else { idx };
    ensure!(
        (0..s).contains(&i),
        "index {idx} out of range for a dimension of size {size}"
    );
    Ok(i as usize)
}

/// Resolve a possibly negative slice bound (`0..=size`).
fn norm_bound(b: INT, size: usize) -> Result<usize> {
    let s = size as INT;
    let v = if b < 0 { b + s } else { b };
    ensure!(
        (0..=s).contains(&v),
        "slice bound {b} out of range for a dimension of size {size}"
    );
    Ok(v as usize)
}

fn is_int_dtype(dt: DType) -> bool {
    matches!(dt, DType::U8 | DType::U32 | DType::I64)
}

/// Arithmetic operators supported between tensors and scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

impl Tensor {
    /// Wrap a candle tensor.
    pub fn new(t: CTensor) -> Self {
        Tensor(t)
    }

    /// The wrapped candle tensor.
    pub fn inner(&self) -> &CTensor {
        &self.0
    }

    /// Dimensions.
    pub fn shape(&self) -> Vec<usize> {
        self.0.dims().to_vec()
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.0.rank()
    }

    /// Element type name (`f32`, `u32`, ...).
    pub fn dtype(&self) -> String {
        self.0.dtype().as_str().to_string()
    }

    /// A float tensor with the given shape and row-major data.
    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n = elem_count(shape)?;
        ensure!(
            n == data.len(),
            "shape {shape:?} needs {n} values, got {}",
            data.len()
        );
        Ok(Tensor(CTensor::from_vec(data, shape, &Device::Cpu)?))
    }

    /// `t[i]`: select index `i` (negative counts from the end) along dim 0.
    pub fn index(&self, i: INT) -> Result<Tensor> {
        ensure!(self.ndim() > 0, "cannot index a 0-d tensor");
        self.select(0, i)
    }

    /// Select one index along `dim`, removing that dim.
    pub fn select(&self, dim: INT, idx: INT) -> Result<Tensor> {
        let d = norm_dim(dim, self.ndim())?;
        let i = norm_index(idx, self.0.dims()[d])?;
        Ok(Tensor(self.0.narrow(d, i, 1)?.squeeze(d)?))
    }

    /// Half-open range `start..end` along `dim` (negative bounds count from the end).
    pub fn slice(&self, dim: INT, start: INT, end: INT) -> Result<Tensor> {
        let d = norm_dim(dim, self.ndim())?;
        let size = self.0.dims()[d];
        let (s, e) = (norm_bound(start, size)?, norm_bound(end, size)?);
        ensure!(
            s <= e,
            "slice start {start} is after end {end} (dim size {size})"
        );
        Ok(Tensor(self.0.narrow(d, s, e - s)?))
    }

    /// Pick the given indices (negative allowed) along `dim`, keeping the dim.
    pub fn gather_indices(&self, dim: INT, idx: &[INT]) -> Result<Tensor> {
        let d = norm_dim(dim, self.ndim())?;
        let size = self.0.dims()[d];
        let ids = idx
            .iter()
            .map(|&i| norm_index(i, size).map(|v| v as u32))
            .collect::<Result<Vec<_>>>()?;
        let n = ids.len();
        let mut out_shape = self.shape();
        out_shape[d] = n;
        check_alloc(&out_shape, "the gathered tensor")?;
        let ids = CTensor::from_vec(ids, n, &Device::Cpu)?;
        Ok(Tensor(self.0.contiguous()?.index_select(&ids, d)?))
    }

    fn f32(&self) -> Result<CTensor> {
        Ok(self.0.to_dtype(DType::F32)?)
    }

    fn nonempty(&self, what: &str) -> Result<()> {
        ensure!(self.0.elem_count() > 0, "{what}() of an empty tensor");
        Ok(())
    }

    /// Sum of all elements.
    pub fn sum_all(&self) -> Result<FLOAT> {
        scalar(&self.f32()?.sum_all()?)
    }

    /// Mean of all elements.
    pub fn mean_all(&self) -> Result<FLOAT> {
        self.nonempty("mean")?;
        scalar(&self.f32()?.mean_all()?)
    }

    /// Largest element.
    pub fn max_all(&self) -> Result<FLOAT> {
        self.nonempty("max")?;
        scalar(&self.f32()?.flatten_all()?.max(0)?)
    }

    /// Smallest element.
    pub fn min_all(&self) -> Result<FLOAT> {
        self.nonempty("min")?;
        scalar(&self.f32()?.flatten_all()?.min(0)?)
    }

    /// Flat (row-major) index of the largest element.
    pub fn argmax_all(&self) -> Result<INT> {
        self.nonempty("argmax")?;
        let i = self.f32()?.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        Ok(i as INT)
    }

    /// Reduce along one dim (removed from the shape).
    pub fn reduce_dim(&self, op: &str, dim: INT) -> Result<Tensor> {
        let d = norm_dim(dim, self.ndim())?;
        let t = self.f32()?;
        if op != "sum" {
            ensure!(self.0.dims()[d] > 0, "{op}() over an empty dim {dim}");
        }
        let out = match op {
            "sum" => t.sum(d)?,
            "mean" => t.mean(d)?,
            "max" => t.max(d)?,
            "min" => t.min(d)?,
            "argmax" => t.argmax(d)?.to_dtype(DType::I64)?,
            _ => bail!("unknown reduction {op}"),
        };
        Ok(Tensor(out))
    }

    /// Elementwise absolute value.
    pub fn abs(&self) -> Result<Tensor> {
        Ok(Tensor(self.f32()?.abs()?))
    }

    /// Elementwise negation.
    pub fn neg(&self) -> Result<Tensor> {
        Ok(Tensor(self.f32()?.neg()?))
    }

    /// Tensor ⊕ tensor with broadcasting.
    pub fn binary(&self, op: BinOp, rhs: &Tensor) -> Result<Tensor> {
        let out_shape = self
            .0
            .shape()
            .broadcast_shape_binary_op(rhs.0.shape(), "broadcast")
            .map_err(|_| {
                anyhow!(
                    "cannot combine shapes {:?} and {:?} (not broadcastable)",
                    self.shape(),
                    rhs.shape()
                )
            })?;
        check_alloc(out_shape.dims(), "the result of a broadcasting operation")?;
        let (a, b) = (self.f32()?, rhs.f32()?);
        let out = match op {
            BinOp::Add => a.broadcast_add(&b),
            BinOp::Sub => a.broadcast_sub(&b),
            BinOp::Mul => a.broadcast_mul(&b),
            BinOp::Div => a.broadcast_div(&b),
        }
        .map_err(|e| {
            anyhow!(
                "cannot combine shapes {:?} and {:?}: {e}",
                self.shape(),
                rhs.shape()
            )
        })?;
        Ok(Tensor(out))
    }

    /// Tensor ⊕ scalar (`scalar_left`: scalar ⊕ tensor).
    pub fn scalar_op(&self, op: BinOp, s: FLOAT, scalar_left: bool) -> Result<Tensor> {
        let t = self.f32()?;
        let out = match (op, scalar_left) {
            (BinOp::Add, _) => t.affine(1.0, s)?,
            (BinOp::Mul, _) => t.affine(s, 0.0)?,
            (BinOp::Sub, false) => t.affine(1.0, -s)?,
            (BinOp::Sub, true) => t.affine(-1.0, s)?,
            (BinOp::Div, false) => (t / s)?,
            (BinOp::Div, true) => t.recip()?.affine(s, 0.0)?,
        };
        Ok(Tensor(out))
    }

    /// Change the shape (same element count).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = elem_count(shape)?;
        ensure!(
            n == self.0.elem_count(),
            "cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)",
            self.shape(),
            self.0.elem_count()
        );
        Ok(Tensor(self.0.reshape(shape)?))
    }

    /// Swap two dims.
    pub fn transpose(&self, d1: INT, d2: INT) -> Result<Tensor> {
        let (a, b) = (norm_dim(d1, self.ndim())?, norm_dim(d2, self.ndim())?);
        Ok(Tensor(self.0.transpose(a, b)?.contiguous()?))
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<Dynamic> {
        ensure!(
            self.0.elem_count() == 1,
            "item() needs a one-element tensor, got shape {:?}",
            self.shape()
        );
        let flat = self.0.flatten_all()?;
        Ok(if is_int_dtype(self.0.dtype()) {
            Dynamic::from_int(flat.to_dtype(DType::I64)?.to_vec1::<i64>()?[0] as INT)
        } else {
            Dynamic::from_float(flat.to_dtype(DType::F64)?.to_vec1::<f64>()?[0] as FLOAT)
        })
    }

    /// Nested arrays (ints for integer tensors, floats otherwise); a 0-d tensor gives a scalar.
    pub fn to_array(&self) -> Result<Dynamic> {
        let dims = self.shape();
        let flat = self.0.flatten_all()?;
        if is_int_dtype(self.0.dtype()) {
            let v = flat.to_dtype(DType::I64)?.to_vec1::<i64>()?;
            Ok(nest(&dims, &v, |x| Dynamic::from_int(*x as INT)))
        } else {
            let v = flat.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            Ok(nest(&dims, &v, |x| Dynamic::from_float(*x as FLOAT)))
        }
    }

    /// Build an f32 tensor from (nested, rectangular) arrays of numbers; a number gives a 0-d tensor.
    pub fn from_array(value: &Dynamic) -> Result<Tensor> {
        let mut shape = Vec::new();
        let mut probe = value.clone();
        while probe.is_array() {
            let arr = probe.clone().into_array().map_err(|t| anyhow!("{t}"))?;
            shape.push(arr.len());
            match arr.into_iter().next() {
                Some(first) => probe = first,
                None => break,
            }
        }
        let mut data = Vec::with_capacity(elem_count(&shape)?);
        flatten_into(value, &shape, 0, &mut data)?;
        Tensor::from_f32(data, &shape)
    }

    /// Stack equally shaped tensors along a new dim.
    pub fn stack(ts: &[Tensor], dim: INT) -> Result<Tensor> {
        ensure!(!ts.is_empty(), "stack() of an empty array");
        let d = norm_dim(dim, ts[0].ndim() + 1)?;
        check_same_shape(ts)?;
        let mut out_shape = ts[0].shape();
        out_shape.insert(d, ts.len());
        check_alloc(&out_shape, "the stacked tensor")?;
        let inner = ts.iter().map(|t| t.f32()).collect::<Result<Vec<_>>>()?;
        Ok(Tensor(CTensor::stack(&inner, d)?))
    }

    /// Concatenate tensors along an existing dim.
    pub fn cat(ts: &[Tensor], dim: INT) -> Result<Tensor> {
        ensure!(!ts.is_empty(), "cat() of an empty array");
        let rank = ts[0].ndim();
        let d = norm_dim(dim, rank)?;
        for t in ts {
            let ok = t.ndim() == rank
                && t.shape()
                    .iter()
                    .zip(ts[0].shape())
                    .enumerate()
                    .all(|(k, (a, b))| k == d || *a == b);
            ensure!(
                ok,
                "cat() along dim {dim}: shapes {:?} and {:?} differ elsewhere",
                ts[0].shape(),
                t.shape()
            );
        }
        let mut out_shape = ts[0].shape();
        out_shape[d] = ts
            .iter()
            .try_fold(0usize, |acc, t| acc.checked_add(t.shape()[d]))
            .ok_or_else(|| anyhow!("cat(): the result is too large"))?;
        check_alloc(&out_shape, "the concatenated tensor")?;
        let inner = ts.iter().map(|t| t.f32()).collect::<Result<Vec<_>>>()?;
        Ok(Tensor(CTensor::cat(&inner, d)?))
    }

    /// Shape plus a preview of the values (at most 6 entries per dim).
    pub fn preview(&self) -> Result<String> {
        let dims = self.shape();
        // Per dim: the kept indices and whether a gap ("...") sits after the first half.
        let keep: Vec<(Vec<usize>, bool)> = dims
            .iter()
            .map(|&n| {
                if n <= PREVIEW_PER_DIM {
                    ((0..n).collect(), false)
                } else {
                    let h = PREVIEW_PER_DIM / 2;
                    ((0..h).chain(n - h..n).collect(), true)
                }
            })
            .collect();
        let mut small = self.0.clone();
        for (d, (ids, gap)) in keep.iter().enumerate() {
            if *gap {
                let idx = CTensor::from_vec(
                    ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    ids.len(),
                    &Device::Cpu,
                )?;
                small = small.contiguous()?.index_select(&idx, d)?;
            }
        }
        let vals = small
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let int = is_int_dtype(self.0.dtype());
        let mut out = String::new();
        let mut pos = 0;
        fmt_nested(&keep, 0, &vals, &mut pos, int, &mut out);
        Ok(out)
    }
}

/// Element count of `shape`, refusing an overflowing product.
pub fn elem_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} has more elements than memory can address"))
}

/// A new f32 tensor of `shape` must fit [`crate::limits::TENSOR_ELEMS`] and the free memory.
pub fn check_alloc(shape: &[usize], what: &str) -> Result<()> {
    crate::limits::check_tensor(shape, 4, what)?;
    Ok(())
}

fn check_same_shape(ts: &[Tensor]) -> Result<()> {
    for t in ts {
        ensure!(
            t.shape() == ts[0].shape(),
            "shapes differ: {:?} vs {:?}",
            ts[0].shape(),
            t.shape()
        );
    }
    Ok(())
}

fn scalar(t: &CTensor) -> Result<FLOAT> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()? as FLOAT)
}

fn nest<T>(dims: &[usize], flat: &[T], leaf: impl Fn(&T) -> Dynamic + Copy) -> Dynamic {
    match dims.split_first() {
        None => leaf(&flat[0]),
        Some((&n, rest)) => {
            let stride: usize = rest.iter().product();
            let arr: Array = (0..n)
                .map(|i| nest(rest, &flat[i * stride..(i + 1) * stride], leaf))
                .collect();
            Dynamic::from_array(arr)
        }
    }
}

fn flatten_into(v: &Dynamic, shape: &[usize], depth: usize, out: &mut Vec<f32>) -> Result<()> {
    if depth == shape.len() {
        let x = if let Ok(i) = v.as_int() {
            i as f32
        } else if let Ok(f) = v.as_float() {
            f as f32
        } else {
            bail!("from_array(): expected a number, got {}", v.type_name());
        };
        out.push(x);
        return Ok(());
    }
    let arr = v.read_lock::<Array>().ok_or_else(|| {
        anyhow!(
            "from_array(): ragged nesting (expected an array at depth {depth}, got {})",
            v.type_name()
        )
    })?;
    ensure!(
        arr.len() == shape[depth],
        "from_array(): ragged array (length {} at depth {depth}, expected {})",
        arr.len(),
        shape[depth]
    );
    for x in arr.iter() {
        flatten_into(x, shape, depth + 1, out)?;
    }
    Ok(())
}

fn fmt_num(x: f64, int: bool) -> String {
    if int {
        format!("{}", x as i64)
    } else if x != 0.0 && (x.abs() >= 1e5 || x.abs() < 1e-3) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn fmt_nested(
    keep: &[(Vec<usize>, bool)],
    d: usize,
    vals: &[f64],
    pos: &mut usize,
    int: bool,
    out: &mut String,
) {
    if d == keep.len() {
        out.push_str(&fmt_num(vals[*pos], int));
        *pos += 1;
        return;
    }
    let (ids, gap) = &keep[d];
    out.push('[');
    // Rows of matrices (and deeper) go on their own lines, indented by depth.
    let sep = if d + 1 < keep.len() {
        format!(",\n{}", " ".repeat(d + 1))
    } else {
        ", ".to_string()
    };
    for k in 0..ids.len() {
        if k > 0 {
            out.push_str(&sep);
        }
        if *gap && k == ids.len() / 2 {
            out.push_str("...");
            out.push_str(&sep);
        }
        fmt_nested(keep, d + 1, vals, pos, int, out);
    }
    out.push(']');
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.preview() {
            Ok(p) if self.ndim() >= 2 => {
                write!(f, "Tensor{:?} {}\n{p}", self.shape(), self.dtype())
            }
            Ok(p) => write!(f, "Tensor{:?} {} {p}", self.shape(), self.dtype()),
            Err(e) => write!(f, "Tensor{:?} {} <{e}>", self.shape(), self.dtype()),
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t23() -> Tensor {
        Tensor::from_f32(vec![1., -2., 3., -4., 5., -6.], &[2, 3]).unwrap()
    }

    #[test]
    fn reductions_match_hand_values() {
        let t = t23();
        assert_eq!(t.sum_all().unwrap(), -3.0);
        assert_eq!(t.mean_all().unwrap(), -0.5);
        assert_eq!(t.max_all().unwrap(), 5.0);
        assert_eq!(t.min_all().unwrap(), -6.0);
        assert_eq!(t.argmax_all().unwrap(), 4);
        assert_eq!(t.abs().unwrap().sum_all().unwrap(), 21.0);
        let s = t.reduce_dim("sum", -1).unwrap();
        assert_eq!(s.0.to_vec1::<f32>().unwrap(), vec![2.0, -5.0]);
        let a = t.reduce_dim("argmax", 0).unwrap();
        assert_eq!(a.0.to_vec1::<i64>().unwrap(), vec![0, 1, 0]);
    }

    #[test]
    fn indexing_and_slicing_check_bounds() {
        let t = t23();
        assert_eq!(
            t.index(-1).unwrap().0.to_vec1::<f32>().unwrap(),
            vec![-4., 5., -6.]
        );
        assert!(t.index(2).is_err());
        assert!(t.select(2, 0).is_err());
        assert_eq!(t.slice(1, 1, 3).unwrap().shape(), vec![2, 2]);
        assert_eq!(
            t.slice(1, -2, 3).unwrap().0.to_vec2::<f32>().unwrap(),
            vec![vec![-2., 3.], vec![5., -6.]]
        );
        assert!(t.slice(1, 2, 1).is_err());
        assert!(t.slice(1, 0, 4).is_err());
    }

    #[test]
    fn preview_elides_long_dims() {
        let t = Tensor::from_f32((0..10).map(|x| x as f32).collect(), &[10]).unwrap();
        let p = t.preview().unwrap();
        assert_eq!(p, "[0.0000, 1.0000, 2.0000, ..., 7.0000, 8.0000, 9.0000]");
    }
}
