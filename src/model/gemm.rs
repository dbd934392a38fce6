//! The CPU matrix product behind [`super::ops::linear`]: `x [m, k] @ w_t [k, n]`.
//! * bf16 and f16 go through `gemmkit` (runtime ISA dispatch; the AVX512_BF16 dot instruction
//!   where the CPU has it; accumulation in f32, rounded to the dtype on store, as candle's own
//!   half-precision matmul does). candle's CPU bf16 matmul widens to f32 per call; this made the
//!   bf16 forward of the 0.5B shape 1.4–1.5× faster (docs/src/performance.md).
//! * f32 and f64 go through the `gemm` crate exactly as candle's matmul calls it (gemmkit's f32
//!   kernel was not faster in the full forward).
//!
//! Products of enough rows are split by rows over candle's own CPU pool, one serial product
//! per share (`kernels::par_rows`): candle's matmul and gemmkit run on rayon's threads, which
//! shared the cores with candle's pool workers spinning after each op. On the 2-core machine
//! this made the f32 forward of the 0.5B shape ~18 % faster and its bf16-weights forward
//! 10–25 % faster (docs/src/performance.md).
//!
//! It is a candle custom op with its own backward, so autograd passes through it; the backward
//! forms the weight gradient only when the weight is tracked (candle's matmul backward always
//! forms both, and the attribution never needs the weight's).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use gemmkit::{GemmScalar, MatMut, MatRef, Parallelism, bf16, f16};

/// `x @ w_t` on the CPU for x `[m, k]` (rows contiguous) and a 2-D `w_t [k, n]` of any strides,
/// both of one float dtype → `[m, n]`. None when the operands do not fit this path (another
/// device, dtype or rank); the caller then uses candle's matmul.
pub fn matmul_2d(x: &Tensor, w_t: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let half = matches!(x.dtype(), DType::BF16 | DType::F16);
    let ok_dtype = half || matches!(x.dtype(), DType::F32 | DType::F64);
    if !x.device().is_cpu()
        || !w_t.device().is_cpu()
        || x.dtype() != w_t.dtype()
        || !ok_dtype
        || x.rank() != 2
        || w_t.rank() != 2
        || x.dim(1)? != w_t.dim(0)?
    {
        return Ok(None);
    }
    Ok(Some(x.apply_op2(w_t, Linear)?))
}

struct Linear;

/// Row and column strides of a 2-D layout, and its offset.
fn view(l: &Layout) -> (usize, usize, isize, isize, usize) {
    let d = l.dims();
    let s = l.stride();
    (d[0], d[1], s[0] as isize, s[1] as isize, l.start_offset())
}

/// Whether the strided view (rows, cols, rs, cs, offset) lies inside a buffer of `len`.
fn fits(v: (usize, usize, isize, isize, usize), len: usize) -> bool {
    let (r, c, rs, cs, off) = v;
    if r == 0 || c == 0 {
        return true;
    }
    let last = off as isize + (r as isize - 1) * rs + (c as isize - 1) * cs;
    rs >= 0 && cs >= 0 && (last as usize) < len
}

