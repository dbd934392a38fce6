//! Component functions: they reproduce the full forward on cached inputs, and every gradient
//! path matches central finite differences.

mod common;

use candle_core::{D, DType, IndexOp, Tensor, Var};
use common::*;
use minarc::model::{AttnInputs, CaptureSpec, NoSink, Norm, Outputs, Qwen2};

fn setup(s: usize, seed: u64) -> (tempfile::TempDir, Qwen2, Outputs) {
    let (d, m) = tiny();
    let ids = token_ids(m.config(), s, seed);
    let spec = CaptureSpec {
        logits: true,
        ..CaptureSpec::full()
    };
    let out = m.forward_capture(&ids, &spec).unwrap();
    (d, m, out)
}

/// input-normed hidden_states[l] over the full sequence, with the cached variance.
fn xn(m: &Qwen2, out: &Outputs, l: usize) -> Tensor {
    m.rms_norm(
        Norm::Input(l),
        &out.hidden_state(l, None).unwrap(),
        Some(&out.input_norm_var(l, None).unwrap()),
    )
    .unwrap()
}

#[test]
fn attention_reproduces_forward_for_all_heads_each_head_and_query_subsets() {
    let s = 14;
    let (_d, m, out) = setup(s, 11);
    let cfg = m.config().clone();
    let pos: Vec<usize> = (0..s).collect();
    for l in 0..cfg.num_hidden_layers {
        let x = xn(&m, &out, l);
        let attn_out = out.attn_out(l, None).unwrap();
        let want = m.heads_output_sum(l, &attn_out, None).unwrap();
        let got = m.attention(l, &AttnInputs::new(&x, &x, &x, &pos)).unwrap();
        assert!(
            max_diff(&got, &want) < 1e-5,
            "all heads: {}",
            max_diff(&got, &want)
        );
        let per_head = m.head_outputs(l, &attn_out, None).unwrap();
        for h in 0..cfg.num_attention_heads {
            let hs = [h];
            let got = m
                .attention(l, &AttnInputs::new(&x, &x, &x, &pos).heads(&hs))
                .unwrap();
            assert!(max_diff(&got, &per_head.i((.., .., h, ..)).unwrap()) < 1e-5);
        }
        // a subset of heads spanning both KV groups, in a non-sorted order
        let hs = [3, 0];
        let got = m
            .attention(l, &AttnInputs::new(&x, &x, &x, &pos).heads(&hs))
            .unwrap();
        let want =
            (per_head.i((.., .., 3, ..)).unwrap() + per_head.i((.., .., 0, ..)).unwrap()).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        // queries at a subset of positions (keys stay the full sequence)
        let qp = vec![0, 5, 13];
        let idx = Tensor::new(&[0u32, 5, 13], x.device()).unwrap();
        let xq = x.index_select(&idx, 1).unwrap();
        let got = m.attention(l, &AttnInputs::new(&xq, &x, &x, &qp)).unwrap();
        let want = m
            .heads_output_sum(l, &out.attn_out(l, Some(&qp)).unwrap(), None)
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        // injected weights equal to the computed ones give the same output
        let a = AttnInputs::new(&xq, &x, &x, &qp).heads(&hs);
        let w = m.attention_weights(l, &a).unwrap();
        assert_eq!(w.dims(), &[1, 2, 3, s]);
        let got_w = m.attention(l, &a.with_weights(&w)).unwrap();
        assert!(max_diff(&got_w, &m.attention(l, &a).unwrap()) < 1e-6);
    }
}

/// The fast forward processes queries in blocks over their causal key prefix; a sequence
/// spanning several blocks (and ending mid-block) must match the unblocked component attention.
#[test]
fn blocked_fast_attention_matches_components_on_long_sequences() {
    let s = 301;
    let (_d, m, out) = setup(s, 12);
    let pos: Vec<usize> = (0..s).collect();
    for l in 0..m.config().num_hidden_layers {
        let x = xn(&m, &out, l);
        let want = m.attention(l, &AttnInputs::new(&x, &x, &x, &pos)).unwrap();
        let got = m
            .heads_output_sum(l, &out.attn_out(l, None).unwrap(), None)
            .unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "layer {l}: fast vs component attention {diff}");
    }
}

