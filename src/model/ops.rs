//! Small tensor helpers shared by the forward pass and the component functions.
//! Everything here is autograd-safe (composed candle ops) unless the name says `fused`.

use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor};

/// Additive mask value for disallowed keys. Finite so that a fully masked row cannot produce NaN;
/// exp(NEG_MASK − max) underflows to exactly 0 in f32.
pub const NEG_MASK: f32 = -1e30;

/// `x @ w_t (+ bias)`: x `[.., in]`, w_t `[in, out]`, bias `[out]` → `[.., out]`.
/// Leading dims are folded into one matmul.
pub fn linear(x: &Tensor, w_t: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if x.dtype() != w_t.dtype() {
        // half-precision weights under a wider compute dtype: the product in the weights'
        // dtype (f32 accumulation), the result widened back; under autograd the weight is
        // widened instead, so the gradient flows in the compute dtype
        if x.track_op() || w_t.track_op() {
            return linear(x, &w_t.to_dtype(x.dtype())?, bias);
        }
        let y = linear(&x.to_dtype(w_t.dtype())?, w_t, None)?.to_dtype(x.dtype())?;
        return Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        });
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    // [.., in] folded to [m, in]: one product for every row of every batch (a batched
    // matmul against the broadcast weight would copy the weight per batch entry); the CPU
    // product of super::gemm where it applies, candle's matmul elsewhere
    let y = match w_t.rank() {
        2 if x.rank() >= 2 => {
            let dims = x.dims().to_vec();
            let k = dims[dims.len() - 1];
            let m = x.elem_count() / k.max(1);
            let x2 = x.reshape((m, k))?;
            let y = match super::gemm::matmul_2d(&x2, w_t)? {
                Some(y) => y,
                None => x2.matmul(w_t)?,
            };
            let mut out = dims;
            *out.last_mut().expect("rank ≥ 2") = w_t.dim(1)?;
            y.reshape(out)?
        }
        _ => x.broadcast_matmul(w_t)?,
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Mean square over the last dim, in f32 (f64 for f64 input): x `[.., e]` → `[.., 1]`.
pub fn rms_variance(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(norm_dtype(x.dtype()))?
        .sqr()?
        .mean_keepdim(D::Minus1)?)
}

/// The dtype RMSNorm computes in: f32 as HF does for f32/bf16/f16, f64 for f64 (so f64
/// models, used for finite-difference checks, lose no precision).
fn norm_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// RMSNorm with a given variance (HF order): `w ⊙ (x_f32 · rsqrt(var + eps)).to(dtype)`.
/// x `[b|1,k,e]`, variance `[b|1,k,1]` f32, w `[e]` → `[b,k,e]` in w's dtype.
pub fn rms_apply(x: &Tensor, variance: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let nd = norm_dtype(x.dtype());
    let scale = (variance.to_dtype(nd)? + eps)?.sqrt()?.recip()?;
    let y = x.to_dtype(nd)?.broadcast_mul(&scale)?;
    Ok(y.to_dtype(w.dtype())?.broadcast_mul(w)?)
}

/// A2–A4 on logits `[b,k,v]` f32: per example, the mean over the k positions of
/// log-softmax(logits + mask)\[label\], mask = −1e4 everywhere except 0 at `candidate_ids`
/// (empty list = no mask) → `[b]`. The one implementation of the objective (the lm_head node
/// and the causal metrics use it). Autograd-safe.
pub fn label_log_prob(logits: &Tensor, labels: &[u32], candidate_ids: &[u32]) -> Result<Tensor> {
    let (b, k, v) = logits.dims3()?;
    if labels.len() != k {
        bail!("{} labels for {k} positions", labels.len());
    }
    if let Some(&t) = labels
        .iter()
        .chain(candidate_ids)
        .find(|&&t| t as usize >= v)
    {
        bail!("token id {t} out of range (vocab size {v})");
    }
    let dev = logits.device();
    let mut logits = logits.clone();
    if !candidate_ids.is_empty() {
        let mut m = vec![-1e4f32; v];
        for &c in candidate_ids {
            m[c as usize] = 0.0;
        }
        logits = logits.broadcast_add(&Tensor::from_vec(m, v, dev)?)?;
    }
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let idx = Tensor::new(labels, dev)?
        .reshape((1, k, 1))?
        .broadcast_as((b, k, 1))?
        .contiguous()?;
    Ok(logp.gather(&idx, 2)?.squeeze(2)?.mean(1)?)
}

