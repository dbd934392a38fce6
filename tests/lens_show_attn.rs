//! V8 show_attn on the tiny fixture: the act row is 1 − aw[:,0], the q-> rows are one-hot at
//! answer_index − 1, the attention rows are the query rows of the full attention matrix, labels
//! carry each answer's own head-lens verdict, aa rows come from the attribution module, the
//! default window starts 5 tokens before the first shown example's grid; renderers; bad inputs.

mod lens_support;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lens_support::*;
use minarc::analysis::lens::eval_head_lens;
use minarc::analysis::show_attn::{
    attn_attr_rows, attn_attr_rows_for, show_attn_ansi, show_attn_data, write_show_attn_html,
};
use minarc::attribution::{Graph, SampleRef, attribute_attn_weights, attribute_step};
use minarc::backend::{Backend, HeadSel};

#[test]
fn rows_labels_and_window() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 2, 3);
    let key = cache(&b, &sample);
    let s = sample.n_tokens.unwrap();
    let (layer, head) = (1, 2);
    let full = b
        .attn_weights(&key, layer, &HeadSel::One(head), None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap(); // [s,s]
    let lens = eval_head_lens(&b, &key, &sample, layer, head, false).unwrap();
    for last_k in [1, 2] {
        let v = show_attn_data(&b, &key, &sample, layer, head, None, last_k, None, None).unwrap();
        // window: 5 tokens before the `grid` token of the first shown example, to the end
        assert_eq!(v.stop, s);
        assert_eq!(v.tokens.len(), v.stop - v.start);
        let grid_at = &v.tokens[5..];
        assert!(
            grid_at.concat().trim_start().starts_with("grid = {"),
            "{:?}",
            &grid_at[..3]
        );
        // the first shown example's grid is the (last_k)-th "grid = {" from the end
        let text: String = v.tokens.concat();
        assert_eq!(text.matches("grid = {").count(), last_k);
        assert!(sample.prompt.ends_with(&text));
        // rows: act, then (q->, attention) per shown answer
        let n = 4 * last_k;
        assert_eq!(v.rows.len(), 1 + 2 * n);
        assert_eq!(v.labels.len(), v.rows.len());
        assert_eq!(v.labels[0], "act");
        for (c, t) in (v.start..v.stop).enumerate() {
            assert!(
                (v.rows[0][c] - (1.0 - full[t][0])).abs() < 1e-5,
                "act at {t}"
            );
        }
        let first = 8 - n;
        for j in 0..n {
            let i = first + j;
            let q = sample.answer_indices[i] - 1;
            let one_hot = &v.rows[1 + 2 * j];
            assert_eq!(v.labels[1 + 2 * j], "q->");
            for (c, &x) in one_hot.iter().enumerate() {
                assert_eq!(x, if v.start + c == q { 1.0 } else { 0.0 });
            }
            let att = &v.rows[2 + 2 * j];
            for (c, &x) in att.iter().enumerate() {
                assert!((x - full[q][v.start + c]).abs() < 1e-6);
            }
            let mark = if lens[i] { "✓" } else { "✗" };
            assert_eq!(v.labels[2 + 2 * j], format!("{}{mark}", sample.answers[i]));
        }
        assert!(v.header.contains(&format!("rel_fn: {}", sample.rel_fn)));
        assert_eq!(v.header.matches(['✓', '✗']).count(), 8);
    }
    // an explicit window, with queries outside it
    let v = show_attn_data(&b, &key, &sample, 0, 1, None, 1, Some(3), Some(20)).unwrap();
    assert_eq!((v.start, v.stop, v.tokens.len()), (3, 20, 17));
    assert!(v.rows[1].iter().all(|&x| x == 0.0));
    let q = sample.answer_indices[4] - 1;
    let full0 = b
        .attn_weights(&key, 0, &HeadSel::One(1), Some(&[q]))
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (x, y) in v.rows[2].iter().zip(&full0[0][3..20]) {
        assert!((x - y).abs() < 1e-6);
    }
    // renderers
    let ansi = show_attn_ansi(&v).unwrap();
    assert!(ansi.starts_with("rel_fn: "));
    assert_eq!(ansi.matches("── q-> ").count(), 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attn.html");
    write_show_attn_html(&v, &path, None).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.contains("rel_fn: ") && html.contains("q-&gt;"));
}

