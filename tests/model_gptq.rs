//! GPTQ checkpoints: the reader against goldens packed and dequantised by an independent numpy
//! implementation (scripts/reference/gptq_goldens.py), and GPTQ fixtures written from the tiny
//! model (symmetric, desc_act, asymmetric with zero-0 groups in the v2 format, 8-bit with one
//! group) whose forward equals their dense twins' (the weights the quantised values stand for,
//! computed by the writer without packing).

use candle_core::{DType, Device};
use minarc::backend::{Backend, Local};
use minarc::model::gptq::{GptqConfig, GptqWriteOptions, dequantize, write_gptq};
use minarc::model::loader::WeightFiles;
use std::path::{Path, PathBuf};

#[path = "common/mod.rs"]
mod common;
use common::max_abs_diff;

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gptq_numpy")
}

#[test]
fn dequantisation_matches_the_numpy_goldens() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden().with_extension("json")).unwrap())
            .unwrap();
    let files = WeightFiles::from_paths(vec![golden().with_extension("safetensors")]).unwrap();
    let raw = candle_core::safetensors::load(golden().with_extension("safetensors"), &Device::Cpu)
        .unwrap();
    for (name, m) in meta.as_object().unwrap() {
        let q: GptqConfig = serde_json::from_value(m.clone()).unwrap();
        let (o, i) = (
            m["out"].as_u64().unwrap() as usize,
            m["in"].as_u64().unwrap() as usize,
        );
        let ours = dequantize(&files, &q, name, i, o).unwrap(); // [in, out]
        let want = raw[&format!("{name}.dense")]
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
        let d = max_abs_diff(&ours, &want);
        assert!(d <= 1e-6, "{name}: differs from numpy by {d}");
    }
}

/// The tiny fixture with layer 0's up_proj made non-negative, so asymmetric groups get zero 0.
fn source() -> tempfile::TempDir {
    let src = common::tiny_model_dir();
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    let mut raw =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let up = "model.layers.0.mlp.up_proj.weight";
    raw.insert(up.into(), raw[up].abs().unwrap());
    candle_core::safetensors::save(&raw, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn opts(bits: u32, group_size: i64, sym: bool, desc_act: bool, format: &str) -> GptqWriteOptions {
    GptqWriteOptions {
        bits,
        group_size,
        sym,
        desc_act,
        checkpoint_format: format.into(),
        pad_intermediate: 0,
        shards: 1,
    }
}

/// Every fixture format: 4 and 8 bits, groups of 16/32/all, desc_act, asymmetric v2 with
/// zero-0 groups, a zero-padded MLP written in shards.
fn formats() -> Vec<(&'static str, GptqWriteOptions)> {
    vec![
        ("sym4_g32_v1", opts(4, 32, true, false, "gptq")),
        ("sym4_g32_desc_v1", opts(4, 32, true, true, "gptq")),
        ("asym4_g16_v2", opts(4, 16, false, false, "gptq_v2")),
        ("sym8_all_v1", opts(8, -1, true, false, "gptq")),
        (
            "sym4_g32_padded_sharded",
            GptqWriteOptions {
                pad_intermediate: 160,
                shards: 3,
                ..opts(4, 32, true, false, "gptq")
            },
        ),
    ]
}

fn load(dir: &Path) -> Local {
    Local::load(dir, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn gptq_fixtures_match_their_dense_twins() {
    let src = source();
    let dense = load(src.path());
    let ids: Vec<u32> = (0..17u32).map(|i| 3 + (i * 41) % 250).collect();
    let reference = dense.model().forward(&ids).unwrap();
    for (name, o) in formats() {
        let tmp = tempfile::tempdir().unwrap();
        let (q, twin) = (tmp.path().join("gptq"), tmp.path().join("twin"));
        write_gptq(src.path(), &q, &twin, &o).unwrap();
        if o.shards > 1 {
            assert!(q.join("model.safetensors.index.json").is_file());
            assert!(!q.join("model.safetensors").exists());
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(cfg["intermediate_size"], 160, "the padded size");
        }
        assert!(
            !q.join("model.safetensors").exists() || {
                let f = WeightFiles::open(&q).unwrap();
                !f.contains("model.layers.0.self_attn.q_proj.weight")
                    && f.contains("model.layers.0.self_attn.q_proj.qweight")
            }
        );
        let (a, b) = (load(&q), load(&twin));
        let (la, lb) = (
            a.model().forward(&ids).unwrap(),
            b.model().forward(&ids).unwrap(),
        );
        let d = max_abs_diff(&la, &lb);
        assert!(d <= 1e-6, "{name}: GPTQ and dense twin differ by {d}");
        // each dense weight is within one quantisation step of the original (round to nearest:
        // half a step, plus the clamp at the range's ends after the f16 rounding of the scale)
        let orig =
            candle_core::safetensors::load(src.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let tw =
            candle_core::safetensors::load(twin.join("model.safetensors"), &Device::Cpu).unwrap();
        // every tensor of the checkpoint, one file or shards
        let mut packed = std::collections::HashMap::new();
        for e in std::fs::read_dir(&q).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                packed.extend(candle_core::safetensors::load(&p, &Device::Cpu).unwrap());
            }
        }
        let mut checked = 0;
        for (n, w) in &orig {
            let Some(prefix) = n.strip_suffix(".weight").filter(|p| p.contains("_proj")) else {
                continue;
            };
            let step = packed[&format!("{prefix}.scales")]
                .to_dtype(DType::F32)
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let err = max_abs_diff(w, &tw[n]);
            assert!(
                err <= step * 1.0001,
                "{name} {n}: error {err} above one step {step}"
            );
            checked += 1;
        }
        assert_eq!(checked, 7 * 2, "{name}: every projection of both layers");
        assert!(
            max_abs_diff(&la, &reference) > 0.0,
            "{name}: quantisation changed nothing"
        );
        eprintln!("{name}: GPTQ vs dense twin {d:e}");
        if name == "asym4_g16_v2" {
            // layer 0's up_proj is non-negative: every zero is 0 (only v2 can store it)
            let f = WeightFiles::open(&q).unwrap();
            let (_, _, bytes) = f.raw("model.layers.0.mlp.up_proj.qzeros").unwrap();
            assert!(bytes.iter().all(|&b| b == 0), "zero-0 groups expected");
        }
    }
    // v1 cannot store a zero of 0
    let tmp = tempfile::tempdir().unwrap();
    let e = write_gptq(
        src.path(),
        &tmp.path().join("q"),
        &tmp.path().join("t"),
        &opts(4, 16, false, false, "gptq"),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("gptq_v2"), "{e:#}");
}

#[test]
fn unsupported_quantisation_is_a_clear_error() {
    let src = source();
    let tmp = tempfile::tempdir().unwrap();
    let (q, twin) = (tmp.path().join("gptq"), tmp.path().join("twin"));
    write_gptq(src.path(), &q, &twin, &opts(4, 32, true, false, "gptq")).unwrap();
    let cfg_path = q.join("config.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (qc, words) in [
        (
            serde_json::json!({"quant_method": "awq", "bits": 4}),
            "\"awq\"",
        ),
        (
            serde_json::json!({"quant_method": "gptq", "bits": 3, "group_size": 32}),
            "bits = 3",
        ),
        (
            serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 0}),
            "group_size",
        ),
        (
            serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 32, "checkpoint_format": "marlin"}),
            "marlin",
        ),
        // the file's groups do not match the config's group size
        (
            serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 16}),
            "qzeros",
        ),
    ] {
        let mut c = good.clone();
        c["quantization_config"] = qc;
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let e = format!(
            "{:#}",
            Local::load(&q, DType::F32, &Device::Cpu).err().unwrap()
        );
        assert!(e.contains(words), "{words}: {e}");
    }
    let _ = Backend::config(&load(&twin));
}