/// The objective of logits `[b,k,v]` f32 → `[b]`: [`label_log_prob`] for `LogProb` and
/// `Argmax` (whose labels were resolved at forward), the same without the candidate mask for
/// `FullVocab`, and the mean of logit(label) − logit(foil) for `LogitDiff`. Autograd-safe.
pub fn objective_value(
    logits: &Tensor,
    labels: &[u32],
    candidate_ids: &[u32],
    objective: &super::sample::Objective,
) -> Result<Tensor> {
    use super::sample::Objective;
    match objective {
        Objective::LogProb | Objective::Argmax => label_log_prob(logits, labels, candidate_ids),
        Objective::FullVocab => label_log_prob(logits, labels, &[]),
        Objective::LogitDiff { foils } => {
            let (b, k, v) = logits.dims3()?;
            if labels.len() != k || foils.len() != k {
                bail!(
                    "logit_diff: {} labels and {} foils for {k} positions",
                    labels.len(),
                    foils.len()
                );
            }
            if let Some(&t) = labels.iter().chain(foils).find(|&&t| t as usize >= v) {
                bail!("token id {t} out of range (vocab size {v})");
            }
            let dev = logits.device();
            let pick = |ids: &[u32]| -> Result<Tensor> {
                let idx = Tensor::new(ids, dev)?
                    .reshape((1, k, 1))?
                    .broadcast_as((b, k, 1))?
                    .contiguous()?;
                Ok(logits.gather(&idx, 2)?.squeeze(2)?)
            };
            Ok((pick(labels)? - pick(foils)?)?.mean(1)?)
        }
    }
}

/// Composed (autograd-safe) softmax over the last dim.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// The MLP's SwiGLU product `silu(gate) ⊙ up`: gate `[.., m]`, up broadcastable to it. On the
/// CPU in f32 or bf16 without autograd, one fused pass ([`super::kernels::silu_mul`]; the
/// elementwise work is bound by memory traffic, and candle's composed form makes three passes);
/// otherwise composed (autograd-safe).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = gate.device().is_cpu()
        && up.device().is_cpu()
        && matches!(gate.dtype(), DType::F32 | DType::BF16)
        && up.dtype() == gate.dtype()
        && gate.shape() == up.shape()
        && gate.is_contiguous()
        && up.is_contiguous()
        && !gate.track_op()
        && !up.track_op();
    if fused {
        return Ok(gate.apply_op2_no_bwd(up, &SwiGlu)?);
    }
    Ok(gate.silu()?.broadcast_mul(up)?)
}

struct SwiGlu;

