//! What a forward cached, reachable from scripts, against independent computations: the
//! pre-o_proj attention output through o_proj's slice is the head's output, the norm variances
//! are the mean squares of the residuals, weights by HF name are the checkpoint's tensors, token
//! ids are the tokenizer's, node gradients are attribute_step's, and the direct logit
//! attributions add up to the model's logit; a served model answers the same.

use candle_core::{Device, Tensor};
use minarc::script::tensor::Tensor as STensor;
use rhai::Map;

#[path = "common/mod.rs"]
mod common;

fn t(v: &rhai::Dynamic) -> Tensor {
    v.clone().try_cast::<STensor>().expect("a Tensor").0
}

use common::max_abs_diff as max_abs;

fn run(model: &str) -> Map {
    let (mut h, buf) = common::script_host();
    let src = format!(
        r#"let model = {model};
let ds = gen_dataset(#{{seeds: "0..2", n_train: 2, Q_train: 2, tokenizer: tokenizer(model)}});
let rs = forward(model, "w1", ds);
let r = rs[0];
let pos = r.positions("A-");
let g = Graph(model, 2);
let lm = Node(g, model.n_layers, (), "lm_head", "A-->A-");
let attr = attribute_step(g, model, r, [lm]);
let v12 = Node(g, 1, 2, "attn_v", "A-->A-");
add_edges(g, v12, [lm], attr);
attribute_step(g, model, r, [v12]);
#{{attn_out: get_attn_out(model, r, 1, pos), head2: get_head_output(model, r, 1, 2, pos),
   hs1: get_hidden_states(model, r, 1, pos), var1: get_norm_var(model, r, "input", 1, pos),
   final_var: get_norm_var(model, r, "input", model.n_layers, pos),
   post_var: get_norm_var(model, r, "post_attention", 0, pos),
   mid0: get_hidden_states(model, r, 0, pos) + get_attn_output(model, r, 0, pos),
   resid_l: get_hidden_states(model, r, 1, pos) + get_attn_output(model, r, 1, pos) + get_mlp_output(model, r, 1, pos),
   wo: get_weight(model, "model.layers.1.self_attn.o_proj.weight"),
   wq_rows: get_weight(model, "model.layers.0.self_attn.q_proj.weight", [3, 1]),
   ids: token_ids(model, r), prompt: r.sample.prompt,
   grad: node_grad(g, lm, r), out_grad: node_output_grad(g, v12, r),
   dla: direct_logit_attribution(model, r, #{{}}), dla7: direct_logit_attribution(model, r, #{{tokens: [7]}})}}"#
    );
    h.eval_source("internals.rhai", &src, false)
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, buf.contents()))
        .try_cast::<Map>()
        .unwrap()
}

