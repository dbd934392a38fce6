//! A tiny hand-computed case: 1 layer, 1 head, hidden 2, vocab 3, 3 tokens. The expected numbers
//! come from a plain f64 re-implementation of the forward written here (no candle), so they are
//! independent of the code under test.

mod attr_support;

use attr_support::config;
use candle_core::{DType, Device, Tensor};
use minarc::attribution::{IgRule, NodeGradRequest, NodeType, SinkMode};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::ig::{NodeForwardRequest, ResidualGrad, ResidualRequest};
use minarc::model::{CaptureSpec, LayerWeights, Qwen2, SampleInput, Weights};

type M2 = [[f64; 2]; 2];

const EPS: f64 = 1e-6;
const EMBED: [[f64; 2]; 3] = [[1.0, -0.5], [0.3, 0.8], [-0.7, 0.4]];
const W_IN: [f64; 2] = [1.1, 0.9];
const WQ: M2 = [[0.5, -0.2], [0.3, 0.7]];
const BQ: [f64; 2] = [0.1, -0.1];
const WK: M2 = [[-0.4, 0.6], [0.2, 0.5]];
const BK: [f64; 2] = [0.05, 0.0];
const WV: M2 = [[0.9, 0.1], [-0.3, 0.4]];
const BV: [f64; 2] = [0.0, 0.2];
const WO: M2 = [[0.6, -0.5], [0.2, 0.8]];
const W_POST: [f64; 2] = [0.95, 1.05];
const WG: M2 = [[0.7, -0.6], [0.4, 0.3]];
const WU: M2 = [[-0.5, 0.9], [0.8, 0.2]];
const WD: M2 = [[0.3, -0.7], [0.6, 0.4]];
const W_FIN: [f64; 2] = [1.2, 0.8];
const WLM: [[f64; 3]; 2] = [[0.9, -0.4, 0.3], [-0.2, 0.7, 0.5]];
const TOKENS: [u32; 3] = [0, 1, 2];
const POS: usize = 1; // predicts the answer token at 2
const LABEL: u32 = 2;
const CANDS: [u32; 2] = [1, 2];

fn t1(v: &[f64]) -> Tensor {
    Tensor::from_vec(
        v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        v.len(),
        &Device::Cpu,
    )
    .unwrap()
}
fn t2<const C: usize>(m: &[[f64; C]]) -> Tensor {
    let v: Vec<f32> = m.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_vec(v, (m.len(), C), &Device::Cpu).unwrap()
}

fn local() -> Local {
    let cfg = config(1, 2, 1, 1, 2, 3);
    let layer = LayerWeights {
        input_norm: t1(&W_IN),
        wq_t: t2(&WQ),
        bq: t1(&BQ),
        wk_t: t2(&WK),
        bk: t1(&BK),
        wv_t: t2(&WV),
        bv: t1(&BV),
        wo_t: t2(&WO),
        post_norm: t1(&W_POST),
        w_gate_t: t2(&WG),
        w_up_t: t2(&WU),
        w_down_t: t2(&WD),
    };
    let w = Weights::new(t2(&EMBED), vec![layer], t1(&W_FIN), t2(&WLM));
    let m = Qwen2::from_weights(cfg, w, DType::F32, &Device::Cpu).unwrap();
    let l = Local::new(m, minarc::tokenizer::fixture_tokenizer().unwrap());
    let input = SampleInput {
        index: 0,
        prompt: String::new(),
        labels: vec![LABEL],
        candidate_ids: CANDS.to_vec(),
        answer_indices: vec![POS + 1],
        objective: Default::default(),
    };
    l.forward_ids("h", &input, &TOKENS, &CaptureSpec::full(), true)
        .unwrap();
    l
}

