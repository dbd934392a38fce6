//! Every shipped script (`scripts/*.rhai`, `examples/*.rhai`) runs on the tiny fixture model and
//! its printed numbers and returned values are checked for sanity; top_heads.rhai is checked
//! against its own saved attribution tensor (read back independently), and gives the same top
//! heads and scores on a local model and through `minarc serve`.

use minarc::script::{Host, Output, SharedBuf};
use rhai::{Array, Dynamic, Map};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Layers and heads of the tiny preset.
const L: usize = 2;
const H: usize = 4;

/// The tiny fixture model folder (written once per test binary).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("minarc-scripts-fixture")
            .tempdir()
            .unwrap()
            .keep();
        minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 5, &dir, 1)
            .unwrap();
        dir
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The .rhai files of a folder (not recursive: scripts/lib and scripts/reference are not scripts).
fn rhai_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    v.sort();
    v
}

/// Script-specific arguments on top of `--model DIR --out DIR`.
fn extra_args(name: &str) -> Vec<String> {
    let v: &[&str] = match name {
        // k = 5 of the tiny model's 8 heads: the ranking must keep the 5 largest magnitudes
        "top_heads.rhai" => &["--n", "2", "--k", "5"],
        "expand.rhai" => &["--n", "2"],
        "head_roles.rhai" => &["--n", "2"],
        "sharded.rhai" => &["--n", "3"],
        "validate.rhai" => &["--n", "2", "--k", "4", "--draws", "2", "--each", "1"],
        _ => &[],
    };
    v.iter().map(|s| s.to_string()).collect()
}

struct Run {
    value: Dynamic,
    out: String,
}

/// Runs a script in a fresh host with `--model model --out out` plus its extra arguments.
fn run_script(path: &Path, model: &str, out: &Path) -> Run {
    run_script_with(path, model, out, &[])
}

/// As [`run_script`] with more arguments.
fn run_script_with(path: &Path, model: &str, out: &Path, more: &[&str]) -> Run {
    let (output, buf): (Output, SharedBuf) = Output::buffer();
    let mut host = Host::with_output(output);
    host.state().set_show_progress(false);
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut args = vec![
        "--model".to_string(),
        model.to_string(),
        "--out".to_string(),
        out.display().to_string(),
    ];
    args.extend(extra_args(name));
    args.extend(more.iter().map(|s| s.to_string()));
    let value = minarc::script::runner::run(&mut host, path, args)
        .unwrap_or_else(|e| panic!("{name} failed:\n{e}\noutput:\n{}", buf.contents()));
    Run {
        value,
        out: buf.contents(),
    }
}

fn map(v: &Dynamic) -> Map {
    v.clone()
        .try_cast::<Map>()
        .expect("the script returns a map")
}

fn num(v: &Dynamic) -> f64 {
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .unwrap_or_else(|t| panic!("expected a number, got {t}"))
}

fn array(v: &Dynamic) -> Array {
    v.clone().into_array().expect("an array")
}

/// Every number-looking word of the output parses to a finite value; no NaN anywhere.
fn check_finite_output(name: &str, out: &str) {
    assert!(!out.contains("NaN"), "{name} printed NaN:\n{out}");
    for w in out.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')') {
        if w.contains('.')
            && w.trim_start_matches('-')
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
            && w.chars().any(|c| c.is_ascii_digit())
            && let Ok(x) = w.parse::<f64>()
        {
            assert!(x.is_finite(), "{name} printed {w}");
        }
    }
}

/// The files a script returned exist and look right: PNG signature, self-contained HTML, JSON.
fn check_files(name: &str, files: &Array) {
    assert!(!files.is_empty(), "{name} wrote no files");
    for f in files {
        let p = PathBuf::from(f.clone().into_string().unwrap());
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{name}: {}: {e}", p.display()));
        assert!(bytes.len() > 100, "{name}: {} is nearly empty", p.display());
        match p.extension().and_then(|e| e.to_str()) {
            Some("png") => assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display()),
            Some("html") => {
                let t = String::from_utf8(bytes).unwrap();
                assert!(
                    t.contains("<html") || t.contains("<!DOCTYPE"),
                    "{}",
                    p.display()
                );
                assert!(
                    !t.contains("http://") && !t.contains("https://"),
                    "{} references the network",
                    p.display()
                );
            }
            Some("json") => {
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
            }
            Some("safetensors") => {
                candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
            }
            other => panic!("{name}: unexpected file type {other:?}"),
        }
    }
}

