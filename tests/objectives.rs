//! Objectives of a sample (log-prob over the candidates, full vocabulary, logit difference,
//! argmax) and custom prompts: the lm_head node's f(x) equals the objective computed here in f64
//! from the model's plain logits; a logit difference is linear, so its IG is exact and its
//! closed-form gradient gives Σ grad·x = f(x); argmax labels are the model's own prediction; the
//! circuit of every component reproduces each objective; local = remote; prompt_sample finds
//! the answer tokens and refuses what it cannot resolve.

use candle_core::{DType, Device};
use minarc::attribution::{Graph, SampleRef, attribute_step, forward};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::model::sample::Objective;
use minarc::model::{CaptureSpec, SampleInput};

#[path = "common/mod.rs"]
mod common;

const ANSWERS: [usize; 3] = [4, 7, 10];

fn ids() -> Vec<u32> {
    (0..12u32).map(|i| 3 + (i * 37) % 250).collect()
}

/// The model's own objective from its plain logits, in f64 (independent of the lm_head code).
fn hand_objective(local: &Local, input: &SampleInput, ids: &[u32]) -> f64 {
    let logits = local
        .model()
        .forward_logits(ids)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let mut total = 0.0;
    for (i, (&a, &lab)) in input.answer_indices.iter().zip(&input.labels).enumerate() {
        let row: Vec<f64> = logits[0][a - 1].iter().map(|&x| x as f64).collect();
        total += match &input.objective {
            Objective::LogitDiff { foils } => row[lab as usize] - row[foils[i] as usize],
            obj => {
                let masked = matches!(obj, Objective::LogProb | Objective::Argmax)
                    && !input.candidate_ids.is_empty();
                let allowed: Vec<usize> = if masked {
                    input.candidate_ids.iter().map(|&c| c as usize).collect()
                } else {
                    (0..row.len()).collect()
                };
                let mx = allowed.iter().map(|&t| row[t]).fold(f64::MIN, f64::max);
                let lse = mx
                    + allowed
                        .iter()
                        .map(|&t| (row[t] - mx).exp())
                        .sum::<f64>()
                        .ln();
                row[lab as usize] - lse
            }
        };
    }
    total / input.labels.len() as f64
}

fn inputs() -> Vec<(&'static str, SampleInput)> {
    let base = SampleInput {
        index: 0,
        prompt: String::new(),
        labels: vec![40, 41, 42],
        candidate_ids: vec![40, 41, 42, 43, 44],
        answer_indices: ANSWERS.to_vec(),
        objective: Objective::LogProb,
    };
    vec![
        ("log_prob", base.clone()),
        (
            "full_vocab",
            SampleInput {
                objective: Objective::FullVocab,
                ..base.clone()
            },
        ),
        (
            "logit_diff",
            SampleInput {
                objective: Objective::LogitDiff {
                    foils: vec![44, 43, 40],
                },
                ..base.clone()
            },
        ),
        (
            "argmax",
            SampleInput {
                labels: vec![],
                objective: Objective::Argmax,
                ..base
            },
        ),
    ]
}

