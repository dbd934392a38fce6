//! Work spread over several connected models from a script: `forward([m1, m2], ...)` puts
//! sample j on server j % 2, handles stay bound to the server holding them, and
//! `mr([m1, m2], rs, |r, m| ...)` equals the single local model's map-reduce and the mean
//! computed by hand.

use minarc::backend::Local;
use minarc::remote::{RunningServer, ServeOptions};
use minarc::script::{Host, Output};
use rhai::{Array, Dynamic, Map};
use std::path::Path;

fn server(dir: &Path) -> RunningServer {
    let local = Local::load(dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    RunningServer::start(
        local,
        ServeOptions {
            port: 0,
            ..ServeOptions::default()
        },
    )
    .unwrap()
}

fn host() -> Host {
    let (out, _) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    host
}

fn ints(v: &Dynamic) -> Vec<i64> {
    v.clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_int().unwrap())
        .collect()
}

fn float(m: &Map, k: &str) -> f64 {
    m[k].as_float()
        .unwrap_or_else(|_| panic!("{k} is not a float: {:?}", m[k]))
}

/// Connects to both servers, loads the same model locally, forwards 5 samples spread over
/// the servers and the same samples locally.
fn prelude(dir: &Path, a: &RunningServer, b: &RunningServer) -> String {
    format!(
        "let m1 = connect(\"{}\");\n\
         let m2 = connect(\"{}\");\n\
         let model = load_model(\"{}\");\n\
         let ds = gen_dataset(#{{seeds: \"0..5\", tokenizer: tokenizer(model)}});\n\
         let rs = forward([m1, m2], \"sp\", ds);\n\
         let rl = forward(model, \"sp\", ds);\n\
         let g = Graph(model, 5);\n\
         let lm = Node(g, model.n_layers, (), \"lm_head\", \"A-->A-\");\n",
        a.url(),
        b.url(),
        dir.display()
    )
}