#[test]
fn mlp_and_lm_head_reproduce_forward() {
    let s = 10;
    let (_d, m, out) = setup(s, 12);
    let cfg = m.config().clone();
    for l in 0..cfg.num_hidden_layers {
        let mid = (out.hidden_state(l, None).unwrap()
            + m.heads_output_sum(l, &out.attn_out(l, None).unwrap(), None)
                .unwrap())
        .unwrap();
        let x = m
            .rms_norm(
                Norm::PostAttention(l),
                &mid,
                Some(&out.post_attn_norm_var(l, None).unwrap()),
            )
            .unwrap();
        let got = m.mlp(l, &x, None).unwrap();
        assert!(max_diff(&got, &out.mlp_output(l, None).unwrap()) < 1e-5);
        assert!(max_diff(&m.mlp(l, &x, Some(&x)).unwrap(), &got) < 1e-6);
        // the stored variance equals the recomputed one
        let free = m.rms_norm(Norm::PostAttention(l), &mid, None).unwrap();
        assert!(max_diff(&free, &x) < 1e-5);
    }
    let hl = out.hidden_state(cfg.num_hidden_layers, None).unwrap();
    assert!(max_diff(&m.lm_head(&hl).unwrap(), &out.logits(None).unwrap()) < 1e-4);
}

#[test]
fn mlp_separate_inputs_match_manual_swiglu() {
    let (_d, m) = tiny();
    let e = m.config().hidden_size;
    let xi = randn(&[1, 4, e], 1);
    let xg = randn(&[1, 4, e], 2);
    let lw = m.weights().layer(1).unwrap();
    let up = xi.broadcast_matmul(&lw.w_up_t).unwrap();
    let g = xg.broadcast_matmul(&lw.w_gate_t).unwrap();
    let silu = (&g * candle_nn::ops::sigmoid(&g).unwrap()).unwrap();
    let want = (silu * up).unwrap().broadcast_matmul(&lw.w_down_t).unwrap();
    assert!(max_diff(&m.mlp(1, &xi, Some(&xg)).unwrap(), &want) < 1e-5);
    // changing xg changes the output (gate really sees xg)
    assert!(
        max_diff(
            &m.mlp(1, &xi, Some(&xg)).unwrap(),
            &m.mlp(1, &xi, None).unwrap()
        ) > 1e-3
    );
}

#[test]
fn batch_broadcasting_of_frozen_inputs() {
    let s = 8;
    let (_d, m, out) = setup(s, 13);
    let x = xn(&m, &out, 1);
    let pos: Vec<usize> = (0..s).collect();
    // IG-style scaled query input: α ∈ {0, 0.5, 1}, keys/values frozen at batch 1
    let xq = Tensor::cat(&[(&x * 0.0).unwrap(), (&x * 0.5).unwrap(), x.clone()], 0).unwrap();
    let got = m.attention(1, &AttnInputs::new(&xq, &x, &x, &pos)).unwrap();
    assert_eq!(got.dims(), &[3, s, m.config().hidden_size]);
    for (b, alpha) in [0.0, 0.5, 1.0].iter().enumerate() {
        let xb = (&x * *alpha).unwrap();
        let one = m.attention(1, &AttnInputs::new(&xb, &x, &x, &pos)).unwrap();
        assert!(max_diff(&got.i(b..b + 1).unwrap(), &one) < 1e-5);
    }
    // scaled value input with frozen q/k
    let got = m.attention(1, &AttnInputs::new(&x, &x, &xq, &pos)).unwrap();
    let half = m
        .attention(1, &AttnInputs::new(&x, &x, &(&x * 0.5).unwrap(), &pos))
        .unwrap();
    assert!(max_diff(&got.i(1..2).unwrap(), &half) < 1e-5);
    // mismatched batches are errors
    let x2 = Tensor::cat(&[x.clone(), x.clone()], 0).unwrap();
    assert!(
        m.attention(1, &AttnInputs::new(&xq, &x2, &x, &pos))
            .is_err()
    );
    // MLP: xi batch 3, xg batch 1
    let y = m.mlp(0, &xq, Some(&x)).unwrap();
    assert!(max_diff(&y.i(2..3).unwrap(), &m.mlp(0, &x, Some(&x)).unwrap()) < 1e-5);
}

