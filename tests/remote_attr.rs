//! Attribution primitives through the server: node gradient, node forward and residual
//! attribution give the same tensors remotely as locally; `steps` travels; dataset means;
//! malformed tensor requests are 4xx.

mod remote_support;

use candle_core::{Device, Tensor};
use minarc::attribution::{
    IgRule, NodeForwardRequest, NodeGrad, NodeGradRequest, NodeType, ResidualGrad, ResidualRequest,
};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::model::{CaptureSpec, SampleInput};
use minarc::remote::Remote;
use minarc::remote::wire::{
    ErrorBody, NodeGradWire, ResidualGradMeta, ResidualWire, encode_request,
};
use remote_support::*;

const TOL: f32 = 1e-6;

/// Sample i: PROMPTS[i] with two labelled answer positions at the end.
fn labelled(b: &dyn Backend, ds: &str, i: usize) -> usize {
    let s = b.tokenizer().encode(PROMPTS[i], true).unwrap().len();
    let inp = SampleInput {
        index: i,
        prompt: PROMPTS[i].to_string(),
        labels: vec![11 + i as u32, 40],
        candidate_ids: vec![11, 12, 40, 41],
        answer_indices: vec![s - 2, s - 1],
        objective: Default::default(),
    };
    b.forward_sample(ds, &inp, &CaptureSpec::full(), false)
        .unwrap()
}

fn rand_t(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic pseudo-random values in [-1, 1).
    let n: usize = shape.iter().product();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn opt_diff(a: &Option<Tensor>, b: &Option<Tensor>, what: &str) -> f32 {
    match (a, b) {
        (None, None) => 0.0,
        (Some(a), Some(b)) => max_abs_diff(a, b),
        _ => panic!("{what}: present on one side only"),
    }
}

fn grad_diff(a: &NodeGrad, b: &NodeGrad, what: &str) -> f32 {
    assert_eq!(a.rule, b.rule, "{what}");
    // Completeness scalars travel as JSON f64 (serde_json parses to within 1 ulp).
    match (&a.completeness, &b.completeness) {
        (None, None) => {}
        (Some(x), Some(y)) => {
            assert_eq!(x.rule, y.rule, "{what}");
            for (u, v) in [
                (x.f_x, y.f_x),
                (x.f_baseline, y.f_baseline),
                (x.sum_grad_x, y.sum_grad_x),
                (x.delta, y.delta),
            ] {
                assert!(
                    (u - v).abs() <= 1e-12 * v.abs().max(1.0),
                    "{what}: {u} vs {v}"
                );
            }
        }
        _ => panic!("{what}: completeness on one side only"),
    }
    assert_eq!(a.converged, b.converged, "{what}");
    opt_diff(&a.grad, &b.grad, what)
        .max(opt_diff(&a.aw, &b.aw, what))
        .max(opt_diff(&a.grad_aw, &b.grad_aw, what))
}

/// Node requests over every node type at layer 1 / head 2 (lm_head at layer L).
fn node_requests(s: usize, e: usize) -> Vec<NodeGradRequest> {
    let pos = vec![s - 3, s - 2];
    let k = pos.len();
    let g = || Some(rand_t(&[1, k, e], 3));
    let mut v = vec![NodeGradRequest::new(
        NodeType::LmHead,
        L,
        None,
        pos.clone(),
        pos.clone(),
        None,
    )];
    for t in [NodeType::Mlp, NodeType::MlpI, NodeType::MlpG] {
        v.push(NodeGradRequest::new(
            t,
            1,
            None,
            pos.clone(),
            pos.clone(),
            g(),
        ));
    }
    for t in [NodeType::AttnQ, NodeType::AttnQns, NodeType::AttnA] {
        v.push(NodeGradRequest::new(
            t,
            1,
            Some(2),
            pos.clone(),
            pos.clone(),
            g(),
        ));
    }
    for t in [NodeType::AttnK, NodeType::AttnV] {
        v.push(NodeGradRequest::new(
            t,
            1,
            Some(2),
            pos.clone(),
            vec![0, 1, 2],
            g(),
        ));
    }
    // `steps` must travel: the same node with two different rules.
    let mut fewer = NodeGradRequest::new(NodeType::Mlp, 0, None, pos.clone(), pos.clone(), g());
    fewer.ig = Some(IgRule::Seed { steps: 1 });
    v.push(fewer);
    v
}

#[test]
fn node_gradient_and_forward_match_local() {
    let srv = server(opts());
    let remote = Remote::connect(&srv.url(), None).unwrap();
    let local = local();
    let e = local.config().hidden_size;
    for i in [0, 1] {
        let s = labelled(&local, "a", i);
        assert_eq!(labelled(&remote, "a", i), s);
    }
    let mut worst = 0f32;
    for i in [0, 1] {
        let key = SampleKey::new("a", i);
        let s = local.seq_len(&key).unwrap();
        for req in node_requests(s, e) {
            let what = format!("sample {i} {} rule {:?}", req.node_type, req.ig);
            let want = local.node_gradient(&key, &req).unwrap();
            let got = remote.node_gradient(&key, &req).unwrap();
            let d = grad_diff(&got, &want, &what);
            assert!(d <= TOL, "{what}: differs by {d}");
            worst = worst.max(d);
        }
        // Node forward, with and without a replacement residual.
        let pos = vec![s - 3, s - 2];
        for (t, layer, head, src) in [
            (NodeType::Mlp, 1, None, pos.clone()),
            (NodeType::AttnQ, 0, Some(1), pos.clone()),
            (NodeType::AttnV, 1, Some(3), vec![0, 2]),
            (NodeType::LmHead, L, None, pos.clone()),
        ] {
            for up in [None, Some(rand_t(&[1, src.len(), e], 9))] {
                if t == NodeType::LmHead && up.is_some() {
                    continue;
                }
                let req = NodeForwardRequest {
                    node_type: t,
                    layer,
                    head,
                    pos_ids: pos.clone(),
                    src_pos_ids: src.clone(),
                    upstream_sum: up.clone(),
                    sink: Default::default(),
                };
                let want = local.node_forward(&key, &req).unwrap();
                let got = remote.node_forward(&key, &req).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d <= TOL, "forward {t} up={}: differs by {d}", up.is_some());
                worst = worst.max(d);
            }
        }
    }
    eprintln!("node gradient/forward max abs diff {worst:e}");
    // The rule really changes the numbers (steps are not ignored).
    let key = SampleKey::new("a", 0);
    let s = local.seq_len(&key).unwrap();
    let reqs = node_requests(s, e);
    let four = reqs.iter().find(|r| r.node_type == NodeType::Mlp).unwrap();
    let one = reqs.last().unwrap();
    let with_steps = |r: &NodeGradRequest, steps| {
        let mut r = r.clone();
        r.ig = Some(IgRule::Seed { steps });
        remote.node_gradient(&key, &r).unwrap().grad.unwrap()
    };
    assert_eq!(four.ig, None);
    assert!(max_abs_diff(&with_steps(one, 1), &with_steps(one, 4)) > 1e-5);
}

