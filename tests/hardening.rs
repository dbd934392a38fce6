//! Hardening: no single request or script line may kill the server or a session.
//!
//! * A bounded fuzz of every route (fixed seed, loopback, stops by itself): no 5xx, the server
//!   stays up, its memory stays bounded.
//! * One test per defect class: huge prompts, unbounded IG resolution, allocation sizes from
//!   configs, timed-out work holding the heavy lock, fields that do not apply to a route,
//!   non-finite weights, shard path escapes, labels outside the candidates, empty position
//!   lists, module error locations, bearer tokens for scripts, backtraces in user errors.
//! * A table of hostile script arguments: clean errors, the session keeps its state.

mod remote_support;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::model::{CaptureSpec, SampleInput};
use minarc::remote::wire::{ErrorBody, encode_request};
use minarc::remote::{Remote, ServeOptions};
use minarc::script::{Host, Output};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use remote_support::*;
use serde_json::{Value, json};

const JSON: &str = "application/json";
const OCTET: &str = "application/octet-stream";

fn error_of(code: u16, body: &[u8], case: &str) -> String {
    assert!((400..500).contains(&code), "{case}: HTTP {code}");
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("{case}: body is not a JSON error: {body:?}"));
    e.error
}

fn status_ok(url: &str) -> bool {
    raw("GET", &format!("{url}/status"), None, JSON, &[]).0 == 200
}

/// Resident set size of this process in bytes (the in-process server included).
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

// ------------------------------------------------------------------------------- fuzzing

/// One request template: method, path, body kind and the JSON that is mutated.
struct Template {
    method: &'static str,
    path: &'static str,
    /// Tensors sent with the JSON as a safetensors body (None: a JSON body).
    tensors: Option<Vec<(&'static str, Vec<usize>)>>,
    json: Value,
}

fn templates() -> Vec<Template> {
    let sample = json!({"index": 7, "prompt": "pack my box", "labels": [], "candidate_ids": [], "answer_indices": []});
    let get = |path: &'static str, j: Value| Template {
        method: "POST",
        path,
        tensors: None,
        json: j,
    };
    let node = |t: &str, layer: usize, head: Value| {
        json!({"node_type": t, "layer": layer, "head": head, "pos_ids": [1, 2],
               "src_pos_ids": [1, 2], "ig": {"rule": "seed", "steps": 2}})
    };
    vec![
        Template {
            method: "GET",
            path: "/status",
            tensors: None,
            json: json!({}),
        },
        Template {
            method: "GET",
            path: "/datasets/d/samples/0",
            tensors: None,
            json: json!({}),
        },
        get(
            "/forward",
            json!({"dataset": "f", "sample": sample, "capture": {}, "force": false}),
        ),
        get(
            "/batch_forward",
            json!({"dataset": "f", "samples": [sample], "capture": {"layers": [0], "positions": [0, 1]}}),
        ),
        get(
            "/hidden_states",
            json!({"dataset": "d", "sample": 0, "layer": 1, "pos_ids": [0, 1]}),
        ),
        get(
            "/prompt_sample",
            json!({"prompt": "pack my box with five dozen jugs", "spec": {"answers": [" jugs", [5, 8]],
                   "candidates": [3, " box"], "objective": "log_prob", "spans": {"x": [1, 2]}, "index": 2}}),
        ),
        get(
            "/attn_out",
            json!({"dataset": "d", "sample": 0, "layer": 1, "pos_ids": [0, 1]}),
        ),
        get(
            "/input_norm_var",
            json!({"dataset": "d", "sample": 0, "layer": L, "pos_ids": [1]}),
        ),
        get(
            "/post_attn_norm_var",
            json!({"dataset": "d", "sample": null, "layer": 0, "pos_ids": [0]}),
        ),
        Template {
            method: "POST",
            path: "/weight",
            tensors: Some(vec![]),
            json: json!({"name": "model.layers.1.self_attn.q_proj.weight", "rows": [0, 3]}),
        },
        get(
            "/attn_output",
            json!({"dataset": "d", "sample": 0, "layer": 0, "pos_ids": [2]}),
        ),
        get(
            "/mlp_output",
            json!({"dataset": "d", "sample": null, "layer": 1}),
        ),
        get(
            "/head_output",
            json!({"dataset": "d", "sample": 1, "layer": 0, "heads": [0, 1], "pos_ids": [1]}),
        ),
        get(
            "/attn_weights",
            json!({"dataset": "d", "sample": 0, "layer": 1, "heads": 2, "pos_ids": [3], "dtype": "f16"}),
        ),
        get(
            "/logits",
            json!({"dataset": "d", "sample": 0, "pos_ids": [0, 3]}),
        ),
        get(
            "/load_model",
            json!({"model_path": "/nonexistent/model", "dtype": "f32"}),
        ),
        Template {
            method: "POST",
            path: "/node_gradient",
            tensors: Some(vec![("output_grad", vec![1, 2, 64])]),
            json: json!({"dataset": "d", "sample": 0, "request": node("attn_k", 1, json!(0))}),
        },
        Template {
            method: "POST",
            path: "/node_gradient",
            tensors: None,
            json: json!({"dataset": "d", "sample": 0, "request": {"node_type": "lm_head", "layer": L, "head": null,
                "pos_ids": [3], "src_pos_ids": [3], "ig": {"rule": "gauss_legendre", "n": 3},
                "adaptive": {"tol": 0.05, "max_resolution": 8}}}),
        },
        Template {
            method: "POST",
            path: "/node_forward",
            tensors: Some(vec![("upstream_sum", vec![1, 2, 64])]),
            json: json!({"dataset": "d", "sample": null, "request": node("mlp", 0, json!(null))}),
        },
        Template {
            method: "POST",
            path: "/attribute_residual",
            tensors: Some(vec![("grad.0", vec![1, 2, 64])]),
            json: json!({"dataset": "d", "sample": 0, "grads": [{"pos_ids": [1, 2], "downstream_layer": 1.5}], "from_layer": 0, "to_layer": 2}),
        },
        Template {
            method: "POST",
            path: "/intervene",
            tensors: Some(vec![("value.0.1", vec![1, 2, 64])]),
            json: json!({"dataset": "d", "sample": 0, "sets": [[
                {"site": {"kind": "head", "layer": 1, "head": 2}, "positions": [0, 2], "edit": "zero"},
                {"site": {"kind": "mlp", "layer": 0}, "positions": [1, 2], "edit": "add"}]],
                "options": {"logit_positions": [1, 2], "hidden_layers": [0, L]}}),
        },
        Template {
            method: "POST",
            path: "/intervene",
            tensors: Some(vec![("value.1.0", vec![1, 3])]),
            json: json!({"dataset": "d", "sample": 0, "sets": [[],
                [{"site": {"kind": "pattern", "layer": 0, "head": 1}, "positions": [2], "edit": "set"}],
                [{"site": {"kind": "residual", "layer": L}, "positions": null, "edit": "zero"}]]}),
        },
        Template {
            method: "POST",
            path: "/lens_logits",
            tensors: Some(vec![("x", vec![1, 2, 64])]),
            json: json!({}),
        },
        Template {
            method: "DELETE",
            path: "/datasets/zz",
            tensors: None,
            json: json!({}),
        },
        get("/empty_cache", json!({})),
    ]
}

