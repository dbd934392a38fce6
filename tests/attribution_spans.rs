//! Built-in spans through a real puzzle prompt: lm_head at `A-`, attn_v/attn_k sources from
//! `DST->SRC` patterns (`V`, `QV`, `A^`), and a step over them on a tiny model.

mod attr_support;

use std::sync::Arc;

use attr_support::*;
use minarc::attribution::{Graph, NodeType, SampleRef, attribute_step, embed_attribution};
use minarc::backend::{Backend, Local, SampleKey};
use minarc::model::{CaptureSpec, SampleInput};
use minarc::puzzle::{PromptOptions, PuzzleParams, Sample, gen_puzzle};

#[test]
fn builtin_spans_drive_positions() {
    let tok = minarc::tokenizer::fixture_tokenizer().unwrap();
    let params = PuzzleParams {
        n_train: 3,
        ..Default::default()
    };
    let sample = Sample::build(
        0,
        gen_puzzle(&params).unwrap(),
        &PromptOptions::default(),
        Some(&tok),
    )
    .unwrap();
    let ids = tok
        .encode(sample.prompt.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    let v = minarc::model::fixture::fixture_vocab_rounded();
    let cfg = config_max_pos(2, 16, 4, 2, 32, v, 8192);
    let local = Local::new(random_model(&cfg, 3), tok);
    let input = SampleInput {
        index: 0,
        prompt: sample.prompt.clone(),
        labels: sample.labels.clone(),
        candidate_ids: sample.candidate_ids.clone(),
        answer_indices: sample.answer_indices.clone(),
        objective: Default::default(),
    };
    local
        .forward_ids(DATASET, &input, &ids, &CaptureSpec::full(), true)
        .unwrap();
    let r = SampleRef::new(SampleKey::new(DATASET, 0), Some(Arc::new(sample.clone())));
    let mut g = Graph::new(local.config(), 1);
    let lm = g.lm_head_id();
    g.add_node(lm, Some("A-->A-")).unwrap();
    attribute_step(&mut g, &local, &r, &[lm]).unwrap();
    assert_eq!(
        g.get(lm).unwrap().data.pos_ids[&0],
        sample.positions("A-", 2).unwrap()
    );
    let v1 = g.node(1, Some(0), NodeType::AttnV, Some("A-->V")).unwrap();
    let k1 = g.node(1, Some(1), NodeType::AttnK, Some("A-->QV")).unwrap();
    let v2 = g.node(1, Some(2), NodeType::AttnV, Some("A-->A^")).unwrap();
    for id in [v1, k1, v2] {
        g.add_edge(id, lm, 1.0).unwrap();
    }
    let nodes = [v1, k1, v2];
    let attr = attribute_step(&mut g, &local, &r, &nodes).unwrap();
    assert_eq!(attr.dims(), &[1, 5, 3]);
    for (id, span) in [(v1, "V"), (k1, "QV"), (v2, "A^")] {
        let d = &g.get(id).unwrap().data;
        assert_eq!(
            d.src_pos_ids[&0],
            sample.positions(span, 2).unwrap(),
            "{id}"
        );
        assert_eq!(d.src_span.as_deref(), Some(span));
        assert_eq!(d.grad[&0].dims()[1], d.src_pos_ids[&0].len());
    }
    // linearity at the source positions: layer 0 heads + MLP + embedding = grad · hidden_states[1]
    let emb = embed_attribution(&g, &local, &r, &nodes).unwrap();
    for (c, id) in nodes.iter().enumerate() {
        let d = &g.get(*id).unwrap().data;
        let h1 = local
            .hidden_states(&r.key, 1, Some(&d.src_pos_ids[&0]))
            .unwrap();
        let want = (h1 * &d.grad[&0])
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let got = attr
            .narrow(2, c, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            + emb[c];
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{id}: {got} vs {want}"
        );
    }
}
