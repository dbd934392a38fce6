//! Tensor maths for scripts: matrix products, einsum, elementwise functions, softmax, norms,
//! comparisons and `where`.
//!
//! Like the rest of [`Tensor`], every operation validates its arguments and returns an error
//! instead of panicking, works in f32 (integer inputs are converted), and checks the size of
//! every tensor it creates with [`check_alloc`] before allocating it.

use crate::script::tensor::{Tensor, check_alloc, norm_dim};
use anyhow::{Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Shape, Tensor as CTensor};
use rhai::{FLOAT, INT};
use std::collections::HashMap;

/// Largest number of operands `einsum` takes.
pub const EINSUM_MAX_OPERANDS: usize = 3;

/// Elementwise comparisons; each gives 1.0 where it holds and 0.0 elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
}

impl Cmp {
    fn candle(self) -> candle_core::op::CmpOp {
        use candle_core::op::CmpOp as C;
        match self {
            Cmp::Gt => C::Gt,
            Cmp::Ge => C::Ge,
            Cmp::Lt => C::Lt,
            Cmp::Le => C::Le,
            Cmp::Eq => C::Eq,
            Cmp::Ne => C::Ne,
        }
    }
}

/// Elementwise functions of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    /// `e^x`
    Exp,
    /// Natural logarithm (NaN below 0, -inf at 0).
    Log,
    /// Square root (NaN below 0).
    Sqrt,
}

/// The broadcast shape of several shapes (numpy rules), or an error naming all of them.
fn broadcast_shapes(shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
    let mut out = Shape::from(shapes.first().cloned().unwrap_or_default());
    for s in &shapes[1.min(shapes.len())..] {
        out = out
            .broadcast_shape_binary_op(&Shape::from(s.clone()), "broadcast")
            .map_err(|_| {
                let list: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
                anyhow!("shapes {} do not broadcast together", list.join(", "))
            })?;
    }
    Ok(out.dims().to_vec())
}

fn f32_of(t: &Tensor) -> Result<CTensor> {
    Ok(t.0.to_dtype(DType::F32)?)
}

fn scalar_tensor(x: FLOAT) -> Result<Tensor> {
    Ok(Tensor(CTensor::new(x as f32, &Device::Cpu)?))
}

