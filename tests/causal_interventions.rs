//! Interventions against independent computations: a hand forward from captured parts, the
//! source run's own logits, a one-sample mean, an f64 one-layer model, the logit lens, and a
//! real server (local = remote bit for bit).

use candle_core::{DType, Device, Tensor};
use minarc::analysis::causal::{Ablation, MeanOver, Resolver, Source};
use minarc::backend::{Backend, HeadSel, InterveneOptions, Local, SampleKey};
use minarc::model::components::Norm;
use minarc::model::{AttnInputs, CaptureSpec, Edit, Intervention, Site};
use minarc::remote::Remote;
use remote_support::*;

#[path = "remote_support/mod.rs"]
mod remote_support;

fn iv(site: Site, positions: Option<Vec<usize>>, edit: Edit) -> Intervention {
    Intervention {
        site,
        positions,
        edit,
    }
}

fn ids_of(b: &dyn Backend, s: usize, seed: u64) -> Vec<u32> {
    let v = b.config().vocab_size as u64;
    (0..s as u64)
        .map(|i| (3 + (i * 7919 + seed * 104_729) % (v - 3)) as u32)
        .collect()
}

/// A local backend with samples 0 and 1 of dataset "d" (same length, other tokens) and
/// sample 0 of dataset "ref" (the tokens of d/1).
fn backend(s: usize) -> Local {
    let b = local();
    for (ds, i, seed) in [("d", 0, 1), ("d", 1, 2), ("ref", 0, 2)] {
        let ids = ids_of(&b, s, seed);
        b.forward_ids(ds, &input(i, "ids"), &ids, &CaptureSpec::full(), false)
            .unwrap();
    }
    b
}

fn all_pos(s: usize) -> InterveneOptions {
    InterveneOptions {
        logit_positions: Some((0..s).collect()),
        hidden_layers: (0..=L).collect(),
    }
}

