//! Sharded runs: N shard processes of `minarc run --shard i/N`, `minarc reduce` and a
//! `--reduced` run print and write exactly what one unsharded run does; the scheduler's
//! environment picks the shard; incomplete or mismatched shards are refused with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_minarc"));
    for k in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "JOB_COMPLETION_INDEX",
        "MINARC_SHARD_COUNT",
    ] {
        c.env_remove(k);
    }
    c
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sharded.rhai")
}

/// The tiny fixture model folder (written once per test binary).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("minarc-shard-fixture")
            .tempdir()
            .unwrap()
            .keep();
        minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 5, &dir, 1)
            .unwrap();
        dir
    })
}

fn script_args(n: usize, out: &Path) -> Vec<String> {
    vec![
        "--".into(),
        "--model".into(),
        model_dir().display().to_string(),
        "--n".into(),
        n.to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
}

fn ok(o: Output, what: &str) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{what} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn err(o: Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} should fail");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!e.contains("panicked"), "{what} panicked:\n{e}");
    e
}

/// The printed results: every line but the first (which names the run's mode).
fn results(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("wrote "))
        .map(str::to_string)
        .collect()
}

/// Runs `n` samples unsharded, then as `shards` concurrent processes + reduce + replay, and
/// checks the two agree (printed numbers and the saved attribution tensor, bit for bit).
fn sharded_equals_unsharded(n: usize, shards: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let whole_out = tmp.path().join("whole");
    let whole = ok(
        bin()
            .arg("run")
            .arg(script())
            .args(script_args(n, &whole_out))
            .output()
            .unwrap(),
        "the unsharded run",
    );
    let dir = tmp.path().join("shards");
    let children: Vec<_> = (0..shards)
        .map(|i| {
            bin()
                .arg("run")
                .arg(script())
                .args(["--shard", &format!("{i}/{shards}"), "--shard-dir"])
                .arg(&dir)
                .args(script_args(n, &tmp.path().join(format!("s{i}"))))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        ok(c.wait_with_output().unwrap(), &format!("shard {i}"));
        assert!(
            !tmp.path().join(format!("s{i}/attr.safetensors")).exists(),
            "a shard must not write the full results"
        );
    }
    let red = ok(
        bin().arg("reduce").arg(&dir).output().unwrap(),
        "minarc reduce",
    );
    assert!(
        red.contains(&format!("mr call 0: {n} items, tensor")),
        "{red}"
    );
    assert!(red.contains(&format!("mr call 1: {n} items, map")), "{red}");
    let replay_out = tmp.path().join("replay");
    let replay = ok(
        bin()
            .arg("run")
            .arg(script())
            .arg("--reduced")
            .arg(&dir)
            .args(script_args(n, &replay_out))
            .output()
            .unwrap(),
        "the --reduced run",
    );
    assert!(replay.lines().next().unwrap().contains("replay run"));
    assert_eq!(results(&whole), results(&replay), "printed results differ");
    assert!(results(&whole).iter().any(|l| l.starts_with("accuracy")));
    let a = std::fs::read(whole_out.join("attr.safetensors")).unwrap();
    let b = std::fs::read(replay_out.join("attr.safetensors")).unwrap();
    assert_eq!(a, b, "the attribution tensors differ");
}

#[test]
fn three_shards_reduce_to_the_unsharded_results() {
    sharded_equals_unsharded(7, 3);
}

#[test]
fn more_shards_than_samples_leave_empty_partials_that_reduce_correctly() {
    sharded_equals_unsharded(2, 3);
}

#[test]
fn the_scheduler_environment_picks_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut c = bin();
        c.arg("run")
            .arg(script())
            .args(["--shard", "auto", "--shard-dir"])
            .arg(tmp.path().join("d"))
            .args(script_args(2, &tmp.path().join("o")));
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Slurm: --array=5-6 gives ids 5 and 6 with min 5 -> shards 0/2 and 1/2
    let o = ok(
        run(&[
            ("SLURM_ARRAY_TASK_ID", "6"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ]),
        "a Slurm task",
    );
    assert!(o.contains("shard run (shard 1 of 2)"), "{o}");
    assert!(
        tmp.path()
            .join("d/shard-1-of-2/mr-0000.safetensors")
            .is_file()
    );
    // Kubernetes Indexed Job
    let o = ok(
        run(&[("JOB_COMPLETION_INDEX", "0"), ("MINARC_SHARD_COUNT", "2")]),
        "an Indexed Job pod",
    );
    assert!(o.contains("shard run (shard 0 of 2)"), "{o}");
    // the two make a complete run
    ok(
        bin()
            .arg("reduce")
            .arg(tmp.path().join("d"))
            .output()
            .unwrap(),
        "reduce",
    );
    let e = err(run(&[("JOB_COMPLETION_INDEX", "0")]), "no count");
    assert!(e.contains("MINARC_SHARD_COUNT"), "{e}");
    let e = err(run(&[]), "no scheduler");
    assert!(e.contains("SLURM_ARRAY_TASK_ID"), "{e}");
    let e = err(
        run(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ]),
        "an id past the count",
    );
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn incomplete_or_mismatched_shards_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let shard = |i: usize, n_shards: usize, n: usize| {
        bin()
            .arg("run")
            .arg(script())
            .args(["--shard", &format!("{i}/{n_shards}"), "--shard-dir"])
            .arg(&dir)
            .args(script_args(n, &tmp.path().join("o")))
            .output()
            .unwrap()
    };
    let reduce = || bin().arg("reduce").arg(&dir).output().unwrap();
    let e = err(reduce(), "reduce of a missing folder");
    assert!(e.contains("reading"), "{e}");
    ok(shard(0, 3, 4), "shard 0");
    let e = err(reduce(), "reduce with shards missing");
    assert!(e.contains("2 of 3 shards missing (shard 1, 2)"), "{e}");
    ok(shard(1, 3, 4), "shard 1");
    ok(shard(2, 3, 5), "shard 2 over other inputs");
    let e = err(reduce(), "reduce of mismatched shards");
    assert!(e.contains("the shards ran different inputs"), "{e}");
    ok(shard(2, 3, 4), "shard 2 again");
    ok(reduce(), "reduce");
    // a replay with other arguments than the shards had
    let e = err(
        bin()
            .arg("run")
            .arg(script())
            .arg("--reduced")
            .arg(&dir)
            .args(script_args(6, &tmp.path().join("r")))
            .output()
            .unwrap(),
        "a replay over 6 samples",
    );
    assert!(e.contains("mr call 0 has 6 items here"), "{e}");
    // a second run's shards in the same folder
    ok(shard(0, 2, 4), "another run's shard");
    let e = err(reduce(), "two runs in one folder");
    assert!(e.contains("holds shards of two runs"), "{e}");
    std::fs::remove_dir_all(dir.join("shard-0-of-2")).unwrap();
    // a damaged partial
    std::fs::write(dir.join("shard-1-of-3/mr-0001.safetensors"), b"garbage").unwrap();
    let e = err(reduce(), "a damaged partial");
    assert!(e.contains("mr-0001.safetensors"), "{e}");
    // bad --shard values
    for (bad, says) in [
        ("3/3", "out of range"),
        ("1/0", "at least 1"),
        ("x/2", "not a whole number"),
        ("2", "expected i/N"),
    ] {
        let o = bin()
            .arg("run")
            .arg(script())
            .args(["--shard", bad])
            .args(script_args(2, &tmp.path().join("o")))
            .output()
            .unwrap();
        let e = err(o, bad);
        assert!(e.contains(says), "--shard {bad}: {e}");
    }
}