#[test]
fn every_objective_is_the_lm_head_node_and_the_full_circuit() {
    let local = Local::load(common::tiny_model_dir(), DType::F32, &Device::Cpu).unwrap();
    let cfg = local.config().clone();
    let ids = ids();
    let mut values = Vec::new();
    for (name, input) in inputs() {
        local
            .forward_ids(name, &input, &ids, &CaptureSpec::full(), true)
            .unwrap();
        let key = SampleKey::new(name, 0);
        let meta = local.sample_meta(&key).unwrap();
        if name == "argmax" {
            // the labels became the model's own prediction over the candidates
            let logits = local
                .model()
                .forward_logits(&ids)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap();
            let own: Vec<u32> = ANSWERS
                .iter()
                .map(|&a| {
                    *input
                        .candidate_ids
                        .iter()
                        .max_by(|&&x, &&y| {
                            logits[0][a - 1][x as usize].total_cmp(&logits[0][a - 1][y as usize])
                        })
                        .unwrap()
                })
                .collect();
            assert_eq!(meta.labels, own);
        }
        let want = hand_objective(&local, &meta, &ids);
        let r = SampleRef::new(key.clone(), None);
        let mut g = Graph::new(&cfg, 1);
        let lm = g.lm_head_id();
        g.add_node(lm, None).unwrap();
        let attr = attribute_step(&mut g, &local, &r, &[lm]).unwrap();
        let c = g.get(lm).unwrap().data.completeness[&0];
        assert!(
            (c.f_x - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{name}: lm_head f(x) {} vs hand {want}",
            c.f_x
        );
        if name == "logit_diff" {
            // linear in the logits: f(0) = 0 and the closed-form gradient is exact
            assert_eq!(c.f_baseline, 0.0);
            assert!(
                (c.sum_grad_x - c.f_x).abs() < 1e-4 * (1.0 + c.f_x.abs()),
                "logit_diff: Σ grad·x {} vs f(x) {}",
                c.sum_grad_x,
                c.f_x
            );
        }
        assert!(
            attr.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        // the circuit of every head, MLP and the embedding reproduces the objective
        let (mut g, _, _) = common::full_circuit(&cfg, 1);
        let got = forward(&mut g, &local, &r, None).unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{name}: circuit {got} vs hand {want}"
        );
        values.push(want);
    }
    // the objectives are different numbers
    for i in 0..values.len() {
        for j in i + 1..values.len() {
            assert!((values[i] - values[j]).abs() > 1e-6, "{values:?}");
        }
    }
}

#[test]
fn objectives_travel_to_the_server_and_give_the_same_numbers() {
    let local = Local::load(common::tiny_model_dir(), DType::F32, &Device::Cpu).unwrap();
    let srv = common::tiny_server();
    let remote = minarc::remote::Remote::connect(&srv.url(), None).unwrap();
    let prompt = "The grid is red, green and blue; the answer is blue";
    for (name, mut input) in inputs() {
        input.prompt = prompt.into();
        let tok = local.tokenizer();
        let n = tok.encode(prompt, true).unwrap().get_ids().len();
        input.answer_indices = vec![n - 3, n - 2, n - 1];
        let mut vals = Vec::new();
        for b in [&local as &dyn Backend, &remote] {
            b.forward_sample(name, &input, &CaptureSpec::full(), true)
                .unwrap();
            let key = SampleKey::new(name, 0);
            let r = SampleRef::new(key.clone(), None);
            let mut g = Graph::new(b.config(), 1);
            let lm = g.lm_head_id();
            g.add_node(lm, None).unwrap();
            let attr = attribute_step(&mut g, b, &r, &[lm]).unwrap();
            let c = g.get(lm).unwrap().data.completeness[&0];
            vals.push((c.f_x, attr.flatten_all().unwrap().to_vec1::<f32>().unwrap()));
            assert_eq!(
                b.sample_meta(&key).unwrap().objective.name(),
                input.objective.name()
            );
        }
        // f(x) travels as JSON text: equal to the last digits that format keeps
        assert!(
            (vals[0].0 - vals[1].0).abs() <= 1e-12,
            "{name}: f(x) local {} vs remote {}",
            vals[0].0,
            vals[1].0
        );
        assert_eq!(vals[0].1, vals[1].1, "{name}: attribution local vs remote");
    }
    srv.shutdown().unwrap();
}

#[test]
fn bad_objectives_are_refused_before_the_forward() {
    let local = Local::load(common::tiny_model_dir(), DType::F32, &Device::Cpu).unwrap();
    let ids = ids();
    let base = inputs()[0].1.clone();
    let cases = [
        (
            SampleInput {
                objective: Objective::LogitDiff { foils: vec![1] },
                ..base.clone()
            },
            "one foil per label",
        ),
        (
            SampleInput {
                objective: Objective::LogitDiff {
                    foils: vec![1, 2, 1 << 30],
                },
                ..base.clone()
            },
            "foil 1073741824",
        ),
        (
            SampleInput {
                objective: Objective::Argmax,
                answer_indices: vec![],
                labels: vec![],
                ..base.clone()
            },
            "needs answer positions",
        ),
    ];
    for (input, words) in cases {
        let e = format!(
            "{:#}",
            local
                .forward_ids("bad", &input, &ids, &CaptureSpec::full(), true)
                .unwrap_err()
        );
        assert!(e.contains(words), "{e}");
    }
}

#[test]
fn prompt_sample_finds_the_answer_tokens_and_refuses_what_it_cannot_resolve() {
    let dir = common::tiny_model_dir();
    let (mut h, buf) = common::script_host();
    let pre = format!(
        "let model = load_model(\"{}\");\nlet tok = tokenizer(model);\n\
         let prompt = \"The cell (2,3) is B. What is the color of the cell (2,3)? Answer: B\";\n",
        dir.display()
    );
    let src = format!(
        r#"{pre}
let a = prompt_sample(tok, prompt, #{{answers: [" B"], candidates: [" B", " R", " G"]}});
let b = prompt_sample(tok, prompt, #{{answers: [[65, 67]], objective: "full_vocab", index: 1}});
let c = prompt_sample(tok, prompt, #{{answer_tokens: [a.answer_indices[0]], objective: "argmax",
    spans: #{{cell: [3, 4]}}, index: 2}});
let d = prompt_sample(tok, prompt, #{{answers: [" B"], objective: "logit_diff", foils: [" R"], index: 3}});
let rs = forward(model, "custom", [a, b, c, d]);
let g = Graph(model, 4);
let lm = Node(g, model.n_layers, (), "lm_head", "A-->A-");
let attr = mr(rs, |r| attribute_step(g, model, r, [lm]));
#{{ids: a.answer_indices, labels: a.labels, answers: a.answers, b_ids: b.answer_indices,
   a_minus: a.positions("A-"), cell: c.positions("cell"), c_labels: rs[2].sample.labels,
   n: a.n_tokens, shape: attr.shape, puzzle: type_of(a.puzzle), rel: a.rel_fn}}
"#
    );
    let v = h
        .eval_source("custom.rhai", &src, false)
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, buf.contents()))
        .try_cast::<rhai::Map>()
        .unwrap();
    let ints = |k: &str| -> Vec<i64> {
        v[k].clone()
            .into_array()
            .unwrap()
            .iter()
            .map(|x| x.as_int().unwrap())
            .collect()
    };
    // the answer is the last " B": the prompt's final token(s); they decode to the text
    let tok = minarc::tokenizer::load_tokenizer(dir).unwrap();
    let prompt = "The cell (2,3) is B. What is the color of the cell (2,3)? Answer: B";
    let enc = tok.encode(prompt, true).unwrap();
    let ids = ints("ids");
    let text: String = ids
        .iter()
        .map(|&p| tok.decode(&[enc.get_ids()[p as usize]], false).unwrap())
        .collect();
    assert_eq!(text, " B");
    assert_eq!(*ids.last().unwrap() as usize, enc.get_ids().len() - 1);
    assert_eq!(ints("b_ids"), ids, "the character span of the last \" B\"");
    let labels = ints("labels");
    assert_eq!(
        labels,
        ids.iter()
            .map(|&p| enc.get_ids()[p as usize] as i64)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        ints("a_minus"),
        ids.iter().map(|p| p - 1).collect::<Vec<_>>()
    );
    assert_eq!(ints("cell"), vec![3, 4]);
    assert_eq!(ints("c_labels").len(), 1);
    assert_eq!(v["shape"].to_string(), "[2, 5, 1]");
    assert_eq!(v["puzzle"].to_string(), "()");
    assert_eq!(v["rel"].to_string(), "custom");
    let bad: &[(&str, &str)] = &[
        (
            r#"prompt_sample(tok, prompt, #{answers: [" Z!"]})"#,
            "does not occur",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [[5, 5]]})"#,
            "empty or outside",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [[0, 9999]]})"#,
            "empty or outside",
        ),
        (r#"prompt_sample(tok, prompt, #{})"#, "needs answers"),
        (
            r#"prompt_sample(tok, prompt, #{answer_tokens: [0]})"#,
            "first token",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answer_tokens: [100000]})"#,
            "outside the prompt",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], candidates: [" Answer: B"]})"#,
            "not one",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], candidates: [99999999]})"#,
            "not in the vocabulary",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], candidates: [" R"]})"#,
            "not among the candidates",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], objective: "logit_diff"})"#,
            "one foil per answer",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], foils: [" R"]})"#,
            "logit_diff",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], objective: "joy"})"#,
            "unknown objective",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], spans: #{x: [100000]}})"#,
            "span \"x\"",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"], colour: 1})"#,
            "unknown option",
        ),
        (
            r#"prompt_sample(tok, prompt, #{answers: [" B"]}).positions("V")"#,
            "not defined",
        ),
    ];
    for (call, words) in bad {
        let e = h
            .eval_source("bad.rhai", &format!("{pre}{call}"), false)
            .err()
            .unwrap_or_else(|| panic!("{call} succeeded"));
        assert!(e.message.contains(words), "{call}: {}", e.message);
    }
}

