//! The Backend trait through the Local implementation, on a full fixture folder (with tokenizer).

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp};
use common::*;
use minarc::backend::{Backend, HeadSel, Local, SampleKey};
use minarc::model::fixture::{Preset, default_model_dir, init_model};
use minarc::model::{CaptureSpec, SampleInput};

const PROMPT: &str = "<|im_start|>user\nWhat is the color of the cell (3,3)? Answer: R<|im_end|>";

fn local() -> (tempfile::TempDir, Arc<Local>) {
    let d = tempfile::tempdir().unwrap();
    init_model(Preset::Tiny, 0, d.path(), 1).unwrap();
    let l = Local::load(d.path(), DType::F32, &Device::Cpu).unwrap();
    (d, Arc::new(l))
}

fn input(index: usize, prompt: &str) -> SampleInput {
    SampleInput {
        index,
        prompt: prompt.into(),
        labels: vec![7],
        candidate_ids: vec![5, 6, 7],
        answer_indices: vec![3],
        objective: Default::default(),
    }
}

#[test]
fn accessors_agree_with_the_model() {
    let (_d, local) = local();
    let b: Arc<dyn Backend> = local.clone();
    let n = b.config().num_attention_heads;
    let n_l = b.config().num_hidden_layers;
    let s = b
        .forward_sample("train", &input(0, PROMPT), &CaptureSpec::full(), false)
        .unwrap();
    let ids = local.encode(PROMPT).unwrap();
    assert_eq!(s, ids.len());
    assert!(s > 10);
    assert!(b.describe().contains("F32"));
    let key = SampleKey::new("train", 0);
    assert_eq!(b.seq_len(&key).unwrap(), s);
    assert_eq!(b.sample_meta(&key).unwrap(), input(0, PROMPT));
    let direct = local
        .model()
        .forward_capture(&ids, &CaptureSpec::full())
        .unwrap();
    let pos = [2usize, s - 1];
    for l in 0..n_l {
        let h = b.hidden_states(&key, l, Some(&pos)).unwrap();
        assert_eq!(h.dims(), &[1, 2, b.config().hidden_size]);
        assert_eq!(
            max_diff(&h, &direct.hidden_state(l, Some(&pos)).unwrap()),
            0.0
        );
        // residual identity through the accessors
        if l + 1 < n_l {
            let next = ((&h + b.attn_output(&key, l, Some(&pos)).unwrap()).unwrap()
                + b.mlp_output(&key, l, Some(&pos)).unwrap())
            .unwrap();
            assert!(max_diff(&next, &b.hidden_states(&key, l + 1, Some(&pos)).unwrap()) < 1e-4);
        }
        let all = b.head_output(&key, l, &HeadSel::All, Some(&pos)).unwrap();
        assert_eq!(all.dims(), &[1, 2, n, b.config().hidden_size]);
        assert!(
            max_diff(
                &all.sum(2).unwrap(),
                &b.attn_output(&key, l, Some(&pos)).unwrap()
            ) < 1e-5
        );
        let one = b
            .head_output(&key, l, &HeadSel::One(1), Some(&pos))
            .unwrap();
        assert!(max_diff(&one, &all.i((.., .., 1, ..)).unwrap()) < 1e-6);
        let many = b
            .head_output(&key, l, &HeadSel::Many(vec![0, 2]), Some(&pos))
            .unwrap();
        let want = (all.i((.., .., 0, ..)).unwrap() + all.i((.., .., 2, ..)).unwrap()).unwrap();
        assert!(max_diff(&many, &want) < 1e-5);
        // head index H is the MLP pseudo-head
        let mlp = b
            .head_output(&key, l, &HeadSel::One(n), Some(&pos))
            .unwrap();
        assert_eq!(
            max_diff(&mlp, &b.mlp_output(&key, l, Some(&pos)).unwrap()),
            0.0
        );
    }
    // logits computed from hidden_states[L] (not captured) match a capture with logits
    let lg = b.logits(&key, Some(&pos)).unwrap();
    let direct_l = local
        .model()
        .forward_capture(
            &ids,
            &CaptureSpec {
                logits: true,
                ..CaptureSpec::full()
            },
        )
        .unwrap()
        .logits(Some(&pos))
        .unwrap();
    assert!(max_diff(&lg, &direct_l) < 1e-4);
    // errors
    assert!(b.hidden_states(&key, n_l + 1, None).is_err());
    assert!(b.head_output(&key, 0, &HeadSel::One(n + 1), None).is_err());
    assert!(
        b.hidden_states(&SampleKey::new("train", 5), 0, None)
            .unwrap_err()
            .to_string()
            .contains("not cached")
    );
    assert!(
        b.hidden_states(&SampleKey::new("test", 0), 0, None)
            .unwrap_err()
            .to_string()
            .contains("unknown dataset")
    );
    assert!(b.hidden_states(&key, 0, Some(&[s])).is_err());
}

