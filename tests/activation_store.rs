//! The activation store on disk: a dataset's captures saved and reloaded in another process'
//! backend are bit-identical, without a forward; files of another model, damaged or
//! inconsistent files are refused with errors naming them; an LRU budget with a spill folder
//! reads evicted samples back bit-identically; the same through `minarc serve --store`.

use candle_core::{DType, Device, Tensor};
use minarc::backend::{Backend, HeadSel, Local, SampleKey};
use minarc::model::fixture::{Preset, init_model};
use minarc::model::{CaptureSpec, Outputs, SampleInput};
use std::path::Path;

fn input(index: usize) -> SampleInput {
    let prompt = format!(
        "<|im_start|>user\nWhat is the color of the cell ({index},3)? Answer: R G B<|im_end|>"
    );
    SampleInput {
        index,
        prompt,
        labels: vec![7],
        candidate_ids: vec![5, 6, 7],
        answer_indices: vec![3],
        objective: Default::default(),
    }
}

fn model(seed: u64) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    init_model(Preset::Tiny, seed, d.path(), 1).unwrap();
    d
}

fn load(dir: &Path) -> Local {
    Local::load(dir, DType::F32, &Device::Cpu).unwrap()
}

/// Three captures: everything with logits; positions 1..4 in bf16; layers 0 and L only.
fn fill(b: &Local, dataset: &str) {
    let specs = [
        CaptureSpec {
            logits: true,
            ..CaptureSpec::full()
        },
        CaptureSpec {
            positions: Some(vec![1, 2, 3]),
            dtype: DType::BF16,
            ..CaptureSpec::full()
        },
        CaptureSpec {
            layers: Some(vec![0, 2]),
            ..CaptureSpec::full()
        },
    ];
    for (i, spec) in specs.iter().enumerate() {
        b.forward_sample(dataset, &input(i), spec, false).unwrap();
    }
}

fn same(a: &Option<Tensor>, b: &Option<Tensor>, what: &str) {
    match (a, b) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            assert_eq!(a.dims(), b.dims(), "{what}");
            assert_eq!(a.dtype(), b.dtype(), "{what}");
            let (a, b) = (
                a.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
                b.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
            );
            let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what} differs"
            );
        }
        _ => panic!("{what}: present in one, absent in the other"),
    }
}

fn same_outputs(a: &Outputs, b: &Outputs, what: &str) {
    assert_eq!(a.seq_len, b.seq_len);
    assert_eq!(a.positions, b.positions);
    assert_eq!(a.dtype, b.dtype);
    for (field, x, y) in [
        ("hidden_states", &a.hidden_states, &b.hidden_states),
        ("attn_outs", &a.attn_outs, &b.attn_outs),
        ("mlp_outputs", &a.mlp_outputs, &b.mlp_outputs),
        ("input_norm_vars", &a.input_norm_vars, &b.input_norm_vars),
        (
            "post_attn_norm_vars",
            &a.post_attn_norm_vars,
            &b.post_attn_norm_vars,
        ),
    ] {
        assert_eq!(x.len(), y.len());
        for (l, (x, y)) in x.iter().zip(y).enumerate() {
            same(x, y, &format!("{what} {field}[{l}]"));
        }
    }
    same(&a.final_norm_var, &b.final_norm_var, "final_norm_var");
    same(&a.logits, &b.logits, "logits");
}

#[test]
fn a_saved_dataset_reloads_bit_identically_in_a_fresh_backend() {
    let m = model(3);
    let a = load(m.path());
    fill(&a, "ds");
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("ds");
    assert_eq!(
        Backend::save_dataset(&a, "ds", dir.to_str().unwrap()).unwrap(),
        3
    );
    // a fresh backend of the same model folder: nothing cached, then everything without a forward
    let b = load(m.path());
    assert!(b.datasets().unwrap().is_empty());
    let (name, n) = Backend::load_dataset(&b, dir.to_str().unwrap(), Some("again")).unwrap();
    assert_eq!((name.as_str(), n), ("again", 3));
    for i in 0..3 {
        let x = a.sample(&SampleKey::new("ds", i)).unwrap();
        let y = b.sample(&SampleKey::new("again", i)).unwrap();
        assert!(b.is_resident(&SampleKey::new("again", i)));
        assert_eq!(x.input, y.input);
        assert_eq!(x.token_ids, y.token_ids);
        assert_eq!(x.capture, y.capture);
        same_outputs(&x.outputs, &y.outputs, &format!("sample {i}"));
    }
    // what is computed from the reloaded activations is what the original gives
    let key = |d: &str| SampleKey::new(d, 0);
    let w_a = a.attn_weights(&key("ds"), 1, &HeadSel::All, None).unwrap();
    let w_b = b
        .attn_weights(&key("again"), 1, &HeadSel::All, None)
        .unwrap();
    same(&Some(w_a), &Some(w_b), "attention weights of layer 1");
}