/// A hostile replacement value.
fn hostile(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..16) {
        0 => json!(1_000_000_000_000u64),
        1 => json!(u64::MAX),
        2 => json!(i64::MIN),
        3 => json!(-1),
        4 => json!(1.5),
        5 => json!(1e300),
        6 => json!("NaN"),
        7 => Value::Null,
        8 => json!(""),
        9 => json!("x".repeat(rng.random_range(1..4_000))),
        10 => json!([]),
        11 => json!({}),
        12 => {
            let mut v = json!(0);
            for _ in 0..rng.random_range(1..200) {
                v = json!([v]);
            }
            v
        }
        13 => json!(true),
        14 => json!(vec![rng.random_range(0..5u64); rng.random_range(1..5000)]),
        _ => json!(rng.random_range(0..4u64)),
    }
}

/// Mutates one random node of the JSON tree: replace it, drop a key, add an unknown key, or
/// duplicate an array's elements.
fn mutate(v: &mut Value, rng: &mut ChaCha8Rng, depth: usize) {
    let descend = depth < 4 && rng.random_bool(0.6);
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys[rng.random_range(0..keys.len())].clone();
            match rng.random_range(0..10) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    m.insert("unexpected_field".into(), hostile(rng));
                }
                _ if descend => mutate(m.get_mut(&k).unwrap(), rng, depth + 1),
                _ => {
                    m.insert(k, hostile(rng));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.random_range(0..a.len());
            match rng.random_range(0..6) {
                0 if a.len() < 100 && !(a[i].is_array() || a[i].is_object()) => {
                    let x = a[i].clone();
                    a.extend(std::iter::repeat_n(x, rng.random_range(1..3000)));
                }
                _ if descend => mutate(&mut a[i], rng, depth + 1),
                _ => a[i] = hostile(rng),
            }
        }
        _ => *v = hostile(rng),
    }
}

/// Byte-level damage: truncate, flip bytes or append garbage.
fn damage(bytes: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    match rng.random_range(0..3) {
        0 if !bytes.is_empty() => bytes.truncate(rng.random_range(0..bytes.len())),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
            }
        }
        _ => bytes.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
    }
}

fn body_of(t: &Template, json: &Value, rng: &mut ChaCha8Rng) -> (Vec<u8>, &'static str) {
    match &t.tensors {
        None => (serde_json::to_vec(json).unwrap(), JSON),
        Some(ts) => {
            let tensors: Vec<(&str, Tensor)> = ts
                .iter()
                .map(|(n, shape)| {
                    let mut shape = shape.clone();
                    if rng.random_bool(0.15) {
                        let d = rng.random_range(0..shape.len());
                        shape[d] = rng.random_range(0..5);
                    }
                    (*n, Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap())
                })
                .collect();
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
            (encode_request(json, &refs).unwrap(), OCTET)
        }
    }
}