#[test]
fn lenses_show_attn_and_patterns_work_on_custom_samples_with_user_spans() {
    let dir = common::tiny_model_dir();
    let (mut h, buf) = common::script_host();
    let src = format!(
        r#"let model = load_model("{}");
let s = prompt_sample(tokenizer(model), "The cell (2,3) is B. The cell (4,1) is R", #{{answers: [" B", " R"], spans: #{{cell: [3, 11]}}}});
let r = forward(model, "lens", [s])[0];
let lens = eval_logit_lens(model, r);
let text = show_attn(model, r, 1, 2);
let scores = get_head_matching_scores(model, r, ["A-->cell"], 1, 2);
let w = get_attn_weights(model, r, 1, 2, r.positions("A-"));
#{{acc: lens.acc.shape, positions: lens.positions, text: text, score: scores["A-->cell"].scores,
   direct: [w[0][0][3], w[0][1][11]], a_minus: r.positions("A-")}}"#,
        dir.display()
    );
    let v = h
        .eval_source("lens.rhai", &src, false)
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, buf.contents()))
        .try_cast::<rhai::Map>()
        .unwrap();
    let a_minus = v["a_minus"].clone().into_array().unwrap();
    assert_eq!(a_minus.len(), 2);
    assert_eq!(v["positions"].to_string(), v["a_minus"].to_string());
    assert_eq!(v["acc"].to_string(), format!("[{}, 3]", 2));
    let text = v["text"].clone().into_string().unwrap();
    assert!(
        text.matches("q->").count() == 2,
        "both answers shown:\n{text}"
    );
    // the pattern score of A-->cell is the attention from each A- position to its cell token
    let score: Vec<f64> = v["score"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_float().unwrap())
        .collect();
    let direct: Vec<f64> = v["direct"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_float().unwrap())
        .collect();
    for (a, b) in score.iter().zip(&direct) {
        assert!((a - b).abs() < 1e-6, "{score:?} vs {direct:?}");
    }
}