#[test]
fn no_sink_variants_follow_their_definitions() {
    let s = 9;
    let (_d, m, out) = setup(s, 14);
    let x = xn(&m, &out, 0);
    let pos: Vec<usize> = (0..s).collect();
    let a = AttnInputs::new(&x, &x, &x, &pos);
    let w = m
        .attention_weights(0, &a)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let masked = m
        .attention_weights(0, &a.no_sink(NoSink::MaskBeforeSoftmax))
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let zeroed = m
        .attention_weights(0, &a.no_sink(NoSink::ZeroAfterSoftmax))
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for h in 0..w.len() {
        for p in 0..s {
            let rest: f32 = w[h][p][1..].iter().sum();
            for t in 0..s {
                let want_zero = if t == 0 { 0.0 } else { w[h][p][t] };
                assert!((zeroed[h][p][t] - want_zero).abs() < 1e-6);
                // masking before the softmax = renormalising over keys 1..; query 0 gets nothing
                let want_mask = if t == 0 || p == 0 {
                    0.0
                } else {
                    w[h][p][t] / rest
                };
                assert!((masked[h][p][t] - want_mask).abs() < 1e-5, "h{h} p{p} t{t}");
            }
        }
    }
    // outputs: ZeroAfterSoftmax with injected weights = computed path
    let wt = m.attention_weights(0, &a).unwrap();
    let o1 = m
        .attention(0, &a.no_sink(NoSink::ZeroAfterSoftmax))
        .unwrap();
    let o2 = m
        .attention(0, &a.with_weights(&wt).no_sink(NoSink::ZeroAfterSoftmax))
        .unwrap();
    assert!(max_diff(&o1, &o2) < 1e-6);
    assert!(
        m.attention(0, &a.with_weights(&wt).no_sink(NoSink::MaskBeforeSoftmax))
            .is_err()
    );
}

#[test]
fn lm_head_objective_matches_manual_masked_log_softmax() {
    let s = 6;
    let (_d, m, out) = setup(s, 15);
    let cfg = m.config().clone();
    let pos = [3usize, 5];
    let x = out.hidden_state(cfg.num_hidden_layers, Some(&pos)).unwrap();
    let x = Tensor::cat(&[x.clone(), (&x * 0.5).unwrap()], 0).unwrap(); // b = 2
    let labels = [10u32, 20];
    let cands = [10u32, 20, 30, 40];
    let obj = m
        .lm_head_objective(&x, &labels, &cands, &Default::default())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let obj_nomask = m
        .lm_head_objective(&x, &labels, &[], &Default::default())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let logits = m.lm_head(&x).unwrap().to_vec3::<f32>().unwrap();
    for b in 0..2 {
        let mut sum_m = 0f64;
        let mut sum_u = 0f64;
        for (k, &lab) in labels.iter().enumerate() {
            let z = &logits[b][k];
            let masked: Vec<f64> = z
                .iter()
                .enumerate()
                .map(|(t, &v)| {
                    v as f64
                        + if cands.contains(&(t as u32)) {
                            0.0
                        } else {
                            -1e4
                        }
                })
                .collect();
            let lse = |v: &[f64]| {
                let mx = v.iter().cloned().fold(f64::MIN, f64::max);
                mx + v.iter().map(|x| (x - mx).exp()).sum::<f64>().ln()
            };
            sum_m += masked[lab as usize] - lse(&masked);
            let raw: Vec<f64> = z.iter().map(|&v| v as f64).collect();
            sum_u += raw[lab as usize] - lse(&raw);
        }
        assert!(
            (obj[b] as f64 - sum_m / 2.0).abs() < 1e-4,
            "{} vs {}",
            obj[b],
            sum_m / 2.0
        );
        assert!((obj_nomask[b] as f64 - sum_u / 2.0).abs() < 1e-4);
    }
    assert!(
        m.lm_head_objective(&x, &[1], &cands, &Default::default())
            .is_err()
    );
    assert!(
        m.lm_head_objective(&x, &[1, cfg.vocab_size as u32], &cands, &Default::default())
            .is_err()
    );
}