impl candle_core::CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("swiglu: contiguous operands expected")
        };
        let w = l1.dims().last().copied().unwrap_or(1).max(1);
        let n = l1.shape().elem_count();
        if b1 - a1 != n || b2 - a2 != n {
            candle_core::bail!("swiglu: operands of {} and {} elements", b1 - a1, b2 - a2);
        }
        /// The kernel over row shares of the flat operands.
        fn run<T: Copy + Default + Send + Sync>(
            g: &[T],
            u: &[T],
            w: usize,
            k: impl Fn(&[T], &[T], &mut [T]) + Sync,
        ) -> Vec<T> {
            let mut out = vec![T::default(); g.len()];
            super::kernels::par_rows(&mut out, w, |r0, o| {
                let span = r0 * w..r0 * w + o.len();
                k(&g[span.clone()], &u[span], o);
            });
            out
        }
        let out = match (s1, s2) {
            (S::F32(g), S::F32(u)) => {
                S::F32(run(&g[a1..b1], &u[a2..b2], w, super::kernels::silu_mul))
            }
            (S::BF16(g), S::BF16(u)) => S::BF16(run(
                &g[a1..b1],
                &u[a2..b2],
                w,
                super::kernels::silu_mul_bf16,
            )),
            _ => candle_core::bail!("swiglu: two f32 or two bf16 operands expected"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Rotate-half RoPE (autograd-safe): x `[b,h,t,d]`, cos/sin `[t, d/2]` → `[b,h,t,d]`.
/// out1 = x1·cos − x2·sin, out2 = x2·cos + x1·sin with x1/x2 the two halves of d.
/// When no operand is tracked by autograd the fused `candle_nn::rotary_emb::rope` computes the
/// same products in one pass (it passes no gradient, so tracked operands take the composed form).
pub fn rope_rotate_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let untracked = ![x, cos, sin].iter().any(|t| t.track_op());
    if untracked && x.rank() == 4 && cos.dims() == [x.dim(2)?, half] && cos.dims() == sin.dims() {
        return Ok(candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &cos.contiguous()?,
            &sin.contiguous()?,
        )?);
    }
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?
        .unsqueeze(0)?
        .unsqueeze(0)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?
        .unsqueeze(0)?
        .unsqueeze(0)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}

/// `[len]` u32 index tensor.
pub fn index_tensor(idx: &[usize], dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(v, idx.len(), dev)?)
}

/// Batch size of a `[b, ..]` tensor list after broadcasting (each batch must be 1 or b).
pub fn broadcast_batch(named: &[(&str, &Tensor)]) -> Result<usize> {
    let b = named
        .iter()
        .map(|(_, t)| t.dims().first().copied().unwrap_or(1))
        .max()
        .unwrap_or(1);
    for (name, t) in named {
        let bt = t.dims().first().copied().unwrap_or(1);
        if bt != 1 && bt != b {
            bail!("batch size mismatch: {name} has batch {bt}, expected 1 or {b}");
        }
    }
    Ok(b)
}