#[test]
fn spread_forward_and_map_reduce_match_one_local_model() {
    let dir = tempfile::tempdir().unwrap();
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 3, dir.path(), 1)
        .unwrap();
    let (a, b) = (server(dir.path()), server(dir.path()));
    let mut h = host();
    let src = format!(
        "{}\
         let spread = mr([m1, m2], rs, |r, m| attribute_step(g, m, r, [lm]));\n\
         let single = mr(rl, |r| attribute_step(g, model, r, [lm]));\n\
         let by_hand = attribute_step(g, model, rl[0], [lm]);\n\
         for k in 1..rl.len() {{ by_hand = by_hand + attribute_step(g, model, rl[k], [lm]); }}\n\
         by_hand = by_hand / rl.len();\n\
         let hs = |r, m| get_hidden_states(m, r, 1).mean(1);\n\
         let hs_spread = mr([m1, m2], rs, hs);\n\
         let hs_single = mr(rl, |r| get_hidden_states(model, r, 1).mean(1));\n\
         let bound = (get_hidden_states(m1, rs[1], 2) - get_hidden_states(model, rl[1], 2)).abs().max();\n\
         let d1 = datasets(m1);\n\
         let d2 = datasets(m2);\n\
         #{{idx: rs.map(|r| r.index), fresh: rs.map(|r| r.fresh),\n\
            on1: if \"sp\" in d1 {{ d1.sp }} else {{ [] }}, on2: if \"sp\" in d2 {{ d2.sp }} else {{ [] }},\n\
            attr_vs_single: (spread - single).abs().max(), attr_vs_hand: (spread - by_hand).abs().max(),\n\
            attr_scale: spread.abs().max(), attr_shape: spread.shape,\n\
            hs_vs_single: (hs_spread - hs_single).abs().max(), hs_scale: hs_spread.abs().max(),\n\
            bound: bound, again: forward([m1, m2], \"sp\", ds).map(|r| r.fresh)}}",
        prelude(dir.path(), &a, &b)
    );
    let v = h.eval_source("spread.rhai", &src, false).unwrap();
    let m = v.read_lock::<Map>().unwrap().clone();

    // Sample j lives on server j % 2 and only there.
    let idx = ints(&m["idx"]);
    assert_eq!(idx.len(), 5);
    let share = |p: usize| -> Vec<i64> {
        let mut v: Vec<i64> = idx.iter().skip(p).step_by(2).copied().collect();
        v.sort_unstable();
        v
    };
    let (mut on1, mut on2) = (ints(&m["on1"]), ints(&m["on2"]));
    on1.sort_unstable();
    on2.sort_unstable();
    assert_eq!(on1, share(0), "server 1's share");
    assert_eq!(on2, share(1), "server 2's share");
    let fresh: Vec<bool> = m["fresh"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect();
    assert_eq!(fresh, vec![true; 5]);
    let again: Array = m["again"].clone().into_array().unwrap();
    assert!(
        again.iter().all(|x| !x.as_bool().unwrap()),
        "cached samples were recomputed"
    );

    let attr_shape = ints(&m["attr_shape"]);
    assert_eq!(
        attr_shape,
        vec![2, 5, 1],
        "attribute_step shape [l, h+1, nodes]"
    );
    for (k, scale_k) in [
        ("attr_vs_single", "attr_scale"),
        ("attr_vs_hand", "attr_scale"),
        ("hs_vs_single", "hs_scale"),
    ] {
        let (d, scale) = (float(&m, k), float(&m, scale_k));
        eprintln!("{k}: max |diff| = {d:e} (values up to {scale:e})");
        assert!(scale > 1e-3, "{scale_k} = {scale}: nothing was compared");
        assert!(d <= 1e-6, "{k}: max |diff| = {d}");
    }
    // rs[1] lives on server 2: read through m1, it still comes from server 2.
    let bound = float(&m, "bound");
    eprintln!("bound handle via the other model: max |diff| = {bound:e}");
    assert!(bound <= 1e-6, "bound handle read {bound} away");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn spread_errors_name_the_model_and_item() {
    let dir = tempfile::tempdir().unwrap();
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 3, dir.path(), 1)
        .unwrap();
    let (a, b) = (server(dir.path()), server(dir.path()));
    let mut h = host();
    let pre = prelude(dir.path(), &a, &b);
    for (src, want) in [
        ("forward([], \"x\", ds)", "list of models is empty"),
        ("forward([m1, 5], \"x\", ds)", "models[1] is a"),
        ("forward([m1, m2], \"x\", [1])", "expected a Sample"),
        (
            "forward([m1, m2], \"x\", ds, #{batch: 2})",
            "batch applies to forward(model",
        ),
        ("mr([m1, m2], [], |r, m| 1.0)", "empty list of items"),
        (
            "mr([m1, m2], rs, |r, m| if r.index == rs[3].index { throw \"boom\" } else { 1.0 })",
            "item 3 on",
        ),
        (
            "mr([m1, m2], rs, |r, m| get_hidden_states(m, r, 9))",
            "item 0 on",
        ),
    ] {
        let err = match h.eval_source("e.rhai", &format!("{pre}{src}"), false) {
            Ok(v) => panic!("{src} succeeded with {v:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{src}: {err}");
    }
    // A spread of plain numbers over unbound items: item j goes to models[j % n].
    let v = h
        .eval_source(
            "ok.rhai",
            &format!(
                "{pre}[mr([m1, m2], [1.0, 2.0, 6.0], |x, m| x * m.n_layers),\n\
                  mr([m1, m2], [0, 1, 2, 3, 4], |x, m| if m.to_string() == m1.to_string() {{ 1.0 }} else {{ 0.0 }})]"
            ),
            false,
        )
        .unwrap()
        .into_array()
        .unwrap();
    assert_eq!(v[0].as_float().unwrap(), 3.0 * 2.0);
    // Items 0, 2, 4 of 5 ran on m1.
    assert!((v[1].as_float().unwrap() - 0.6).abs() < 1e-12, "{:?}", v[1]);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}