#[test]
fn activations_of_another_model_or_damaged_files_are_refused() {
    let m = model(3);
    let a = load(m.path());
    fill(&a, "ds");
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join("ds");
    let d = dir.to_str().unwrap();
    Backend::save_dataset(&a, "ds", d).unwrap();
    // same shapes, other weights
    let other = model(4);
    let o = load(other.path());
    let e = Backend::load_dataset(&o, d, None).unwrap_err().to_string();
    assert!(e.contains("computed by another model"), "{e}");
    assert!(o.datasets().unwrap().is_empty());
    // not a saved dataset
    let e = format!(
        "{:#}",
        Backend::load_dataset(&a, store.path().to_str().unwrap(), None).unwrap_err()
    );
    assert!(e.contains("index.json"), "{e}");
    // a damaged sample file: named, and nothing of the dataset is stored
    let f = dir.join("sample-000001.safetensors");
    let good = std::fs::read(&f).unwrap();
    std::fs::write(&f, &good[..good.len() / 2]).unwrap();
    let b = load(m.path());
    let e = format!("{:#}", Backend::load_dataset(&b, d, Some("x")).unwrap_err());
    assert!(e.contains("sample-000001.safetensors"), "{e}");
    assert!(b.datasets().unwrap().is_empty());
    // a file holding another sample than the index says
    std::fs::copy(dir.join("sample-000000.safetensors"), &f).unwrap();
    let e = format!("{:#}", Backend::load_dataset(&b, d, Some("x")).unwrap_err());
    assert!(e.contains("the index says 1"), "{e}");
    // a missing file
    std::fs::remove_file(&f).unwrap();
    let e = format!("{:#}", Backend::load_dataset(&b, d, Some("x")).unwrap_err());
    assert!(e.contains("is missing"), "{e}");
    // an unknown dataset cannot be saved
    let e = Backend::save_dataset(&a, "nope", d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown dataset"), "{e}");
}

#[test]
fn evicted_samples_spill_to_disk_and_read_back_bit_identically() {
    let m = model(5);
    let plain = load(m.path());
    fill(&plain, "ds");
    let b = load(m.path());
    let one = plain
        .sample(&SampleKey::new("ds", 0))
        .unwrap()
        .outputs
        .bytes();
    b.set_cache_budget(Some(one + 16)).unwrap();
    let spill = tempfile::tempdir().unwrap();
    b.set_spill_dir(Some(spill.path().to_path_buf())).unwrap();
    fill(&b, "ds");
    let stats = b.cache_stats();
    assert!(stats.evicted_samples >= 1, "{stats:?}");
    let files = || std::fs::read_dir(spill.path()).unwrap().count();
    assert_eq!(files(), stats.evicted_samples);
    for i in 0..3 {
        let key = SampleKey::new("ds", i);
        let x = plain.sample(&key).unwrap();
        let y = b.sample(&key).unwrap();
        same_outputs(&x.outputs, &y.outputs, &format!("sample {i}"));
    }
    // a spilled file gone: the sample is recomputed instead (same numbers, the forward is
    // deterministic)
    for e in std::fs::read_dir(spill.path()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for i in 0..3 {
        let key = SampleKey::new("ds", i);
        let x = plain.sample(&key).unwrap();
        let y = b.sample(&key).unwrap();
        same_outputs(&x.outputs, &y.outputs, &format!("sample {i} recomputed"));
    }
}

#[test]
fn a_served_model_saves_and_loads_under_its_store() {
    use minarc::remote::{Remote, RunningServer, ServeOptions};
    let m = model(6);
    let store = tempfile::tempdir().unwrap();
    let srv = RunningServer::start(
        load(m.path()),
        ServeOptions {
            port: 0,
            store: Some(store.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let r = Remote::connect(&srv.url(), None).unwrap();
    r.forward_sample("ds", &input(0), &CaptureSpec::full(), false)
        .unwrap();
    let key = SampleKey::new("ds", 0);
    let before = r.hidden_states(&key, 2, None).unwrap();
    assert_eq!(r.save_dataset("ds", "runs/one").unwrap(), 1);
    assert!(store.path().join("runs/one/index.json").is_file());
    r.drop_dataset("ds").unwrap();
    assert_eq!(
        r.load_dataset("runs/one", None).unwrap(),
        ("ds".to_string(), 1)
    );
    let after = r.hidden_states(&key, 2, None).unwrap();
    same(
        &Some(before),
        &Some(after),
        "hidden_states[2] through the server",
    );
    for bad in ["../escape", "/abs", "", "spill"] {
        let e = r.save_dataset("ds", bad).unwrap_err().to_string();
        assert!(e.contains("store"), "{bad}: {e}");
    }
    let e = r
        .load_dataset("nothing-here", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no saved dataset"), "{e}");
    srv.shutdown().unwrap();
    // a server without a store says how to get one
    let srv = RunningServer::start(
        load(m.path()),
        ServeOptions {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let r = Remote::connect(&srv.url(), None).unwrap();
    r.forward_sample("ds", &input(0), &CaptureSpec::full(), false)
        .unwrap();
    let e = r.save_dataset("ds", "x").unwrap_err().to_string();
    assert!(e.contains("--store"), "{e}");
    srv.shutdown().unwrap();
}

#[test]
fn scripts_save_and_load_activations() {
    use minarc::script::{Host, Output};
    let m = model(7);
    let store = tempfile::tempdir().unwrap();
    let (out, _) = Output::buffer();
    let mut host = Host::with_output(out);
    host.state().set_show_progress(false);
    let src = format!(
        r#"let m = load_model("{m}");
           let tok = tokenizer(m);
           let s = prompt_sample(tok, "The capital of France is Paris", #{{answers: [" Paris"]}});
           forward(m, "p", [s]);
           let n = save_activations(m, "p", "{d}");
           drop_dataset(m, "p");
           let name = load_activations(m, "{d}");
           let renamed = load_activations(m, "{d}", "q");
           [n, name, renamed, datasets(m).keys().len()]"#,
        m = m.path().display(),
        d = store.path().join("p").display()
    );
    let v = host.eval_source("store", &src, false).unwrap();
    let v = v.into_array().unwrap();
    assert_eq!(v[0].as_int().unwrap(), 1);
    assert_eq!(v[1].clone().into_string().unwrap(), "p");
    assert_eq!(v[2].clone().into_string().unwrap(), "q");
    assert_eq!(v[3].as_int().unwrap(), 2);
}

/// save_graph + load_graph in a script: the reloaded graph has the same edges and attributes
/// again to the same numbers.
#[test]
fn scripts_reload_a_saved_graph_and_attribute_with_it() {
    use minarc::script::{Host, Output};
    let m = model(8);
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = Output::buffer();
    let mut host = Host::with_output(out);
    host.state().set_show_progress(false);
    let src = format!(
        r#"let m = load_model("{m}");
           let s = prompt_sample(tokenizer(m), "The capital of France is Paris", #{{answers: [" Paris"]}});
           let rs = forward(m, "p", [s]);
           let g = Graph(m, 1);
           let lm = Node(g, m.n_layers, (), "lm_head", "A-->A-");
           let attr = attribute_step(g, m, rs[0], [lm]);
           let top = rank_heads(attr, 1, m.n_heads, "signed")[0];
           add_edges(g, Node(g, top[0], top[1], "attn_v", "A-->A-"), [lm], attr);
           save_graph(g, "{p}");
           let h = load_graph(m, "{p}", 1);
           let lm2 = h.nodes.filter(|n| n.type == "lm_head")[0];
           let attr2 = attribute_step(h, m, rs[0], [lm2]);
           [g.edges.len(), h.edges.len(), g.edges[0].score == h.edges[0].score,
            (attr - attr2).abs().max(), attr.abs().max()]"#,
        m = m.path().display(),
        p = dir.path().join("g.json").display()
    );
    let v = host.eval_source("graph", &src, false).unwrap();
    let v = v.into_array().unwrap();
    assert_eq!(v[0].as_int().unwrap(), 1);
    assert_eq!(v[1].as_int().unwrap(), 1);
    assert!(v[2].as_bool().unwrap());
    assert_eq!(v[3].as_float().unwrap(), 0.0);
    assert!(v[4].as_float().unwrap() > 0.0);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"nodes\": 3}").unwrap();
    let e = host
        .eval_source(
            "bad",
            &format!(
                r#"load_graph(load_model("{}"), "{}", 1)"#,
                m.path().display(),
                bad.display()
            ),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a graph written by save_graph"), "{e}");
}