#[test]
fn prompt_samples_over_http_are_the_scripts_samples() {
    use minarc::puzzle::sample::{AnswerOpt, PromptSpec, TokenOpt};
    let dir = common::tiny_model_dir();
    let srv = common::tiny_server();
    let remote = minarc::remote::Remote::connect(&srv.url(), None).unwrap();
    let prompt = "The cell (2,3) is B. The cell (4,1) is R";
    let spec = PromptSpec {
        answers: vec![AnswerOpt::Text(" R".into())],
        objective: Some("logit_diff".into()),
        foils: vec![TokenOpt::Text(" B".into())],
        index: 4,
        ..Default::default()
    };
    let got = remote.prompt_sample(prompt, &spec).unwrap();
    let tok = minarc::tokenizer::load_tokenizer(dir).unwrap();
    let want = spec.build(&tok, prompt).unwrap();
    assert_eq!(got.sample.answer_indices, want.answer_indices);
    assert_eq!(got.sample.labels, want.labels);
    assert_eq!(got.sample.objective, want.objective);
    assert_eq!(got.answers, want.answers);
    assert_eq!(got.n_tokens, want.n_tokens.unwrap());
    // the sample forwards and attributes on the server
    remote
        .forward_sample("http", &got.sample, &CaptureSpec::full(), false)
        .unwrap();
    assert_eq!(
        remote
            .sample_meta(&SampleKey::new("http", 4))
            .unwrap()
            .objective,
        want.objective
    );
    // a bad spec is a 400 that names the problem
    let bad = PromptSpec {
        answers: vec![AnswerOpt::Text(" Q!".into())],
        ..Default::default()
    };
    let e = format!("{:#}", remote.prompt_sample(prompt, &bad).unwrap_err());
    assert!(e.contains("400") && e.contains("does not occur"), "{e}");
    srv.shutdown().unwrap();
}