#[test]
fn cached_internals_and_weights_match_independent_computations() {
    let dir = common::tiny_model_dir();
    let v = run(&format!("load_model(\"{}\")", dir.display()));
    let raw = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let cfg = minarc::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let (n, d) = (cfg.num_attention_heads, cfg.head_dim());
    // attn_out [1,k,n,d]: head 2's slice through o_proj's columns 2d..3d is head 2's output
    let ao = t(&v["attn_out"]);
    assert_eq!(ao.dims()[2..], [n, d]);
    let wo = &raw["model.layers.1.self_attn.o_proj.weight"]; // [e, n·d]
    let slice = ao
        .squeeze(0)
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap()
        .squeeze(1)
        .unwrap(); // [k,d]
    let via = slice
        .matmul(&wo.narrow(1, 2 * d, d).unwrap().t().unwrap())
        .unwrap();
    assert!(max_abs(&via, &t(&v["head2"]).squeeze(0).unwrap()) < 1e-5);
    // weights by name are the checkpoint's, in its layout
    assert_eq!(max_abs(&t(&v["wo"]), wo), 0.0);
    let wq = &raw["model.layers.0.self_attn.q_proj.weight"];
    let rows = Tensor::cat(
        &[wq.narrow(0, 3, 1).unwrap(), wq.narrow(0, 1, 1).unwrap()],
        0,
    )
    .unwrap();
    assert_eq!(max_abs(&t(&v["wq_rows"]), &rows), 0.0);
    // norm variances are mean squares of the residual each norm reads
    let ms = |x: &Tensor| x.sqr().unwrap().mean_keepdim(2).unwrap();
    assert!(max_abs(&t(&v["var1"]), &ms(&t(&v["hs1"]))) < 1e-5);
    assert!(max_abs(&t(&v["post_var"]), &ms(&t(&v["mid0"]))) < 1e-5);
    assert!(max_abs(&t(&v["final_var"]), &ms(&t(&v["resid_l"]))) < 1e-4);
    // token ids are the tokenizer's
    let tok = minarc::tokenizer::load_tokenizer(dir).unwrap();
    let prompt = v["prompt"].clone().into_string().unwrap();
    let want: Vec<i64> = tok
        .encode(prompt.as_str(), true)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    let got: Vec<i64> = v["ids"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_int().unwrap())
        .collect();
    assert_eq!(got, want);
    // the lm_head node's gradient at the A- positions is what its only upstream node received
    // as its output gradient (A12: the sum over its downstreams)
    let k = t(&v["hs1"]).dim(1).unwrap();
    assert_eq!(t(&v["grad"]).dims(), &[1, k, cfg.hidden_size]);
    assert_eq!(max_abs(&t(&v["out_grad"]), &t(&v["grad"])), 0.0);
    // direct logit attributions add up to the model's logit of each label
    let dla: Map = v["dla"].clone().try_cast().unwrap();
    let comp = t(&dla["components"]);
    assert_eq!(comp.dims(), &[cfg.num_hidden_layers, n + 1, k]);
    let sum = (comp.sum(0).unwrap().sum(0).unwrap() + t(&dla["embed"])).unwrap();
    assert!(max_abs(&sum, &t(&dla["total"])) < 1e-5);
    let d = max_abs(&t(&dla["total"]), &t(&dla["logits"]));
    assert!(d < 1e-4, "Σ DLA differs from the logit by {d}");
    let dla7: Map = v["dla7"].clone().try_cast().unwrap();
    assert!(max_abs(&t(&dla7["total"]), &t(&dla7["logits"])) < 1e-4);
    assert!(
        max_abs(&t(&dla7["logits"]), &t(&dla["logits"])) > 1e-3,
        "token 7 is another logit"
    );
}

#[test]
fn a_served_model_answers_the_same_internals() {
    let dir = common::tiny_model_dir();
    let srv = common::tiny_server();
    let a = run(&format!("load_model(\"{}\")", dir.display()));
    let b = run(&format!("connect(\"{}\")", srv.url()));
    for k in [
        "attn_out",
        "var1",
        "final_var",
        "post_var",
        "wo",
        "wq_rows",
        "grad",
    ] {
        assert_eq!(max_abs(&t(&a[k]), &t(&b[k])), 0.0, "{k}");
    }
    let (da, db): (Map, Map) = (
        a["dla"].clone().try_cast().unwrap(),
        b["dla"].clone().try_cast().unwrap(),
    );
    assert_eq!(max_abs(&t(&da["components"]), &t(&db["components"])), 0.0);
    // bad names and rows are 4xx errors and the server keeps serving
    let (mut h, _) = common::script_host();
    for (call, words) in [
        (
            "get_weight(m, \"model.layers.99.mlp.up_proj.weight\")",
            "layer 99",
        ),
        ("get_weight(m, \"transformer.h.0\")", "no weight"),
        (
            "get_weight(m, \"lm_head.weight\", [99999999])",
            "row 99999999",
        ),
    ] {
        let e = h
            .eval_source(
                "bad.rhai",
                &format!("let m = connect(\"{}\");\n{call}", srv.url()),
                false,
            )
            .unwrap_err();
        assert!(e.message.contains(words), "{call}: {}", e.message);
    }
    srv.shutdown().unwrap();
}