/// `mr(items, f)` and `mr(models, items, f)` in a shard: f sees the shard's slice only, the
/// returned mean is the slice's, and the partials written hold the slice's sums.
#[test]
fn both_mr_forms_map_the_shard_slice_and_write_its_sums() {
    use minarc::script::shard::{Partial, Shard, ShardMode, partial_path};
    use minarc::script::{Host, Output};
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = Output::buffer();
    let mut host = Host::with_output(out);
    host.state().set_show_progress(false);
    let shard = Shard::parse("1/3").unwrap();
    host.state().set_shard_mode(ShardMode::Shard {
        shard,
        dir: tmp.path().to_path_buf(),
    });
    let src = format!(
        r#"let m = load_model("{}");
           let a = mr([1, 2, 3, 4, 5, 6, 7], |x| x * 10);
           let b = mr([m, m], [1, 2, 3, 4, 5, 6, 7], |x, model| x * 100);
           [a, b]"#,
        model_dir().display()
    );
    let v = host.eval_source("shard", &src, false).unwrap();
    let v = v.into_array().unwrap();
    // items 3 and 4 of 7 (range 2..4)
    assert_eq!(v[0].as_float().unwrap(), 35.0);
    assert_eq!(v[1].as_float().unwrap(), 350.0);
    for (call, sum) in [(0, 70.0), (1, 700.0)] {
        let p = Partial::read(&partial_path(&shard.dir(tmp.path()), call)).unwrap();
        assert_eq!((p.call, p.items, p.count), (call, 7, 2));
        assert_eq!(p.sum, Some(minarc::script::shard::Acc::Num(sum)));
    }
}
