//! Domain bindings seen from scripts: puzzles and samples (and, below, models).

use minarc::puzzle::{PromptOptions, PuzzleParams, cli::generate};
use minarc::script::{Host, Output, SharedBuf};

fn host() -> (Host, SharedBuf) {
    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    (host, buf)
}

#[test]
fn gen_dataset_matches_the_rust_generator_and_sample_getters_are_consistent() {
    let (mut h, _) = host();
    let src = r#"
        let ds = gen_dataset(#{seeds: [0, 3], tokenizer: "fixture", n_train: 4});
        let out = [];
        for s in ds {
            out.push(#{
                index: s.index, prompt: s.prompt, answers: s.answers, idx: s.answer_indices,
                a: s.positions("A"), a_minus: s.positions("A-"), labels: s.labels,
                cands: s.candidate_ids, rel: s.rel_fn, n: s.n_tokens, prel: s.puzzle.rel_fn,
            });
        }
        out
    "#;
    let got = h
        .eval_source("ds.rhai", src, false)
        .unwrap()
        .into_array()
        .unwrap();
    let tok = minarc::tokenizer::fixture_tokenizer().unwrap();
    let params = PuzzleParams {
        n_train: 4,
        ..PuzzleParams::default()
    };
    let want = generate(&params, &PromptOptions::default(), 0..3, Some(&tok)).unwrap();
    assert_eq!(got.len(), 3);
    let ints = |d: &rhai::Dynamic| -> Vec<i64> {
        d.clone()
            .into_array()
            .unwrap()
            .iter()
            .map(|x| x.as_int().unwrap())
            .collect()
    };
    for (g, w) in got.iter().zip(&want) {
        let m = g.read_lock::<rhai::Map>().unwrap();
        assert_eq!(m["index"].as_int().unwrap() as usize, w.index);
        assert_eq!(m["prompt"].clone().into_string().unwrap(), w.prompt);
        assert_eq!(m["rel"].clone().into_string().unwrap(), w.rel_fn);
        assert_eq!(m["prel"].clone().into_string().unwrap(), w.rel_fn);
        assert_eq!(m["n"].as_int().unwrap() as usize, w.n_tokens.unwrap());
        let idx = ints(&m["idx"]);
        assert_eq!(
            idx,
            w.answer_indices
                .iter()
                .map(|&x| x as i64)
                .collect::<Vec<_>>()
        );
        assert_eq!(ints(&m["a"]), idx);
        assert_eq!(
            ints(&m["a_minus"]),
            idx.iter().map(|x| x - 1).collect::<Vec<_>>()
        );
        // Every label is one of the candidate ids, and equal answers have equal labels.
        let labels = ints(&m["labels"]);
        let cands = ints(&m["cands"]);
        assert_eq!(labels.len(), 8);
        assert!(labels.iter().all(|l| cands.contains(l)));
        let answers: Vec<String> = m["answers"]
            .clone()
            .into_array()
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        for i in 0..answers.len() {
            for j in 0..answers.len() {
                assert_eq!(answers[i] == answers[j], labels[i] == labels[j]);
            }
        }
    }
}

#[test]
fn puzzle_functions_check_their_arguments() {
    let (mut h, _) = host();
    let cases = [
        ("gen_puzzle(#{sed: 1})", "unknown option `sed`"),
        ("gen_puzzle(#{n: -1})", "option n: must be >= 0"),
        ("gen_puzzle(#{frame: \"round\"})", "round"),
        ("gen_dataset(#{seeds: \"5..2\"})", "empty"),
        ("gen_dataset(#{seeds: 3})", "seeds must be a string"),
        ("gen_prompt(gen_puzzle(#{}), #{style: \"poem\"})", "poem"),
        (
            "gen_dataset(#{seeds: \"0..1\"})[0].positions(\"A\")",
            "no token positions",
        ),
        (
            "gen_dataset(#{seeds: \"0..1\", tokenizer: \"fixture\"})[0].positions(\"Z\")",
            "unknown span",
        ),
        ("load_dataset(\"/no/such/file.jsonl\")", "load_dataset()"),
        ("save_dataset([1], \"/tmp/x.jsonl\")", "expected a Sample"),
    ];
    for (src, want) in cases {
        let e = h.eval_source("e.rhai", src, false).unwrap_err();
        assert!(e.message.contains(want), "{src}: {}", e.message);
    }
}

#[test]
fn datasets_round_trip_through_jsonl() {
    let (mut h, buf) = host();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ds.jsonl");
    let src = format!(
        "let ds = gen_dataset(#{{seeds: \"0..2\", tokenizer: \"fixture\"}});\n\
         save_dataset(ds, \"{0}\");\n\
         let back = load_dataset(\"{0}\");\n\
         print(back.len());\n\
         print(back[1].prompt == ds[1].prompt && back[1].labels == ds[1].labels);\n",
        p.display()
    );
    let _ = h.eval_source("rt.rhai", &src, false).unwrap();
    assert_eq!(buf.contents(), "2\ntrue\n");
}

