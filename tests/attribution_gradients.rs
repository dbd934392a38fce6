//! Each node type's gradient (A13) against central finite differences of the model's own
//! component functions, and IG path averages against numerical path integrals of FD gradients.

mod attr_support;

use attr_support::*;
use candle_core::{Device, Tensor};
use minarc::attribution::{IgRule, NodeGradRequest, NodeType, SinkMode};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::ig::default_rule;
use minarc::model::{AttnInputs, NoSink, Norm};

const LAYER: usize = 1;
const HEAD: usize = 2;
const POS: [usize; 2] = [5, 9];
const SRC: [usize; 3] = [2, 3, 7];
const H: f64 = 1e-2;

struct Fx {
    local: Local,
    key: SampleKey,
    gy: Tensor,
}

fn fx() -> Fx {
    let cfg = tiny_cfg();
    let local = local_with_samples(&cfg, 7, 12, &[6, 10], 1);
    let gy = Rand::new(99).tensor(&[1, POS.len(), cfg.hidden_size], 0.0, 1.0);
    Fx {
        local,
        key: SampleKey::new(DATASET, 0),
        gy,
    }
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

fn grad_of(f: &Fx, t: NodeType, src: &[usize], rule: IgRule) -> minarc::attribution::NodeGrad {
    let mut req = NodeGradRequest::new(
        t,
        LAYER,
        if t.is_attn() { Some(HEAD) } else { None },
        POS.to_vec(),
        src.to_vec(),
        Some(f.gy.clone()),
    );
    req.ig = Some(rule);
    req.sink = SinkMode::MaskBeforeSoftmax;
    f.local.node_gradient(&f.key, &req).unwrap()
}

fn check(name: &str, got: &Tensor, fd: &[f64]) {
    let (d, m) = max_diff(&vals(got), fd);
    println!("{name}: max |grad − FD| = {d:.2e} (max |FD| = {m:.3})");
    assert!(m > 1e-3, "{name}: FD gradient is trivially small");
    assert!(d <= 5e-4 * m.max(0.1), "{name}: max diff {d} vs max {m}");
}

fn rows(v: &[f64], e: usize, rows: &[usize]) -> Vec<f64> {
    rows.iter()
        .flat_map(|&r| v[r * e..(r + 1) * e].to_vec())
        .collect()
}

#[test]
fn lm_head_gradient_matches_fd() {
    let f = fx();
    let m = f.local.model();
    let s = f.local.sample(&f.key).unwrap();
    let l = m.config().num_hidden_layers;
    let pos = POS; // answer_indices − 1 = [5, 9]
    let h0 = (s.outputs.hidden_state(l - 1, Some(&pos)).unwrap()
        + f.local.attn_output(&f.key, l - 1, Some(&pos)).unwrap()
        + s.outputs.mlp_output(l - 1, Some(&pos)).unwrap())
    .unwrap();
    let var = s.outputs.final_norm_var(Some(&pos)).unwrap();
    let (labels, cands) = (&s.input.labels, &s.input.candidate_ids);
    let obj = |h: &Tensor| {
        let x = m.rms_norm(Norm::Final, h, Some(&var)).unwrap();
        m.lm_head_objective(&x, labels, cands, &Default::default())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0] as f64
    };
    let fd = fd_grad(&h0, H, obj);
    let mut req = NodeGradRequest::new(NodeType::LmHead, l, None, pos.to_vec(), pos.to_vec(), None);
    req.ig = Some(IgRule::PLAIN);
    let g = f.local.node_gradient(&f.key, &req).unwrap();
    check("lm_head", g.grad.as_ref().unwrap(), &fd);
}

fn mlp_case(t: NodeType) {
    let f = fx();
    let m = f.local.model();
    let s = f.local.sample(&f.key).unwrap();
    let h0 = (s.outputs.hidden_state(LAYER, Some(&POS)).unwrap()
        + f.local.attn_output(&f.key, LAYER, Some(&POS)).unwrap())
    .unwrap();
    let var = s.outputs.post_attn_norm_var(LAYER, Some(&POS)).unwrap();
    let nrm = |h: &Tensor| {
        m.rms_norm(Norm::PostAttention(LAYER), h, Some(&var))
            .unwrap()
    };
    let x0 = nrm(&h0);
    let obj = |h: &Tensor| {
        let x = nrm(h);
        let y = match t {
            NodeType::Mlp => m.mlp(LAYER, &x, None),
            NodeType::MlpI => m.mlp(LAYER, &x, Some(&x0)),
            _ => m.mlp(LAYER, &x0, Some(&x)),
        }
        .unwrap();
        dot(&y, &f.gy)
    };
    let fd = fd_grad(&h0, H, obj);
    let g = grad_of(&f, t, &POS, IgRule::PLAIN);
    check(t.name(), g.grad.as_ref().unwrap(), &fd);
}

#[test]
fn mlp_gradients_match_fd() {
    mlp_case(NodeType::Mlp);
    mlp_case(NodeType::MlpI);
    mlp_case(NodeType::MlpG);
}

