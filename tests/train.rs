//! `minarc train`: the composed training forward against the inference forward and finite
//! differences, the fused causal softmax against the composed one, loss decrease, bit-identical
//! resume, and clear configuration errors.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use minarc::model::ops::{NEG_MASK, causal_softmax, softmax_last};
use minarc::train::config::TrainConfig;
use minarc::train::net::{Net, weighted_nll};
use minarc::train::run::{RunOptions, Trainer, batch_loss, inference_model, run};

/// A small model config: 2 layers, hidden 32, 4 query heads over 2 KV heads (GQA).
fn small_cfg() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.layers = 2;
    c.model.hidden = 32;
    c.model.heads = 4;
    c.model.kv_heads = 2;
    c.model.intermediate = 48;
    c
}

/// A tiny run: 1 layer, 4×4 grids with 2 questions, batch 4.
fn tiny_run(steps: usize) -> TrainConfig {
    let mut c = small_cfg();
    c.model.layers = 1;
    c.puzzles.sizes = vec![[4, 4]];
    c.puzzles.q_train = 2;
    c.optim.steps = steps;
    c.optim.batch = 4;
    c.optim.lr = 3e-3;
    c.optim.warmup = 5;
    c.run.eval_every = 0;
    c.run.eval_samples = 4;
    c.run.final_eval_samples = 4;
    c.run.checkpoint_every = 3;
    c
}