#[test]
fn aa_rows_from_the_attribution_module() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 6, 3);
    let key = cache(&b, &sample);
    let s = sample.n_tokens.unwrap();
    let r = SampleRef::new(key.clone(), Some(Arc::new(sample.clone())));
    let mut g = Graph::new(b.config(), 1);
    let lm = g.lm_head_id();
    g.add_node(lm, Some("A-->A-")).unwrap();
    attribute_step(&mut g, &b, &r, &[lm]).unwrap();
    let (layer, head) = (1, 0);
    let aa = attn_attr_rows_for(&g, &b, &r, layer, head, &[lm]).unwrap();
    assert_eq!(aa.dims(), &[8, s]);
    // aa = aw ⊙ |grad| / Σ_s, by hand from A21's output
    let (aw, grad) = attribute_attn_weights(&g, &b, &r, layer, head, &[lm]).unwrap();
    let aw = aw.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let grad = grad.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let aa_v = aa.to_vec2::<f32>().unwrap();
    for i in 0..8 {
        let raw: Vec<f32> = (0..s).map(|j| aw[i][j] * grad[i][j].abs()).collect();
        let sum: f32 = raw.iter().sum();
        for j in 0..s {
            assert!((aa_v[i][j] - raw[j] / sum).abs() < 1e-6);
        }
    }
    let v = show_attn_data(&b, &key, &sample, layer, head, Some(&aa), 1, None, None).unwrap();
    assert_eq!(v.rows.len(), 1 + 3 * 4);
    for j in 0..4 {
        assert_eq!(v.labels[3 + 3 * j], "aa");
        // the aa row of shown answer j is row 4 + j (the last 4 of 8)
        assert_eq!(v.rows[3 + 3 * j], aa_v[4 + j][v.start..v.stop].to_vec());
    }
    // [1,k,s] is accepted too
    let v1 = show_attn_data(
        &b,
        &key,
        &sample,
        layer,
        head,
        Some(&aa.unsqueeze(0).unwrap()),
        1,
        None,
        None,
    )
    .unwrap();
    assert_eq!(v1.rows, v.rows);
    assert_eq!(
        attn_attr_rows(&aa, &aa).unwrap().dims(),
        &[8, s],
        "aa of [k,s] inputs"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 8, 3);
    let key = cache(&b, &sample);
    let s = sample.n_tokens.unwrap();
    let run = |layer, head, aa: Option<&Tensor>, last_k, start, stop| {
        show_attn_data(&b, &key, &sample, layer, head, aa, last_k, start, stop)
            .map(|_| ())
            .expect_err("expected an error")
            .to_string()
    };
    assert!(run(L, 0, None, 1, None, None).contains("layer 2"));
    assert!(run(0, H, None, 1, None, None).contains("attention head"));
    assert!(run(0, 0, None, 3, None, None).contains("last_k"));
    assert!(run(0, 0, None, 0, None, None).contains("last_k"));
    assert!(run(0, 0, None, 1, Some(10), Some(10)).contains("window"));
    assert!(run(0, 0, None, 1, None, Some(s + 1)).contains("window"));
    let narrow = Tensor::zeros((8, s - 1), DType::F32, &Device::Cpu).unwrap();
    assert!(run(0, 0, Some(&narrow), 1, None, None).contains("columns"));
    let few = Tensor::zeros((3, s), DType::F32, &Device::Cpu).unwrap();
    assert!(run(0, 0, Some(&few), 1, None, None).contains("rows"));
    let rank3 = Tensor::zeros((2, 8, s), DType::F32, &Device::Cpu).unwrap();
    assert!(run(0, 0, Some(&rank3), 1, None, None).contains("[k,s]"));
}