/// Packed GPTQ (layers kept as stored, dequantised one at a time when used) computes exactly
/// what the dequantised-on-load model does — forward, capture, weights by name — holds fewer
/// bytes, and its layer cache keeps to its budget.
#[test]
fn packed_layers_match_dequantised_on_load() {
    use minarc::backend::{Backend, SampleKey};
    use minarc::model::{CaptureSpec, LoadOptions, SampleInput};
    let src = source();
    let tmp = tempfile::tempdir().unwrap();
    let (q, twin) = (tmp.path().join("gptq"), tmp.path().join("twin"));
    write_gptq(src.path(), &q, &twin, &opts(4, 16, true, true, "gptq")).unwrap();
    let dense = load(&q);
    let packed_with = |budget: usize| {
        Local::load_with(
            &q,
            DType::F32,
            &Device::Cpu,
            &LoadOptions {
                gptq_packed: Some(budget),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let packed = packed_with(0);
    assert!(packed.model().weights().is_packed());
    assert!(!dense.model().weights().is_packed());
    let ids: Vec<u32> = (0..17u32).map(|i| 3 + (i * 41) % 250).collect();
    let (a, b) = (
        dense.model().forward(&ids).unwrap(),
        packed.model().forward(&ids).unwrap(),
    );
    assert_eq!(max_abs_diff(&a, &b), 0.0, "packed forward differs");
    // budget 0 keeps only the layer in use: two forwards dequantise every layer twice
    let nl = dense.config().num_hidden_layers;
    packed.model().forward(&ids).unwrap();
    let (packed_bytes, held, n) = packed.model().weights().packed_stats();
    assert_eq!(n, 2 * nl as u64);
    let cfg = dense.config();
    let (e, m) = (cfg.hidden_size, cfg.intermediate_size);
    let kv = cfg.num_kv_heads() * cfg.head_dim();
    let dense_layer = (2 * e * e + 2 * e * kv + 3 * e * m) * 4;
    assert_eq!(held, dense_layer, "one dequantised layer held");
    assert!(
        packed_bytes < nl * dense_layer / 4,
        "packed {packed_bytes} bytes vs dense {}",
        nl * dense_layer
    );
    // a budget for everything dequantises each layer once
    let roomy = packed_with(1 << 30);
    roomy.model().forward(&ids).unwrap();
    roomy.model().forward(&ids).unwrap();
    assert_eq!(roomy.model().weights().packed_stats().2, nl as u64);
    // attribution through the Backend: a node gradient is the same
    let input = SampleInput {
        index: 0,
        prompt: "<|im_start|>user\nWhat is the color of the cell (3,3)? Answer: R<|im_end|>".into(),
        labels: vec![7],
        candidate_ids: vec![5, 6, 7],
        answer_indices: vec![3],
        objective: Default::default(),
    };
    let key = SampleKey::new("d", 0);
    for b in [&dense, &packed] {
        b.forward_sample("d", &input, &CaptureSpec::full(), false)
            .unwrap();
    }
    let ha = dense.hidden_states(&key, nl, None).unwrap();
    let hb = packed.hidden_states(&key, nl, None).unwrap();
    assert_eq!(max_abs_diff(&ha, &hb), 0.0);
    let w = |b: &Local| {
        b.weight("model.layers.1.mlp.down_proj.weight", Some(&[0, 5]))
            .unwrap()
    };
    assert_eq!(max_abs_diff(&w(&dense), &w(&packed)), 0.0);
}

/// The same through a script: load_model's gptq option, and an attribution (IG backward through
/// every layer, re-dequantised on each use) equal to the dequantised-on-load model's.
#[test]
fn scripts_load_packed_gptq_and_attribute_the_same() {
    use minarc::script::{Host, Output};
    let src = source();
    let tmp = tempfile::tempdir().unwrap();
    let (q, twin) = (tmp.path().join("gptq"), tmp.path().join("twin"));
    write_gptq(src.path(), &q, &twin, &opts(4, 32, true, false, "gptq")).unwrap();
    let (out, _) = Output::buffer();
    let mut host = Host::with_output(out);
    host.state().set_show_progress(false);
    let code = format!(
        r#"let attr = |m| {{
               let s = prompt_sample(tokenizer(m), "The capital of France is Paris", #{{answers: [" Paris"]}});
               let rs = forward(m, "p", [s]);
               let g = Graph(m, 1);
               let lm = Node(g, m.n_layers, (), "lm_head", "A-->A-");
               attribute_step(g, m, rs[0], [lm])
           }};
           let a = attr.call(load_model("{q}", #{{gptq: "dense"}}));
           let b = attr.call(load_model("{q}", #{{gptq: "packed", gptq_cache_bytes: 0}}));
           [(a - b).abs().max(), a.abs().max(), loaded_models().len()]"#,
        q = q.display()
    );
    let v = host.eval_source("gptq", &code, false).unwrap();
    let v = v.into_array().unwrap();
    assert_eq!(v[0].as_float().unwrap(), 0.0);
    assert!(v[1].as_float().unwrap() > 0.0);
    assert_eq!(
        v[2].as_int().unwrap(),
        2,
        "packed and dense are two loaded models"
    );
    let e = host
        .eval_source(
            "bad",
            &format!(r#"load_model("{}", #{{gptq: "int4"}})"#, q.display()),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("packed") && e.contains("dense"), "{e}");
}

/// The device-side expansion of packed layers (tensor operations) equals the reader's own
/// dequantisation for every fixture format: 4 and 8 bits, groups of 16/32/all, desc_act,
/// asymmetric v2 with zero-0 groups, a padded MLP in shards.
#[test]
fn packed_expansion_matches_every_format() {
    use minarc::model::LoadOptions;
    let src = source();
    let ids: Vec<u32> = (0..13u32).map(|i| 5 + (i * 37) % 240).collect();
    for (name, o) in formats() {
        let tmp = tempfile::tempdir().unwrap();
        let (q, twin) = (tmp.path().join("gptq"), tmp.path().join("twin"));
        write_gptq(src.path(), &q, &twin, &o).unwrap();
        let packed = Local::load_with(
            &q,
            DType::F32,
            &Device::Cpu,
            &LoadOptions {
                gptq_packed: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        let dense = load(&q);
        let d = max_abs_diff(
            &dense.model().forward(&ids).unwrap(),
            &packed.model().forward(&ids).unwrap(),
        );
        assert_eq!(
            d, 0.0,
            "{name}: packed differs from dequantise-on-load by {d}"
        );
    }
}