/// Expands a batch-1 tensor `[1, ..]` to `[b, ..]` (contiguous); returns it unchanged if already b.
pub fn expand_batch(t: &Tensor, b: usize) -> Result<Tensor> {
    if t.dim(0)? == b {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    dims[0] = b;
    Ok(t.broadcast_as(dims)?.contiguous()?)
}

/// Checks that every position is < `len`.
pub fn check_positions(pos: &[usize], len: usize, what: &str) -> Result<()> {
    if let Some(&p) = pos.iter().find(|&&p| p >= len) {
        bail!("{what} position {p} out of range (sequence length {len})");
    }
    Ok(())
}

/// A caller's position list: `None` (every position) or a non-empty list of positions below
/// `seq_len`. Local and remote backends refuse the same lists.
pub fn check_pos_ids(pos_ids: Option<&[usize]>, seq_len: usize) -> Result<()> {
    if let Some(p) = pos_ids {
        if p.is_empty() {
            bail!("pos_ids is an empty list; pass none (null, ()) for all positions");
        }
        check_positions(p, seq_len, "pos_ids")?;
    }
    Ok(())
}

/// Makes glibc malloc keep freed tensor buffers for reuse instead of returning them to the OS
/// (and page-faulting them back in on the next op): mmap threshold 32 MiB (the maximum), trim
/// threshold 1 GiB. Without this, a forward that *retains* its captured activations runs
/// 14–18% slower than the plain forward on Qwen2.5-0.5B shapes (measured); with it, the two
/// run at the same speed. Called once by [`super::Qwen2::load`]; a no-op off Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only adjusts allocator tunables; valid at any time.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

/// Causal softmax over the last dim of square score blocks: x `[.., s, s]` (query row i sees
/// keys 0..=i) → probabilities with exact zeros above the diagonal. Autograd-safe: on the CPU
/// a fused op with its own backward (dx = y ⊙ (dy − Σ_k dy·y)), elsewhere the composed
/// mask + [`softmax_last`]. The fused form saves the mask, the four intermediates of the
/// composed softmax and their gradients (measured on training shapes: most of the step's
/// elementwise time).
pub fn causal_softmax(x: &Tensor) -> Result<Tensor> {
    let s = x.dim(D::Minus1)?;
    if x.dim(D::Minus2)? != s {
        bail!("causal_softmax needs square blocks, got {:?}", x.dims());
    }
    causal_softmax_from(x, 0)
}

/// [`causal_softmax`] of a block of queries that starts at absolute position `first`:
/// x `[.., c, j]` with j ≥ first + c keys, query row q sees keys 0..=first+q.
pub fn causal_softmax_from(x: &Tensor, first: usize) -> Result<Tensor> {
    let j = x.dim(D::Minus1)?;
    let c = x.dim(D::Minus2)?;
    if first + c > j {
        bail!(
            "causal_softmax: queries {first}..{} need that many keys, got {j}",
            first + c
        );
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(x.apply_op1(CausalSoftmax { first })?);
    }
    let q_pos: Vec<usize> = (first..first + c).collect();
    let mask = super::qwen2::query_mask(&q_pos, j, None, x.device())?.to_dtype(x.dtype())?;
    softmax_last(&x.broadcast_add(&mask)?)
}

/// The fused causal softmax; `first` is the absolute position of the block's first query.
struct CausalSoftmax {
    first: usize,
}

/// Row-wise causal softmax of `[rows, j]` blocks of c queries (row r is query r mod c, at
/// absolute position first + r mod c), on all cores; `row` is the softmax of one row.
fn causal_softmax_rows<T: Copy + Default + Send + Sync>(
    src: &[T],
    (c, j, first): (usize, usize, usize),
    row: impl Fn(&[T], &mut [T]) + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    if j == 0 || c == 0 {
        return out; // no keys or no queries: nothing to normalize (and no rows to split)
    }
    super::kernels::par_rows(&mut out, j, |r0, dst| {
        for (r, y) in dst.chunks_mut(j).enumerate() {
            let i = r0 + r;
            let n = (first + i % c + 1).min(j); // keys 0..=query
            row(&src[i * j..i * j + n], &mut y[..n]);
        }
    });
    out
}

/// Softmax of one row in f64 (the finite-difference models' dtype).
fn softmax_row_f64(x: &[f64], y: &mut [f64]) {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for (yk, &xk) in y.iter_mut().zip(x) {
        *yk = (xk - max).exp();
        sum += *yk;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|v| *v *= inv);
}

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let dims = layout.shape().dims();
        let (c, j) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax: contiguous input expected")
        };
        let block = (c, j, self.first);
        let out = match storage {
            S::F32(v) => S::F32(causal_softmax_rows(
                &v[a..b],
                block,
                super::kernels::softmax_row,
            )),
            S::F64(v) => S::F64(causal_softmax_rows(&v[a..b], block, softmax_row_f64)),
            _ => candle_core::bail!("causal-softmax: f32 or f64 input expected"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Causal self-attention on the CPU in one fused op, f32, no gradient: q `[b, s, n, d]`, k and
/// v `[b, s, kvh, d]` (kvh divides n: grouped-query heads share their group's k/v; the layout
/// the projections write, so no transposes) → `[b, s, n, d]`, the layout the output projection
/// reads. Query head h attends with
/// softmax(scale · q kᵀ) over keys 0..=i to the values.
///
/// Work goes in tasks of one (sequence, head, block of `block` queries); a task sees only its
/// block's causal key prefix, and its scores stay in a scratch buffer of `[block, keys]`. The
/// tasks run on candle's pool (the threads of every other op; see `kernels::par_rows`), and
/// both products are serial `gemm` calls inside them. This replaces, per block, a copy of the
/// queries, two batched matmuls on another pool, the softmax op and, per layer, the blocks'
/// concatenation and the transpose to `[b, s, n, d]`.
///
/// None when the operands are not f32 on the CPU (the caller then composes candle ops).
pub fn causal_attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    block: usize,
) -> Result<Option<Tensor>> {
    if !q.device().is_cpu() || [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
        return Ok(None);
    }
    let (b, s, n, d) = q.dims4()?;
    let (kb, ks, kvh, kd) = k.dims4()?;
    if (kb, ks, kd) != (b, s, d) || v.dims() != k.dims() || kvh == 0 || n % kvh != 0 {
        bail!(
            "causal attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CausalAttention {
            scale,
            block: block.max(1),
        },
    )?))
}

