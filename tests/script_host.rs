//! Script host: `minarc run` end to end, error formatting, tensors from scripts, docs
//! coverage and interrupts.

use minarc::script::{ErrorKind, Host, Output, SharedBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn host() -> (Host, SharedBuf) {
    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    (host, buf)
}

fn write_script(dir: &tempfile::TempDir, name: &str, src: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, src).unwrap();
    p
}

#[test]
fn run_prints_output_and_args() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_script(
        &dir,
        "ok.rhai",
        "let t = from_array([[1, 2], [3, 4]]);\nprint(`sum=${t.sum()}`);\nprint(ARGS.len());\nprint(ARGS[1]);\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", p.to_str().unwrap(), "--", "first", "second"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sum=10.0\n2\nsecond\n"
    );
}

#[test]
fn run_reports_runtime_error_with_location_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_script(
        &dir,
        "bad.rhai",
        "let t = zeros([2, 3]);\nprint(\"before\");\nlet u = t.slice(1, 0, 7);\nprint(\"after\");\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");
    let err = String::from_utf8_lossy(&out.stderr);
    let want_head = format!(
        "{}:3:11: slice(): slice bound 7 out of range for a dimension of size 3",
        p.display()
    );
    assert!(err.starts_with(&want_head), "stderr: {err}");
    assert!(
        err.contains(" 3 | let u = t.slice(1, 0, 7);"),
        "stderr: {err}"
    );
    // Caret under column 11 (the dot of the method call).
    let caret_line = err.lines().nth(2).unwrap();
    assert_eq!(caret_line, format!("   | {}^", " ".repeat(10)));
}

#[test]
fn run_reports_syntax_error_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_script(&dir, "syntax.rhai", "let a = 1;\nlet b = (a + ;\n");
    let out = Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:2:", p.display())),
        "stderr: {err}"
    );
    assert!(err.contains("syntax error"), "stderr: {err}");
    assert!(err.contains(" 2 | let b = (a + ;"), "stderr: {err}");

    let out = Command::new(env!("CARGO_BIN_EXE_minarc"))
        .args(["run", dir.path().join("absent.rhai").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read script"));
}

#[test]
fn tensor_ops_match_hand_computed_values() {
    let (mut h, buf) = host();
    let src = r#"
        let a = from_array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]);
        let b = from_array([10, 20, 30]);
        print((a + b).to_array());       // broadcast over rows
        print((2 - a).to_array());
        print((a / 2).to_array());
        print(a.abs().sum(1).to_array());
        print(a.mean(0).to_array());
        print([a.max(), a.min(), a.argmax(), a.mean()]);
        print(a.argmax(1).to_array());
        print(a[-1][1]);
        print(a.select(1, -1).to_array());
        print(a.take(1, [2, 0]).to_array());
        print(a.transpose(0, 1).shape);
        print(a.ndim);
        print(stack([b, b * 2], 0).shape);
        print(cat([a, a], 1).shape);
    "#;
    let _ = h.eval_source("t.rhai", src, false).unwrap();
    let want = "\
[[11.0, 18.0, 33.0], [6.0, 25.0, 24.0]]
[[1.0, 4.0, -1.0], [6.0, -3.0, 8.0]]
[[0.5, -1.0, 1.5], [-2.0, 2.5, -3.0]]
[6.0, 15.0]
[-1.5, 1.5, -1.5]
[5.0, -6.0, 4, -0.5]
[2, 1]
5.0
[3.0, -6.0]
[[3.0, 1.0], [-6.0, -4.0]]
[3, 2]
2
[2, 3]
[2, 6]
";
    assert_eq!(buf.contents(), want);
}

#[test]
fn bad_tensor_arguments_are_errors_not_panics() {
    let (mut h, _buf) = host();
    let cases = [
        ("zeros([2, 3])[2]", "index 2 out of range"),
        ("zeros([2, 3]).select(2, 0)", "dim 2 out of range"),
        ("zeros([2, 3]).slice(0, 2, 1)", "after end"),
        (
            "zeros([2, 3]) + zeros([4])",
            "cannot combine shapes [2, 3] and [4]",
        ),
        ("zeros([2, 3]).reshape([4])", "cannot reshape"),
        ("from_array([[1, 2], [3]])", "ragged"),
        ("from_array([\"a\"])", "expected a number"),
        ("zeros([0]).max()", "empty tensor"),
        ("zeros([-1])", "must be >= 0"),
        ("stack([], 0)", "empty array"),
        ("stack([zeros([2]), 1], 0)", "expected a Tensor"),
        ("zeros([2, 3]).item()", "one-element"),
        ("from_array(1.5)[0]", "0-d tensor"),
    ];
    for (src, want) in cases {
        let err = h.eval_source("e.rhai", src, false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Runtime, "{src}");
        assert!(err.message.contains(want), "{src}: {}", err.message);
        assert_eq!(err.line, Some(1), "{src}");
    }
}