fn residual_request(s: usize, e: usize) -> ResidualRequest {
    ResidualRequest {
        grads: vec![
            ResidualGrad {
                pos_ids: vec![s - 2, s - 1],
                grad: rand_t(&[1, 2, e], 5),
                downstream_layer: 1.0,
            },
            ResidualGrad {
                pos_ids: vec![1],
                grad: rand_t(&[1, 1, e], 6),
                downstream_layer: 1.5,
            },
        ],
        from_layer: 0,
        to_layer: None,
    }
}

#[test]
fn attribute_residual_matches_local_and_averages_over_a_dataset() {
    let srv = server(opts());
    let remote = Remote::connect(&srv.url(), None).unwrap();
    let local = local();
    let e = local.config().hidden_size;
    // Equal-length prompts so that one request fits every sample.
    let prompts = ["The answer is B", "The answer is R"];
    for (i, p) in prompts.iter().enumerate() {
        for b in [&local as &dyn Backend, &remote] {
            b.forward_sample("r", &input(i, p), &CaptureSpec::full(), false)
                .unwrap();
        }
    }
    let s = local.seq_len(&SampleKey::new("r", 0)).unwrap();
    let req = residual_request(s, e);
    let per: Vec<Tensor> = (0..2)
        .map(|i| {
            let key = SampleKey::new("r", i);
            let want = local.attribute_residual(&key, &req).unwrap();
            let got = remote.attribute_residual(&key, &req).unwrap();
            assert_eq!(got.dims(), &[2, H + 1, 2]); // [L',H+1,g], L' = ceil(1.5)
            let d = max_abs_diff(&got, &want);
            assert!(d <= TOL, "sample {i}: differs by {d}");
            want
        })
        .collect();
    assert!(max_abs_diff(&per[0], &per[1]) > 1e-4, "samples alias");
    let mean = remote.attribute_residual_on("r", None, &req).unwrap();
    let want = ((&per[0] + &per[1]).unwrap() / 2.0).unwrap();
    assert!(max_abs_diff(&mean, &want) <= TOL);
    // Node gradient averaged over the dataset.
    let g = NodeGradRequest::new(
        NodeType::Mlp,
        1,
        None,
        vec![1, 2],
        vec![1, 2],
        Some(rand_t(&[1, 2, e], 8)),
    );
    let m = remote.node_gradient_on("r", None, &g).unwrap();
    let a = local.node_gradient(&SampleKey::new("r", 0), &g).unwrap();
    let b = local.node_gradient(&SampleKey::new("r", 1), &g).unwrap();
    let want = ((a.grad.unwrap() + b.grad.unwrap()).unwrap() / 2.0).unwrap();
    assert!(max_abs_diff(&m.grad.unwrap(), &want) <= TOL);
}