fn attn_case(t: NodeType) {
    let f = fx();
    let m = f.local.model();
    let s = f.local.sample(&f.key).unwrap();
    let e = m.config().hidden_size;
    let hs = s.outputs.hidden_state(LAYER, None).unwrap();
    let var = s.outputs.input_norm_var(LAYER, None).unwrap();
    let xkv = m.rms_norm(Norm::Input(LAYER), &hs, Some(&var)).unwrap();
    let idx = Tensor::new(&[POS[0] as u32, POS[1] as u32], &Device::Cpu).unwrap();
    let xq0 = xkv.index_select(&idx, 1).unwrap();
    let var_q = var.index_select(&idx, 1).unwrap();
    let heads = [HEAD];
    let sink = if t == NodeType::AttnQns {
        NoSink::MaskBeforeSoftmax
    } else {
        NoSink::Off
    };
    let run = |xq: &Tensor, xk: &Tensor, xv: &Tensor| {
        let a = AttnInputs::new(xq, xk, xv, &POS)
            .heads(&heads)
            .no_sink(sink);
        dot(&m.attention(LAYER, &a).unwrap(), &f.gy)
    };
    let (fd, src): (Vec<f64>, Vec<usize>) = match t {
        NodeType::AttnQ | NodeType::AttnQns => {
            let h0 = hs.index_select(&idx, 1).unwrap();
            let fd = fd_grad(&h0, H, |h| {
                run(
                    &m.rms_norm(Norm::Input(LAYER), h, Some(&var_q)).unwrap(),
                    &xkv,
                    &xkv,
                )
            });
            (fd, POS.to_vec())
        }
        NodeType::AttnK => {
            let fd = fd_grad(&hs, H, |h| {
                run(
                    &xq0,
                    &m.rms_norm(Norm::Input(LAYER), h, Some(&var)).unwrap(),
                    &xkv,
                )
            });
            (rows(&fd, e, &SRC), SRC.to_vec())
        }
        _ => {
            let fd = fd_grad(&hs, H, |h| {
                run(
                    &xq0,
                    &xkv,
                    &m.rms_norm(Norm::Input(LAYER), h, Some(&var)).unwrap(),
                )
            });
            (rows(&fd, e, &SRC), SRC.to_vec())
        }
    };
    let g = grad_of(&f, t, &src, IgRule::PLAIN);
    let grad = g.grad.unwrap();
    assert_eq!(grad.dims(), &[1, src.len(), e]);
    check(t.name(), &grad, &fd);
}

#[test]
fn attention_gradients_match_fd() {
    attn_case(NodeType::AttnQ);
    attn_case(NodeType::AttnQns);
    attn_case(NodeType::AttnK);
    attn_case(NodeType::AttnV);
}

#[test]
fn attn_a_gradient_matches_fd() {
    let f = fx();
    let m = f.local.model();
    let s = f.local.sample(&f.key).unwrap();
    let hs = s.outputs.hidden_state(LAYER, None).unwrap();
    let var = s.outputs.input_norm_var(LAYER, None).unwrap();
    let xkv = m.rms_norm(Norm::Input(LAYER), &hs, Some(&var)).unwrap();
    let idx = Tensor::new(&[POS[0] as u32, POS[1] as u32], &Device::Cpu).unwrap();
    let xq = xkv.index_select(&idx, 1).unwrap();
    let heads = [HEAD];
    let a = AttnInputs::new(&xq, &xkv, &xkv, &POS).heads(&heads);
    let aw0 = m.attention_weights(LAYER, &a).unwrap(); // [1,1,k,s]
    let fd = fd_grad(&aw0, H, |w| {
        dot(&m.attention(LAYER, &a.with_weights(w)).unwrap(), &f.gy)
    });
    let g = grad_of(&f, NodeType::AttnA, &POS, default_rule(NodeType::AttnA));
    let (dw, _) = max_diff(
        &vals(g.aw.as_ref().unwrap()),
        &vals(&aw0).iter().map(|&x| x as f64).collect::<Vec<_>>(),
    );
    assert!(dw < 1e-5, "attn_a weights differ from the model's by {dw}");
    check("attn_a", g.grad_aw.as_ref().unwrap(), &fd);
}

/// IG path average = mean over the rule's points of FD gradients (w.r.t. the normed input)
/// at α·x, then the linearised norm backward w ⊙ g / sqrt(var + eps) computed here.
#[test]
fn ig_path_average_matches_fd_path_integral() {
    let f = fx();
    let m = f.local.model();
    let s = f.local.sample(&f.key).unwrap();
    let e = m.config().hidden_size;
    let hs = s.outputs.hidden_state(LAYER, None).unwrap();
    let var = s.outputs.input_norm_var(LAYER, None).unwrap();
    let xkv = m.rms_norm(Norm::Input(LAYER), &hs, Some(&var)).unwrap();
    let idx = Tensor::new(&[POS[0] as u32, POS[1] as u32], &Device::Cpu).unwrap();
    let xq = xkv.index_select(&idx, 1).unwrap();
    let vq = vals(&var.index_select(&idx, 1).unwrap());
    let w = vals(&m.weights().layer(LAYER).unwrap().input_norm);
    let heads = [HEAD];
    for rule in [
        IgRule::Seed { steps: 4 },
        IgRule::GaussLegendre { n: 3 },
        IgRule::RiemannMidpoint { n: 3 },
    ] {
        let mut avg = vec![0f64; POS.len() * e];
        for (alpha, wt) in rule.points().unwrap() {
            let xa = xq.affine(alpha, 0.0).unwrap();
            let fd = fd_grad(&xa, H, |x| {
                let a = AttnInputs::new(x, &xkv, &xkv, &POS).heads(&heads);
                dot(&m.attention(LAYER, &a).unwrap(), &f.gy)
            });
            for (a, g) in avg.iter_mut().zip(fd) {
                *a += wt * g;
            }
        }
        for i in 0..POS.len() {
            let sc = 1.0 / (vq[i] as f64 + 1e-6).sqrt();
            for j in 0..e {
                avg[i * e + j] *= w[j] as f64 * sc;
            }
        }
        let g = grad_of(&f, NodeType::AttnQ, &POS, rule);
        check(&format!("attn_q {rule:?}"), g.grad.as_ref().unwrap(), &avg);
    }
}