/// max |a − b| of two f64 tensors.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn rand_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn causal_softmax_matches_the_composed_softmax_and_its_gradient() {
    let dev = Device::Cpu;
    let s = 7;
    let x = Tensor::randn(0f64, 2.0, (2, 3, s, s), &dev).unwrap();
    let w = Tensor::randn(0f64, 1.0, (2, 3, s, s), &dev).unwrap();
    let mask: Vec<f64> = (0..s * s)
        .map(|i| if i % s > i / s { NEG_MASK as f64 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, (s, s), &dev).unwrap();
    let composed = |x: &Tensor| softmax_last(&x.broadcast_add(&mask).unwrap()).unwrap();
    // forward
    let a = causal_softmax(&x).unwrap();
    let b = composed(&x);
    let d = max_abs_diff(&a, &b);
    assert!(d < 1e-14, "forward differs by {d}");
    // exact zeros above the diagonal, rows sum to 1
    let flat: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
    for (i, row) in flat.chunks(s).enumerate() {
        let q = i % s;
        assert!(row[q + 1..].iter().all(|&p| p == 0.0));
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    // the composed path (taken for other dtypes and devices) agrees, in bf16
    let bf = causal_softmax(&x.to_dtype(DType::BF16).unwrap())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let d = max_abs_diff(&bf, &a);
    assert!(d < 1e-2, "bf16 composed path differs by {d}");
    // gradient of Σ w ⊙ y: fused backward vs autograd of the composed ops
    let xv = Var::from_tensor(&x).unwrap();
    let ga = (causal_softmax(xv.as_tensor()).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gb = (composed(xv.as_tensor()) * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (ga, gb) = (ga.get(&xv).unwrap(), gb.get(&xv).unwrap());
    let d = max_abs_diff(ga, gb);
    assert!(d < 1e-14, "gradient differs by {d}");
    // and against a central difference on a few entries
    let xs: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let gv: Vec<f64> = ga.flatten_all().unwrap().to_vec1().unwrap();
    let f = |xs: &[f64]| -> f64 {
        let t = Tensor::from_vec(xs.to_vec(), (2, 3, s, s), &dev).unwrap();
        (causal_softmax(&t).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for idx in [s * 3 + 1, s * s + 2 * s + 2, 5 * s * s + s * s - 1, 17] {
        let h = 1e-6;
        let (mut p, mut m) = (xs.clone(), xs.clone());
        p[idx] += h;
        m[idx] -= h;
        let fd = (f(&p) - f(&m)) / (2.0 * h);
        assert!(
            (fd - gv[idx]).abs() < 1e-8,
            "entry {idx}: fd {fd} vs autograd {}",
            gv[idx]
        );
    }
}

#[test]
fn training_forward_matches_the_inference_forward() {
    let tc = small_cfg();
    let cfg = tc.model_config(1024).unwrap();
    let net = Net::init(&cfg, 7, &Device::Cpu).unwrap();
    let model = inference_model(&net).unwrap();
    let (b, s) = (2, 40);
    let ids: Vec<u32> = rand_ids(b * s, 1024, 3);
    let ids_t = Tensor::from_vec(ids.clone(), (b, s), &Device::Cpu).unwrap();
    let rows: Vec<u32> = (0..(b * s) as u32).collect();
    let rows_t = Tensor::from_vec(rows, b * s, &Device::Cpu).unwrap();
    let train = net.logits_at(&ids_t, &rows_t).unwrap(); // [b·s, v]
    for i in 0..b {
        let inf = model
            .forward_logits(&ids[i * s..(i + 1) * s])
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mine = train.narrow(0, i * s, s).unwrap();
        let d = common::max_diff(&inf, &mine);
        let scale = common::max_abs(&inf);
        assert!(
            d < 1e-4 * scale.max(1.0),
            "sequence {i}: max |Δ| {d} (logit scale {scale})"
        );
    }
}

#[test]
fn training_gradients_match_finite_differences() {
    let tc = small_cfg();
    let cfg = tc.model_config(64).unwrap();
    let dev = Device::Cpu;
    let init = Net::init(&cfg, 11, &dev).unwrap();
    // f64 twin with non-trivial norm weights and biases, so their gradients are exercised
    let mut named = init.tensors().unwrap();
    for (name, t) in named.iter_mut() {
        let t64 = t.to_dtype(DType::F64).unwrap();
        let noise = Tensor::randn(0f64, 0.1, t64.dims(), &dev).unwrap();
        *t = if name.ends_with("norm.weight") || name.ends_with(".bias") {
            (t64 + noise).unwrap()
        } else {
            t64
        };
    }
    let net = Net::from_tensors(&cfg, named.clone(), DType::F64, &dev).unwrap();
    let (b, s) = (2, 12);
    let id_vec = rand_ids(b * s, 64, 5);
    let ids = Tensor::from_vec(id_vec.clone(), (b, s), &dev).unwrap();
    let rows = Tensor::new(&[3u32, 11, 12, 17, 23], &dev).unwrap();
    let labels = Tensor::new(&[1u32, 5, 9, 2, 63], &dev).unwrap();
    let weights = Tensor::new(&[1.0f64, 0.5, 1.0, 2.0, 1.0], &dev).unwrap();
    let loss_of =
        |net: &Net| weighted_nll(&net.logits_at(&ids, &rows).unwrap(), &labels, &weights).unwrap();
    let grads = loss_of(&net).backward().unwrap();
    let checks = [
        ("model.embed_tokens.weight", id_vec[3] as usize * 32 + 4),
        ("model.layers.0.input_layernorm.weight", 3),
        ("model.layers.0.self_attn.q_proj.weight", 77),
        ("model.layers.0.self_attn.q_proj.bias", 5),
        ("model.layers.0.self_attn.k_proj.weight", 130),
        ("model.layers.0.self_attn.k_proj.bias", 2),
        ("model.layers.0.self_attn.v_proj.weight", 200),
        ("model.layers.1.self_attn.v_proj.bias", 7),
        ("model.layers.1.self_attn.o_proj.weight", 300),
        ("model.layers.1.post_attention_layernorm.weight", 17),
        ("model.layers.1.mlp.gate_proj.weight", 400),
        ("model.layers.0.mlp.up_proj.weight", 401),
        ("model.layers.1.mlp.down_proj.weight", 402),
        ("model.norm.weight", 30),
        ("lm_head.weight", 63 * 32 + 1),
    ];
    for (name, idx) in checks {
        let i = net.names().iter().position(|n| n == name).unwrap();
        let g: Vec<f64> = grads
            .get(&net.vars()[i])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let shape = named[i].1.dims().to_vec();
        let base: Vec<f64> = named[i].1.flatten_all().unwrap().to_vec1().unwrap();
        let eval = |delta: f64| {
            let mut v = base.clone();
            v[idx] += delta;
            let mut n2 = named.clone();
            n2[i].1 = Tensor::from_vec(v, shape.as_slice(), &dev).unwrap();
            let net2 = Net::from_tensors(&cfg, n2, DType::F64, &dev).unwrap();
            loss_of(&net2).to_scalar::<f64>().unwrap()
        };
        let h = 1e-5;
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        let err = (fd - g[idx]).abs();
        assert!(
            err < 1e-7 + 1e-5 * fd.abs(),
            "{name}[{idx}]: finite difference {fd:.10} vs autograd {:.10}",
            g[idx]
        );
        assert!(
            g[idx].abs() > 1e-9,
            "{name}[{idx}]: zero gradient, the check would be vacuous"
        );
    }
}

#[test]
fn a_few_dozen_steps_lower_the_loss_on_a_fixed_batch() {
    let cfg = tiny_run(40);
    let mut t = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let probe = minarc::train::data::batch(&cfg, 0, t.tokenizer()).unwrap();
    let before = batch_loss(&t.net, &probe, 1.0, 0.0)
        .unwrap()
        .0
        .to_scalar::<f32>()
        .unwrap();
    for _ in 0..40 {
        t.train_step().unwrap();
    }
    let after = batch_loss(&t.net, &probe, 1.0, 0.0)
        .unwrap()
        .0
        .to_scalar::<f32>()
        .unwrap();
    // the initial loss is about ln(vocab) ≈ 6.9; learning the answer format alone takes it
    // to about ln(n_color) ≈ 1.6
    assert!(before > 5.0, "initial loss {before}");
    assert!(
        after < 0.5 * before,
        "loss {before} -> {after} after 40 steps"
    );
}

#[test]
fn resume_continues_bit_identically() {
    let cfg = tiny_run(6);
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let opts = |dir: &std::path::Path, resume: bool, stop_after: Option<usize>| RunOptions {
        out: dir.to_path_buf(),
        resume,
        device: Device::Cpu,
        stop_after,
        init: None,
        progress: false,
    };
    let a = run(cfg.clone(), &opts(straight.path(), false, None)).unwrap();
    assert!(a.finished);
    let b1 = run(cfg.clone(), &opts(split.path(), false, Some(3))).unwrap();
    assert!(!b1.finished && b1.step == 3);
    // a fresh start over existing checkpoints is refused
    let err = run(cfg.clone(), &opts(split.path(), false, None))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    // so is a resume with another configuration
    let mut other = cfg.clone();
    other.optim.lr *= 2.0;
    let err = run(other, &opts(split.path(), true, None)).err().unwrap();
    assert!(
        format!("{err:#}").contains("configuration differs"),
        "{err:#}"
    );
    let b2 = run(cfg.clone(), &opts(split.path(), true, None)).unwrap();
    assert!(b2.finished && b2.step == 6);
    let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        read(straight.path(), "model/model.safetensors"),
        read(split.path(), "model/model.safetensors"),
        "weights after a resumed run differ from an uninterrupted one"
    );
    let hist = |d: &std::path::Path| {
        let v: serde_json::Value = serde_json::from_slice(&read(d, "train.json")).unwrap();
        v["history"].clone()
    };
    assert_eq!(hist(straight.path()), hist(split.path()));
    // the written folder loads as a model with the training-time dataset options
    let local = minarc::backend::local::Local::load(
        &straight.path().join("model"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    use minarc::backend::Backend;
    let opts = local.dataset_options().unwrap();
    assert_eq!(opts["n"], 4);
    assert_eq!(opts["Q_train"], 2);
    assert!(
        straight.path().join("curve.png").is_file() && straight.path().join("curve.svg").is_file()
    );
}

#[test]
fn configuration_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[optim]\nsteps = 0\n", "optim.steps"),
        ("[optim]\nbatch = 100000000\n", "optim.batch"),
        ("[optim]\nlr = -1.0\n", "optim.lr"),
        ("[model]\nheads = 3\n", "model.heads"),
        ("[model]\nlayers = 100000\n", "model.layers"),
        ("[puzzles]\nn_train = [1, 2]\n", "must be at least 3"),
        ("[puzzles]\nsizes = [[3, 3]]\n", "Q_train=4 is impossible"),
        ("[puzzles]\nrelations = \"sideways\"\n", "sideways"),
        ("[run]\nheld_out = 10\n", "run.held_out"),
        ("[optim]\nstep = 10\n", "unknown field"),
    ];
    for (text, want) in cases {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let err = format!("{:#}", TrainConfig::from_file(&p).unwrap_err());
        assert!(err.contains(want), "{text:?}: {err}");
    }
    // the written default round-trips
    let p = dir.path().join("d.toml");
    std::fs::write(&p, TrainConfig::default().to_toml().unwrap()).unwrap();
    assert_eq!(TrainConfig::from_file(&p).unwrap(), TrainConfig::default());
}

#[test]
fn the_word_tokenizer_keeps_keys_whole_and_round_trips() {
    use minarc::puzzle::{PuzzleParams, Sample, gen_puzzle};
    let word = minarc::tokenizer::word_tokenizer().unwrap();
    let bpe = minarc::tokenizer::fixture_tokenizer().unwrap();
    let unk = word.token_to_id(minarc::tokenizer::WORD_UNK).unwrap();
    let cfg = TrainConfig::default();
    for (seed, frame) in [(0, "corner"), (1, "center")] {
        let mut params = PuzzleParams {
            seed,
            n_train: 3,
            ..PuzzleParams::default()
        };
        params.frame = minarc::puzzle::Frame::parse(frame).unwrap();
        for opts in [
            cfg.prompt_options(),
            minarc::puzzle::PromptOptions::default(),
        ] {
            let s = Sample::build(0, gen_puzzle(&params).unwrap(), &opts, Some(&word)).unwrap();
            let enc = word.encode(s.prompt.as_str(), false).unwrap();
            // every cell key of every grid is one token reading " (x,y):"
            let toks = enc.get_tokens();
            let p = s.puzzle.as_ref().unwrap();
            for ex in &p.train {
                let gr = ex.input_ranges.as_ref().unwrap();
                for (ix, col) in gr.cells.iter().enumerate() {
                    for (iy, cell) in col.iter().enumerate() {
                        let k = cell.key.x.token.unwrap();
                        assert_eq!(cell.key.y.token, Some(k));
                        let (x, y) = (
                            ix as i32 + *ex.input.xs().start(),
                            iy as i32 + *ex.input.ys().start(),
                        );
                        assert_eq!(toks[k], format!(" ({x},{y}):"));
                        assert_eq!(cell.color.token, Some(k + 1));
                    }
                }
            }
            if opts.template.is_some() {
                // the compact prompt has no unknown pieces, and is about half the BPE length
                assert!(!enc.get_ids().contains(&unk), "{:?}", toks);
                assert_eq!(word.decode(enc.get_ids(), false).unwrap(), s.prompt);
                let n_bpe = bpe
                    .encode(s.prompt.as_str(), false)
                    .unwrap()
                    .get_ids()
                    .len();
                assert!(
                    10 * toks.len() < 6 * n_bpe,
                    "{} word tokens vs {n_bpe} BPE tokens",
                    toks.len()
                );
            }
        }
    }
}

#[test]
fn the_example_training_config_parses_and_trains() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/train_organism.toml");
    let cfg = TrainConfig::from_file(&path).unwrap();
    assert_eq!(
        cfg.model.tokenizer,
        minarc::train::config::TokenizerKind::Word
    );
    let out = tempfile::tempdir().unwrap();
    let r = run(
        cfg,
        &RunOptions {
            out: out.path().to_path_buf(),
            resume: false,
            device: Device::Cpu,
            stop_after: Some(2),
            init: None,
            progress: false,
        },
    )
    .unwrap();
    assert_eq!((r.step, r.finished), (2, false));
    assert!(out.path().join("checkpoints/step-0000002.json").is_file());
}

/// The three phases of run K, and the four of run Q, chain: each starts from the previous
/// phase's checkpoint (one step each here; the commands are in each file's header).
#[test]
fn the_example_training_phases_parse_and_chain() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/organism");
    for run in [
        ["phase1", "phase2", "phase3"].as_slice(),
        [
            "distinct-phase1",
            "distinct-phase1c",
            "distinct-phase1d",
            "distinct-phase2",
        ]
        .as_slice(),
    ] {
        chain_phases(&dir, run);
    }
    let q = TrainConfig::from_file(&dir.join("distinct-phase2.toml")).unwrap();
    assert_eq!(q.puzzles.filter, minarc::puzzle::QueryFilter::Distinct);
    assert_eq!(
        q.eval_variant().filter,
        minarc::puzzle::QueryFilter::Distinct
    );
}

fn chain_phases(dir: &std::path::Path, phases: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let mut init: Option<std::path::PathBuf> = None;
    for &phase in phases {
        let cfg = TrainConfig::from_file(&dir.join(format!("{phase}.toml"))).unwrap();
        assert_eq!(cfg.model.layers, 4, "{phase}");
        let o = out.path().join(phase);
        let r = run(
            cfg,
            &RunOptions {
                out: o.clone(),
                resume: false,
                device: Device::Cpu,
                stop_after: Some(1),
                init: init.take(),
                progress: false,
            },
        )
        .unwrap();
        assert_eq!((r.step, r.finished), (1, false), "{phase}");
        let ckpt = o.join("checkpoints/step-0000001.safetensors");
        assert!(ckpt.is_file(), "{phase}");
        init = Some(ckpt);
    }
}

#[test]
fn a_trained_folder_brings_its_dataset_options_to_scripts_and_servers() {
    use minarc::backend::Backend;
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_run(1);
    // a distribution off the defaults travels too: the distinct query filter, 10 colours
    cfg.puzzles.filter = minarc::puzzle::QueryFilter::Distinct;
    cfg.puzzles.n_color = 10;
    let opts = RunOptions {
        out: out.path().to_path_buf(),
        resume: false,
        device: Device::Cpu,
        stop_after: None,
        init: None,
        progress: false,
    };
    assert!(run(cfg.clone(), &opts).unwrap().finished);
    let dir = out.path().join("model");
    // the training-time sequences of held-out seeds 0..2, as `minarc train` scores them
    let tok = cfg.model.tokenizer.build().unwrap();
    let seqs = minarc::train::data::held_out(&cfg, 2, &tok).unwrap();
    // a script builds the same prompts from dataset_options
    let script = out.path().join("d.rhai");
    std::fs::write(
        &script,
        format!(
            "let m = load_model({dir:?});\nlet o = dataset_options(m);\no.seeds = [0, 2];\n\
             o.tokenizer = tokenizer(m);\nlet ds = gen_dataset(o);\n\
             print(`${{ds.len()}} ${{ds[0].n_tokens}} ${{ds[0].answers.len()}} ${{o.n}} ${{o.Q_train}} ${{o.filter}}`);\n\
             print(ds[1].prompt);\n"
        ),
    )
    .unwrap();
    let run_out = std::process::Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", script.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run_out.status.success(),
        "{}",
        String::from_utf8_lossy(&run_out.stderr)
    );
    let evaluated = seqs[0]
        .targets
        .iter()
        .filter(|t| t.kind == minarc::train::data::TargetKind::Answer { evaluated: true })
        .count();
    let stdout = String::from_utf8_lossy(&run_out.stdout);
    let (first, prompt) = stdout.split_once('\n').unwrap();
    assert_eq!(
        first,
        format!("2 {} {evaluated} 4 2 distinct", seqs[0].ids.len())
    );
    // the second seed's prompt, token for token, is the one training scored
    let ids = tok
        .encode(prompt.strip_suffix('\n').unwrap(), true)
        .unwrap();
    assert_eq!(ids.get_ids(), seqs[1].ids.as_slice());
    // through `minarc serve`, the options travel in /status
    let local = minarc::backend::Local::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let want = local.dataset_options().cloned().unwrap();
    let srv = minarc::remote::RunningServer::start(
        local,
        minarc::remote::ServeOptions {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let remote = minarc::remote::Remote::connect(&srv.url(), None).unwrap();
    assert_eq!(remote.dataset_options(), Some(&want));
}

#[test]
fn a_curriculum_stage_replaces_the_distribution_before_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[puzzles]\nn_train = [1, 3]\n[[puzzles.curriculum]]\nuntil_step = 10\nrelations = \"at\"\nn_train = [1]\nQ_train = 9\n",
    )
    .unwrap();
    let cfg = TrainConfig::from_file(&p).unwrap();
    let early = cfg.variants_at(9);
    assert_eq!(early.len(), 1);
    assert_eq!(
        (
            early[0].relations.as_str(),
            early[0].n_train,
            early[0].q_train
        ),
        ("at", 1, 9)
    );
    let late = cfg.variants_at(10);
    assert_eq!(late, cfg.variants());
    assert_eq!(late.len(), 2);
    assert!(
        late.iter()
            .all(|v| v.relations == "side+at" && v.q_train == 4)
    );
    // the evaluations use the main distribution
    assert_eq!(cfg.eval_variant().n_train, 3);
    // a stage's batch: `at` puzzles with 9 questions per example
    let tok = cfg.model.tokenizer.build().unwrap();
    let batch = minarc::train::data::batch(&cfg, 3, &tok).unwrap();
    for q in &batch {
        assert_eq!(q.relation.name(), "at");
        let answers = q
            .targets
            .iter()
            .filter(|t| matches!(t.kind, minarc::train::data::TargetKind::Answer { .. }))
            .count();
        assert_eq!(answers, 9);
    }
    for (text, want) in [
        (
            "[[puzzles.curriculum]]\nuntil_step = 10\nQ_train = 10\n",
            "Q_train=10 is impossible",
        ),
        (
            "[[puzzles.curriculum]]\nuntil_step = 10\n[[puzzles.curriculum]]\nuntil_step = 5\n",
            "not after the previous stage",
        ),
        (
            "[[puzzles.curriculum]]\nuntil_step = 10\nn_train = []\n",
            "1..=64 n_train",
        ),
    ] {
        std::fs::write(&p, text).unwrap();
        let err = format!("{:#}", TrainConfig::from_file(&p).unwrap_err());
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn an_oversized_batch_is_refused_before_allocation() {
    let mut tc = small_cfg();
    tc.model.max_positions = 65_536;
    let cfg = tc.model_config(64).unwrap();
    let net = Net::init(&cfg, 1, &Device::Cpu).unwrap();
    // 4 heads × 9000² attention values exceed the bound
    let s = 9000;
    let ids = Tensor::from_vec(rand_ids(s, 64, 1), (1, s), &Device::Cpu).unwrap();
    let rows = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    let err = format!("{:#}", net.logits_at(&ids, &rows).unwrap_err());
    assert!(err.contains("too large to train on"), "{err}");
}

/// `--init`: a second phase starts from a checkpoint's weights (equal to the first phase's
/// written model), records the phase before it, and refuses a checkpoint of another model.
#[test]
fn a_second_phase_starts_from_a_checkpoint() {
    let phase1 = tempfile::tempdir().unwrap();
    let cfg = tiny_run(4);
    let opts = |dir: &std::path::Path, init: Option<std::path::PathBuf>| RunOptions {
        out: dir.to_path_buf(),
        resume: false,
        device: Device::Cpu,
        stop_after: None,
        init,
        progress: false,
    };
    assert!(
        run(cfg.clone(), &opts(phase1.path(), None))
            .unwrap()
            .finished
    );
    let ck = phase1.path().join("checkpoints/step-0000004.safetensors");
    // phase 2: another learning rate and seed, same model
    let mut cfg2 = cfg.clone();
    cfg2.optim.lr *= 0.5;
    cfg2.run.seed = 7;
    let mut t = Trainer::new(cfg2.clone(), &Device::Cpu).unwrap();
    t.init_from(&ck).unwrap();
    let saved = candle_core::safetensors::load(&ck, &Device::Cpu).unwrap();
    let phase1_model =
        candle_core::safetensors::load(phase1.path().join("model/model.safetensors"), &Device::Cpu)
            .unwrap();
    let mine = t.net.tensors().unwrap();
    let mut compared = 0;
    for (name, w) in &mine {
        if let Some(p) = phase1_model.get(name) {
            let d = (w - p)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
            compared += 1;
        }
    }
    assert!(compared > 5 && saved.len() > compared);
    let phase2 = tempfile::tempdir().unwrap();
    assert!(
        run(cfg2.clone(), &opts(phase2.path(), Some(ck.clone())))
            .unwrap()
            .finished
    );
    let minarc_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(phase2.path().join("model/minarc.json")).unwrap())
            .unwrap();
    let init = &minarc_json["training"]["init"];
    assert_eq!(init["step"], 4);
    assert_eq!(init["checkpoint"], ck.display().to_string());
    assert_eq!(init["config"]["optim"]["lr"], cfg.optim.lr);
    // another model
    let mut wide = cfg.clone();
    wide.model.hidden *= 2;
    let mut t = Trainer::new(wide, &Device::Cpu).unwrap();
    let e = t.init_from(&ck).unwrap_err();
    assert!(format!("{e:#}").contains("model section differs"), "{e:#}");
    // a deeper model grows from it: the checkpoint's layer below, two layers with zero output
    // projections above, which add nothing to the residual stream: the same logits, bit for bit
    let mut deep = cfg.clone();
    deep.model.layers += 2;
    let mut grown = Trainer::new(deep.clone(), &Device::Cpu).unwrap();
    grown.init_from(&ck).unwrap();
    let mut same = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    same.init_from(&ck).unwrap();
    let s = 40;
    let ids = Tensor::from_vec(rand_ids(2 * s, 64, 3), (2, s), &Device::Cpu).unwrap();
    let rows = Tensor::new(&[0u32, 17, 39, 40, 79], &Device::Cpu).unwrap();
    let a = same.net.logits_at(&ids, &rows).unwrap();
    let b = grown.net.logits_at(&ids, &rows).unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // the grown layers are trainable: fresh (non-zero) attention and MLP input weights
    let q = grown
        .net
        .tensors()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "model.layers.2.self_attn.q_proj.weight")
        .unwrap()
        .1;
    assert!(
        q.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // a shallower model does not grow from a deeper one's checkpoint
    let deep_dir = tempfile::tempdir().unwrap();
    deep.optim.steps = 1;
    run(deep.clone(), &opts(deep_dir.path(), None)).unwrap();
    let mut t = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let e = t
        .init_from(&deep_dir.path().join("checkpoints/step-0000001.safetensors"))
        .unwrap_err();
    assert!(format!("{e:#}").contains("model section differs"), "{e:#}");
}

#[test]
fn readings_give_the_answer_by_the_hidden_relation_alone() {
    let cfg = TrainConfig::default();
    let t = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let seqs = minarc::train::data::held_out(&cfg, 30, t.tokenizer()).unwrap();
    let mut answers = 0;
    for q in &seqs {
        for tg in q
            .targets
            .iter()
            .filter(|t| matches!(t.kind, minarc::train::data::TargetKind::Answer { .. }))
        {
            let (_, readings) = q
                .readings
                .iter()
                .find(|(p, _)| *p == tg.pos)
                .unwrap_or_else(|| panic!("puzzle {}: no readings at {}", q.seed, tg.pos));
            // the grid read through the hidden relation gives the answer token of the prompt,
            // and (the generator's ambiguity filter) no other relation of the set does
            let hits: Vec<_> = readings.iter().filter(|(_, c)| *c == tg.label).collect();
            assert_eq!(hits.len(), 1, "puzzle {}: {readings:?}", q.seed);
            assert_eq!(hits[0].0, q.relation, "puzzle {}", q.seed);
            answers += 1;
        }
    }
    assert!(answers >= 30 * 4, "{answers} answers");
}

#[test]
fn wrong_answers_are_read_as_the_relations_whose_cell_has_the_predicted_colour() {
    use minarc::puzzle::Relation;
    use minarc::train::run::read_as;
    let readings = [
        (Relation::from_name("left_of").unwrap(), 10),
        (Relation::from_name("right_of").unwrap(), 11),
        (Relation::from_name("above").unwrap(), 10),
    ];
    assert_eq!(read_as(10, &readings), "left_of|above");
    assert_eq!(read_as(11, &readings), "right_of");
    assert_eq!(read_as(12, &readings), "none");
    assert_eq!(read_as(10, &[]), "none");

    // every wrong answer of an evaluation is counted once, under its puzzle's relation
    let t = Trainer::new(tiny_run(1), &Device::Cpu).unwrap();
    let e = t.evaluate(12).unwrap();
    for (rel, &(hit, all)) in &e.per_relation {
        let wrong: usize = e
            .wrong_read_as
            .get(rel)
            .map_or(0, |m| m.values().sum::<usize>());
        assert_eq!(wrong, all - hit, "{rel}: {:?}", e.wrong_read_as);
    }
    assert!(
        e.wrong_read_as
            .keys()
            .all(|k| e.per_relation.contains_key(k))
    );
    // by answer place: every answer once, the first place in every puzzle
    let (hit, all) = e
        .by_answer
        .iter()
        .fold((0, 0), |(h, a), &(x, y)| (h + x, a + y));
    let (h2, a2) = e
        .per_relation
        .values()
        .fold((0, 0), |(h, a), &(x, y)| (h + x, a + y));
    assert_eq!((hit, all), (h2, a2));
    assert_eq!(e.by_answer[0].1, e.puzzles);
}