fn product<T: GemmScalar + Copy + Default + 'static>(
    x: &[T],
    lx: &Layout,
    w: &[T],
    lw: &Layout,
    one: T,
    zero: T,
    half: bool,
) -> candle_core::Result<(Vec<T>, Shape)> {
    let vx = view(lx);
    let vw = view(lw);
    let (m, k, _, _, _) = vx;
    let (k2, n, _, _, _) = vw;
    if k != k2 || !fits(vx, x.len()) || !fits(vw, w.len()) {
        candle_core::bail!("linear: operands {:?} and {:?} do not multiply", lx, lw);
    }
    let mut out = vec![T::default(); m * n];
    if m == 0 || n == 0 || k == 0 {
        return Ok((out, Shape::from((m, n))));
    }
    // one product of rows r0.. of x into `o` ([rows, n]), serial or on the given threads
    let run = |r0: usize, o: &mut [T], threads: usize| {
        let rows = o.len() / n;
        let xo = vx.4 + r0 * vx.2 as usize;
        if half {
            let a = MatRef::new(&x[xo..], rows, k, vx.2, vx.3);
            let b = MatRef::new(&w[vw.4..], k, n, vw.2, vw.3);
            let par = if threads > 1 {
                Parallelism::Rayon(0)
            } else {
                Parallelism::Serial
            };
            gemmkit::gemm(one, a, b, zero, MatMut::from_row_major(o, rows, n), par);
        } else {
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: both views were checked to lie inside their buffers (`fits`; rows
            // r0..r0+rows of x lie inside x's), `o` is a contiguous [rows, n] buffer, and
            // nothing aliases it.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    o.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    x.as_ptr().add(xo),
                    vx.3,
                    vx.2,
                    w.as_ptr().add(vw.4),
                    vw.3,
                    vw.2,
                    zero,
                    one,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
    };
    // rows split over candle's pool (see `kernels::par_rows`), each share one serial product;
    // too few rows for a share per core: the library's own split over the columns (rayon)
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    if threads > 1 && m >= 32 * threads {
        super::kernels::par_rows(&mut out, n, |r0, o| run(r0, o, 1));
    } else {
        run(0, &mut out, threads);
    }
    Ok((out, Shape::from((m, n))))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "minarc-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok(match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let (o, s) = product(x, l1, w, l2, 1f32, 0f32, false)?;
                (CpuStorage::F32(o), s)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                let (o, s) = product(x, l1, w, l2, 1f64, 0f64, false)?;
                (CpuStorage::F64(o), s)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
                let (o, s) = product(x, l1, w, l2, bf16::ONE, bf16::ZERO, true)?;
                (CpuStorage::BF16(o), s)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w)) => {
                let (o, s) = product(x, l1, w, l2, f16::ONE, f16::ZERO, true)?;
                (CpuStorage::F16(o), s)
            }
            _ => candle_core::bail!("linear: unsupported dtypes"),
        })
    }

    /// y = x·w_t: dx = dy·w_tᵀ; dw_t = xᵀ·dy, formed only when w_t is tracked.
    fn bwd(
        &self,
        x: &Tensor,
        w_t: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mm = |a: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
            let a = a.contiguous()?;
            match matmul_2d(&a, b)? {
                Some(t) => Ok(t),
                None => a.matmul(b),
            }
        };
        let dx = if x.track_op() {
            Some(mm(dy, &w_t.t()?)?)
        } else {
            None
        };
        let dw = if w_t.track_op() {
            Some(mm(&x.t()?, dy)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: (usize, usize), seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..shape.0 * shape.1)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (flat(a), flat(b));
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// The product and both gradients equal candle's matmul in f64 (a strided weight view
    /// included) and central differences, and the weight gradient is absent when the weight is
    /// not tracked.
    #[test]
    fn the_op_and_its_gradients_match_candle_matmul() {
        let dev = Device::Cpu;
        let (m, k, n) = (7, 33, 19);
        let x = Var::from_vec(rand((m, k), 1), (m, k), &dev).unwrap();
        // w_t as the transposed view of an [n, k] tensor (non-contiguous)
        let w = Var::from_vec(rand((n, k), 2), (n, k), &dev).unwrap();
        let w_t = w.as_tensor().t().unwrap();
        let g = Tensor::from_vec(rand((m, n), 3), (m, n), &dev).unwrap();
        let ours = x.as_tensor().apply_op2(&w_t, Linear).unwrap();
        let theirs = x.as_tensor().matmul(&w_t).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-13);
        let go = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (theirs * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let (a, b) = (go.get(v).unwrap(), gt.get(v).unwrap());
            assert!(max_diff(a, b) < 1e-13);
        }
        // and central differences of L = Σ g ⊙ (x·w_t) at a few entries of x and of w
        let loss = |xv: &[f64], wv: &[f64]| -> f64 {
            let xt = Tensor::from_vec(xv.to_vec(), (m, k), &dev).unwrap();
            let wt = Tensor::from_vec(wv.to_vec(), (n, k), &dev).unwrap();
            let y = xt.apply_op2(&wt.t().unwrap(), Linear).unwrap();
            (y * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (xv, wv) = (flat(x.as_tensor()), flat(w.as_tensor()));
        let (gx, gw) = (flat(go.get(&x).unwrap()), flat(go.get(&w).unwrap()));
        let h = 1e-5;
        // (entry of w?, index)
        let n_x = m * k;
        for (of_w, i) in [
            (false, 0),
            (false, 17),
            (false, n_x - 1),
            (true, 0),
            (true, 40),
        ] {
            let at = |d: f64| {
                let (mut a, mut b) = (xv.clone(), wv.clone());
                if of_w {
                    b[i] += d
                } else {
                    a[i] += d
                }
                loss(&a, &b)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let got = if of_w { gw[i] } else { gx[i] };
            assert!((fd - got).abs() < 1e-8, "w {of_w} [{i}]: {fd} vs {got}");
        }
        // an untracked weight gets no gradient formed
        let w_plain = Tensor::from_vec(rand((k, n), 4), (k, n), &dev).unwrap();
        let y = x.as_tensor().apply_op2(&w_plain, Linear).unwrap();
        let gr = y.sum_all().unwrap().backward().unwrap();
        assert!(gr.get(&w_plain).is_none());
        let dx = gr.get(&x).unwrap();
        let want = Tensor::ones((m, n), DType::F64, &dev)
            .unwrap()
            .matmul(&w_plain.t().unwrap())
            .unwrap();
        assert!(max_diff(dx, &want) < 1e-13);
    }

    /// bf16 and f16 products equal the f64 product of the same (rounded) operands to the
    /// rounding of the output (f32 accumulation), through `linear`'s folding of leading dims.
    #[test]
    fn half_precision_products_round_the_exact_product() {
        let dev = Device::Cpu;
        let (b, s, k, n) = (2, 5, 300, 40);
        let x64 = Tensor::from_vec(rand((b * s, k), 5), (b, s, k), &dev).unwrap();
        let w64 = Tensor::from_vec(rand((k, n), 6), (k, n), &dev).unwrap();
        for (dt, rel) in [(DType::BF16, 1.0 / 128.0), (DType::F16, 1.0 / 1024.0)] {
            let (x, w) = (x64.to_dtype(dt).unwrap(), w64.to_dtype(dt).unwrap());
            let y = super::super::ops::linear(&x, &w, None).unwrap();
            assert_eq!(y.dims(), &[b, s, n]);
            assert_eq!(y.dtype(), dt);
            let exact = x
                .to_dtype(DType::F64)
                .unwrap()
                .broadcast_matmul(&w.to_dtype(DType::F64).unwrap())
                .unwrap();
            let y = y.to_dtype(DType::F64).unwrap();
            let zero = exact.zeros_like().unwrap();
            let scale = max_diff(&exact, &zero);
            let err = max_diff(&y, &exact);
            // one output rounding (relative `rel`) plus f32 accumulation over k terms
            let bound = rel * scale + 1e-5;
            assert!(err <= bound, "{dt:?}: {err} > {bound}");
        }
    }
}