#[test]
fn zero_ablating_every_head_of_a_layer_removes_its_attention_output() {
    let s = 10;
    let b = backend(s);
    let m = b.model();
    let key = SampleKey::new("d", 0);
    for l in 0..L {
        let heads: Vec<Intervention> = (0..H)
            .map(|h| iv(Site::Head { layer: l, head: h }, None, Edit::Zero))
            .collect();
        let whole = vec![iv(Site::AttnOutput { layer: l }, None, Edit::Zero)];
        let runs = b.intervene(&key, &[heads, whole], &all_pos(s)).unwrap();
        // by hand from the captured parts: layer l without its attention, then the layers above
        // through the component functions
        let mut x = b.hidden_states(&key, l, None).unwrap(); // [1,s,e]
        let pos: Vec<usize> = (0..s).collect();
        for j in l..L {
            if j > l {
                let xn = m.rms_norm(Norm::Input(j), &x, None).unwrap();
                let a = m
                    .attention(j, &AttnInputs::new(&xn, &xn, &xn, &pos))
                    .unwrap();
                x = (x + a).unwrap();
            }
            let xn2 = m.rms_norm(Norm::PostAttention(j), &x, None).unwrap();
            x = (&x + m.mlp(j, &xn2, None).unwrap()).unwrap();
            for r in &runs {
                let got = &r.hidden_states.iter().find(|(k, _)| *k == j + 1).unwrap().1;
                if j + 1 < L {
                    let d = max_abs_diff(got, &x);
                    assert!(
                        d < 1e-5,
                        "layer {l} zeroed: hidden_states[{}] differs by {d}",
                        j + 1
                    );
                }
            }
        }
        let hand = m
            .lm_head(&m.rms_norm(Norm::Final, &x, None).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        for r in &runs {
            let d = max_abs_diff(&r.logits, &hand);
            assert!(d < 1e-4, "layer {l} zeroed: logits differ by {d}");
        }
        // and the ablation did something
        let clean = b.logits(&key, None).unwrap().squeeze(0).unwrap();
        assert!(max_abs_diff(&runs[0].logits, &clean) > 1e-3);
    }
}

#[test]
fn patching_everything_gives_the_source_run_and_patching_nothing_the_clean_run() {
    let s = 9;
    let b = backend(s);
    let (key, src) = (SampleKey::new("d", 0), SampleKey::new("d", 1));
    let clean = b.logits(&key, None).unwrap().squeeze(0).unwrap();
    let source = b.logits(&src, None).unwrap().squeeze(0).unwrap();
    let mut every = vec![Ablation {
        site: Site::Residual { layer: 0 },
        positions: None,
        source: Source::From(src.clone()),
    }];
    for l in 0..L {
        for site in [Site::AttnOutput { layer: l }, Site::Mlp { layer: l }] {
            every.push(Ablation {
                site,
                positions: None,
                source: Source::From(src.clone()),
            });
        }
    }
    let mut r = Resolver::new(&b);
    let sets = r.resolve_sets(&key, &[vec![], every]).unwrap();
    let runs = b.intervene(&key, &sets, &all_pos(s)).unwrap();
    assert_eq!(
        max_abs_diff(&runs[0].logits, &clean),
        0.0,
        "nothing patched"
    );
    let d = max_abs_diff(&runs[1].logits, &source);
    assert_eq!(
        d, 0.0,
        "everything patched: differs from the source run by {d}"
    );
    assert!(max_abs_diff(&clean, &source) > 1e-2);
    // the clean cache of the sample is untouched
    assert_eq!(
        max_abs_diff(&b.logits(&key, None).unwrap().squeeze(0).unwrap(), &clean),
        0.0
    );
    let h1 = b.hidden_states(&key, 1, None).unwrap();
    let again = local_forward_hidden(&b, &key, 1);
    assert_eq!(max_abs_diff(&h1, &again), 0.0);
}

/// hidden_states[l] of a sample recomputed by a fresh forward of its tokens.
fn local_forward_hidden(b: &Local, key: &SampleKey, l: usize) -> Tensor {
    let ids = b.sample(key).unwrap().token_ids.clone();
    let out = b
        .model()
        .forward_capture(&ids, &CaptureSpec::full())
        .unwrap();
    out.hidden_states[l].clone().unwrap()
}

#[test]
fn a_one_sample_mean_is_a_resample_and_the_mean_over_positions_is_the_row_mean() {
    let s = 8;
    let b = backend(s);
    let key = SampleKey::new("d", 0);
    let site = Site::Head { layer: 1, head: 2 };
    let ab = |source| Ablation {
        site: site.clone(),
        positions: Some(vec![2, 5, 7]),
        source,
    };
    let mut r = Resolver::new(&b);
    let sets = r
        .resolve_sets(
            &key,
            &[
                vec![ab(Source::Mean {
                    dataset: "ref".into(),
                    over: MeanOver::Position,
                })],
                vec![ab(Source::From(SampleKey::new("d", 1)))],
            ],
        )
        .unwrap();
    let runs = b.intervene(&key, &sets, &all_pos(s)).unwrap();
    assert_eq!(max_abs_diff(&runs[0].logits, &runs[1].logits), 0.0);
    // over all positions: one row, the mean of the reference's rows (computed here in f64)
    let mut r = Resolver::new(&b);
    let iv = r
        .resolve(
            s,
            &ab(Source::Mean {
                dataset: "ref".into(),
                over: MeanOver::All,
            }),
        )
        .unwrap();
    let Edit::Set(v) = iv.edit else { panic!() };
    let rows = b
        .head_output(&SampleKey::new("ref", 0), 1, &HeadSel::One(2), None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want: Vec<f32> = (0..rows[0].len())
        .map(|c| (rows.iter().map(|r| r[c] as f64).sum::<f64>() / rows.len() as f64) as f32)
        .collect();
    let got = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-6, "mean over positions differs by {d}");
}

#[test]
fn a_pattern_set_to_its_own_clean_weights_is_the_clean_run_and_edits_change_it() {
    let s = 7;
    let b = backend(s);
    let key = SampleKey::new("d", 0);
    let w = b
        .attn_weights(&key, 1, &HeadSel::One(3), None)
        .unwrap()
        .squeeze(0)
        .unwrap(); // [s,s]
    let site = Site::Pattern { layer: 1, head: 3 };
    // uniform attention over the allowed keys of query 6
    let mut uni = vec![0f32; s];
    uni.iter_mut().for_each(|x| *x = 1.0 / s as f32);
    let sets = vec![
        vec![],
        vec![iv(site.clone(), None, Edit::Set(w.clone()))],
        vec![iv(
            site.clone(),
            Some(vec![6]),
            Edit::Set(Tensor::new(uni.as_slice(), &Device::Cpu).unwrap()),
        )],
    ];
    let runs = b.intervene(&key, &sets, &all_pos(s)).unwrap();
    let d = max_abs_diff(&runs[0].logits, &runs[1].logits);
    assert!(d < 1e-5, "own pattern: logits differ by {d}");
    // the edited row changes only position 6 and later
    let diff = runs[2].logits.sub(&runs[0].logits).unwrap().abs().unwrap();
    let per_pos = diff.max(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(per_pos[..6].iter().all(|&x| x < 1e-5), "{per_pos:?}");
    assert!(per_pos[6] > 1e-4, "{per_pos:?}");
}

#[test]
fn adding_to_the_final_residual_is_the_logit_lens_of_the_sum() {
    let s = 6;
    let b = backend(s);
    let key = SampleKey::new("d", 0);
    let e = b.config().hidden_size;
    let v: Vec<f32> = (0..e).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
    let v = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
    let set = vec![iv(
        Site::Residual { layer: L },
        Some(vec![1, 4]),
        Edit::Add(v.clone()),
    )];
    let runs = b.intervene(&key, &[set], &all_pos(s)).unwrap();
    // resid L = hs[L-1] + attn[L-1] + mlp[L-1]
    let l = L - 1;
    let resid = ((b.hidden_states(&key, l, None).unwrap() + b.attn_output(&key, l, None).unwrap())
        .unwrap()
        + b.mlp_output(&key, l, None).unwrap())
    .unwrap();
    let mut rows = vec![0f32; s * e];
    for p in [1, 4] {
        rows[p * e..(p + 1) * e].copy_from_slice(&v.to_vec1::<f32>().unwrap());
    }
    let add = Tensor::from_vec(rows, (1, s, e), &Device::Cpu).unwrap();
    let want = b
        .lens_logits(&(resid + add).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d = max_abs_diff(&runs[0].logits, &want);
    assert!(d < 1e-4, "steered logits differ from the lens by {d}");
}

#[test]
fn bad_interventions_are_clear_errors() {
    let s = 5;
    let b = backend(s);
    let key = SampleKey::new("d", 0);
    let cases: Vec<(Intervention, &str)> = vec![
        (
            iv(Site::Head { layer: 9, head: 0 }, None, Edit::Zero),
            "layer",
        ),
        (
            iv(Site::Head { layer: 0, head: 99 }, None, Edit::Zero),
            "head",
        ),
        (
            iv(Site::Residual { layer: L + 1 }, None, Edit::Zero),
            "out of range",
        ),
        (
            iv(Site::Mlp { layer: 0 }, Some(vec![5]), Edit::Zero),
            "position 5",
        ),
        (
            iv(Site::Mlp { layer: 0 }, Some(vec![]), Edit::Zero),
            "empty",
        ),
        (
            iv(
                Site::Mlp { layer: 0 },
                Some(vec![1, 2]),
                Edit::Set(Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap()),
            ),
            "value must be",
        ),
        (
            iv(
                Site::Mlp { layer: 0 },
                None,
                Edit::Add(Tensor::new(vec![f32::NAN; 64].as_slice(), &Device::Cpu).unwrap()),
            ),
            "NaN",
        ),
    ];
    for (c, words) in cases {
        let err = format!(
            "{:#}",
            b.intervene(&key, &[vec![c.clone()]], &InterveneOptions::default())
                .unwrap_err()
        );
        assert!(err.contains(words), "{c:?}: {err}");
    }
    let err = format!(
        "{:#}",
        b.intervene(
            &SampleKey::new("zz", 0),
            &[vec![]],
            &InterveneOptions::default()
        )
        .unwrap_err()
    );
    assert!(err.contains("unknown dataset"), "{err}");
}

#[test]
fn local_equals_remote_bit_for_bit_for_every_intervention_kind() {
    let srv = server(opts());
    let remote = Remote::connect(&srv.url(), None).unwrap();
    // prompts through both backends (same tokenizer on both sides)
    let local = local();
    for b in [&local as &dyn Backend, &remote] {
        forward_all(b, "d", &[0, 1]);
        forward_all(b, "ref", &[0]);
    }
    let key = SampleKey::new("d", 0);
    let s = local.seq_len(&key).unwrap();
    let e = local.config().hidden_size;
    let vec_e = Tensor::new(
        (0..e)
            .map(|i| i as f32 * 0.01)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let row_s = Tensor::new(vec![1.0 / s as f32; s].as_slice(), &Device::Cpu).unwrap();
    let sources = |b: &dyn Backend| -> Vec<Vec<Intervention>> {
        let abl = vec![
            vec![],
            vec![Ablation {
                site: Site::Head { layer: 0, head: 1 },
                positions: None,
                source: Source::Zero,
            }],
            vec![Ablation {
                site: Site::Mlp { layer: 1 },
                positions: Some(vec![1, s - 1]),
                source: Source::Mean {
                    dataset: "ref".into(),
                    over: MeanOver::All,
                },
            }],
            vec![Ablation {
                site: Site::AttnOutput { layer: 1 },
                positions: Some(vec![0, s - 1]),
                source: Source::From(SampleKey::new("d", 1)),
            }],
            vec![Ablation {
                site: Site::Residual { layer: 1 },
                positions: Some(vec![s - 1]),
                source: Source::Add(vec_e.clone()),
            }],
            vec![Ablation {
                site: Site::Pattern { layer: 1, head: 0 },
                positions: Some(vec![s - 1]),
                source: Source::Set(row_s.clone()),
            }],
            vec![
                Ablation {
                    site: Site::Head { layer: 1, head: 3 },
                    positions: Some(vec![s - 1]),
                    source: Source::From(SampleKey::new("d", 1)),
                },
                Ablation {
                    site: Site::Pattern { layer: 1, head: 3 },
                    positions: Some(vec![s - 2]),
                    source: Source::Zero,
                },
            ],
        ];
        Resolver::new(b).resolve_sets(&key, &abl).unwrap()
    };
    let opts = InterveneOptions {
        logit_positions: None,
        hidden_layers: vec![0, 1, L],
    };
    let lr = local.intervene(&key, &sources(&local), &opts).unwrap();
    let rr = remote.intervene(&key, &sources(&remote), &opts).unwrap();
    assert_eq!(lr.len(), rr.len());
    for (i, (a, b)) in lr.iter().zip(&rr).enumerate() {
        assert_eq!(
            a.logits.to_vec2::<f32>().unwrap(),
            b.logits.to_vec2::<f32>().unwrap(),
            "set {i}"
        );
        for ((la, ta), (lb, tb)) in a.hidden_states.iter().zip(&b.hidden_states) {
            assert_eq!(la, lb);
            assert_eq!(
                ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "set {i} layer {la}"
            );
        }
        if i > 0 {
            assert!(
                max_abs_diff(&a.logits, &lr[0].logits) > 0.0,
                "set {i} changed nothing"
            );
        }
    }
    // a bad set is a 400 and the server keeps serving
    let bad = vec![vec![Intervention {
        site: Site::Head { layer: 0, head: 99 },
        positions: None,
        edit: Edit::Zero,
    }]];
    let err = format!("{:#}", remote.intervene(&key, &bad, &opts).unwrap_err());
    assert!(err.contains("400") && err.contains("head"), "{err}");
    assert_eq!(remote.intervene(&key, &[vec![]], &opts).unwrap().len(), 1);
}

/// f64 forward of a one-layer model from its HF-layout weights, with head `zero` removed from
/// the attention output: logits `[s][v]`.
fn one_layer_f64(
    raw: &std::collections::HashMap<String, Tensor>,
    cfg: &minarc::model::ModelConfig,
    ids: &[u32],
    zero: Option<usize>,
) -> Vec<Vec<f64>> {
    let m2 = |n: &str| f64_rows(&raw[n]);
    let m1 = |n: &str| f64_vec(&raw[n]);
    let (e, n, d) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim());
    let eps = cfg.rms_norm_eps;
    let norm = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let var = x.iter().map(|a| a * a).sum::<f64>() / e as f64;
        x.iter()
            .zip(w)
            .map(|(a, w)| w * a / (var + eps).sqrt())
            .collect()
    };
    let mv = |w: &Vec<Vec<f64>>, x: &[f64]| -> Vec<f64> {
        w.iter()
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let add = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
    let p = "model.layers.0";
    let emb = m2("model.embed_tokens.weight");
    let x: Vec<Vec<f64>> = ids.iter().map(|&t| emb[t as usize].clone()).collect();
    let xn: Vec<Vec<f64>> = x
        .iter()
        .map(|r| norm(r, &m1(&format!("{p}.input_layernorm.weight"))))
        .collect();
    let proj = |name: &str| -> Vec<Vec<f64>> {
        let (w, b) = (
            m2(&format!("{p}.self_attn.{name}.weight")),
            m1(&format!("{p}.self_attn.{name}.bias")),
        );
        xn.iter().map(|r| add(&mv(&w, r), &b)).collect()
    };
    let (q, k, v) = (proj("q_proj"), proj("k_proj"), proj("v_proj"));
    let rope = |x: &[f64], pos: usize| -> Vec<f64> {
        let half = d / 2;
        (0..d)
            .map(|c| {
                let i = c % half;
                let ang = pos as f64 * cfg.rope_theta.powf(-(2.0 * i as f64) / d as f64);
                if c < half {
                    x[c] * ang.cos() - x[c + half] * ang.sin()
                } else {
                    x[c] * ang.cos() + x[c - half] * ang.sin()
                }
            })
            .collect()
    };
    let wo = m2(&format!("{p}.self_attn.o_proj.weight")); // [e, n·d]
    let s = ids.len();
    let mut h_mid = x.clone();
    for h in (0..n).filter(|&h| Some(h) != zero) {
        let g = cfg.kv_group(h);
        for pq in 0..s {
            let qh = rope(&q[pq][h * d..(h + 1) * d], pq);
            let sc: Vec<f64> = (0..=pq)
                .map(|t| {
                    qh.iter()
                        .zip(rope(&k[t][g * d..(g + 1) * d], t))
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = sc.iter().map(|a| (a - mx).exp()).sum();
            let o: Vec<f64> = (0..d)
                .map(|c| {
                    (0..=pq)
                        .map(|t| (sc[t] - mx).exp() / z * v[t][g * d + c])
                        .sum()
                })
                .collect();
            for (r, wrow) in wo.iter().enumerate() {
                h_mid[pq][r] += wrow[h * d..(h + 1) * d]
                    .iter()
                    .zip(&o)
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
            }
        }
    }
    let (wg, wu, wd) = (
        m2(&format!("{p}.mlp.gate_proj.weight")),
        m2(&format!("{p}.mlp.up_proj.weight")),
        m2(&format!("{p}.mlp.down_proj.weight")),
    );
    let lm = m2("lm_head.weight");
    h_mid
        .iter()
        .map(|hm| {
            let xn2 = norm(hm, &m1(&format!("{p}.post_attention_layernorm.weight")));
            let act: Vec<f64> = mv(&wg, &xn2)
                .iter()
                .zip(mv(&wu, &xn2))
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let out = add(hm, &mv(&wd, &act));
            mv(&lm, &norm(&out, &m1("model.norm.weight")))
        })
        .collect()
}

#[test]
fn zero_ablating_a_head_of_a_one_layer_model_matches_f64() {
    let mut cfg = minarc::model::fixture::Preset::Tiny.config();
    cfg.num_hidden_layers = 1;
    let dir = tempfile::tempdir().unwrap();
    minarc::model::fixture::write_model(dir.path(), &cfg, 11, 1).unwrap();
    let m = minarc::model::Qwen2::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let raw =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<u32> = (0..9).map(|i| 3 + (i * 31 % 200)).collect();
    let pos: Vec<usize> = (0..ids.len()).collect();
    let clean = one_layer_f64(&raw, &cfg, &ids, None);
    let mut worst = 0f64;
    for h in 0..cfg.num_attention_heads {
        let runs = m
            .forward_intervened(
                &ids,
                &[
                    vec![],
                    vec![iv(Site::Head { layer: 0, head: h }, None, Edit::Zero)],
                ],
                &pos,
                &[],
                None,
            )
            .unwrap();
        let want = one_layer_f64(&raw, &cfg, &ids, Some(h));
        let (got0, got1) = (
            runs[0].logits.to_vec2::<f32>().unwrap(),
            runs[1].logits.to_vec2::<f32>().unwrap(),
        );
        let mut size = 0f64;
        for p in 0..ids.len() {
            for t in 0..cfg.vocab_size {
                let effect = got1[p][t] as f64 - got0[p][t] as f64;
                let want_effect = want[p][t] - clean[p][t];
                worst = worst.max((effect - want_effect).abs());
                size = size.max(want_effect.abs());
            }
        }
        assert!(size > 1e-3, "head {h}: ablation has no effect in f64");
    }
    assert!(
        worst < 2e-5,
        "effect of zeroing a head differs from f64 by {worst}"
    );
}

/// Log-softmax of a row in f64.
fn log_softmax64(r: &[f64]) -> Vec<f64> {
    let m = r.iter().cloned().fold(f64::MIN, f64::max);
    let z = r.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    r.iter().map(|x| x - z).collect()
}

#[test]
fn metrics_of_an_intervened_run_match_a_hand_computation_in_f64() {
    use minarc::analysis::causal::run_sets;
    use minarc::model::SampleInput;
    let s = 12;
    let b = backend(s);
    let ids = ids_of(&b, s, 7);
    let (labels, cands, answers) = (
        vec![40u32, 44, 41],
        vec![40u32, 41, 42, 43, 44],
        vec![4, 7, 11],
    );
    let input = SampleInput {
        index: 0,
        prompt: "ids".into(),
        labels: labels.clone(),
        candidate_ids: cands.clone(),
        answer_indices: answers.clone(),
        objective: Default::default(),
    };
    b.forward_ids("lab", &input, &ids, &CaptureSpec::full(), false)
        .unwrap();
    let key = SampleKey::new("lab", 0);
    let sets = vec![
        vec![iv(Site::Head { layer: 1, head: 2 }, None, Edit::Zero)],
        vec![iv(Site::Mlp { layer: 0 }, Some(vec![2, 3]), Edit::Zero)],
    ];
    let runs = run_sets(
        &b,
        &key,
        &sets,
        &[],
        &[0, 5],
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    let rows = |t: &Tensor| -> Vec<Vec<f64>> {
        t.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect()
    };
    let clean = rows(&runs.clean_logits);
    // the clean logits are the model's own at the positions that predict the answers (the
    // token before each answer, spec: pos = answer_indices − 1)
    let before: Vec<usize> = answers.iter().map(|a| a - 1).collect();
    let cached = b.logits(&key, Some(&before)).unwrap().squeeze(0).unwrap();
    assert_eq!(max_abs_diff(&runs.clean_logits, &cached), 0.0);
    let mut checked = 0;
    for (m, logits) in std::iter::once((&runs.clean, &runs.clean_logits))
        .chain(runs.metrics.iter().zip(&runs.logits))
    {
        let r = rows(logits);
        let (mut obj, mut acc, mut diff, mut kl) = (0f64, 0f64, 0f64, 0f64);
        for (p, &label) in labels.iter().enumerate() {
            // over the candidates only
            let c: Vec<f64> = cands.iter().map(|&t| r[p][t as usize]).collect();
            let lp = log_softmax64(&c);
            let li = cands.iter().position(|&t| t == label).unwrap();
            obj += lp[li];
            let best = (0..c.len()).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap();
            acc += f64::from(u8::from(best == li));
            let foil = (0..c.len())
                .filter(|&i| i != li)
                .map(|i| c[i])
                .fold(f64::MIN, f64::max);
            diff += c[li] - foil;
            let (pc, pq) = (log_softmax64(&clean[p]), log_softmax64(&r[p]));
            kl += pc
                .iter()
                .zip(&pq)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
        }
        let n = labels.len() as f64;
        for (name, got, want) in [
            ("objective", m.objective, obj / n),
            ("accuracy", m.accuracy, acc / n),
            ("logit_diff", m.logit_diff, diff / n),
            ("kl", m.kl, kl / n),
        ] {
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{name}: {got} vs hand {want}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
    // the asked positions come from the same forward: the clean ones are the model's logits
    let at = b.logits(&key, Some(&[0, 5])).unwrap().squeeze(0).unwrap();
    assert_eq!(max_abs_diff(runs.clean_asked.as_ref().unwrap(), &at), 0.0);
    assert_eq!(runs.asked.len(), 2);
    assert_eq!(
        runs.asked[0].as_ref().unwrap().dims(),
        &[2, at.dim(1).unwrap()]
    );
    assert_eq!(runs.clean.kl, 0.0);
    assert!(runs.metrics[0].kl > 1e-6, "the ablation changed nothing");
}

#[test]
fn spearman_matches_scipy() {
    use minarc::analysis::causal::spearman;
    // scipy.stats.spearmanr(a, b).statistic, scipy 1.17.1
    let cases: [(&[f64], &[f64], f64); 2] = [
        (
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[5.0, 6.0, 7.0, 8.0, 7.0],
            0.8207826816681233,
        ),
        (
            &[0.3, -1.2, 2.5, 2.5, 0.0, 7.1],
            &[1.0, 3.0, 2.0, 5.0, 4.0, 6.0],
            0.4638168285219587,
        ),
    ];
    for (a, b, want) in cases {
        let got = spearman(a, b).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs scipy {want}");
    }
    assert!(
        spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0])
            .unwrap()
            .is_nan()
    );
    assert!(spearman(&[1.0], &[1.0]).is_err());
    assert!(spearman(&[1.0, 2.0], &[1.0]).is_err());
    assert!(spearman(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
}

#[test]
fn starting_from_the_cached_residual_gives_the_full_forward_in_the_asked_order() {
    let s = 11;
    let b = backend(s);
    let key = SampleKey::new("d", 0);
    let m = b.model();
    let e = b.config().hidden_size;
    let steer = Tensor::new(vec![0.25f32; e].as_slice(), &Device::Cpu).unwrap();
    // sets whose first edited layer is 1, 0, none, L (the final residual) and 1: the backend
    // runs them from the cached residual of that layer, in another order
    let sets = vec![
        vec![iv(Site::Head { layer: 1, head: 0 }, None, Edit::Zero)],
        vec![iv(Site::Mlp { layer: 0 }, Some(vec![3]), Edit::Zero)],
        vec![],
        vec![iv(
            Site::Residual { layer: L },
            Some(vec![s - 1]),
            Edit::Add(steer),
        )],
        vec![iv(
            Site::Pattern { layer: 1, head: 1 },
            Some(vec![4]),
            Edit::Zero,
        )],
    ];
    let ids = b.sample(&key).unwrap().token_ids.clone();
    let pos: Vec<usize> = (0..s).collect();
    let got = b
        .intervene(
            &key,
            &sets,
            &InterveneOptions {
                logit_positions: Some(pos.clone()),
                hidden_layers: vec![],
            },
        )
        .unwrap();
    for (i, set) in sets.iter().enumerate() {
        // each set alone, from the embedding
        let want = m
            .forward_intervened(&ids, std::slice::from_ref(set), &pos, &[], None)
            .unwrap();
        let d = max_abs_diff(&got[i].logits, &want[0].logits);
        assert!(d < 1e-5, "set {i}: differs from the full forward by {d}");
    }
    // a kept residual below the first edit is computed, not skipped
    let runs = b
        .intervene(
            &key,
            &sets[..1],
            &InterveneOptions {
                logit_positions: None,
                hidden_layers: vec![0, 1],
            },
        )
        .unwrap();
    let h0 = b.hidden_states(&key, 0, None).unwrap();
    assert_eq!(max_abs_diff(&runs[0].hidden_states[0].1, &h0), 0.0);
    // a start below an edit is refused
    let start = (1, b.hidden_states(&key, 1, None).unwrap());
    let err = m
        .forward_intervened(&ids, &sets[1..2], &pos, &[], Some(&start))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("below the start layer"),
        "{err:#}"
    );
}