/// The elements of a contiguous f32 CPU operand of the custom op `op`.
fn contiguous_f32<'a>(
    st: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (st, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(x), Some((a, b))) => Ok(&x[a..b]),
        _ => candle_core::bail!("{op}: contiguous f32 operands expected"),
    }
}

struct CausalAttention {
    scale: f32,
    block: usize,
}

thread_local! {
    /// `CausalAttention`'s per-thread scores and probabilities of one task (`[block, keys]`),
    /// grown to the largest task seen.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// A pointer to the output that the tasks write disjoint elements of.
struct OutPtr(*mut f32);
// SAFETY: the tasks of `CausalAttention` write disjoint elements (one head's rows of one
// query block each) and nothing reads the buffer until all of them are done.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The output pointer (a method, so closures capture the `Sync` wrapper, not the field).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

impl candle_core::CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let slice =
            |st, l| contiguous_f32(st, l, "causal-attention").map(|x| (x.as_ptr(), x.len()));
        let (qp, ql) = slice(s1, l1)?;
        let (kp, kl) = slice(s2, l2)?;
        let (vp, vl) = slice(s3, l3)?;
        let &[b, s, n, d] = l1.dims() else {
            candle_core::bail!("causal-attention: q must be [b, s, n, d]")
        };
        let kvh = l2.dims()[2];
        if ql != b * n * s * d || kl != b * kvh * s * d || vl != kl || kvh == 0 || n % kvh != 0 {
            candle_core::bail!("causal-attention: operand sizes do not fit");
        }
        let g = n / kvh;
        let c_max = self.block;
        let blocks = s.div_ceil(c_max);
        let mut out = vec![0f32; b * s * n * d];
        let optr = OutPtr(out.as_mut_ptr());
        let (qp, kp, vp) = (qp as usize, kp as usize, vp as usize);
        let task = |t: usize| {
            let (bi, h, blk) = (t / (n * blocks), t / blocks % n, t % blocks);
            let kh = h / g;
            let a = blk * c_max;
            let c = c_max.min(s - a);
            let j = a + c; // the block's keys: 0..j
            let (qp, kp, vp) = (qp as *const f32, kp as *const f32, vp as *const f32);
            // per-thread scratch, kept between tasks and calls (no allocation or zeroing per
            // task): the scores are overwritten whole, each probability row below
            SCRATCH.with_borrow_mut(|(scores, probs)| {
                if scores.len() < c * j {
                    scores.resize(c * j, 0.0);
                    probs.resize(c * j, 0.0);
                }
                let (scores, probs) = (&mut scores[..c * j], &mut probs[..c * j]);
                // SAFETY: every pointer below stays inside its operand (sizes checked above:
                // rows a..a+c of head h, keys 0..j of kv head kh, and the output rows a..a+c of
                // head h, which no other task writes); `scores`/`probs` are [c, j] row-major.
                unsafe {
                    // row i of head h: q[bi, i, h, :]; key/value jj of kv head kh: [bi, jj, kh, :]
                    let qh = qp.add(((bi * s + a) * n + h) * d);
                    let kvo = bi * s * kvh * d + kh * d;
                    let kv_rs = (kvh * d) as isize;
                    // scores [c, j] = scale · q [c, d] · kᵀ [d, j]
                    gemm::gemm(
                        c,
                        j,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        j as isize,
                        false,
                        qh,
                        1,
                        (n * d) as isize,
                        kp.add(kvo),
                        kv_rs,
                        1,
                        0f32,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    // query a + r sees keys 0..=a+r; the rest of its row is 0
                    for r in 0..c {
                        let keys = a + r + 1;
                        let row = &mut probs[r * j..(r + 1) * j];
                        super::kernels::softmax_row(&scores[r * j..r * j + keys], &mut row[..keys]);
                        row[keys..].fill(0.0);
                    }
                    // out[bi, a + r, h, :] = probs [c, j] · v [j, d]
                    gemm::gemm(
                        c,
                        d,
                        j,
                        optr.get().add(((bi * s + a) * n + h) * d),
                        1,
                        (n * d) as isize,
                        false,
                        probs.as_ptr(),
                        1,
                        j as isize,
                        vp.add(kvo),
                        1,
                        kv_rs,
                        0f32,
                        1f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        };
        candle_core::utils::barrier_pool().execute_chunked(b * n * blocks, |range| {
            range.for_each(task);
        });
        Ok((S::F32(out), candle_core::Shape::from((b, s, n, d))))
    }
}

/// RoPE (rotate-half, as candle's `rope`) on the CPU in the projections' layout, f32, no
/// gradient: x `[b, s, h, d]`, cos/sin `[s, d/2]` (row i for position i) → `[b, s, h, d]`,
/// element for element candle's formula. Rows go on all cores (`kernels::par_rows`); candle's
/// `rope` wants `[b, h, s, d]` (a transpose copy each way) and its `rope_thd` runs one
/// sequence per thread. None when x is not f32 on the CPU.
pub fn rope_bshd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || [x, cos, sin].iter().any(|t| t.dtype() != DType::F32) {
        return Ok(None);
    }
    let (_, s, _, d) = x.dims4()?;
    if d % 2 != 0 || cos.dims() != [s, d / 2] || sin.dims() != [s, d / 2] {
        bail!(
            "rope: x {:?} needs cos and sin of [{s}, {}], got {:?} and {:?}",
            x.dims(),
            d / 2,
            cos.dims(),
            sin.dims()
        );
    }
    Ok(Some(x.contiguous()?.apply_op3_no_bwd(
        &cos.contiguous()?,
        &sin.contiguous()?,
        &RopeBshd,
    )?))
}

struct RopeBshd;

impl candle_core::CustomOp3 for RopeBshd {
    fn name(&self) -> &'static str {
        "rope-bshd"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let slice = |st, l| contiguous_f32(st, l, "rope");
        let (x, cos, sin) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let &[b, s, h, d] = l1.dims() else {
            candle_core::bail!("rope: x must be [b, s, h, d]")
        };
        let half = d / 2;
        if x.len() != b * s * h * d || cos.len() != s * half || sin.len() != s * half {
            candle_core::bail!("rope: operand sizes do not fit");
        }
        let w = h * d;
        let mut out = vec![0f32; x.len()];
        if w > 0 {
            super::kernels::par_rows(&mut out, w, |r0, dst| {
                for (r, y) in dst.chunks_mut(w).enumerate() {
                    let row = r0 + r;
                    let i = row % s;
                    let (c, sn) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                    let xr = &x[row * w..][..w];
                    for (yh, xh) in y.chunks_mut(d).zip(xr.chunks(d)) {
                        let (y1, y2) = yh.split_at_mut(half);
                        let (x1, x2) = xh.split_at(half);
                        for k in 0..half {
                            y1[k] = x1[k] * c[k] - x2[k] * sn[k];
                            y2[k] = x1[k] * sn[k] + x2[k] * c[k];
                        }
                    }
                }
            });
        }
        Ok((S::F32(out), l1.shape().clone()))
    }
}