fn post_octet(url: &str, body: &[u8]) -> (u16, String) {
    let (code, bytes) = raw("POST", url, None, "application/octet-stream", body);
    let e: ErrorBody = serde_json::from_slice(&bytes).expect("JSON error body");
    (code, e.error)
}

#[test]
fn malformed_tensor_requests_are_4xx() {
    let srv = server(opts());
    let url = srv.url();
    let local: Local = local();
    let e = local.config().hidden_size;
    let remote = Remote::connect(&url, None).unwrap();
    let s = labelled(&remote, "m", 0);
    let pos = vec![s - 2, s - 1];
    let good = NodeGradRequest::new(NodeType::Mlp, 1, None, pos.clone(), pos.clone(), None);
    let wrap = |req: NodeGradRequest, sample| NodeGradWire {
        dataset: "m".into(),
        sample,
        request: req,
    };
    let g_ok = rand_t(&[1, 2, e], 1);
    let g_bad = rand_t(&[1, 3, e], 1);
    let with = |f: &dyn Fn(&mut NodeGradRequest)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let node_url = format!("{url}/node_gradient");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "wrong output_grad shape",
            encode_request(&wrap(good.clone(), Some(0)), &[("output_grad", &g_bad)]).unwrap(),
            422,
            "output_grad must be",
        ),
        (
            "layer out of range",
            encode_request(
                &wrap(with(&|r| r.layer = 5), Some(0)),
                &[("output_grad", &g_ok)],
            )
            .unwrap(),
            400,
            "layer 5",
        ),
        (
            "head out of range",
            encode_request(
                &wrap(
                    with(&|r| {
                        r.node_type = NodeType::AttnQ;
                        r.head = Some(4)
                    }),
                    Some(0),
                ),
                &[("output_grad", &g_ok)],
            )
            .unwrap(),
            400,
            "head 4",
        ),
        (
            "position out of range",
            encode_request(
                &wrap(
                    with(&|r| {
                        r.pos_ids = vec![0, s];
                        r.src_pos_ids = vec![0, s]
                    }),
                    Some(0),
                ),
                &[("output_grad", &g_ok)],
            )
            .unwrap(),
            422,
            "out of range",
        ),
        (
            "unknown sample",
            encode_request(&wrap(good.clone(), Some(3)), &[("output_grad", &g_ok)]).unwrap(),
            404,
            "sample 3",
        ),
        (
            "unexpected tensor name",
            encode_request(&wrap(good.clone(), Some(0)), &[("grad", &g_ok)]).unwrap(),
            400,
            "\"grad\"",
        ),
        (
            "tensor inside the JSON",
            encode_request(
                &wrap(with(&|r| r.output_grad = Some(g_ok.clone())), Some(0)),
                &[],
            )
            .unwrap(),
            400,
            "must be null",
        ),
        (
            "JSON instead of safetensors",
            b"{\"dataset\":\"m\"}".to_vec(),
            400,
            "safetensors",
        ),
    ];
    for (case, body, want, words) in cases {
        let (code, msg) = post_octet(&node_url, &body);
        assert_eq!(code, want, "{case}: {msg}");
        assert!(msg.contains(words), "{case}: {msg:?} lacks {words:?}");
    }
    // Residual: gradient list and tensors must line up.
    let res_url = format!("{url}/attribute_residual");
    let meta = ResidualWire {
        dataset: "m".into(),
        sample: Some(0),
        grads: vec![ResidualGradMeta {
            pos_ids: pos.clone(),
            downstream_layer: 1.0,
        }],
        from_layer: 0,
        to_layer: None,
    };
    let (code, msg) = post_octet(&res_url, &encode_request(&meta, &[]).unwrap());
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("grad.0"), "{msg}");
    let (code, msg) = post_octet(
        &res_url,
        &encode_request(&meta, &[("grad.0", &g_ok), ("grad.1", &g_ok)]).unwrap(),
    );
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("grad.1"), "{msg}");
    let (code, msg) = post_octet(
        &res_url,
        &encode_request(&meta, &[("grad.0", &g_bad)]).unwrap(),
    );
    assert_eq!(code, 422, "{msg}");
    assert!(msg.contains("gradient 0 must be"), "{msg}");
    // Still serving, still exact.
    let key = SampleKey::new("m", 0);
    labelled(&local, "m", 0);
    let r = residual_request(s, e);
    let d = max_abs_diff(
        &remote.attribute_residual(&key, &r).unwrap(),
        &local.attribute_residual(&key, &r).unwrap(),
    );
    assert!(d <= TOL);
}