impl Tensor {
    /// Matrix product with torch.matmul's rules: 2-D @ 2-D; leading (batch) dims broadcast;
    /// a 1-D left operand is a row vector and a 1-D right operand a column vector, the added
    /// dim being removed from the result (so 1-D @ 1-D is the dot product, a 0-d tensor).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ad, bd) = (self.shape(), rhs.shape());
        ensure!(
            !ad.is_empty() && !bd.is_empty(),
            "matmul needs tensors with at least 1 dim, got shapes {ad:?} and {bd:?}"
        );
        let a2 = if ad.len() == 1 {
            vec![1, ad[0]]
        } else {
            ad.clone()
        };
        let b2 = if bd.len() == 1 {
            vec![bd[0], 1]
        } else {
            bd.clone()
        };
        let (ra, rb) = (a2.len(), b2.len());
        let (m, k, k2, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 2], b2[rb - 1]);
        ensure!(
            k == k2,
            "matmul of shapes {ad:?} and {bd:?}: the inner dims differ ({k} vs {k2})"
        );
        let (a_batch, b_batch) = (a2[..ra - 2].to_vec(), b2[..rb - 2].to_vec());
        let batch = broadcast_shapes(&[a_batch.clone(), b_batch.clone()]).map_err(|_| {
            anyhow!(
                "matmul of shapes {ad:?} and {bd:?}: the batch dims {a_batch:?} and {b_batch:?} \
                 do not broadcast"
            )
        })?;
        let with = |tail: &[usize]| [batch.as_slice(), tail].concat();
        check_alloc(&with(&[m, n]), "the matmul result")?;
        // Operands whose batch dims are broadcast are copied at the full batch size.
        if a_batch != batch {
            check_alloc(&with(&[m, k]), "the broadcast left operand of matmul")?;
        }
        if b_batch != batch {
            check_alloc(&with(&[k, n]), "the broadcast right operand of matmul")?;
        }
        let a = f32_of(self)?.reshape(a2)?.contiguous()?;
        let b = f32_of(rhs)?.reshape(b2)?.contiguous()?;
        let out = a.broadcast_matmul(&b)?;
        let mut dims = batch;
        if ad.len() > 1 {
            dims.push(m);
        }
        if bd.len() > 1 {
            dims.push(n);
        }
        Ok(Tensor(out.reshape(dims)?))
    }

    /// Elementwise `exp`, `log` or `sqrt` (IEEE results: log and sqrt of negatives are NaN).
    pub fn unary(&self, f: Unary) -> Result<Tensor> {
        let t = f32_of(self)?;
        Ok(Tensor(match f {
            Unary::Exp => t.exp()?,
            Unary::Log => t.log()?,
            Unary::Sqrt => t.sqrt()?,
        }))
    }

    /// Softmax (or log-softmax) along `dim`, with the maximum subtracted first so that large
    /// values do not overflow.
    pub fn softmax(&self, dim: INT, log: bool) -> Result<Tensor> {
        let d = norm_dim(dim, self.ndim())?;
        let t = f32_of(self)?;
        if t.elem_count() == 0 {
            return Ok(Tensor(t));
        }
        let shifted = t.broadcast_sub(&t.max_keepdim(d)?)?;
        let e = shifted.exp()?;
        let s = e.sum_keepdim(d)?;
        Ok(Tensor(if log {
            shifted.broadcast_sub(&s.log()?)?
        } else {
            e.broadcast_div(&s)?
        }))
    }

    /// L2 (Frobenius) norm of all elements, summed in f32 (squares above `f32::MAX` overflow).
    pub fn norm_all(&self) -> Result<FLOAT> {
        let v = f32_of(self)?.sqr()?.sum_all()?.sqrt()?;
        Ok(v.to_dtype(DType::F64)?.to_scalar::<f64>()? as FLOAT)
    }

    /// L2 norms along `dim` (removed from the shape).
    pub fn norm_dim(&self, dim: INT) -> Result<Tensor> {
        let d = norm_dim(dim, self.ndim())?;
        Ok(Tensor(f32_of(self)?.sqr()?.sum(d)?.sqrt()?))
    }

    /// Elementwise comparison with broadcasting: 1.0 where it holds, 0.0 elsewhere.
    pub fn compare(&self, op: Cmp, rhs: &Tensor) -> Result<Tensor> {
        let out = broadcast_shapes(&[self.shape(), rhs.shape()])?;
        check_alloc(&out, "the result of a comparison")?;
        let a = f32_of(self)?.broadcast_as(out.as_slice())?;
        let b = f32_of(rhs)?.broadcast_as(out.as_slice())?;
        Ok(Tensor(a.cmp(&b, op.candle())?.to_dtype(DType::F32)?))
    }

    /// Elementwise comparison with a number.
    pub fn compare_scalar(&self, op: Cmp, x: FLOAT) -> Result<Tensor> {
        self.compare(op, &scalar_tensor(x)?)
    }

    /// `on_true` where `self` is nonzero (NaN counts as nonzero), `on_false` elsewhere; the three
    /// broadcast together.
    pub fn where_select(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let out = broadcast_shapes(&[self.shape(), on_true.shape(), on_false.shape()])?;
        check_alloc(&out, "the result of where")?;
        let cond = f32_of(self)?
            .ne(0f32)?
            .broadcast_as(out.as_slice())?
            .contiguous()?;
        let a = f32_of(on_true)?
            .broadcast_as(out.as_slice())?
            .contiguous()?;
        let b = f32_of(on_false)?
            .broadcast_as(out.as_slice())?
            .contiguous()?;
        Ok(Tensor(cond.where_cond(&a, &b)?))
    }

    /// Einstein summation over 1 to [`EINSUM_MAX_OPERANDS`] operands with an explicit output
    /// (`"ij,jk->ik"`). Operands are contracted pairwise with batched matrix products, the pair
    /// with the smallest result first; an index that no later operand and not the output uses
    /// is summed out before the product. Every intermediate is checked with [`check_alloc`].
    pub fn einsum(spec: &str, operands: &[Tensor]) -> Result<Tensor> {
        let parsed = EinsumSpec::parse(spec, operands)?;
        let mut ops: Vec<Labeled> = operands
            .iter()
            .zip(&parsed.inputs)
            .map(|(t, l)| {
                Ok(Labeled {
                    t: f32_of(t)?,
                    labels: l.clone(),
                })
            })
            .collect::<Result<_>>()?;
        let size = |c: char| parsed.sizes[&c];
        while ops.len() > 1 {
            // Letters still needed by the output or by operands outside the pair (i, j).
            let needed = |i: usize, j: usize, ops: &[Labeled]| -> Vec<char> {
                let mut keep = parsed.output.clone();
                for (k, o) in ops.iter().enumerate() {
                    if k != i && k != j {
                        keep.extend(o.labels.iter().copied());
                    }
                }
                keep
            };
            let mut best: Option<(u128, usize, usize)> = None;
            for i in 0..ops.len() {
                for j in i + 1..ops.len() {
                    let keep = needed(i, j, &ops);
                    let elems = union(&ops[i].labels, &ops[j].labels)
                        .into_iter()
                        .filter(|c| keep.contains(c))
                        .fold(1u128, |acc, c| acc.saturating_mul(size(c) as u128));
                    if best.is_none_or(|(e, ..)| elems < e) {
                        best = Some((elems, i, j));
                    }
                }
            }
            let (_, i, j) = best.ok_or_else(|| anyhow!("einsum: no operands to contract"))?;
            let keep = needed(i, j, &ops);
            let b = ops.remove(j);
            let a = ops.remove(i);
            ops.push(contract(a, b, &keep, &size)?);
        }
        let last = ops
            .pop()
            .ok_or_else(|| anyhow!("einsum: no operands to contract"))?;
        let last = last.sum_out(&parsed.output)?;
        let perm: Vec<usize> = parsed
            .output
            .iter()
            .map(|c| last.labels.iter().position(|l| l == c))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow!("einsum: an output index was lost (internal error)"))?;
        let out = if perm.iter().enumerate().all(|(k, &p)| k == p) {
            last.t
        } else {
            last.t.permute(perm)?.contiguous()?
        };
        Ok(Tensor(out))
    }
}

