//! The fused CPU forward ops against candle's composed forms and f64 math: the SwiGLU product
//! (f32 bit for bit, bf16 one rounding), the causal softmax of a query block, and the
//! composed fallback under autograd.

use candle_core::{DType, Device, Tensor, Var};
use minarc::model::ops::{NEG_MASK, causal_softmax_from, softmax_last, swiglu};

/// Deterministic values spread over about ±2·scale, shaped `dims`.
fn noise(dims: &[usize], scale: f32, seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0 * scale
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn swiglu_f32_is_candles_silu_times_up_bit_for_bit() {
    // above the size where the work is split over threads, and a small one on one thread
    for shape in [[3usize, 50, 701], [1, 2, 5]] {
        let g = noise(&shape, 3.0, 1);
        let u = noise(&shape, 1.0, 2);
        let fused = swiglu(&g, &u).unwrap();
        let composed = (g.silu().unwrap() * &u).unwrap();
        let a: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = composed.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(fused.dims(), composed.dims());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        // and against f64 math
        for ((&x, gd), ud) in a.iter().zip(vec_f64(&g)).zip(vec_f64(&u)) {
            let want = gd / (1.0 + (-gd).exp()) * ud;
            assert!((x as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30);
        }
    }
}

#[test]
fn swiglu_bf16_rounds_the_f32_product_once() {
    let shape = [2, 40, 1000];
    let g = noise(&shape, 3.0, 3).to_dtype(DType::BF16).unwrap();
    let u = noise(&shape, 1.0, 4).to_dtype(DType::BF16).unwrap();
    let fused = vec_f64(&swiglu(&g, &u).unwrap());
    let (gd, ud) = (vec_f64(&g), vec_f64(&u));
    let mut exact = 0;
    for i in 0..fused.len() {
        let want = gd[i] / (1.0 + (-gd[i]).exp()) * ud[i];
        let rounded = half::bf16::from_f64(want).to_f64();
        // within half a bf16 ulp of the exact value (at most 2^-8 of it; plus the f32 math),
        // and almost always the correctly rounded value itself
        assert!(
            (fused[i] - want).abs() <= want.abs() * (1.0 / 256.0) * 1.001 + 1e-30,
            "{i}: {} vs {want}",
            fused[i]
        );
        exact += usize::from(fused[i] == rounded);
    }
    assert!(
        exact * 1000 >= fused.len() * 999,
        "{exact} of {}",
        fused.len()
    );
}

#[test]
fn swiglu_under_autograd_is_the_composed_form() {
    let g = Var::from_tensor(&noise(&[2, 3], 2.0, 5).to_dtype(DType::F64).unwrap()).unwrap();
    let u = noise(&[2, 3], 1.0, 6).to_dtype(DType::F64).unwrap();
    let grads = swiglu(g.as_tensor(), &u)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    // d/dg [g σ(g) u] = u σ(g) (1 + g (1 − σ(g)))
    let got = vec_f64(grads.get(&g).unwrap());
    for ((d, gv), uv) in got.iter().zip(vec_f64(g.as_tensor())).zip(vec_f64(&u)) {
        let s = 1.0 / (1.0 + (-gv).exp());
        let want = uv * s * (1.0 + gv * (1.0 - s));
        assert!((d - want).abs() < 1e-12, "{d} vs {want}");
    }
}

#[test]
fn causal_softmax_of_a_query_block_matches_the_masked_softmax() {
    let dev = Device::Cpu;
    // a block of c queries at positions first..first+c over j = first + c keys, with the
    // leading dims of the forward's scores [b, kvh, g, c, j]; c·j·rows past the thread split
    for (first, c) in [(0usize, 5usize), (256, 128), (3, 1)] {
        let j = first + c;
        let x = noise(&[1, 2, 3, c, j], 4.0, first as u64);
        let y = causal_softmax_from(&x, first).unwrap();
        assert_eq!(y.dims(), x.dims());
        let mask: Vec<f64> = (0..c * j)
            .map(|i| {
                if i % j > first + i / j {
                    NEG_MASK as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (c, j), &dev).unwrap();
        let want = softmax_last(
            &x.to_dtype(DType::F64)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap(),
        )
        .unwrap();
        let (got, want) = (vec_f64(&y), vec_f64(&want));
        for (r, (gr, wr)) in got.chunks(j).zip(want.chunks(j)).enumerate() {
            let q = first + r % c;
            assert!(
                gr[q + 1..].iter().all(|&p| p == 0.0),
                "row {r} sees the future"
            );
            assert!((gr.iter().sum::<f64>() - 1.0).abs() < 1e-5);
            // f32 rounding of x − max (|x − max| ≤ 32, half an ulp ≈ 1.9e-6) moves e^(x − max)
            // by that much relative
            for (a, b) in gr.iter().zip(wr) {
                assert!((a - b).abs() <= 3e-6 * b + 1e-12, "row {r}: {a} vs {b}");
            }
        }
    }
    // empty blocks (no queries, or no keys and no queries) give empty results
    for dims in [[2usize, 0, 4], [2, 0, 0]] {
        let x = Tensor::zeros(&dims[..], DType::F32, &dev).unwrap();
        assert_eq!(causal_softmax_from(&x, 0).unwrap().dims(), &dims[..]);
    }
    // more queries than the keys allow is an error, not a panic
    let x = Tensor::zeros((2, 4, 5), DType::F32, &dev).unwrap();
    let err = causal_softmax_from(&x, 2).unwrap_err().to_string();
    assert!(err.contains("keys"), "{err}");
}

/// The fused CPU attention against attention written out in f64: grouped-query heads (3 query
/// heads per kv head), two sequences, a length that leaves a partial last query block, and a
/// block of one query; every query sees exactly keys 0..=i.
#[test]
fn causal_attention_matches_f64_attention() {
    use minarc::model::ops::causal_attention_cpu;
    let (b, n, kvh, s, d) = (2usize, 6usize, 2usize, 37usize, 8usize);
    let q = noise(&[b, n, s, d], 1.0, 11);
    let k = noise(&[b, kvh, s, d], 1.0, 12);
    let v = noise(&[b, kvh, s, d], 1.0, 13);
    let scale = 1.0 / (d as f32).sqrt();
    let (qv, kv, vv) = (vec_f64(&q), vec_f64(&k), vec_f64(&v));
    let mut want = vec![0f64; b * s * n * d];
    for bi in 0..b {
        for h in 0..n {
            let kh = h / (n / kvh);
            for i in 0..s {
                let qi = &qv[((bi * n + h) * s + i) * d..][..d];
                let sc: Vec<f64> = (0..=i)
                    .map(|jj| {
                        let kj = &kv[((bi * kvh + kh) * s + jj) * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale as f64
                    })
                    .collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for dd in 0..d {
                    want[((bi * s + i) * n + h) * d + dd] = (0..=i)
                        .map(|jj| (sc[jj] - m).exp() / z * vv[((bi * kvh + kh) * s + jj) * d + dd])
                        .sum();
                }
            }
        }
    }
    // in the projections' layout [b, s, heads, d]
    let bshd = |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap();
    let (q, k, v) = (bshd(&q), bshd(&k), bshd(&v));
    for block in [16, 1, 64] {
        let o = causal_attention_cpu(&q, &k, &v, scale, block)
            .unwrap()
            .expect("f32 on the CPU takes the fused path");
        assert_eq!(o.dims(), &[b, s, n, d]);
        let got = vec_f64(&o);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 2e-6, "block {block}: max |Δ| {err}");
    }
    // another dtype: the caller composes candle ops instead
    let q16 = q.to_dtype(DType::BF16).unwrap();
    let k16 = k.to_dtype(DType::BF16).unwrap();
    let v16 = v.to_dtype(DType::BF16).unwrap();
    assert!(
        causal_attention_cpu(&q16, &k16, &v16, scale, 16)
            .unwrap()
            .is_none()
    );
    // shapes that do not fit are an error
    let k5 = noise(&[b, s, 4, d], 1.0, 14);
    assert!(causal_attention_cpu(&q, &k5, &k5, scale, 16).is_err());
}

/// RoPE in the projections' layout `[b, s, h, d]` is candle's `rope` on `[b, h, s, d]`, bit
/// for bit, over rows split across threads (b·s·h·d above the split size) and a small one.
#[test]
fn rope_in_the_projection_layout_is_candles_rope() {
    use minarc::model::ops::rope_bshd;
    for (b, s, h, d) in [(2usize, 300usize, 14usize, 64usize), (1, 3, 2, 4)] {
        let x = noise(&[b, s, h, d], 1.0, 21);
        let cos = noise(&[s, d / 2], 0.5, 22);
        let sin = noise(&[s, d / 2], 0.5, 23);
        let ours = rope_bshd(&x, &cos, &sin).unwrap().expect("f32 on the CPU");
        let theirs = candle_nn::rotary_emb::rope(
            &x.transpose(1, 2).unwrap().contiguous().unwrap(),
            &cos,
            &sin,
        )
        .unwrap()
        .transpose(1, 2)
        .unwrap();
        let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
        let t: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), t.len());
        assert!(a.iter().zip(&t).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    let x = noise(&[1, 3, 2, 4], 1.0, 1);
    assert!(rope_bshd(&x, &noise(&[2, 2], 1.0, 2), &noise(&[3, 2], 1.0, 3)).is_err());
}

/// `rope_rotate_half` takes candle's fused `rope` when no operand is tracked and the composed
/// candle ops under autograd: both give the rotation by hand, x1·cos − x2·sin and x2·cos + x1·sin.
#[test]
fn rope_rotate_half_is_the_same_rotation_fused_and_composed() {
    use candle_core::Var;
    use minarc::model::ops::rope_rotate_half;
    let (b, h, t, d) = (2usize, 3usize, 5usize, 8usize);
    let x = noise(&[b, h, t, d], 1.0, 31);
    let cos = noise(&[t, d / 2], 0.5, 32);
    let sin = noise(&[t, d / 2], 0.5, 33);
    let fused = rope_rotate_half(&x, &cos, &sin).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let composed = rope_rotate_half(xv.as_tensor(), &cos, &sin).unwrap();
    assert!(
        composed.track_op(),
        "the tracked input must stay on the autograd path"
    );
    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let (c, s): (Vec<f32>, Vec<f32>) = (
        cos.flatten_all().unwrap().to_vec1().unwrap(),
        sin.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let mut want = vec![0f32; xs.len()];
    for row in 0..b * h * t {
        let p = row % t;
        for i in 0..d / 2 {
            let (x1, x2) = (xs[row * d + i], xs[row * d + i + d / 2]);
            let (ci, si) = (c[p * d / 2 + i], s[p * d / 2 + i]);
            want[row * d + i] = x1 * ci - x2 * si;
            want[row * d + i + d / 2] = x2 * ci + x1 * si;
        }
    }
    for got in [&fused, &composed] {
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let err = g
            .iter()
            .zip(&want)
            .map(|(a, w)| (a - w).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-6, "max |Δ| {err}");
    }
    // the composed form passes a gradient: d Σ out / d x1 = cos + sin, d/d x2 = cos − sin
    let g = composed.sum_all().unwrap().backward().unwrap();
    let gx: Vec<f32> = g
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for row in 0..b * h * t {
        let p = row % t;
        for i in 0..d / 2 {
            let (ci, si) = (c[p * d / 2 + i], s[p * d / 2 + i]);
            assert!((gx[row * d + i] - (ci + si)).abs() < 1e-6);
            assert!((gx[row * d + i + d / 2] - (ci - si)).abs() < 1e-6);
        }
    }
}
