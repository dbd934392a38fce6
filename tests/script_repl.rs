//! The REPL's line-evaluation core, without a terminal.

use minarc::script::repl::{ReplCore, ReplOutput, complete_with, needs_more_input};
use minarc::script::{Host, Output, SharedBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn core() -> (ReplCore, SharedBuf) {
    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    (ReplCore::new(host), buf)
}

#[test]
fn multi_line_input_accumulates_while_brackets_are_open() {
    let (mut r, _) = core();
    assert_eq!(r.feed_line("fn add(a, b) {"), ReplOutput::Continue);
    assert!(r.is_continuing());
    assert_eq!(r.prompt(), "   ...> ");
    assert_eq!(
        r.feed_line("  a + b // a comment with a brace {"),
        ReplOutput::Continue
    );
    assert_eq!(r.feed_line("}"), ReplOutput::Nothing);
    assert!(!r.is_continuing());
    // Functions defined on earlier lines stay callable.
    assert_eq!(r.feed_line("add(40, 2)"), ReplOutput::Value("42".into()));
    assert_eq!(r.feed_line("let xs = ["), ReplOutput::Continue);
    assert_eq!(r.feed_line("  1, 2,"), ReplOutput::Continue);
    assert_eq!(r.feed_line("  \"]\"];"), ReplOutput::Nothing);
    assert_eq!(r.feed_line("xs.len()"), ReplOutput::Value("3".into()));
}

#[test]
fn bracket_scanner_ignores_strings_and_comments() {
    assert!(needs_more_input("let a = (1 +\n"));
    assert!(!needs_more_input("let s = \"{[(\";\n"));
    assert!(!needs_more_input("let c = '{';\n"));
    assert!(needs_more_input("let s = `multi\nline"));
    assert!(needs_more_input("/* open comment {"));
    assert!(!needs_more_input("/* closed { */ 1\n"));
    assert!(!needs_more_input("}\n")); // unbalanced close: let the parser report it
}

#[test]
fn help_lists_functions_with_docs_and_shows_one_signature() {
    let (mut r, _) = core();
    let ReplOutput::Info(all) = r.feed_line(":help") else {
        panic!("no help")
    };
    for d in r.host().docs().fns() {
        assert!(all.contains(&d.signature), "missing {}", d.signature);
        assert!(all.contains(&d.doc), "missing doc of {}", d.signature);
    }
    let ReplOutput::Info(one) = r.feed_line(":help slice") else {
        panic!("no help for slice")
    };
    assert!(
        one.starts_with("slice(t: Tensor, dim: int, start: int, end: int) -> Tensor"),
        "{one}"
    );
    assert!(one.contains("half-open range"), "{one}");
    let ReplOutput::Info(ty) = r.feed_line(":help Tensor") else {
        panic!("no help for Tensor")
    };
    assert!(ty.starts_with("type Tensor:"), "{ty}");
    assert!(matches!(
        r.feed_line(":help no_such_fn"),
        ReplOutput::Error(_)
    ));
    assert!(matches!(r.feed_line(":bogus"), ReplOutput::Error(_)));
    assert_eq!(r.feed_line(":quit"), ReplOutput::Quit);
}

#[test]
fn completion_offers_functions_types_scope_variables_and_commands() {
    let (mut r, _) = core();
    r.feed_line("let hidden_states = 1;");
    r.feed_line("fn my_helper() { 1 }");
    assert_eq!(r.complete("hidd", 4), vec!["hidden_states"]);
    assert!(r.complete("x.sli", 5).contains(&"slice".to_string()));
    assert!(r.complete("Ten", 3).contains(&"Tensor".to_string()));
    assert_eq!(r.complete("my_h", 4), vec!["my_helper"]);
    assert!(
        r.complete("let a = to_ar", 13)
            .contains(&"to_array".to_string())
    );
    assert_eq!(r.complete(":he", 3), vec![":help"]);
    assert!(r.complete("", 0).is_empty());
    // Completion of the word under the cursor only, not the rest of the line.
    assert_eq!(
        complete_with(&["alpha".into(), "beta".into()], "al + beta", 2),
        vec!["alpha"]
    );
}

#[test]
fn completion_of_load_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp1.rhai"), "1").unwrap();
    let line = format!(":load {}/ex", dir.path().display());
    let got = complete_with(&[], &line, line.len());
    assert_eq!(got, vec![format!("{}/exp1.rhai", dir.path().display())]);
}