/// A tensor whose dims are named by einsum letters.
struct Labeled {
    t: CTensor,
    labels: Vec<char>,
}

impl Labeled {
    /// Sums the dims whose letters are not in `keep`.
    fn sum_out(self, keep: &[char]) -> Result<Labeled> {
        let drop: Vec<usize> = (0..self.labels.len())
            .filter(|&d| !keep.contains(&self.labels[d]))
            .collect();
        if drop.is_empty() {
            return Ok(self);
        }
        let labels = self
            .labels
            .iter()
            .copied()
            .filter(|c| keep.contains(c))
            .collect();
        Ok(Labeled {
            t: self.t.sum(drop)?,
            labels,
        })
    }

    /// The tensor with its dims in the order of `order` (a permutation of its labels), folded
    /// into the given group sizes.
    fn arrange(&self, order: &[char], groups: &[usize]) -> Result<CTensor> {
        let perm: Vec<usize> = order
            .iter()
            .map(|c| self.labels.iter().position(|l| l == c))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow!("einsum: a letter was lost (internal error)"))?;
        let t = if perm.iter().enumerate().all(|(k, &p)| k == p) {
            self.t.clone()
        } else {
            self.t.permute(perm)?
        };
        Ok(t.contiguous()?.reshape(groups)?)
    }
}

fn union(a: &[char], b: &[char]) -> Vec<char> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|c| !a.contains(c)));
    out
}

/// Contracts two operands, keeping the letters in `keep` (and summing out the others) as one
/// batched matrix product `[batch, M, K] @ [batch, K, N]`.
fn contract(
    a: Labeled,
    b: Labeled,
    keep: &[char],
    size: &impl Fn(char) -> usize,
) -> Result<Labeled> {
    // Letters used by neither the other operand nor anything later are summed out first.
    let a = a.sum_out(&union(keep, &b.labels))?;
    let b = b.sum_out(&union(keep, &a.labels))?;
    let in_b = |c: &char| b.labels.contains(c);
    let batch: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|c| in_b(c) && keep.contains(c))
        .collect();
    let summed: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|c| in_b(c) && !keep.contains(c))
        .collect();
    let a_free: Vec<char> = a.labels.iter().copied().filter(|c| !in_b(c)).collect();
    let b_free: Vec<char> = b
        .labels
        .iter()
        .copied()
        .filter(|c| !a.labels.contains(c))
        .collect();
    let dims = |ls: &[char]| ls.iter().map(|&c| size(c)).collect::<Vec<_>>();
    let prod = |ls: &[char]| ls.iter().map(|&c| size(c)).product::<usize>();
    let out_labels: Vec<char> = [batch.as_slice(), &a_free, &b_free].concat();
    let out_dims = dims(&out_labels);
    check_alloc(&out_dims, "an einsum intermediate")?;
    let (nb, m, k, n) = (prod(&batch), prod(&a_free), prod(&summed), prod(&b_free));
    let a3 = a.arrange(&[batch.as_slice(), &a_free, &summed].concat(), &[nb, m, k])?;
    let b3 = b.arrange(&[batch.as_slice(), &summed, &b_free].concat(), &[nb, k, n])?;
    Ok(Labeled {
        t: a3.matmul(&b3)?.reshape(out_dims)?,
        labels: out_labels,
    })
}