fn vecmat(x: [f64; 2], w: &M2) -> [f64; 2] {
    [
        x[0] * w[0][0] + x[1] * w[1][0],
        x[0] * w[0][1] + x[1] * w[1][1],
    ]
}
/// w · g (the transpose product: ∂x from ∂y for y = x·w).
fn matvec(w: &M2, g: [f64; 2]) -> [f64; 2] {
    [
        w[0][0] * g[0] + w[0][1] * g[1],
        w[1][0] * g[0] + w[1][1] * g[1],
    ]
}
fn add(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] + b[0], a[1] + b[1]]
}
fn ms(x: [f64; 2]) -> f64 {
    (x[0] * x[0] + x[1] * x[1]) / 2.0
}
fn norm(x: [f64; 2], w: [f64; 2]) -> [f64; 2] {
    let r = 1.0 / (ms(x) + EPS).sqrt();
    [w[0] * x[0] * r, w[1] * x[1] * r]
}
fn rope(x: [f64; 2], p: usize) -> [f64; 2] {
    let (c, s) = ((p as f64).cos(), (p as f64).sin()); // d = 2: inv_freq = θ^0 = 1
    [x[0] * c - x[1] * s, x[1] * c + x[0] * s]
}
fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

struct Expected {
    x0: Vec<[f64; 2]>,
    var_in: Vec<f64>,
    attn_w: Vec<f64>, // weights of query POS over keys 0..=POS
    head_out: [f64; 2],
    mlp_out: [f64; 2],
    var_fin: f64,
    objective: f64,
    probs: [f64; 3],
}

fn expected() -> Expected {
    let x0: Vec<[f64; 2]> = TOKENS.iter().map(|&t| EMBED[t as usize]).collect();
    let var_in: Vec<f64> = x0.iter().map(|&x| ms(x)).collect();
    let xn: Vec<[f64; 2]> = x0.iter().map(|&x| norm(x, W_IN)).collect();
    let q = rope(add(vecmat(xn[POS], &WQ), BQ), POS);
    let ks: Vec<[f64; 2]> = (0..3)
        .map(|t| rope(add(vecmat(xn[t], &WK), BK), t))
        .collect();
    let vs: Vec<[f64; 2]> = (0..3).map(|t| add(vecmat(xn[t], &WV), BV)).collect();
    let sc: Vec<f64> = (0..=POS)
        .map(|t| (q[0] * ks[t][0] + q[1] * ks[t][1]) / 2f64.sqrt())
        .collect();
    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = sc.iter().map(|s| (s - mx).exp()).sum();
    let attn_w: Vec<f64> = sc.iter().map(|s| (s - mx).exp() / z).collect();
    let mut o = [0.0; 2];
    for t in 0..=POS {
        o = add(o, [attn_w[t] * vs[t][0], attn_w[t] * vs[t][1]]);
    }
    let head_out = vecmat(o, &WO);
    let mid = add(x0[POS], head_out);
    let xn2 = norm(mid, W_POST);
    let (g, u) = (vecmat(xn2, &WG), vecmat(xn2, &WU));
    let mlp_out = vecmat([silu(g[0]) * u[0], silu(g[1]) * u[1]], &WD);
    let h = add(mid, mlp_out);
    let var_fin = ms(h);
    let xf = norm(h, W_FIN);
    let logits: Vec<f64> = (0..3)
        .map(|v| {
            xf[0] * WLM[0][v]
                + xf[1] * WLM[1][v]
                + if CANDS.contains(&(v as u32)) {
                    0.0
                } else {
                    -1e4
                }
        })
        .collect();
    let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - mx).exp()).sum();
    let probs = [0, 1, 2].map(|v| (logits[v] - mx).exp() / z);
    Expected {
        x0,
        var_in,
        attn_w,
        head_out,
        mlp_out,
        var_fin,
        objective: probs[LABEL as usize].ln(),
        probs,
    }
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    println!("{what}: got {got:?}, hand {want:?}");
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*g as f64 - w).abs() <= tol * w.abs().max(1.0),
            "{what}: {g} vs {w}"
        );
    }
}