#[test]
fn attention_weights_shapes_cache_and_dataset_identity() {
    let (_d, local) = local();
    let b: &dyn Backend = local.as_ref();
    let s0 = b
        .forward_sample("a", &input(0, PROMPT), &CaptureSpec::full(), false)
        .unwrap();
    b.forward_sample(
        "b",
        &input(
            0,
            "<|im_start|>user\nAnother prompt, other tokens: B G Y<|im_end|>",
        ),
        &CaptureSpec::full(),
        false,
    )
    .unwrap();
    let ka = SampleKey::new("a", 0);
    let kb = SampleKey::new("b", 0);
    let pos = [s0 - 1];
    let one = b
        .attn_weights(&ka, 1, &HeadSel::One(2), Some(&pos))
        .unwrap();
    assert_eq!(one.dims(), &[1, 1, s0]);
    let sum: f32 = vals(&one).iter().sum();
    assert!((sum - 1.0).abs() < 1e-5);
    let many = b
        .attn_weights(&ka, 1, &HeadSel::Many(vec![2, 0]), Some(&pos))
        .unwrap();
    assert_eq!(many.dims(), &[1, 2, 1, s0]);
    assert!(max_diff(&many.i((.., 0, .., ..)).unwrap(), &one) < 1e-6);
    let full = b.attn_weights(&ka, 0, &HeadSel::All, None).unwrap();
    assert_eq!(full.dims(), &[1, 4, s0, s0]);
    assert_eq!(
        local.attn_cache_stats().0,
        2,
        "only pos_ids selections are cached"
    );
    // same (index, layer, head, pos) in another dataset is a different entry with other values
    let other = b
        .attn_weights(&kb, 1, &HeadSel::One(2), Some(&[3]))
        .unwrap();
    let mine = b
        .attn_weights(&ka, 1, &HeadSel::One(2), Some(&[3]))
        .unwrap();
    assert!(
        max_diff(
            &other.narrow(2, 0, 4).unwrap(),
            &mine.narrow(2, 0, 4).unwrap()
        ) > 1e-4
    );
    assert_eq!(local.attn_cache_stats().0, 4);
    // repeated calls hit the cache and return the same values
    assert_eq!(
        max_diff(
            &b.attn_weights(&ka, 1, &HeadSel::One(2), Some(&pos))
                .unwrap(),
            &one
        ),
        0.0
    );
    // keys and values are kept per (sample, layer): layers 0 and 1 of a and b
    assert_eq!(local.kv_cache_stats().0, 3);
    b.drop_dataset("b").unwrap();
    assert_eq!(local.attn_cache_stats().0, 3);
    assert_eq!(local.kv_cache_stats().0, 2);
    assert_eq!(b.datasets().unwrap(), vec![("a".to_string(), vec![0])]);
    assert!(b.drop_dataset("b").is_err());
    assert!(!b.has_sample(&kb).unwrap());
    // another prompt forwarded under a's key replaces the sample: nothing cached for the old
    // one is used (the weights equal those of the same prompt under a fresh key)
    let other_prompt = "<|im_start|>user\nA third prompt with its own tokens: R R K<|im_end|>";
    let s1 = b
        .forward_sample("a", &input(0, other_prompt), &CaptureSpec::full(), true)
        .unwrap();
    b.forward_sample("c", &input(0, other_prompt), &CaptureSpec::full(), false)
        .unwrap();
    let q = [s1 - 1];
    let replaced = b.attn_weights(&ka, 1, &HeadSel::One(2), Some(&q)).unwrap();
    let fresh = b
        .attn_weights(&SampleKey::new("c", 0), 1, &HeadSel::One(2), Some(&q))
        .unwrap();
    assert_eq!(replaced.dims(), &[1, 1, s1]);
    assert_ne!(s1, s0);
    assert_eq!(max_diff(&replaced, &fresh), 0.0);
}