#[test]
fn fuzzed_requests_over_every_route_get_no_5xx_and_the_server_stays_up() {
    let srv = server(ServeOptions {
        cache_bytes: Some(256 << 20),
        timeout: std::time::Duration::from_secs(60),
        ..opts()
    });
    let url = srv.url();
    let remote = Remote::connect(&url, None).unwrap();
    forward_all(&remote, "d", &[0, 1, 2]);
    let templates = templates();
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let rss0 = rss_bytes();
    let mut peak = rss0;
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut by_path = std::collections::BTreeMap::<&str, f64>::new();
    const N: usize = 3000;
    for i in 0..N {
        let t = &templates[rng.random_range(0..templates.len())];
        let mut j = t.json.clone();
        for _ in 0..rng.random_range(1..4) {
            mutate(&mut j, &mut rng, 0);
        }
        let (mut body, ctype) = body_of(t, &j, &mut rng);
        if rng.random_bool(0.1) {
            damage(&mut body, &mut rng);
        }
        let ctype = if rng.random_bool(0.05) {
            "text/plain"
        } else {
            ctype
        };
        let t0 = std::time::Instant::now();
        let (code, resp) = raw(t.method, &format!("{url}{}", t.path), None, ctype, &body);
        *by_path.entry(t.path).or_default() += t0.elapsed().as_secs_f64();
        *by_status.entry(code).or_default() += 1;
        assert!(
            code < 500,
            "request {i} {} {} got {code}: {}\nbody: {}",
            t.method,
            t.path,
            String::from_utf8_lossy(&resp),
            String::from_utf8_lossy(&body[..body.len().min(600)])
        );
        if code >= 400 {
            error_of(code, &resp, t.path);
        }
        if i % 100 == 0 {
            assert!(status_ok(&url), "server down after request {i}");
            peak = peak.max(rss_bytes());
        }
    }
    eprintln!("fuzz: {N} requests, statuses {by_status:?}, RSS {rss0} -> peak {peak} bytes");
    eprintln!("fuzz: seconds per route {by_path:?}");
    assert!(status_ok(&url));
    assert!(
        peak < rss0 + (2u64 << 30),
        "RSS grew from {rss0} to {peak} bytes"
    );
    // The cached dataset is still there and answers.
    let h = remote
        .hidden_states(&SampleKey::new("d", 1), 1, None)
        .unwrap();
    assert_eq!(h.dims()[0], 1);
}

// ------------------------------------------------------------------------- server defects

#[test]
fn huge_prompts_are_refused_before_they_are_tokenized() {
    let srv = server(opts());
    let url = srv.url();
    // Over the /forward body limit (16 MiB): refused while reading the body (just over it, so
    // the whole body fits the socket buffers and the client reads the answer).
    let big = "x".repeat((16 << 20) + (64 << 10));
    let body = json!({"dataset": "p", "sample": {"index": 0, "prompt": big}}).to_string();
    let (code, resp) = raw(
        "POST",
        &format!("{url}/forward"),
        None,
        JSON,
        body.as_bytes(),
    );
    assert_eq!(code, 413, "{}", error_of(code, &resp, "20 MB prompt"));
    // Under the body limit but longer than max_position_embeddings (4096) × 64 bytes.
    let long = "pack my box ".repeat(30_000);
    let body = json!({"dataset": "p", "sample": {"index": 0, "prompt": long}}).to_string();
    let (code, resp) = raw(
        "POST",
        &format!("{url}/forward"),
        None,
        JSON,
        body.as_bytes(),
    );
    let msg = error_of(code, &resp, "360 kB prompt");
    assert_eq!(code, 413, "{msg}");
    assert!(msg.contains("too long") && msg.contains("262144"), "{msg}");
    let body = json!({"dataset": "p", "samples": [{"index": 0, "prompt": "hi"}, {"index": 1, "prompt": long}]})
        .to_string();
    let (code, resp) = raw(
        "POST",
        &format!("{url}/batch_forward"),
        None,
        JSON,
        body.as_bytes(),
    );
    assert_eq!(code, 413, "{}", error_of(code, &resp, "batch"));
    // A getter body over its 1 MiB limit.
    let body = format!(
        r#"{{"dataset":"d","sample":0,"layer":0,"pos_ids":[{}0]}}"#,
        "0,".repeat(600_000)
    );
    let (code, _) = raw(
        "POST",
        &format!("{url}/hidden_states"),
        None,
        JSON,
        body.as_bytes(),
    );
    assert_eq!(code, 413);
    assert!(status_ok(&url));
    // Locally the same bound holds, before tokenization.
    let local = local();
    let e = local
        .forward_sample("p", &input(0, &long), &CaptureSpec::full(), false)
        .unwrap_err();
    assert!(format!("{e:#}").contains("too long"), "{e:#}");
}