/// [layer, head, Σ|attr|] rows (or rank_heads' [layer, head, score, abs] rows, returned as
/// (layer, head, abs)): valid heads, finite non-negative magnitudes (|score| ≤ abs), no
/// duplicates.
fn check_top_heads(name: &str, top: &Array, max_layer: usize) -> Vec<(usize, usize, f64)> {
    assert!(!top.is_empty(), "{name}: no top heads");
    let rows: Vec<(usize, usize, f64)> = top
        .iter()
        .map(|t| {
            let t = array(t);
            if t.len() == 4 {
                let (score, abs) = (num(&t[2]), num(&t[3]));
                assert!(
                    score.is_finite() && score.abs() <= abs + 1e-9,
                    "{name}: {score} {abs}"
                );
                (num(&t[0]) as usize, num(&t[1]) as usize, abs)
            } else {
                (num(&t[0]) as usize, num(&t[1]) as usize, num(&t[2]))
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for &(l, h, s) in &rows {
        assert!(l < max_layer && h < H, "{name}: head {l}-{h} out of range");
        assert!(s.is_finite() && s >= 0.0, "{name}: score {s} of {l}-{h}");
        assert!(seen.insert((l, h)), "{name}: {l}-{h} listed twice");
    }
    rows
}

fn check_top_heads_run(r: &Run, out: &Path) {
    for h in ["TOP HEADS", "CLUSTERING SUMMARY", "SUMMARY", "rank head"] {
        assert!(
            r.out.contains(h),
            "top_heads output lacks {h:?}:\n{}",
            r.out
        );
    }
    let m = map(&r.value);
    let acc = num(&m["accuracy"]);
    let lp = num(&m["logprob"]);
    assert!((0.0..=1.0).contains(&acc), "accuracy {acc}");
    assert!(lp.is_finite() && lp <= 0.0, "log-prob {lp}");
    // --k 5 of the 8 heads, ranked by magnitude (the default --rank abs).
    let top = check_top_heads("top_heads", &array(&m["top_heads"]), L);
    assert_eq!(top.len(), 5);
    // Independent check against the saved attribution [L, H+1, 1]: the rows are the 5 heads of
    // largest |attr| in decreasing order (none of the large ones missing), each with its signed
    // score attr[l][h] and magnitude |attr[l][h]|.
    let t = candle_core::safetensors::load(out.join("attr.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let attr = t["tensor"].clone();
    assert_eq!(attr.dims(), &[L, H + 1, 1]);
    let a = attr.squeeze(2).unwrap().to_vec2::<f32>().unwrap();
    let mut by_mag: Vec<(usize, usize)> =
        (0..L).flat_map(|l| (0..H).map(move |h| (l, h))).collect();
    by_mag.sort_by(|x, y| a[y.0][y.1].abs().total_cmp(&a[x.0][x.1].abs()));
    let rows = array(&m["top_heads"]);
    for (i, row) in rows.iter().enumerate() {
        let row = array(row);
        let (l, h) = (num(&row[0]) as usize, num(&row[1]) as usize);
        assert_eq!((l, h), by_mag[i], "rank {i}");
        assert!(
            (num(&row[2]) - a[l][h] as f64).abs() < 1e-6,
            "signed score of {l}-{h}"
        );
        assert!(
            (num(&row[3]) - a[l][h].abs() as f64).abs() < 1e-6,
            "|score| of {l}-{h}"
        );
    }
    assert!(r.out.contains("ranked by |score|"), "{}", r.out);
    // The phases' seconds cover the run without overlap: each ≥ 0, summing to the total.
    let secs = map(&m["seconds"]);
    let total = num(&m["total_seconds"]);
    let phases = [
        "load",
        "dataset",
        "forward",
        "attribution",
        "analysis",
        "figures",
    ];
    assert_eq!(secs.len(), phases.len(), "{secs:?}");
    let sum: f64 = phases.iter().map(|p| num(&secs[*p])).sum();
    assert!(phases.iter().all(|p| num(&secs[*p]) >= 0.0), "{secs:?}");
    assert!(
        total > 0.0 && (sum - total).abs() <= 1e-9 * total.max(1.0),
        "{sum} vs {total}"
    );
    assert!(r.out.contains("s a puzzle: model"), "{}", r.out);
    // The printed table has one row per head with its signed score and its magnitude.
    for (i, row) in rows.iter().enumerate() {
        let row = array(row);
        let (l, h) = (num(&row[0]) as usize, num(&row[1]) as usize);
        let line = r
            .out
            .lines()
            .find(|x| x.starts_with(&format!("{:<5}{:<7}", i + 1, format!("{l}-{h}"))))
            .unwrap_or_else(|| panic!("no table row for {l}-{h}:\n{}", r.out));
        let col = |k: usize| -> f64 { line.split_whitespace().nth(k).unwrap().parse().unwrap() };
        let (score, abs) = (num(&row[2]), num(&row[3]));
        assert!(
            (col(2) - score).abs() <= 1e-4 * score.abs().max(1.0),
            "{line}"
        );
        assert!((col(3) - abs).abs() <= 1e-4 * abs.max(1.0), "{line}");
    }
    // W5 columns are fractions / attention masses.
    for row in array(&m["rows"]) {
        let row = map(&row);
        for k in ["acc", "acc0", "a_v", "a_a"] {
            let v = num(&row[k]);
            assert!((0.0..=1.0 + 1e-6).contains(&v), "{k} = {v}");
        }
        // strict (label id) implies non-strict (decoded letter)
        assert!(num(&row["acc0"]) <= num(&row["acc"]) + 1e-12);
    }
    assert!(num(&m["n_groups"]) >= 1.0);
}

fn check_expand_run(r: &Run) {
    let m = map(&r.value);
    assert!(r.out.contains("TREE") && r.out.contains("CLUSTERING SUMMARY"));
    // Small non-zero scores are printed in scientific notation, never as 0.0000.
    assert!(!r.out.contains(" 0.0000"), "{}", r.out);
    let picked = check_top_heads("expand picked", &array(&m["picked"]), L);
    // Level-1 heads sit below the highest picked node's layer.
    let max_picked = picked.iter().map(|p| p.0).max().unwrap();
    check_top_heads("expand level 1", &array(&m["level1_top_heads"]), max_picked);
    let tree = m["tree"].clone().into_string().unwrap();
    assert!(tree.starts_with(&format!(" L{L}")), "{tree}");
    assert_eq!(tree.lines().count(), 2, "{tree}");
}

fn check_logit_lens_run(r: &Run) {
    let m = map(&r.value);
    for k in ["acc", "logprobs"] {
        let t = m[k]
            .clone()
            .try_cast::<minarc::script::tensor::Tensor>()
            .unwrap();
        assert_eq!(t.shape(), vec![L, 3], "{k}");
        let v = t.0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{k}: {v:?}");
        if k == "acc" {
            assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
        } else {
            assert!(v.iter().all(|&x| x <= 0.0));
        }
    }
    assert!(
        r.out.matches("layer ").count() >= L * 3,
        "lens text missing:\n{}",
        r.out
    );
}

fn check_single_head_run(r: &Run) {
    let m = map(&r.value);
    let on_v = array(&m["on_v"]);
    assert_eq!(on_v.len(), 8, "one weight per answer");
    for w in &on_v {
        assert!((0.0..=1.0).contains(&num(w)));
    }
    for k in ["a_v", "a_a"] {
        assert!((0.0..=1.0).contains(&num(&m[k])));
    }
    assert_eq!(array(&m["head_lens"]).len(), 8);
    assert!(r.out.contains("act"), "show_attn rows missing");
}

/// The ablation curve, faithfulness and per-head sweep of validate.rhai, as (name, value) pairs.
fn validate_numbers(m: &Map) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let curve = map(&m["curve"]);
    for part in ["top", "random_mean", "random_std"] {
        let by = map(&curve[part]);
        for metric in ["objective", "accuracy", "logit_diff", "kl"] {
            for (i, v) in array(&by[metric]).iter().enumerate() {
                out.push((format!("{part}.{metric}[{i}]"), num(v)));
            }
        }
    }
    let f = map(&m["circuit"]);
    for part in ["full", "empty", "circuit"] {
        for (k, v) in map(&f[part]) {
            out.push((format!("faithfulness.{part}.{k}"), num(&v)));
        }
    }
    out
}

fn check_validate_run(r: &Run) {
    for h in [
        "ABLATION CURVE",
        "FAITHFULNESS",
        "EACH HEAD ABLATED",
        "top 4 attributed heads",
    ] {
        assert!(r.out.contains(h), "validate output lacks {h:?}:\n{}", r.out);
    }
    let m = map(&r.value);
    let top = check_top_heads("validate", &array(&m["top_heads"]), L);
    assert_eq!(top.len(), 4);
    let curve = map(&m["curve"]);
    assert_eq!(array(&curve["ks"]).len(), 4);
    let ranked = array(&curve["ranked"]);
    for (t, r) in top.iter().zip(&ranked) {
        let r = array(r);
        assert_eq!((t.0, t.1), (num(&r[0]) as usize, num(&r[1]) as usize));
    }
    assert_eq!(num(&curve["draws"]), 2.0);
    for (name, v) in validate_numbers(&m) {
        assert!(v.is_finite(), "validate: {name} = {v}");
    }
    // the ablation leaves the model's predictions somewhere: KL ≥ 0 and accuracy in [0, 1]
    let top_kl = array(&map(&curve["top"])["kl"]);
    assert!(top_kl.iter().all(|v| num(v) >= 0.0));
    assert!(num(&map(&m["each"])["spearman"]).abs() <= 1.0);
    let f = map(&m["circuit"]);
    assert_eq!(num(&f["kept"]), 4.0);
    assert_eq!(num(&f["total"]), (L * (H + 1)) as f64);
}

fn check_patching_run(r: &Run) {
    assert!(r.out.contains("PATCHING corrupt -> clean"), "{}", r.out);
    let m = map(&r.value);
    let effect = m["effect"]
        .clone()
        .try_cast::<minarc::script::tensor::Tensor>()
        .expect("effect is a Tensor");
    assert_eq!(effect.0.dims(), &[L, 8]);
    let rows = effect.0.to_vec2::<f32>().unwrap();
    // the embedding of identical tokens is the same in both puzzles: patching it changes nothing
    assert!(rows[0].iter().all(|&x| x == 0.0), "{rows:?}");
    // the residual at the last A- position carries the other puzzle: it moves the objective
    assert!(rows[L - 1][7].abs() > 1e-4, "{rows:?}");
    for k in ["ablated", "steered"] {
        let kl = num(&map(&m[k])["kl"]);
        assert!(kl > 0.0 && kl.is_finite(), "{k}: KL {kl}");
    }
}

#[test]
fn every_shipped_script_runs_on_the_tiny_fixture() {
    let scripts: Vec<PathBuf> = rhai_files("scripts")
        .into_iter()
        .chain(rhai_files("examples"))
        .collect();
    let names: Vec<String> = scripts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "top_heads.rhai",
        "expand.rhai",
        "logit_lens.rhai",
        "single_head.rhai",
        "validate.rhai",
        "patching.rhai",
    ] {
        assert!(names.iter().any(|n| n == required), "{required} is missing");
    }
    let model = model_dir().display().to_string();
    for (path, name) in scripts.iter().zip(&names) {
        let out = tempfile::tempdir().unwrap();
        let r = run_script(path, &model, out.path());
        check_finite_output(name, &r.out);
        let m = map(&r.value);
        check_files(name, &array(&m["files"]));
        match name.as_str() {
            "top_heads.rhai" => check_top_heads_run(&r, out.path()),
            "expand.rhai" => check_expand_run(&r),
            "logit_lens.rhai" => check_logit_lens_run(&r),
            "single_head.rhai" => check_single_head_run(&r),
            "validate.rhai" => check_validate_run(&r),
            "patching.rhai" => check_patching_run(&r),
            _ => {} // a new script: it ran, printed finite numbers and wrote valid files
        }
    }
}

/// Runs a shipped script on the fixture model locally, then against `minarc serve` holding the
/// same model (with a bearer token when given, passed as the script's --token).
fn local_and_remote(script: &str, token: Option<&str>) -> (Run, Run) {
    let script = repo().join(script);
    let out = tempfile::tempdir().unwrap();
    let local = run_script(&script, &model_dir().display().to_string(), out.path());
    let backend = minarc::backend::Local::load(
        model_dir(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let srv = minarc::remote::RunningServer::start(
        backend,
        minarc::remote::ServeOptions {
            port: 0,
            token: token.map(str::to_string),
            ..Default::default()
        },
    )
    .unwrap();
    let out2 = tempfile::tempdir().unwrap();
    let more: Vec<&str> = token.map(|t| vec!["--token", t]).unwrap_or_default();
    let remote = run_script_with(&script, &srv.url(), out2.path(), &more);
    assert!(
        remote.out.contains("remote"),
        "not served remotely:\n{}",
        remote.out
    );
    srv.shutdown().unwrap();
    (local, remote)
}

#[test]
fn top_heads_gives_the_same_heads_and_scores_locally_and_remotely() {
    // a server with a bearer token, reached with the script's --token option
    let (local, remote) = local_and_remote("scripts/top_heads.rhai", Some("tok-123"));
    let (a, b) = (map(&local.value), map(&remote.value));
    let ta = check_top_heads("local", &array(&a["top_heads"]), L);
    let tb = check_top_heads("remote", &array(&b["top_heads"]), L);
    assert_eq!(ta.len(), tb.len());
    let mut max_diff = 0.0f64;
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!((x.0, x.1), (y.0, y.1), "different head order");
        max_diff = max_diff.max((x.2 - y.2).abs());
    }
    for (ra, rb) in array(&a["rows"]).iter().zip(&array(&b["rows"])) {
        let (ra, rb) = (map(ra), map(rb));
        for k in ["acc", "acc0", "a_v", "a_a", "group"] {
            max_diff = max_diff.max((num(&ra[k]) - num(&rb[k])).abs());
        }
    }
    for k in ["accuracy", "logprob"] {
        max_diff = max_diff.max((num(&a[k]) - num(&b[k])).abs());
    }
    eprintln!("top_heads local vs remote: max |diff| = {max_diff:e}");
    assert!(max_diff <= 1e-6, "local vs remote max |diff| = {max_diff}");
}

#[test]
fn validate_gives_the_same_curve_and_faithfulness_locally_and_remotely() {
    let (local, remote) = local_and_remote("scripts/validate.rhai", None);
    let (a, b) = (map(&local.value), map(&remote.value));
    let heads = |m: &Map| -> Vec<(usize, usize)> {
        check_top_heads("validate", &array(&m["top_heads"]), L)
            .into_iter()
            .map(|t| (t.0, t.1))
            .collect()
    };
    assert_eq!(heads(&a), heads(&b), "different top heads");
    let (na, nb) = (validate_numbers(&a), validate_numbers(&b));
    assert_eq!(na.len(), nb.len());
    for ((name, x), (_, y)) in na.iter().zip(&nb) {
        assert_eq!(x.to_bits(), y.to_bits(), "{name}: local {x} vs remote {y}");
    }
}

#[test]
fn load_model_without_a_path_uses_the_default_model_folder() {
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("d.rhai");
    std::fs::write(
        &script,
        "let m = load_model();\nlet d = load_model(\"default\");\n\
         print(`${m.n_layers} ${m.n_heads} ${m.config.hidden_size}`);\nprint(loaded_models().len());\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", script.to_str().unwrap()])
        .env("MINARC_HOME", home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The small preset: 4 layers, 8 heads, hidden 256; both calls give the same model.
    assert_eq!(stdout, "4 8 256\n1\n");
    assert!(home.path().join("models/small-s0/config.json").exists());
}