#[test]
fn skip_unless_force_and_selective_capture_limits() {
    let (_d, local) = local();
    let b: &dyn Backend = local.as_ref();
    let s = b
        .forward_sample("d", &input(1, PROMPT), &CaptureSpec::full(), false)
        .unwrap();
    let short = "<|im_start|>user\nhello world, blue<|im_end|>";
    assert_eq!(
        b.forward_sample("d", &input(1, short), &CaptureSpec::full(), false)
            .unwrap(),
        s
    );
    let spec = CaptureSpec {
        positions: Some(vec![1, 2]),
        dtype: DType::F16,
        ..CaptureSpec::full()
    };
    let s2 = b
        .forward_sample("d", &input(1, short), &spec, true)
        .unwrap();
    assert!(s2 < s);
    let key = SampleKey::new("d", 1);
    assert_eq!(b.sample_meta(&key).unwrap().prompt, short);
    assert_eq!(
        b.hidden_states(&key, 1, None).unwrap().dims(),
        &[1, 2, b.config().hidden_size]
    );
    assert_eq!(b.hidden_states(&key, 1, None).unwrap().dtype(), DType::F32);
    let e = b
        .attn_weights(&key, 0, &HeadSel::One(0), Some(&[2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("full-sequence"), "{e}");
    // answer indices must be inside the prompt
    let mut bad = input(2, short);
    bad.answer_indices = vec![100];
    assert!(
        b.forward_sample("d", &bad, &CaptureSpec::full(), false)
            .is_err()
    );
}

#[test]
fn default_model_dir_creates_the_small_fixture_once() {
    let home = tempfile::tempdir().unwrap();
    // SAFETY: no other test in this binary reads MINARC_HOME.
    unsafe { std::env::set_var("MINARC_HOME", home.path()) };
    let dir = default_model_dir().unwrap();
    assert!(dir.starts_with(home.path()));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let m = minarc::model::Qwen2::load(&dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.config().num_hidden_layers, 4);
    assert_eq!(m.config().vocab_size % 64, 0);
    assert!(m.config().vocab_size >= minarc::tokenizer::fixture_vocab_size());
    assert_eq!(default_model_dir().unwrap(), dir);
}

/// A layer device map (here over the one CPU device candle has: the code path of a multi-GPU
/// placement, not a second device) computes exactly what the single-device model does:
/// forward, capture, an intervention and an attribution.
#[test]
fn a_layer_device_map_computes_what_one_device_does() {
    let (d, plain) = local();
    let mapped = Local::load_with(
        d.path(),
        DType::F32,
        &Device::Cpu,
        &minarc::model::LoadOptions {
            device_map: Some("cpu=0-0,cpu=1-1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(mapped.model().layer_devices().len(), 2);
    for b in [plain.as_ref(), &mapped] {
        b.forward_sample("m", &input(0, PROMPT), &CaptureSpec::full(), false)
            .unwrap();
    }
    let key = SampleKey::new("m", 0);
    for l in 0..=2 {
        let a = plain.hidden_states(&key, l, None).unwrap();
        let b = mapped.hidden_states(&key, l, None).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "hidden_states[{l}]");
    }
    let w = |b: &Local| b.attn_weights(&key, 1, &HeadSel::All, None).unwrap();
    assert_eq!(max_abs_diff(&w(&plain), &w(&mapped)), 0.0);
    let zero = |b: &Local| {
        let runs = b
            .intervene(
                &key,
                &[vec![minarc::model::Intervention {
                    site: minarc::model::Site::Head { layer: 1, head: 2 },
                    positions: None,
                    edit: minarc::model::Edit::Zero,
                }]],
                &Default::default(),
            )
            .unwrap();
        runs[0].logits.clone()
    };
    assert_eq!(max_abs_diff(&zero(&plain), &zero(&mapped)), 0.0);
    let bad = Local::load_with(
        d.path(),
        DType::F32,
        &Device::Cpu,
        &minarc::model::LoadOptions {
            device_map: Some("cpu=0-0".into()),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(format!("{bad:#}").contains("no device"), "{bad:#}");
}

#[test]
fn batched_forward_stores_what_single_forwards_store() {
    let (d, batched) = local();
    let single = Local::load(d.path(), DType::F32, &Device::Cpu).unwrap();
    let prompts = [
        PROMPT,
        "<|im_start|>user\nhello world, blue<|im_end|>",
        "<|im_start|>user\nAnother prompt, other tokens: B G Y and a few more words<|im_end|>",
        "<|im_start|>user\nR G B<|im_end|>",
        "<|im_start|>user\nWhat is the color of the cell (1,2)?<|im_end|>",
    ];
    let inputs: Vec<SampleInput> = prompts
        .iter()
        .enumerate()
        .map(|(k, p)| input(k, p))
        .collect();
    let specs = vec![CaptureSpec::full(); inputs.len()];
    let b: &dyn Backend = batched.as_ref();
    // one sample cached beforehand: skipped (counted as done), not recomputed
    b.forward_sample("d", &inputs[3], &specs[3], false).unwrap();
    let mut done = Vec::new();
    let lens = b
        .forward_samples("d", &inputs, &specs, false, 2, &mut |n| {
            done.push(n);
            Ok(())
        })
        .unwrap();
    // the cached one, then two batches of two (longest first)
    assert_eq!(done, vec![1, 2, 2]);
    let nl = b.config().num_hidden_layers;
    for (k, inp) in inputs.iter().enumerate() {
        let s = single
            .forward_sample("d", inp, &CaptureSpec::full(), false)
            .unwrap();
        assert_eq!(lens[k], s, "sample {k}");
        let key = SampleKey::new("d", k);
        for l in [0, nl / 2, nl] {
            let x = b.hidden_states(&key, l, None).unwrap();
            let y = single.hidden_states(&key, l, None).unwrap();
            let dif = max_abs_diff(&x, &y);
            assert!(
                dif < 1e-5 * (1.0 + max_abs(&y)),
                "sample {k} layer {l}: {dif}"
            );
        }
    }
    // bad input is refused before any forward runs: nothing of the call is stored
    let bad = vec![input(10, PROMPT), input(11, "")];
    let e = b
        .forward_samples("e", &bad, &specs[..2], false, 2, &mut |_| Ok(()))
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("sample 11"), "{e}");
    assert!(!b.has_sample(&SampleKey::new("e", 10)).unwrap());
    let dup = vec![input(12, PROMPT), input(12, PROMPT)];
    let e = b
        .forward_samples("e", &dup, &specs[..2], false, 2, &mut |_| Ok(()))
        .unwrap_err();
    assert!(format!("{e:#}").contains("twice"), "{e:#}");
    for n in [0, 1 << 20] {
        let e = b
            .forward_samples("e", &bad[..1], &specs[..1], false, n, &mut |_| Ok(()))
            .unwrap_err();
        assert!(format!("{e:#}").contains("batch"), "{e:#}");
    }
}