#[test]
fn an_error_keeps_earlier_variables() {
    let (mut r, _) = core();
    assert_eq!(r.feed_line("let a = 20;"), ReplOutput::Nothing);
    let out = r.feed_line("let b = a + undefined_var;");
    let ReplOutput::Error(e) = out else {
        panic!("{out:?}")
    };
    assert!(
        e.starts_with("<repl>:1:13: Variable not found: undefined_var"),
        "{e}"
    );
    assert!(e.contains(" 1 | let b = a + undefined_var;"), "{e}");
    let ReplOutput::Error(e) = r.feed_line("let c = 1 +;") else {
        panic!()
    };
    assert!(e.contains("syntax error"), "{e}");
    assert_eq!(r.feed_line("a + 1"), ReplOutput::Value("21".into()));
    // A runtime error in a tensor call, then the tensor variable is still there.
    r.feed_line("let t = zeros([2]);");
    assert!(matches!(r.feed_line("t[5]"), ReplOutput::Error(_)));
    assert_eq!(r.feed_line("t.shape"), ReplOutput::Value("[2]".into()));
}

#[test]
fn reset_drops_variables_but_keeps_host_state() {
    let (out, _buf) = Output::buffer();
    let mut host = Host::with_output(out);
    let loads = Arc::new(AtomicUsize::new(0));
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.bin");
    std::fs::write(&model_path, "weights").unwrap();
    let l = loads.clone();
    host.register("test", move |r, st| {
        let st = st.clone();
        r.func(
            "load_fake",
            "load_fake(path: String) -> int",
            "Memoised fake load (test helper).",
            move |p: &str| {
                let l = l.clone();
                let m = st
                    .load_memo(std::path::Path::new(p), move |_| {
                        l.fetch_add(1, Ordering::SeqCst);
                        Ok(String::from("model"))
                    })
                    .map_err(|e| e.to_string())?;
                Ok::<_, Box<rhai::EvalAltResult>>(m.len() as rhai::INT)
            },
        );
    });
    let mut r = ReplCore::new(host);
    let load = format!("let m = load_fake(\"{}\");", model_path.display());
    assert_eq!(r.feed_line(&load), ReplOutput::Nothing);
    r.feed_line("fn f() { 1 }");
    let ReplOutput::Info(_) = r.feed_line(":reset") else {
        panic!()
    };
    assert!(matches!(r.feed_line("m"), ReplOutput::Error(_)));
    assert!(matches!(r.feed_line("f()"), ReplOutput::Error(_)));
    // ARGS (a constant) survives the reset.
    assert_eq!(r.feed_line("ARGS.len()"), ReplOutput::Value("0".into()));
    assert_eq!(r.feed_line(&load), ReplOutput::Nothing);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(r.host().state().load_count(), 1);
}

#[test]
fn load_runs_a_file_and_keeps_its_definitions() {
    let (mut r, buf) = core();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lib.rhai");
    std::fs::write(
        &p,
        "fn sq(x) { x * x }\nlet base = 3;\nprint(\"loaded!\");\n",
    )
    .unwrap();
    let ReplOutput::Info(msg) = r.feed_line(&format!(":load {}", p.display())) else {
        panic!()
    };
    assert!(msg.starts_with("loaded "), "{msg}");
    assert_eq!(buf.contents(), "loaded!\n");
    assert_eq!(r.feed_line("sq(base)"), ReplOutput::Value("9".into()));
    let bad = dir.path().join("bad.rhai");
    std::fs::write(&bad, "let q = 1;\nq.nope();\n").unwrap();
    let ReplOutput::Error(e) = r.feed_line(&format!(":load {}", bad.display())) else {
        panic!()
    };
    assert!(e.starts_with(&format!("{}:2:", bad.display())), "{e}");
    assert!(matches!(
        r.feed_line(":load /definitely/not/here.rhai"),
        ReplOutput::Error(_)
    ));
}

#[test]
fn values_are_shown_with_tensor_previews() {
    let (mut r, _) = core();
    let ReplOutput::Value(v) = r.feed_line("from_array([1, 2])") else {
        panic!()
    };
    assert_eq!(v, "Tensor[2] f32 [1.0000, 2.0000]");
    let ReplOutput::Value(v) = r.feed_line("[zeros([1]), \"s\"]") else {
        panic!()
    };
    assert_eq!(v, "[Tensor[1] f32 [0.0000], \"s\"]");
}

#[test]
fn interrupting_a_long_evaluation_keeps_the_session() {
    let (mut r, _) = core();
    assert_eq!(r.feed_line("let kept = 5;"), ReplOutput::Nothing);
    let flag = r.host().state().interrupt_handle();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        flag.store(true, Ordering::SeqCst);
    });
    let out = r.feed_line("mr([1, 2], |x| { let i = 0; loop { i += x; } })");
    setter.join().unwrap();
    let ReplOutput::Interrupted(msg) = out else {
        panic!("{out:?}")
    };
    assert!(msg.contains("interrupted"), "{msg}");
    assert_eq!(r.feed_line("kept"), ReplOutput::Value("5".into()));
}