#[test]
fn panics_in_native_calls_become_errors_and_state_survives() {
    let (mut h, _buf) = host();
    h.register("test", |r, _| {
        r.func(
            "boom",
            "boom()",
            "Panics (test helper).",
            || -> rhai::INT { panic!("kaboom") },
        );
    });
    let _ = h.eval_source("a.rhai", "let kept = 41;", true).unwrap();
    let err = h.eval_source("b.rhai", "boom()", true).unwrap_err();
    assert!(
        err.message.contains("internal error (panic): kaboom"),
        "{}",
        err.message
    );
    let v = h.eval_source("c.rhai", "kept + 1", true).unwrap();
    assert_eq!(v.as_int().unwrap(), 42);
}

#[test]
fn mr_averages_numbers_tensors_maps_and_arrays() {
    let (mut h, buf) = host();
    let src = r#"
        print(mr([1, 2, 6], |x| x));
        print(mr([1, 3], |x| from_array([x, 10 * x])).to_array());
        print(mr([1, 3], |x| #{a: x, b: [x, 2 * x]}));
        print(mr([1, 3], |x, k| x * k, [5]));
        print(map_progress([1, 2], |x| x * x));
    "#;
    let _ = h.eval_source("mr.rhai", src, false).unwrap();
    assert_eq!(
        buf.contents(),
        "3.0\n[2.0, 20.0]\n#{\"a\": 2.0, \"b\": [2.0, 4.0]}\n10.0\n[1, 4]\n"
    );
    let err = h
        .eval_source("mr2.rhai", "mr([1, \"x\"], |x| x)", false)
        .unwrap_err();
    assert!(err.message.contains("expected a number"), "{}", err.message);
}

#[test]
fn memo_and_graph_slot_persist_across_evaluations_and_reset() {
    let (mut h, buf) = host();
    let src = "let v = memo(\"ds\", || { print(\"computing\"); [1, 2, 3] }); print(v.len());";
    let _ = h.eval_source("m.rhai", src, false).unwrap();
    h.reset();
    let _ = h.eval_source("m.rhai", src, false).unwrap();
    assert_eq!(buf.contents(), "computing\n3\n3\n");
    let _ = h
        .eval_source("g.rhai", "set_current_graph(#{name: \"g1\"});", false)
        .unwrap();
    h.reset();
    let g = h
        .eval_source("g2.rhai", "current_graph().name", false)
        .unwrap();
    assert_eq!(g.into_string().unwrap(), "g1");
    assert!(
        h.eval_source("f.rhai", "forget(\"ds\")", false)
            .unwrap()
            .as_bool()
            .unwrap()
    );
}

#[test]
fn interrupt_flag_stops_an_endless_loop_and_host_stays_usable() {
    let (mut h, _buf) = host();
    let flag = h.state().interrupt_handle();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, Ordering::SeqCst);
    });
    let _ = h.eval_source("a.rhai", "let x = 7;", true).unwrap();
    let err = h
        .eval_source("loop.rhai", "let i = 0;\nloop { i += 1; }", true)
        .unwrap_err();
    setter.join().unwrap();
    assert_eq!(err.kind, ErrorKind::Interrupted);
    assert_eq!(err.message, "interrupted");
    // The next evaluation starts with a cleared flag and sees earlier variables.
    assert_eq!(
        h.eval_source("b.rhai", "x * 6", true)
            .unwrap()
            .as_int()
            .unwrap(),
        42
    );
}

#[test]
fn interrupt_stops_a_native_map_reduce_loop() {
    let (mut h, _buf) = host();
    let state = h.state().clone();
    h.register("test", move |r, st| {
        let st = st.clone();
        r.func(
            "trip",
            "trip(x)",
            "Sets the interrupt flag (test helper).",
            move |x: rhai::INT| {
                st.interrupt();
                x
            },
        );
    });
    let err = h
        .eval_source(
            "mr.rhai",
            "let seen = []; mr([1, 2, 3, 4], |x| { trip(x) })",
            false,
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Interrupted, "{err}");
    assert!(state.interrupted());
}

#[test]
fn every_registered_function_is_documented_and_in_the_function_reference() {
    let (h, _buf) = host();
    let sigs = h.engine().gen_fn_signatures(false);
    assert!(sigs.len() > 40, "too few signatures: {}", sigs.len());
    for sig in &sigs {
        let name = sig.split('(').next().unwrap();
        assert!(
            h.docs().documents_engine_name(name),
            "undocumented script function: {sig}"
        );
    }
    for d in h.docs().fns() {
        assert!(
            !d.doc.trim().is_empty() && !d.signature.trim().is_empty(),
            "{d:?}"
        );
    }
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/functions.md"
    ))
    .unwrap();
    for d in h.docs().fns() {
        let cell = format!("`{}`", d.signature.replace('|', "\\|"));
        assert!(
            reference.contains(&cell),
            "docs/src/functions.md lacks {cell}; regenerate the table with `minarc help-functions --markdown`"
        );
    }
    for t in h.docs().types() {
        assert!(
            reference.contains(&format!("`{}`", t.name)),
            "docs/src/functions.md lacks type {}; regenerate the table with `minarc help-functions --markdown`",
            t.name
        );
    }
}