fn v(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn hand_computed_one_layer_one_head() {
    let l = local();
    let e = expected();
    let key = SampleKey::new("h", 0);
    // objective: lm_head forward on the cached state
    let f = l
        .node_forward(
            &key,
            &NodeForwardRequest {
                node_type: NodeType::LmHead,
                layer: 1,
                head: None,
                pos_ids: vec![POS],
                src_pos_ids: vec![POS],
                upstream_sum: None,
                sink: SinkMode::default(),
            },
        )
        .unwrap();
    close(&v(&f), &[e.objective], 1e-5, "objective");
    // lm_head gradient: W_lm (onehot − p), then w_f ⊙ · / sqrt(var + eps)
    let mut req = NodeGradRequest::new(NodeType::LmHead, 1, None, vec![POS], vec![POS], None);
    req.ig = Some(IgRule::PLAIN);
    let g = l.node_gradient(&key, &req).unwrap().grad.unwrap();
    let dz: Vec<f64> = (0..3)
        .map(|c| if c == LABEL as usize { 1.0 } else { 0.0 } - e.probs[c])
        .collect();
    let gx = [0, 1].map(|i| (0..3).map(|c| WLM[i][c] * dz[c]).sum::<f64>());
    let sc = 1.0 / (e.var_fin + EPS).sqrt();
    let grad = [W_FIN[0] * gx[0] * sc, W_FIN[1] * gx[1] * sc];
    close(&v(&g), &grad, 1e-5, "lm_head grad");
    // residual attribution [1, 2, 1]: head column 0, MLP column 1
    let rr = ResidualRequest {
        grads: vec![ResidualGrad {
            pos_ids: vec![POS],
            grad: g.clone(),
            downstream_layer: 1.0,
        }],
        from_layer: 0,
        to_layer: None,
    };
    let attr = l.attribute_residual(&key, &rr).unwrap();
    assert_eq!(attr.dims(), &[1, 2, 1]);
    let dot = |a: [f64; 2]| a[0] * grad[0] + a[1] * grad[1];
    close(
        &v(&attr),
        &[dot(e.head_out), dot(e.mlp_out)],
        1e-5,
        "residual attribution",
    );
    // attn_v gradient at keys 0 and 1 for output grad = the lm_head grad at POS:
    // ∂x_j = w_in ⊙ W_v (a_pj · W_o gy) / sqrt(var_j + eps)
    let mut req = NodeGradRequest::new(
        NodeType::AttnV,
        0,
        Some(0),
        vec![POS],
        vec![0, 1],
        Some(g.clone()),
    );
    req.ig = Some(IgRule::PLAIN);
    let gv = l.node_gradient(&key, &req).unwrap().grad.unwrap();
    let go = matvec(&WO, grad);
    let mut want = Vec::new();
    for j in 0..2 {
        let dv = [e.attn_w[j] * go[0], e.attn_w[j] * go[1]];
        let dx = matvec(&WV, dv);
        let s = 1.0 / (e.var_in[j] + EPS).sqrt();
        want.extend([W_IN[0] * dx[0] * s, W_IN[1] * dx[1] * s]);
    }
    close(&v(&gv), &want, 1e-5, "attn_v grad");
    // attn_a: the weights themselves and ∂a_pj = (W_o gy)·v_j
    let mut req = NodeGradRequest::new(NodeType::AttnA, 0, Some(0), vec![POS], vec![POS], Some(g));
    req.ig = Some(IgRule::PLAIN);
    let ga = l.node_gradient(&key, &req).unwrap();
    close(
        &v(ga.aw.as_ref().unwrap()),
        &[e.attn_w[0], e.attn_w[1], 0.0],
        1e-5,
        "attention weights",
    );
    let xn: Vec<[f64; 2]> = e.x0.iter().map(|&x| norm(x, W_IN)).collect();
    let vs: Vec<f64> = (0..3)
        .map(|t| {
            let vt = add(vecmat(xn[t], &WV), BV);
            go[0] * vt[0] + go[1] * vt[1]
        })
        .collect();
    close(
        &v(ga.grad_aw.as_ref().unwrap()),
        &vs,
        1e-5,
        "attention-weight grad",
    );
}