#[test]
fn topk_md_returns_multi_indices_and_signed_values() {
    let (mut h, buf) = host();
    let src = "let t = from_array([[1, -2, 3], [-4, 5, -6]]);\n\
               print(topk_md(t, 2));\nprint(topk_md(t, 2, true));\nprint(topk_md(t, 0));";
    let _ = h.eval_source("k.rhai", src, false).unwrap();
    assert_eq!(
        buf.contents(),
        "[[1, 1, 5.0], [0, 2, 3.0]]\n[[1, 2, -6.0], [1, 1, 5.0]]\n[]\n"
    );
}

#[test]
fn cluster_heads_separates_obvious_groups() {
    let (mut h, _) = host();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("clusters.png");
    // Cosine distances by hand: d(h0, h1) = 1 - 0.9/sqrt(0.82) = 0.006116; same for (h2, h3);
    // across the groups the vectors are (nearly) orthogonal.
    let src = format!(
        "let data = [[3, 0, from_array([1.0, 0.0, 0.0])], [3, 1, from_array([0.9, 0.1, 0.0])],\n\
                     [5, 2, from_array([0.0, 0.0, 1.0])], [5, 3, from_array([0.0, 0.1, 0.9])]];\n\
         let c = cluster_heads(data, #{{dist: \"cosine\", method: \"average\"}});\n\
         plot_clustering(c, \"{}\", #{{figsize: [6, 3], strengths: [1, 2, 3, 4]}});\n\
         #{{ids: c.ids, groups: c.groups, intra: c.metrics.clusters[\"1\"].intra_mean,\n\
            n_clusters: c.metrics.overall.n_clusters, threshold: c.threshold, summary: cluster_summary(c)}}",
        png.display()
    );
    let v = h.eval_source("c.rhai", &src, false).unwrap();
    let m = v.read_lock::<rhai::Map>().unwrap();
    let ids: Vec<i64> = m["ids"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_int().unwrap())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(m["n_clusters"].as_int().unwrap(), 2);
    assert!((m["intra"].as_float().unwrap() - 0.006).abs() < 1e-12);
    assert_eq!(m["threshold"].as_float().unwrap(), 0.3);
    let summary = m["summary"].clone().into_string().unwrap();
    assert!(
        summary.contains("3-0, 3-1") && summary.contains("5-2, 5-3"),
        "{summary}"
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 0);
    let e = h
        .eval_source(
            "c2.rhai",
            "cluster_heads([[0, 0, zeros([2])]], #{dist: \"l1\"})",
            false,
        )
        .unwrap_err();
    assert!(e.message.contains("unknown dist"), "{}", e.message);
    let e = h
        .eval_source("c3.rhai", "cluster_heads([[0, zeros([2])]])", false)
        .unwrap_err();
    assert!(e.message.contains("[layer, head, Tensor]"), "{}", e.message);
}

#[test]
fn pattern_labels_score_their_own_matrix_as_one() {
    let (mut h, _) = host();
    let src = r#"
        let s = gen_dataset(#{seeds: "0..1", tokenizer: "fixture"})[0];
        let l = attn_pattern2labels(s, "A-->V");
        let scores = get_ap_scores(l.labels, l);
        #{shape: l.labels.shape, n: s.n_tokens, q: l.ranges_q, a_minus: s.positions("A-"),
          min: scores.min(), max: scores.max(), len: scores.shape[0]}
    "#;
    let v = h.eval_source("p.rhai", src, false).unwrap();
    let m = v.read_lock::<rhai::Map>().unwrap();
    let n = m["n"].as_int().unwrap();
    assert_eq!(h.display_value(&m["shape"]), format!("[{n}, {n}]"));
    assert_eq!(h.display_value(&m["q"]), h.display_value(&m["a_minus"]));
    assert_eq!(m["len"].as_int().unwrap(), 8);
    // Each labelled row has one source with weight 1/(1+1e-9): the score is that weight squared.
    assert!((m["min"].as_float().unwrap() - 1.0).abs() < 1e-6);
    assert!((m["max"].as_float().unwrap() - 1.0).abs() < 1e-6);
}

#[test]
fn plots_are_written_and_bad_shapes_rejected() {
    let (mut h, _) = host();
    let dir = tempfile::tempdir().unwrap();
    let (g, l) = (dir.path().join("groups.png"), dir.path().join("lens.svg"));
    let src = format!(
        "let a = from_array([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]]);\n\
         let b = from_array([[[0.6, 0.4, 0.0], [0.1, 0.4, 0.5]]]);\n\
         let aw = [[1, 0, a], [1, 1, b]];\n\
         let c = cluster_heads(aw);\n\
         plot_group_patterns(c, aw, \"{}\", 2);\n\
         plot_logit_lens(from_array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6]]), 3, \"acc\", \"{}\");",
        g.display(),
        l.display()
    );
    let _ = h.eval_source("plots.rhai", &src, false).unwrap();
    assert!(std::fs::metadata(&g).unwrap().len() > 0);
    assert!(std::fs::read_to_string(&l).unwrap().contains("<svg"));
    let e = h
        .eval_source(
            "bad.rhai",
            "plot_logit_lens(zeros([2, 2]), 0, \"x\", \"/tmp/never.png\")",
            false,
        )
        .unwrap_err();
    assert!(e.message.contains("[n_layers, 3]"), "{}", e.message);
}