// ---------- finite-difference gradient checks ----------

/// Checks ∂/∂x of L = Σ f(x) ⊙ w along 3 random directions against central differences.
fn check_grad(name: &str, x: &Tensor, f: &dyn Fn(&Tensor) -> Tensor, seed: u64) {
    let var = Var::from_tensor(x).unwrap();
    let y = f(var.as_tensor());
    let w = randn(y.dims(), seed);
    let loss = (&y * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("{name}: no gradient"));
    assert!(max_abs(g) > 0.0, "{name}: zero gradient");
    let eval = |t: &Tensor| -> f64 { vals(&(f(t) * &w).unwrap()).iter().map(|&v| v as f64).sum() };
    let h = 1e-2;
    for k in 0..3 {
        let u = randn(x.dims(), seed * 31 + k);
        let analytic: f64 = vals(&(g * &u).unwrap()).iter().map(|&v| v as f64).sum();
        let xp = (x + (&u * h).unwrap()).unwrap();
        let xm = (x - (&u * h).unwrap()).unwrap();
        let numeric = (eval(&xp) - eval(&xm)) / (2.0 * h);
        let err = (analytic - numeric).abs();
        assert!(
            err <= 2e-2 * numeric.abs().max(analytic.abs()).max(1e-1),
            "{name}: analytic {analytic} vs numeric {numeric}"
        );
    }
}

#[test]
fn gradients_rms_norm_free_and_frozen() {
    let (_d, m) = tiny();
    let x = randn(&[2, 3, m.config().hidden_size], 21);
    check_grad(
        "rms_norm free",
        &x,
        &|t| m.rms_norm(Norm::Input(1), t, None).unwrap(),
        1,
    );
    let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    check_grad(
        "rms_norm frozen",
        &x,
        &|t| m.rms_norm(Norm::Final, t, Some(&var)).unwrap(),
        2,
    );
    // frozen variance = the linearised backward w ⊙ g / sqrt(var + eps) (A5), checked exactly
    let xv = Var::from_tensor(&x).unwrap();
    let y = m
        .rms_norm(Norm::PostAttention(0), xv.as_tensor(), Some(&var))
        .unwrap();
    let gy = randn(y.dims(), 3);
    let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    let want = gy
        .broadcast_mul(&m.weights().layer(0).unwrap().post_norm)
        .unwrap()
        .broadcast_div(&(var + m.config().rms_norm_eps).unwrap().sqrt().unwrap())
        .unwrap();
    assert!(max_diff(g.get(xv.as_tensor()).unwrap(), &want) < 1e-5);
}