fn node_grad_body(steps: Value, adaptive: Value) -> Vec<u8> {
    let j = json!({"dataset": "d", "sample": 0, "request": {"node_type": "lm_head", "layer": L,
        "head": null, "pos_ids": [3], "src_pos_ids": [3], "ig": {"rule": "seed", "steps": steps},
        "adaptive": adaptive}});
    encode_request(&j, &[]).unwrap()
}

#[test]
fn ig_resolution_is_capped_on_the_server_and_locally() {
    let srv = server(opts());
    let url = srv.url();
    let remote = Remote::connect(&url, None).unwrap();
    forward_all(&remote, "d", &[0]);
    for (case, body, needle) in [
        (
            "steps 1e12",
            node_grad_body(json!(1_000_000_000_000u64), Value::Null),
            "MINARC_MAX_IG_RESOLUTION",
        ),
        (
            "steps 40000",
            node_grad_body(json!(40_000), Value::Null),
            "1024",
        ),
        (
            "adaptive max 1e12",
            node_grad_body(
                json!(2),
                json!({"tol": 0.1, "max_resolution": 1_000_000_000_000u64}),
            ),
            "max_resolution",
        ),
        (
            "adaptive NaN-like tol",
            node_grad_body(json!(2), json!({"tol": -1.0, "max_resolution": 8})),
            "tol",
        ),
    ] {
        let (code, resp) = raw("POST", &format!("{url}/node_gradient"), None, OCTET, &body);
        let msg = error_of(code, &resp, case);
        assert_eq!(code, 400, "{case}: {msg}");
        assert!(msg.contains(needle), "{case}: {msg}");
    }
    assert!(status_ok(&url));
    // The Rust API refuses the same rules.
    let rule = minarc::attribution::IgRule::Seed { steps: 1 << 40 };
    assert!(rule.points().is_err());
    assert!(
        minarc::attribution::IgRule::Seed { steps: 1024 }
            .points()
            .is_ok()
    );
}

/// A prompt of about `tokens` tokens for the fixture tokenizer.
fn long_prompt(local: &Local, tokens: usize) -> String {
    let unit = "pack my box with five dozen liquor jugs. ";
    let per = local.encode(&unit.repeat(10)).unwrap().len() as f64 / 10.0;
    unit.repeat((tokens as f64 / per) as usize)
}

