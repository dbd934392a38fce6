//! `minarc puzzles` end to end: datasets, tokenizer loading, exit code 2 on bad parameters.

use minarc::puzzle::dataset::read_jsonl;
use minarc::tokenizer::{load_tokenizer, write_fixture_tokenizer};

mod puzzle_support;
use puzzle_support::minarc_puzzles as minarc;

#[test]
fn writes_one_sample_per_seed_with_decodable_answers() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_fixture_tokenizer(&model).unwrap();
    let out = dir.path().join("d.jsonl");
    let o = minarc(&[
        "--seeds",
        "3..9",
        "--tokenizer",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("6 samples"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 6);
    let samples = read_jsonl(&out).unwrap();
    let tok = load_tokenizer(&model).unwrap();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.index, i);
        assert_eq!(s.params.puzzle.seed, 3 + i as u64);
        let enc = tok.encode(s.prompt.as_str(), false).unwrap();
        assert_eq!(s.answers.len(), 8);
        for (k, &pos) in s.answer_indices.iter().enumerate() {
            let t = tok.decode(&[enc.get_ids()[pos]], false).unwrap();
            assert_eq!(t, format!(" {}", s.answers[k]));
            assert_eq!(s.labels[k], enc.get_ids()[pos]);
        }
    }
}

#[test]
fn show_prints_the_first_prompt_and_fixture_works() {
    let o = minarc(&[
        "--seeds",
        "4",
        "--show",
        "--style",
        "markdown",
        "--tokenizer",
        "fixture",
    ]);
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("<|im_start|>system\n"));
    assert!(stdout.contains("| y\\x | 0 | 1 | 2 | 3 | 4 |"));
}

#[test]
fn bad_parameters_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.jsonl");
    let out = out.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--frame", "center", "--n", "4"],
        vec!["--n-color", "11"],
        vec!["--n-color", "1"],
        vec!["--q-train", "10"],
        vec!["--relations", "sideways"],
        vec!["--relations", ""],
        vec!["--seeds", "5..5"],
        vec!["--seeds", "x"],
        vec!["--style", "yaml"],
        vec!["--frame", "middle"],
        vec!["--relations", "mirror_rotate"],
        vec!["--tokenizer", "/nonexistent/dir"],
    ];
    for case in cases {
        let mut args = case.clone();
        args.extend(["--out", out]);
        let o = minarc(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{case:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{case:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
    assert!(!std::path::Path::new(out).exists());
    // Nothing to do.
    assert_eq!(minarc(&[]).status.code(), Some(2));
}

#[test]
fn unsatisfiable_seed_fails_naming_it() {
    let o = minarc(&[
        "--relations",
        "neighbor",
        "--n-color",
        "2",
        "--q-train",
        "9",
        "--seeds",
        "17",
        "--show",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("seed 17"), "{stderr}");
}

#[test]
fn malformed_dataset_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, "\n{\"index\": 0}\n").unwrap();
    let err = format!("{:#}", read_jsonl(&p).unwrap_err());
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn dataset_roundtrip_is_exact() {
    use minarc::puzzle::cli::generate;
    use minarc::puzzle::dataset::write_jsonl;
    use minarc::puzzle::{PromptOptions, PuzzleParams, Style};
    let tok = minarc::tokenizer::fixture_tokenizer().unwrap();
    let opts = PromptOptions {
        style: Style::List,
        color_quote: "\"".into(),
        ..PromptOptions::default()
    };
    let params = PuzzleParams {
        n_test: 1,
        ..PuzzleParams::default()
    };
    let samples = generate(&params, &opts, 0..3, Some(&tok)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    write_jsonl(&p, &samples).unwrap();
    assert_eq!(read_jsonl(&p).unwrap(), samples);
}

#[test]
fn prompt_templates_from_the_cli_and_from_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("words.json");
    let out = minarc(&["--write-template", tpl.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the written default reads back as the default
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tpl).unwrap()).unwrap();
    assert_eq!(j["answer_head"], "Answer: ");
    j["system"] = "You solve grid puzzles.".into();
    j["example_title"] = "# Worked example {k}".into();
    std::fs::write(&tpl, j.to_string()).unwrap();
    let out = minarc(&[
        "--seeds",
        "0..1",
        "--template",
        tpl.to_str().unwrap(),
        "--tokenizer",
        "fixture",
        "--show",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("system\nYou solve grid puzzles.") && text.contains("# Worked example 2\n")
    );
    // the same file from a script
    let (out, buf) = minarc::script::Output::buffer();
    let mut h = minarc::script::Host::with_output(out);
    let src = format!(
        "let ds = gen_dataset(#{{seeds: \"0..1\", tokenizer: \"fixture\", template: \"{}\"}});\nds[0].prompt",
        tpl.display()
    );
    let p = h
        .eval_source("t.rhai", &src, false)
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, buf.contents()))
        .into_string()
        .unwrap();
    assert!(p.contains("# Worked example 1\n"));
    // a bad template is a one-line error with exit code 2
    std::fs::write(&tpl, r#"{"answer_head": ""}"#).unwrap();
    let out = minarc(&[
        "--seeds",
        "0..1",
        "--template",
        tpl.to_str().unwrap(),
        "--show",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("answer_head") && err.trim().lines().count() == 1,
        "{err}"
    );
}
