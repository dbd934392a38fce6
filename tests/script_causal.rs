//! Causal bindings from scripts on the tiny fixture: sweeps, faithfulness and the ablation curve
//! agree with single interventions run one by one, their limiting cases are exact (keep every
//! component: faithfulness 1; ablate every head at random or by rank: the same set), the figure
//! is written, and bad arguments are clear errors that leave the session intact.

use minarc::script::Host;
use rhai::{Dynamic, Map};

#[path = "common/mod.rs"]
mod common;

const L: usize = 2;
const H: usize = 4;

use common::{script_host as host, script_prelude as prelude};

fn num(v: &Dynamic) -> f64 {
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .unwrap_or_else(|t| panic!("expected a number, got {t}"))
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 3, dir.path(), 1)
        .unwrap();
    dir
}

#[test]
fn sweeps_faithfulness_and_the_curve_agree_with_single_interventions() {
    let dir = fixture();
    let out = tempfile::tempdir().unwrap();
    let (mut h, buf) = host();
    let src = format!(
        r#"{prelude}
let zero12 = [#{{site: "head", layer: 1, head: 2, kind: "zero"}}];
let mean_of = |f| {{ let s = 0.0; for r in rs {{ s += f.call(r); }} s / rs.len() }};
let one = mean_of.call(|r| intervene(model, r, zero12).metrics.objective);
let e = ablate_each(model, rs, #{{kind: "zero"}});
let row = e.rows.filter(|x| x.site == "head 1.2")[0];
let em = ablate_each(model, rs, #{{kind: "mean", mlp: false}});
let mean_row = em.rows.filter(|x| x.site == "head 0.3")[0];
let mean_one = mean_of.call(|r| intervene(model, r, [#{{site: "head", layer: 0, head: 3, kind: "mean", dataset: "w1"}}]).metrics.objective);
let all = [];
for l in 0..{L} {{ for hd in 0..={H} {{ all.push([l, hd]); }} }}
let everything = [];
for l in 0..{L} {{
    for hd in 0..{H} {{ everything.push(#{{site: "head", layer: l, head: hd, kind: "zero"}}); }}
    everything.push(#{{site: "mlp", layer: l, kind: "zero"}});
}}
let f_all = faithfulness(model, rs, all, #{{kind: "zero"}});
let f_none = faithfulness(model, rs, [], #{{kind: "zero"}});
let empty_one = mean_of.call(|r| intervene(model, r, everything).metrics.objective);
let heads = [];
for l in 0..{L} {{ for hd in 0..{H} {{ heads.push([l, hd, 0.0, 0.0]); }} }}
let c = ablation_curve(model, rs, heads, #{{k: {LH}, draws: 2, kind: "zero", seed: 3}});
let first = mean_of.call(|r| intervene(model, r, [#{{site: "head", layer: 0, head: 0, kind: "zero"}}]).metrics.objective);
let p = rs[0].answer_indices[0];
let pe = patch_each(model, rs[0], rs[1], #{{layers: [1], positions: [p - 1, p]}});
let patched = intervene(model, rs[0], [#{{site: "resid", layer: 1, positions: [p], kind: "patch", from: rs[1]}}]).metrics.objective;
let g = Graph(model, rs.len());
let lm = Node(g, {L}, (), "lm_head", "A-->A-");
attribute_step(g, model, rs[0], [lm]);
let f_x = completeness(g, lm, rs[0]).f_x;
let obj0 = intervene(model, rs[0], []).clean.objective;
let asked = intervene(model, rs[0], zero12, #{{logit_positions: [3]}});
let asked_diff = (asked.clean_asked_logits - get_logits(model, rs[0], [3])[0]).abs().max();
plot_ablation_curve(c, "{out}/curve.png", #{{metric: "kl"}});
plot_ablation_curve(c, "{out}/curve.svg", #{{}});
#{{one: one, row: row.objective, d_row: row.d_objective, effect: e.effect[1][2], clean: e.clean.objective,
   mean_row: mean_row.objective, mean_one: mean_one, ablation: em.ablation,
   f_all: f_all.score.objective, f_none: f_none.score.objective, f_empty: f_all.empty.objective,
   empty_one: empty_one, f_full: f_all.full.objective, kept: f_all.kept, total: f_all.total,
   top_last: c.top.objective[{LH} - 1], rand_last: c.random_mean.objective[{LH} - 1],
   sd_last: c.random_std.objective[{LH} - 1], top_first: c.top.objective[0], first: first,
   pe: pe.rows[1].objective, pe_shape: pe.effect.shape, patched: patched,
   f_x: f_x, obj0: obj0, asked_diff: asked_diff, asked_shape: asked.asked_logits.shape,
   rho: spearman(from_array([1, 2, 3, 4, 5]), from_array([5, 6, 7, 8, 7]))}}
"#,
        prelude = prelude(dir.path()),
        out = out.path().display(),
        LH = L * H,
    );
    let v = h
        .eval_source("causal.rhai", &src, false)
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, buf.contents()))
        .try_cast::<Map>()
        .unwrap();
    let g = |k: &str| num(&v[k]);
    // the clean objective is the lm_head node's objective of the attribution (f(x) of its IG)
    assert!(
        (g("f_x") - g("obj0")).abs() < 1e-5,
        "{} vs {}",
        g("f_x"),
        g("obj0")
    );
    // logits at asked positions come with the clean run's, which are the model's own
    assert_eq!(g("asked_diff"), 0.0);
    assert_eq!(
        v["asked_shape"].to_string(),
        format!("[1, {}]", minarc::model::fixture::fixture_vocab_rounded())
    );
    // a sweep row is the single intervention averaged over the samples
    assert!(
        (g("row") - g("one")).abs() < 1e-12,
        "{} vs {}",
        g("row"),
        g("one")
    );
    assert!((g("d_row") - (g("one") - g("clean"))).abs() < 1e-12);
    assert!((g("effect") - g("d_row")).abs() < 1e-6);
    assert!(g("d_row").abs() > 1e-6, "zeroing head 1.2 changed nothing");
    assert!((g("mean_row") - g("mean_one")).abs() < 1e-12);
    assert!(
        v["ablation"].to_string().contains("over all positions"),
        "{}",
        v["ablation"]
    );
    // keeping everything is the full model, keeping nothing the empty one
    assert_eq!(g("f_all"), 1.0);
    assert_eq!(g("f_none"), 0.0);
    assert!((g("f_empty") - g("empty_one")).abs() < 1e-12);
    assert!((g("f_full") - g("clean")).abs() < 1e-12);
    assert_eq!(
        (g("kept"), g("total")),
        ((L * (H + 1)) as f64, (L * (H + 1)) as f64)
    );
    // k = every head: any random draw is the same set as the top-k
    assert!((g("top_last") - g("rand_last")).abs() < 1e-12);
    assert!(g("sd_last") < 1e-12);
    assert!((g("top_first") - g("first")).abs() < 1e-12);
    assert!((g("pe") - g("patched")).abs() < 1e-12);
    assert_eq!(v["pe_shape"].to_string(), "[1, 2]");
    assert!((g("rho") - 0.8207826816681233).abs() < 1e-12);
    let png = std::fs::read(out.path().join("curve.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(out.path().join("curve.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("heads ablated"));
}

#[test]
fn causal_functions_refuse_bad_arguments_and_keep_the_session() {
    let dir = fixture();
    let (mut h, _) = host();
    let pre = prelude(dir.path());
    let clean = |h: &mut Host| -> f64 {
        let src = format!("{pre}\nintervene(model, rs[0], []).clean.objective");
        h.eval_source("clean.rhai", &src, false)
            .unwrap()
            .as_float()
            .unwrap()
    };
    let before = clean(&mut h);
    let cases: &[(&str, &[&str])] = &[
        (
            r#"intervene(model, rs[0], [#{site: "neuron", layer: 0}])"#,
            &["unknown site", "neuron"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "head", layer: 0}])"#,
            &["needs a head"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, head: 1}])"#,
            &["takes no head"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "head", layer: 7, head: 0}])"#,
            &["layer"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "head", layer: 0, head: 9}])"#,
            &["head"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "erase"}])"#,
            &["unknown kind", "erase"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "patch"}])"#,
            &["needs from"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "set"}])"#,
            &["needs value"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "zero", from: rs[1]}])"#,
            &["takes no from"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "zero", dataset: "w1"}])"#,
            &["takes no dataset"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, positions: [100000]}])"#,
            &["position 100000"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, positions: [-1]}])"#,
            &["positions"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, colour: 1}])"#,
            &["unknown option", "colour"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "mean", dataset: "nope"}])"#,
            &["nope"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "mlp", layer: 0, kind: "add", value: zeros([3])}])"#,
            &["value must be"],
        ),
        (
            r#"intervene(model, rs[0], [#{site: "pattern", layer: 0, head: 0, kind: "mean", over: "all"}])"#,
            &["per position"],
        ),
        (r#"intervene(model, rs[0], [1, 2])"#, &["must be a map"]),
        (
            r#"intervene(model, rs[0], [], #{logit_positions: [100000]})"#,
            &["logit", "100000"],
        ),
        (
            r#"intervene(model, rs[0], [], #{hidden_layers: [99]})"#,
            &["hidden layer 99"],
        ),
        (r#"ablate_each(model, [], #{})"#, &["no samples"]),
        (
            r#"ablate_each(model, rs, #{metric: "fun"})"#,
            &["unknown metric"],
        ),
        (
            r#"ablate_each(model, rs, #{value: zeros([2])})"#,
            &["take no value"],
        ),
        (
            r#"ablate_each(model, rs, #{draws: 2})"#,
            &["unknown option", "draws"],
        ),
        (r#"ablate_each(model, [1], #{})"#, &["Cached"]),
        (r#"faithfulness(model, rs, [[0, 9]], #{})"#, &["head 9"]),
        (
            r#"faithfulness(model, rs, [[5, 1]], #{})"#,
            &["not in the model"],
        ),
        (r#"faithfulness(model, rs, 3, #{})"#, &["Graph"]),
        (
            r#"ablation_curve(model, rs, [[0, 1]], #{k: 2})"#,
            &["fewer than k = 2"],
        ),
        (
            r#"ablation_curve(model, rs, [[0, 1]], #{k: 1, draws: 1000000000})"#,
            &["intervention sets"],
        ),
        (r#"ablation_curve(model, rs, [[0, 1]], #{k: -1})"#, &["k"]),
        (
            r#"patch_each(model, rs[0], rs[1], #{layers: [9]})"#,
            &["layer"],
        ),
        (
            r#"patch_each(model, rs[0], rs[1], #{positions: []})"#,
            &["no layers or no positions"],
        ),
        (r#"plot_ablation_curve(#{}, "x.png", #{})"#, &["lacks ks"]),
        (
            r#"spearman(zeros([3]), zeros([4]))"#,
            &["different lengths"],
        ),
    ];
    for (call, words) in cases {
        let e = h
            .eval_source("bad.rhai", &format!("{pre}\n{call}"), false)
            .err()
            .unwrap_or_else(|| panic!("{call} succeeded"));
        for w in *words {
            assert!(e.message.contains(w), "{call}: {}", e.message);
        }
        assert!(!e.message.contains("panic"), "{call}: {}", e.message);
    }
    // the model, its cache and the clean run are as they were
    assert_eq!(clean(&mut h), before);
}

#[test]
fn the_causal_guide_example_runs() {
    let (text, _dir) = common::run_markdown_example("docs/src/causal.md");
    // "<clean objective> -> <intervened objective> (KL <kl>)" with a positive KL
    let kl: f64 = text
        .rsplit("(KL ")
        .next()
        .and_then(|t| t.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {text}"));
    assert!(kl > 0.0, "{text}");
}