#[test]
fn a_timed_out_request_is_cancelled_and_frees_the_heavy_lock() {
    let backend = local();
    let prompt = long_prompt(&backend, 3500);
    let seq_len = backend
        .forward_sample("long", &input(0, &prompt), &CaptureSpec::full(), false)
        .unwrap();
    assert!(seq_len > 3000, "{seq_len}");
    let srv = minarc::remote::RunningServer::start(
        backend,
        ServeOptions {
            timeout: std::time::Duration::from_secs(1),
            ..opts()
        },
    )
    .unwrap();
    let url = srv.url();
    // attn_k over the whole sequence with 1024 IG steps: 64 chunks, far longer than 1 s (about
    // 17 s here without cancellation; one chunk takes tens of milliseconds).
    let pos: Vec<usize> = (seq_len - 50..seq_len).collect();
    let j = json!({"dataset": "long", "sample": 0, "request": {"node_type": "attn_k", "layer": 1,
        "head": 0, "pos_ids": pos, "src_pos_ids": pos, "ig": {"rule": "seed", "steps": 1024}}});
    let g = Tensor::ones((1, 50, 64), DType::F32, &Device::Cpu).unwrap();
    let body = encode_request(&j, &[("output_grad", &g)]).unwrap();
    let (code, resp) = raw("POST", &format!("{url}/node_gradient"), None, OCTET, &body);
    let msg = String::from_utf8_lossy(&resp);
    assert_eq!(code, 503, "{msg}");
    assert!(msg.contains("longer than the server's 1s limit"), "{msg}");
    // Without cancellation the lock stays taken for many seconds and this heavy request
    // (same 1 s limit) would time out too.
    let body =
        json!({"dataset": "short", "sample": {"index": 0, "prompt": "pack my box"}}).to_string();
    let (code, resp) = raw(
        "POST",
        &format!("{url}/forward"),
        None,
        JSON,
        body.as_bytes(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
}

#[test]
fn load_model_refuses_absurd_configs_and_keeps_serving() {
    let srv = server(opts());
    let url = srv.url();
    for (key, value, needle) in [
        (
            "max_position_embeddings",
            json!(1_000_000_000_000u64),
            "max_position_embeddings",
        ),
        ("rms_norm_eps", json!(100000.0), "rms_norm_eps"),
        ("vocab_size", json!(1u64 << 40), "vocab_size"),
        ("rope_theta", json!(0.0), "rope_theta"),
    ] {
        let dir = bad_copy(|cfg| cfg[key] = value.clone());
        let body = json!({"model_path": dir.path()}).to_string();
        let (code, resp) = raw(
            "POST",
            &format!("{url}/load_model"),
            None,
            JSON,
            body.as_bytes(),
        );
        let msg = error_of(code, &resp, key);
        assert!(msg.contains(needle), "{key}: {msg}");
        assert!(status_ok(&url));
        // and locally
        let e = Local::load(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .expect(key);
        assert!(format!("{e:#}").contains(needle), "{e:#}");
    }
}

/// A copy of the fixture folder with its config.json edited.
fn bad_copy(edit: impl Fn(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(model_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let p = dir.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, cfg.to_string()).unwrap();
    dir
}

#[test]
fn getters_refuse_fields_that_do_not_apply_and_empty_positions_everywhere() {
    let srv = server(opts());
    let url = srv.url();
    let remote = Remote::connect(&url, None).unwrap();
    forward_all(&remote, "d", &[0]);
    for (path, body, needle) in [
        (
            "/mlp_output",
            r#"{"dataset":"d","sample":0,"layer":0,"heads":1}"#,
            "heads",
        ),
        (
            "/hidden_states",
            r#"{"dataset":"d","sample":0,"layer":0,"heads":[0]}"#,
            "heads",
        ),
        (
            "/logits",
            r#"{"dataset":"d","sample":0,"layer":1}"#,
            "layer",
        ),
        (
            "/logits",
            r#"{"dataset":"d","sample":0,"pos_ids":[]}"#,
            "pos_ids",
        ),
    ] {
        let (code, resp) = raw("POST", &format!("{url}{path}"), None, JSON, body.as_bytes());
        let msg = error_of(code, &resp, path);
        assert_eq!(code, 400, "{path}: {msg}");
        assert!(msg.contains(needle), "{path}: {msg}");
    }
    // Local and remote refuse the same empty position lists.
    let local = local();
    forward_all(&local, "d", &[0]);
    let key = SampleKey::new("d", 0);
    for b in [&local as &dyn Backend, &remote] {
        assert!(b.hidden_states(&key, 0, Some(&[])).is_err());
        assert!(b.logits(&key, Some(&[])).is_err());
        assert!(
            b.attn_weights(&key, 0, &minarc::backend::HeadSel::One(0), Some(&[]))
                .is_err()
        );
        assert!(b.hidden_states(&key, 0, Some(&[1])).is_ok());
    }
}

#[test]
fn serve_has_a_default_activation_cache_budget() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: minarc::remote::cli::ServeArgs,
    }
    let parse = |args: &[&str]| {
        let mut v = vec!["serve", "--model", "default"];
        v.extend(args);
        Cli::parse_from(v).serve.options().unwrap().cache_bytes
    };
    let total = minarc::limits::total_memory().unwrap();
    assert_eq!(parse(&[]), Some((total / 4) as usize));
    assert_eq!(parse(&["--cache-bytes", "512M"]), Some(512 << 20));
    assert_eq!(parse(&["--cache-bytes", "unlimited"]), None);
    assert!(minarc::remote::cli::parse_cache_bytes("lots").is_err());
}

// ------------------------------------------------------------------------ loader defects

/// Overwrites element 5 of tensor `name` in a single-file fixture with `bits` (f32).
fn poke_f32(file: &Path, name: &str, bits: u32) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 5 * 4;
    let mut bytes = bytes;
    bytes[at..at + 4].copy_from_slice(&bits.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn non_finite_weights_are_refused_on_load_unless_the_check_is_skipped() {
    let name = "model.layers.1.mlp.up_proj.weight";
    for (what, bits) in [
        ("NaN", 0x7fc0_0000u32),
        ("inf", 0x7f80_0000),
        ("-inf", 0xff80_0000),
    ] {
        let dir = bad_copy(|_| {});
        poke_f32(&dir.path().join("model.safetensors"), name, bits);
        let e = Local::load(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .expect(what);
        let msg = format!("{e:#}");
        assert!(
            msg.contains(name) && msg.contains("model.safetensors") && msg.contains("element 5"),
            "{what}: {msg}"
        );
        let skip = minarc::model::LoadOptions {
            check_finite: false,
            ..Default::default()
        };
        Local::load_with(dir.path(), DType::F32, &Device::Cpu, &skip).unwrap();
    }
}

#[test]
fn shard_names_cannot_escape_the_model_folder() {
    for bad in [
        "../model.safetensors",
        "/etc/passwd",
        "a/../../x.safetensors",
    ] {
        let dir = bad_copy(|_| {});
        let index = json!({"metadata": {}, "weight_map": {"model.norm.weight": bad}});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let e = Local::load(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .expect(bad);
        let msg = format!("{e:#}");
        assert!(
            msg.contains("inside the model folder") && msg.contains(bad),
            "{msg}"
        );
    }
}

#[test]
fn labels_outside_the_candidates_are_refused_locally_and_remotely() {
    let srv = server(opts());
    let remote = Remote::connect(&srv.url(), None).unwrap();
    let local = local();
    let ids = local.encode(PROMPTS[0]).unwrap();
    let last = ids.len() - 1;
    let bad = SampleInput {
        index: 0,
        prompt: PROMPTS[0].into(),
        labels: vec![ids[last]],
        candidate_ids: vec![ids[last] + 1, ids[last] + 2],
        answer_indices: vec![last - 1],
        objective: Default::default(),
    };
    let out_of_vocab = SampleInput {
        labels: vec![1 << 30],
        candidate_ids: vec![],
        ..bad.clone()
    };
    for b in [&local as &dyn Backend, &remote] {
        let e = b
            .forward_sample("c", &bad, &CaptureSpec::full(), false)
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("not among the candidate_ids"),
            "{e:#}"
        );
        let e = b
            .forward_sample("c", &out_of_vocab, &CaptureSpec::full(), false)
            .unwrap_err();
        assert!(format!("{e:#}").contains("vocab size"), "{e:#}");
        let ok = SampleInput {
            candidate_ids: vec![ids[last], ids[last] + 1],
            ..bad.clone()
        };
        b.forward_sample("c", &ok, &CaptureSpec::full(), false)
            .unwrap();
    }
}

// ------------------------------------------------------------------------------- scripts

fn host() -> (Host, minarc::script::SharedBuf) {
    let (out, buf) = Output::buffer();
    let h = Host::with_output(out);
    h.state().set_show_progress(false);
    (h, buf)
}

#[test]
fn hostile_script_arguments_get_clear_errors_and_keep_the_session() {
    let (mut h, _) = host();
    let prelude = format!(
        r#"let m = load_model("{}");
let ds = gen_dataset(#{{relations: "side+at", seeds: [0, 1], tokenizer: tokenizer(m)}});
let rs = forward(m, "d", ds);
let r = rs[0];
let g = Graph(m, 1);
let lm = Node(g, m.n_layers, (), "lm_head", "A-->A-");
let t = ones([2, 3]);
let cl = cluster_heads([[0, 0, ones([1, 2, 3])], [0, 1, ones([1, 2, 3])]]);
"#,
        model_dir().display()
    );
    let _ = h.eval_source("prelude", &prelude, true).unwrap();
    let loads = h.state().load_count();
    let before = h
        .eval_source("x", "get_hidden_states(m, r, 1).sum()", true)
        .unwrap()
        .as_float()
        .unwrap();
    // (call, words the error must contain)
    let cases: &[(&str, &[&str])] = &[
        (
            "zeros([100000, 100000])",
            &["10000000000 elements", "MINARC_MAX_TENSOR_ELEMS"],
        ),
        ("ones([9223372036854775807, 2])", &["limit"]),
        ("zeros([-1])", &[">= 0"]),
        ("zeros([1.5])", &["must be an int"]),
        ("arange(10000000000)", &["limit"]),
        ("arange(-5)", &[">= 0"]),
        ("arange(1e10)", &["Function not found"]),
        ("reshape(t, [4611686018427387904, 4])", &["more elements"]),
        ("t.slice(0, 0, 9223372036854775807)", &["out of range"]),
        ("t.select(0, -9223372036854775807)", &["out of range"]),
        ("take(t, 0, [0, 99])", &["out of range"]),
        ("transpose(t, 0, 9999)", &["out of range"]),
        ("topk_md(t, -1)", &[">= 0"]),
        ("sum(t, 99)", &["out of range"]),
        ("cat([t, t], 99)", &["out of range"]),
        ("ones([100000, 3]) + ones([100000, 1, 3])", &["limit"]),
        (
            "einsum(\"i,j->ij\", [ones([100000]), ones([100000])])",
            &["10000000000 elements", "MINARC_MAX_TENSOR_ELEMS"],
        ),
        (
            "matmul(ones([100000, 1]), ones([1, 100000]))",
            &["MINARC_MAX_TENSOR_ELEMS"],
        ),
        ("einsum(\"ii->i\", [t])", &["repeated"]),
        ("einsum(\"ij,jk\", [t, t])", &["explicit output"]),
        ("matmul(t, t)", &["inner dims differ"]),
        ("softmax(t, 99)", &["out of range"]),
        ("where(t.gt(0), ones([5]), 0)", &["do not broadcast"]),
        (
            "{ let b = ones([10000, 10000]); stack([b, b, b], 0) }",
            &["limit"],
        ),
        ("fmt_num(1.0, 1000)", &["0..=17"]),
        ("gen_puzzle(#{n: 100000, m: 100000})", &["too large"]),
        ("gen_puzzle(#{n_train: 1000000})", &["too many examples"]),
        ("gen_puzzle(#{n: -1})", &[">= 0"]),
        ("gen_puzzle(#{n_color: 1e9})", &["must be an int"]),
        (
            "gen_dataset(#{seeds: [0, 1000000000]})",
            &["MINARC_MAX_BATCH_SAMPLES"],
        ),
        (
            "gen_dataset(#{seeds: \"0..1000000000\"})",
            &["MINARC_MAX_BATCH_SAMPLES"],
        ),
        ("gen_dataset(#{seeds: [5, 2]})", &["empty"]),
        ("positions(ds[0], \"A\", 1000000000)", &["out of range"]),
        ("init_model(\"tiny\", -1)", &[">= 0"]),
        ("Graph(m, -1)", &["positive"]),
        ("Node(g, 1000000, 0, \"attn_v\")", &["layer 1000000"]),
        ("Node(g, 0, 1000000, \"attn_v\")", &["head 1000000"]),
        ("Node(g, 0, -3, \"attn_v\")", &[">= 0"]),
        ("get_hidden_states(m, r, 99)", &["layer 99"]),
        ("get_hidden_states(m, r, -1)", &[">= 0"]),
        ("get_hidden_states(m, r, 0, [])", &["empty"]),
        ("get_hidden_states(m, r, 0, [99999999])", &["99999999"]),
        ("get_hidden_states(m, r, 0, [1.5])", &["must be an int"]),
        ("get_head_output(m, r, 0, 99)", &["head 99"]),
        ("get_head_output(m, r, 0, [])", &["empty"]),
        ("get_attn_weights(m, r, 0, 0, [])", &["empty"]),
        ("get_logits(m, r, [])", &["empty"]),
        (
            "set_ig_rule(g, \"seed\", 1000000000000)",
            &["MINARC_MAX_IG_RESOLUTION"],
        ),
        ("set_ig_rule(g, \"seed\", -1)", &[">= 0"]),
        ("set_ig_rule(g, \"seed\", 1e12)", &["Function not found"]),
        ("set_ig_rule(g, \"gauss\", 0)", &["n >= 1"]),
        (
            "set_adaptive(g, 0.01, 1000000000000)",
            &["MINARC_MAX_IG_RESOLUTION"],
        ),
        ("set_adaptive(g, 0.0 / 0.0, 10)", &["tol"]),
        (
            "get_top_heads(zeros([2, 5, 1]), 3, 9223372036854775807)",
            &["head columns"],
        ),
        (
            "rank_heads(zeros([2, 5, 1]), 3, 4, \"nope\")",
            &["unknown head ranking"],
        ),
        (
            "get_attn_attrs_on_dataset(g, m, rs, 99, 0, [lm])",
            &["layer 99"],
        ),
        ("attribute_attn_weights(g, m, r, -1, 0, [lm])", &[">= 0"]),
        ("tree_attr(AttrTree(), 5)", &["does not exist"]),
        ("eval_head_lens(m, r, 0, 99)", &["head 99"]),
        ("eval_logit_lens(m, r, #{from_layer: 99})", &["99"]),
        ("eval_logit_lens(m, r, #{topk: -1})", &["option topk", "-1"]),
        (
            "eval_logit_lens(m, r, #{topk: 1.5})",
            &["option topk", "non-negative int"],
        ),
        (
            "eval_logit_lens(m, r, #{nope: 1})",
            &["unknown option", "topk"],
        ),
        (
            "load_model(\"/nonexistent\", #{check_weights: 1})",
            &["option check_weights"],
        ),
        (
            "show_attn(m, r, 0, 0, #{last_k: 1000000000})",
            &["out of range"],
        ),
        ("merge_gqa_groups(graph_view(g), 0, 0)", &["positive"]),
        (
            "plot_clustering(cl, \"/tmp/minarc-hardening.png\", #{figsize: [1e9, 1e9]})",
            &["out of range"],
        ),
        ("forward(m, \"d2\", ds, #{layers: [99]})", &["layer 99"]),
        (
            "forward(m, \"d2\", ds, #{positions: [1000000]})",
            &["1000000"],
        ),
        ("forward(m, \"d2\", ds, #{positions: []})", &["empty"]),
        (
            "cluster_heads([[0, 0, ones([1, 2, 3])], [0, 1, ones([1, 2, 3])]], #{threshold: 0.0 / 0.0})",
            &["threshold"],
        ),
        (
            "cluster_heads([[0, 0, ones([1, 2, 3])], [0, 1, ones([1, 2, 3])]], #{threshold: \"x\"})",
            &["option threshold", "expected a number"],
        ),
        ("load_tensor(\"/dev/zero\")", &["not a regular file"]),
        ("load_model(\"/dev/zero\")", &["config"]),
    ];
    for (call, words) in cases {
        let e = h
            .eval_source("case", &format!("let v = {call};"), true)
            .err()
            .unwrap_or_else(|| panic!("{call}: no error"));
        let msg = e.to_string();
        for w in *words {
            assert!(msg.contains(w), "{call}: error {msg:?} lacks {w:?}");
        }
    }
    // Huge but harmless: clamped, not allocated.
    for ok in [
        "topk_md(t, 9223372036854775807).len() == 6",
        "eval_logit_lens(m, r, #{topk: 1000000000000}).type_of() == \"map\"",
        "rank_heads(zeros([2, 5, 1]), 1000000000, 4, \"abs\").len() == 8",
        // an int where a number is expected is fine
        "cluster_heads([[0, 0, ones([1, 2, 3])], [0, 1, ones([1, 2, 3])]], #{threshold: 1}).threshold == 1.0",
    ] {
        let v = h.eval_source("ok", ok, true).unwrap();
        assert!(v.as_bool().unwrap(), "{ok}");
    }
    // The session kept its model, cache and graph.
    assert_eq!(h.state().load_count(), loads);
    let after = h
        .eval_source("x", "get_hidden_states(m, r, 1).sum()", true)
        .unwrap()
        .as_float()
        .unwrap();
    assert_eq!(before, after);
    let n = h.eval_source("x", "g.nodes.len()", true).unwrap();
    assert_eq!(n.as_int().unwrap(), 1);
}

#[test]
fn errors_in_imported_modules_name_the_module_file_line_and_import_chain() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(
        lib.join("m.rhai"),
        "fn f(x) {\n    let y = 1;\n    x.nope()\n}\nfn g(x) { f(x) }\n",
    )
    .unwrap();
    std::fs::write(lib.join("bad.rhai"), "let a = 1;\nthrow \"boom\";\n").unwrap();
    let main = dir.path().join("main.rhai");
    std::fs::write(&main, "import \"lib/m\" as m;\nlet a = 1;\nm::g(3);\n").unwrap();
    let (mut h, _) = host();
    let e = h.run_file(&main).unwrap_err();
    let (mname, main_name) = (
        lib.join("m.rhai").display().to_string(),
        main.display().to_string(),
    );
    assert_eq!(e.source_name, mname);
    assert_eq!((e.line, e.col), (Some(3), Some(7)));
    assert_eq!(e.source_line.as_deref(), Some("    x.nope()"));
    let text = e.to_string();
    assert!(text.starts_with(&format!("{mname}:3:7: ")), "{text}");
    assert!(
        text.contains(&format!("in call to function 'f' at {mname}:5:11")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "in call to function 'g' (defined in {mname}) at {main_name}:3:4"
        )),
        "{text}"
    );
    // An error while the module itself runs: located in the module, the import is a frame.
    std::fs::write(&main, "let z = 0;\nimport \"lib/bad\" as b;\n").unwrap();
    let e = h.run_file(&main).unwrap_err();
    let bname = lib.join("bad.rhai").display().to_string();
    assert_eq!((e.source_name.as_str(), e.line), (bname.as_str(), Some(2)));
    assert!(
        e.to_string()
            .contains(&format!("in import of module '{bname}' at {main_name}:2:")),
        "{e}"
    );
    // The shipped scripts' module: an error inside common.rhai names common.rhai.
    let e = h
        .run_file(&repo_script_with_bad_args())
        .unwrap_err()
        .to_string();
    assert!(e.contains("lib/common.rhai:"), "{e}");
}

/// scripts/top_heads.rhai run with an unknown option (common::parse_args throws).
fn repo_script_with_bad_args() -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let p = dir.join("t.rhai");
    let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/common");
    std::fs::write(
        &p,
        format!(
            "import \"{}\" as c;\nc::parse_args([\"--nope\", \"1\"], #{{a: 1}});\n",
            common.display()
        ),
    )
    .unwrap();
    p
}

fn minarc() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_minarc"))
}

#[test]
fn user_facing_errors_carry_no_backtrace_unless_debug_is_asked() {
    let out = minarc()
        .args(["serve", "--model", "/nonexistent/model"])
        .env("RUST_BACKTRACE", "1")
        .env_remove("MINARC_DEBUG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: loading model /nonexistent/model"),
        "{err}"
    );
    assert!(
        !err.contains("backtrace") && err.lines().count() == 1,
        "{err}"
    );
    // a script error from candle-backed code with RUST_BACKTRACE=full
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}",
    )
    .unwrap();
    let script = dir.path().join("s.rhai");
    std::fs::write(
        &script,
        format!(
            "load_tensor(\"{}\")",
            dir.path().join("bad.safetensors").display()
        ),
    )
    .unwrap();
    let out = minarc()
        .args(["run", script.to_str().unwrap()])
        .env("RUST_BACKTRACE", "full")
        .env_remove("MINARC_DEBUG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("   0: "),
        "{err}"
    );
    // --debug / MINARC_DEBUG=1 show it.
    for debug in [("--debug", "0"), ("", "1")] {
        let mut c = minarc();
        if !debug.0.is_empty() {
            c.arg(debug.0);
        }
        let out = c
            .args(["serve", "--model", "/nonexistent/model"])
            .env("RUST_BACKTRACE", "1")
            .env("MINARC_DEBUG", debug.1)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Stack backtrace"), "{debug:?}: {err}");
    }
}

#[test]
fn connect_sends_the_token_in_minarc_token() {
    let srv = server(ServeOptions {
        token: Some("s3cret".into()),
        ..opts()
    });
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("c.rhai");
    std::fs::write(
        &script,
        format!("let m = connect(\"{}\");\nprint(m.n_layers);\n", srv.url()),
    )
    .unwrap();
    let run = |token: Option<&str>| {
        let mut c = minarc();
        c.args(["run", script.to_str().unwrap()]);
        match token {
            Some(t) => c.env("MINARC_TOKEN", t),
            None => c.env_remove("MINARC_TOKEN"),
        };
        c.output().unwrap()
    };
    let ok = run(Some("s3cret"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), format!("{L}\n"));
    let denied = run(None);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("bearer token"));
}