/// A parsed and checked einsum spec.
struct EinsumSpec {
    inputs: Vec<Vec<char>>,
    output: Vec<char>,
    sizes: HashMap<char, usize>,
}

impl EinsumSpec {
    fn parse(spec: &str, operands: &[Tensor]) -> Result<EinsumSpec> {
        let s: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
        ensure!(
            !s.contains('.'),
            "spec {spec:?}: ellipsis (...) is not supported, name every dim with a letter"
        );
        let Some((lhs, rhs)) = s.split_once("->") else {
            bail!("spec {spec:?} needs an explicit output after ->, as in \"ij,jk->ik\"");
        };
        ensure!(!rhs.contains("->"), "spec {spec:?} has more than one ->");
        let n = operands.len();
        ensure!(
            (1..=EINSUM_MAX_OPERANDS).contains(&n),
            "einsum takes 1 to {EINSUM_MAX_OPERANDS} tensors, got {n}"
        );
        let terms: Vec<&str> = lhs.split(',').collect();
        ensure!(
            terms.len() == n,
            "spec {spec:?} names {} operands but {n} tensors were given",
            terms.len()
        );
        let letters = |term: &str, what: &str| -> Result<Vec<char>> {
            let mut out: Vec<char> = Vec::new();
            for c in term.chars() {
                ensure!(
                    c.is_ascii_alphabetic(),
                    "spec {spec:?}: unexpected character {c:?} in {what} (indices are letters a-z, A-Z)"
                );
                ensure!(
                    !out.contains(&c),
                    "spec {spec:?}: index {c:?} is repeated in {what} (diagonals are not supported)"
                );
                out.push(c);
            }
            Ok(out)
        };
        let mut inputs = Vec::with_capacity(n);
        let mut sizes: HashMap<char, usize> = HashMap::new();
        let mut first_seen: HashMap<char, usize> = HashMap::new();
        for (k, (term, t)) in terms.iter().zip(operands).enumerate() {
            let what = format!("operand {k}");
            let ls = letters(term, &what)?;
            let dims = t.shape();
            ensure!(
                ls.len() == dims.len(),
                "spec {spec:?}: operand {k} has shape {dims:?} ({} dims) but {term:?} names {}",
                dims.len(),
                ls.len()
            );
            for (&c, &d) in ls.iter().zip(&dims) {
                match sizes.get(&c) {
                    Some(&prev) if prev != d => bail!(
                        "spec {spec:?}: index {c:?} has size {prev} in operand {} but {d} in operand {k}",
                        first_seen[&c]
                    ),
                    Some(_) => {}
                    None => {
                        sizes.insert(c, d);
                        first_seen.insert(c, k);
                    }
                }
            }
            inputs.push(ls);
        }
        let mut output: Vec<char> = Vec::new();
        for c in rhs.chars() {
            ensure!(
                c.is_ascii_alphabetic(),
                "spec {spec:?}: unexpected character {c:?} in the output (indices are letters a-z, A-Z)"
            );
            ensure!(
                !output.contains(&c),
                "spec {spec:?}: index {c:?} appears twice in the output"
            );
            ensure!(
                sizes.contains_key(&c),
                "spec {spec:?}: output index {c:?} is unknown (it names no dim of any operand)"
            );
            output.push(c);
        }
        let out_dims: Vec<usize> = output.iter().map(|c| sizes[c]).collect();
        check_alloc(&out_dims, "the einsum result")?;
        Ok(EinsumSpec {
            inputs,
            output,
            sizes,
        })
    }
}