#[test]
fn gradients_attention_wrt_q_k_v_and_weights() {
    let s = 7;
    let (_d, m, out) = setup(s, 16);
    let x = xn(&m, &out, 1);
    let qp = vec![2usize, 6];
    let xq = x
        .index_select(&Tensor::new(&[2u32, 6], x.device()).unwrap(), 1)
        .unwrap();
    let hs = [1usize, 2];
    check_grad(
        "attn xq",
        &xq,
        &|t| {
            m.attention(1, &AttnInputs::new(t, &x, &x, &qp).heads(&hs))
                .unwrap()
        },
        4,
    );
    check_grad(
        "attn xk",
        &x,
        &|t| {
            m.attention(1, &AttnInputs::new(&xq, t, &x, &qp).heads(&hs))
                .unwrap()
        },
        5,
    );
    check_grad(
        "attn xv",
        &x,
        &|t| {
            m.attention(1, &AttnInputs::new(&xq, &x, t, &qp).heads(&hs))
                .unwrap()
        },
        6,
    );
    let all = (0..s).collect::<Vec<_>>();
    check_grad(
        "attn xq all heads",
        &x,
        &|t| m.attention(0, &AttnInputs::new(t, &x, &x, &all)).unwrap(),
        7,
    );
    check_grad(
        "attn xq no_sink mask",
        &xq,
        &|t| {
            m.attention(
                1,
                &AttnInputs::new(t, &x, &x, &qp).no_sink(NoSink::MaskBeforeSoftmax),
            )
            .unwrap()
        },
        8,
    );
    let w = m
        .attention_weights(1, &AttnInputs::new(&xq, &x, &x, &qp).heads(&hs))
        .unwrap();
    check_grad(
        "attn injected weights",
        &w,
        &|t| {
            m.attention(
                1,
                &AttnInputs::new(&xq, &x, &x, &qp).heads(&hs).with_weights(t),
            )
            .unwrap()
        },
        9,
    );
    // batch-broadcast gradient: scaled xq batch 3 vs frozen k/v
    let xq3 = Tensor::cat(&[(&xq * 0.2).unwrap(), (&xq * 0.6).unwrap(), xq.clone()], 0).unwrap();
    check_grad(
        "attn xq batch 3",
        &xq3,
        &|t| m.attention(1, &AttnInputs::new(t, &x, &x, &qp)).unwrap(),
        10,
    );
    // gradient w.r.t. the frozen batch-1 input sums over the broadcast batch
    check_grad(
        "attn xk under batch 3",
        &x,
        &|t| m.attention(1, &AttnInputs::new(&xq3, t, &x, &qp)).unwrap(),
        11,
    );
}

#[test]
fn gradients_mlp_and_lm_head_objective() {
    let (_d, m) = tiny();
    let e = m.config().hidden_size;
    let xi = randn(&[2, 3, e], 30);
    let xg = randn(&[1, 3, e], 31);
    check_grad("mlp xi", &xi, &|t| m.mlp(1, t, Some(&xg)).unwrap(), 12);
    check_grad("mlp xg", &xg, &|t| m.mlp(1, &xi, Some(t)).unwrap(), 13);
    check_grad("mlp both", &xi, &|t| m.mlp(0, t, None).unwrap(), 14);
    let x = randn(&[2, 2, e], 32);
    let cands = [5u32, 6, 7, 100];
    check_grad(
        "lm_head objective",
        &x,
        &|t| {
            m.lm_head_objective(t, &[5, 100], &cands, &Default::default())
                .unwrap()
        },
        15,
    );
    check_grad(
        "lm_head objective unmasked",
        &x,
        &|t| {
            m.lm_head_objective(t, &[5, 9], &[], &Default::default())
                .unwrap()
        },
        16,
    );
    let _ = DType::F32;
}

/// `attention_weights_vjp` is the gradient of ⟨attention(w), gy⟩ with respect to the weights:
/// against autograd through `attention` with injected weights, against central differences
/// (exact up to rounding: the output is linear in w), for a head subset, all heads, the
/// ZeroAfterSoftmax variant and a batch of output gradients.
#[test]
fn attention_weights_vjp_is_the_weights_gradient() {
    let s = 9;
    let (_d, m, out) = setup(s, 17);
    let x = xn(&m, &out, 1);
    let qp = vec![3usize, 8];
    let xq = x
        .index_select(&Tensor::new(&[3u32, 8], x.device()).unwrap(), 1)
        .unwrap();
    let e = m.config().hidden_size;
    let all: Vec<usize> = (0..m.config().num_attention_heads).collect();
    for (hs, no_sink, b, seed) in [
        (vec![1usize, 2], NoSink::Off, 1usize, 40u64),
        (all.clone(), NoSink::Off, 1, 41),
        (vec![0], NoSink::ZeroAfterSoftmax, 1, 42),
        (vec![3, 0], NoSink::Off, 3, 43),
    ] {
        let a = AttnInputs::new(&xq, &x, &x, &qp)
            .heads(&hs)
            .no_sink(no_sink);
        let w = m
            .attention_weights(1, &AttnInputs::new(&xq, &x, &x, &qp).heads(&hs))
            .unwrap(); // [1,h,2,s]
        let gy = randn(&[b, 2, e], seed);
        let got = m.attention_weights_vjp(1, &a, &gy).unwrap();
        assert_eq!(got.dims(), [b, hs.len(), 2, s]);
        // autograd: the weights as a batch-b variable
        let wb = Tensor::cat(&vec![w.clone(); b], 0).unwrap();
        let wv = Var::from_tensor(&wb).unwrap();
        let y = m.attention(1, &a.with_weights(wv.as_tensor())).unwrap();
        let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let want = g.get(wv.as_tensor()).unwrap();
        assert!(
            max_diff(&got, want) < 1e-5,
            "{hs:?} {no_sink:?}: {}",
            max_diff(&got, want)
        );
        // central differences along random directions
        let f = |t: &Tensor| -> f64 {
            let y = m.attention(1, &a.with_weights(t)).unwrap();
            vals(&(&y * &gy).unwrap()).iter().map(|&v| v as f64).sum()
        };
        for k in 0..3 {
            let u = randn(wb.dims(), seed * 7 + k);
            let h = 1e-2;
            let numeric = (f(&(&wb + (&u * h).unwrap()).unwrap())
                - f(&(&wb - (&u * h).unwrap()).unwrap()))
                / (2.0 * h);
            let analytic: f64 = vals(&(&got * &u).unwrap()).iter().map(|&v| v as f64).sum();
            assert!(
                (analytic - numeric).abs() <= 1e-3 * numeric.abs().max(1.0),
                "{hs:?}: analytic {analytic} vs numeric {numeric}"
            );
        }
        if no_sink == NoSink::ZeroAfterSoftmax {
            assert_eq!(max_abs(&got.narrow(3, 0, 1).unwrap()), 0.0);
        }
    }
    // MaskBeforeSoftmax has no meaning for given weights: an error, as in `attention`
    let a = AttnInputs::new(&xq, &x, &x, &qp).no_sink(NoSink::MaskBeforeSoftmax);
    assert!(
        m.attention_weights_vjp(1, &a, &randn(&[1, 2, e], 1))
            .is_err()
    );
}

/// Keys and values projected once (`kv_projection`) and passed with `with_kv` give the same
/// weights, outputs and weight gradients as projecting xk / xv in each call, for a head subset
/// across KV groups and for all heads; malformed ones are an error.
#[test]
fn given_keys_and_values_match_projected_ones() {
    let s = 10;
    let (_d, m, out) = setup(s, 18);
    let x = xn(&m, &out, 1);
    let qp = vec![4usize, 9];
    let xq = x
        .index_select(&Tensor::new(&[4u32, 9], x.device()).unwrap(), 1)
        .unwrap();
    let kv = m.kv_projection(1, &x).unwrap();
    let n = m.config().num_attention_heads;
    let kvh = m.config().num_kv_heads();
    assert_eq!(kv.keys.dims(), [1, kvh, s, m.config().head_dim()]);
    let all: Vec<usize> = (0..n).collect();
    let gy = randn(&[1, 2, m.config().hidden_size], 50);
    for hs in [vec![n - 1, 0], all] {
        let plain = AttnInputs::new(&xq, &x, &x, &qp).heads(&hs);
        let given = AttnInputs::new(&xq, &xq, &xq, &qp).heads(&hs).with_kv(&kv);
        let d = max_diff(
            &m.attention_weights(1, &plain).unwrap(),
            &m.attention_weights(1, &given).unwrap(),
        );
        assert_eq!(d, 0.0, "weights {hs:?}");
        let d = max_diff(
            &m.attention(1, &plain).unwrap(),
            &m.attention(1, &given).unwrap(),
        );
        assert_eq!(d, 0.0, "outputs {hs:?}");
        let d = max_diff(
            &m.attention_weights_vjp(1, &plain, &gy).unwrap(),
            &m.attention_weights_vjp(1, &given, &gy).unwrap(),
        );
        assert_eq!(d, 0.0, "vjp {hs:?}");
    }
    let bad = minarc::model::KvProj {
        keys: kv.keys.narrow(1, 0, 1).unwrap(),
        values: kv.values.clone(),
    };
    let a = AttnInputs::new(&xq, &xq, &xq, &qp).with_kv(&bad);
    assert!(m.attention_weights(1, &a).is_err());
}
