//! Lenses on the tiny fixture: Backend::lens_logits against the norm and lm_head computed by
//! hand, the logit lens against the model's own logits and the residual identity, the head lens
//! and eval_nodes against hand-computed argmaxes and the full decomposition of the residual,
//! head matching scores against direct indexing of the attention weights, the remote
//! /lens_logits endpoint, and bad inputs.

mod lens_support;

use candle_core::{D, DType, Device, Tensor};
use lens_support::*;
use minarc::analysis::lens::{
    LensNode, eval_head_lens, eval_head_lens_both, eval_logit_lens, eval_nodes,
    get_head_matching_scores, lens_positions, mean_bool, render_logit_lens,
};
use minarc::backend::{Backend, HeadSel, SampleKey};
use minarc::remote::wire::{ErrorBody, encode_request, encode_tensors};
use minarc::remote::{Remote, RunningServer, ServeOptions};

/// Mean full-vocabulary log-prob of `labels` and the accuracy of the argmax, from logits
/// `[1,k,v]` (candle's log_softmax, independent of the lens code).
fn logprob_acc(logits: &Tensor, labels: &[u32]) -> (f64, f64) {
    let lp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let am = argmax_rows(logits);
    let k = labels.len() as f64;
    let mean_lp = labels
        .iter()
        .enumerate()
        .map(|(p, &l)| lp[p][l as usize] as f64)
        .sum::<f64>()
        / k;
    let acc = am.iter().zip(labels).filter(|(a, l)| a == l).count() as f64 / k;
    (mean_lp, acc)
}

#[test]
fn lens_logits_is_the_final_norm_and_lm_head_by_hand() {
    let b = local();
    let e = b.config().hidden_size;
    // residual-like rows of very different scales: the norm must be recomputed per row
    let x = Tensor::randn(0f32, 1.0, (1, 3, e), &Device::Cpu)
        .unwrap()
        .broadcast_mul(&Tensor::new(&[[[0.01f32], [1.0], [50.0]]], &Device::Cpu).unwrap())
        .unwrap();
    let got = b.lens_logits(&x).unwrap();
    let want = hand_lens(&x);
    let d = max_abs_diff(&got, &want);
    eprintln!("lens_logits vs hand: max |Δ| = {d:e}");
    assert!(d < 1e-4, "{d}");
    // batch > 1 and bad shapes
    let x2 = Tensor::cat(&[&x, &x], 0).unwrap();
    assert_eq!(b.lens_logits(&x2).unwrap().dims()[0], 2);
    assert!(b.lens_logits(&x.squeeze(0).unwrap()).is_err());
    assert!(
        b.lens_logits(&Tensor::zeros((1, 2, e + 1), DType::F32, &Device::Cpu).unwrap())
            .is_err()
    );
}

#[test]
fn logit_lens_matches_the_model_and_the_residual_identity() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 3, 3);
    let key = cache(&b, &sample);
    let pos = lens_positions(&sample).unwrap();
    assert_eq!(pos, sample.positions("A-", 2).unwrap());
    let lens = eval_logit_lens(&b, &key, &sample, 0, None, 3).unwrap();
    assert_eq!(lens.acc.len(), L);
    assert_eq!(lens.logprobs.len(), L);

    // last layer, after mlp = the model's own output (Backend::logits from hidden_states[L])
    let logits = b.logits(&key, Some(&pos)).unwrap();
    let (lp, acc) = logprob_acc(&logits, &sample.labels);
    eprintln!(
        "model: logprob {lp:.6} acc {acc}; lens: {:.6} {}",
        lens.logprobs[L - 1][2],
        lens.acc[L - 1][2]
    );
    assert!((lens.logprobs[L - 1][2] - lp).abs() < 1e-4);
    assert_eq!(lens.acc[L - 1][2], acc);

    // residual identity: resid at l+1 = after mlp at l
    for l in 0..L - 1 {
        assert!((lens.logprobs[l + 1][0] - lens.logprobs[l][2]).abs() < 1e-4);
        assert_eq!(lens.acc[l + 1][0], lens.acc[l][2]);
    }
    // every column against the hand-computed lens of the same residual sums
    for l in 0..L {
        let h = b.hidden_states(&key, l, Some(&pos)).unwrap();
        let a = b.attn_output(&key, l, Some(&pos)).unwrap();
        let m = b.mlp_output(&key, l, Some(&pos)).unwrap();
        let cols = [
            h.clone(),
            (&h + &a).unwrap(),
            ((&h + &a).unwrap() + &m).unwrap(),
        ];
        for (c, x) in cols.iter().enumerate() {
            let (lp, acc) = logprob_acc(&hand_lens(x), &sample.labels);
            assert!((lens.logprobs[l][c] - lp).abs() < 1e-3, "layer {l} col {c}");
            assert_eq!(lens.acc[l][c], acc, "layer {l} col {c}");
        }
    }
    // the cache was not modified by the lens (defect 16)
    let h0 = b.hidden_states(&key, 0, Some(&pos)).unwrap();
    let again = eval_logit_lens(&b, &key, &sample, 0, Some(1), 3).unwrap();
    assert_eq!(again.logprobs[0], lens.logprobs[0]);
    assert_eq!(
        max_abs_diff(&h0, &b.hidden_states(&key, 0, Some(&pos)).unwrap()),
        0.0
    );

    // top-k: sorted, top-1 is the argmax, probabilities are the softmax
    let probs = candle_nn::ops::softmax_last_dim(&logits.squeeze(0).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let am = argmax_rows(&logits);
    for (p, toks) in lens.top[L - 1][2].iter().enumerate() {
        assert_eq!(toks.len(), 3);
        assert_eq!(toks[0].id, am[p]);
        assert!(toks.windows(2).all(|w| w[0].prob >= w[1].prob));
        for t in toks {
            assert!((t.prob - probs[p][t.id as usize]).abs() < 1e-5);
        }
    }
    let text = render_logit_lens(&lens);
    assert!(text.contains("layer   0 resid acc"));
    assert!(text.contains('%'));
    assert_eq!(text.matches("    pos ").count(), L * 3 * pos.len());

    // relabelled with the model's own predictions: accuracy 1 in the last column
    let mut own = sample.clone();
    own.labels = am.clone();
    let lens = eval_logit_lens(&b, &key, &own, L - 1, None, 1).unwrap();
    assert_eq!(lens.acc.len(), 1);
    assert_eq!(lens.acc[0][2], 1.0);
}

#[test]
fn head_lens_and_eval_nodes() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 5, 3);
    let key = cache(&b, &sample);
    let pos = lens_positions(&sample).unwrap();
    let tok = b.tokenizer();
    let mut found_decoded_match = false;
    for layer in 0..L {
        for head in 0..=H {
            let out = b
                .head_output(&key, layer, &HeadSel::One(head), Some(&pos))
                .unwrap();
            let am = argmax_rows(&hand_lens(&out));
            let strict = eval_head_lens(&b, &key, &sample, layer, head, true).unwrap();
            let want: Vec<bool> = am.iter().zip(&sample.labels).map(|(a, l)| a == l).collect();
            assert_eq!(strict, want, "{layer}-{head} strict");
            // relabelled with the head's own predictions: every position is right, and answer
            // i is judged by prediction i (a pairing mistake would break this)
            let mut own = sample.clone();
            own.labels = am.clone();
            let all = eval_head_lens(&b, &key, &own, layer, head, true).unwrap();
            assert_eq!(mean_bool(&all), 1.0);
            // a single-node circuit is the strict head lens
            let acc = eval_nodes(&b, &key, &own, &[LensNode::head(layer, head)]).unwrap();
            assert_eq!(acc, 1.0);
            let acc = eval_nodes(&b, &key, &sample, &[LensNode::head(layer, head)]).unwrap();
            assert_eq!(acc, mean_bool(&strict));
            // non-strict: the decoded prediction against the answer letter
            let loose = eval_head_lens(&b, &key, &sample, layer, head, false).unwrap();
            let decoded: Vec<String> = am
                .iter()
                .map(|&a| tok.decode(&[a], false).unwrap().trim().to_lowercase())
                .collect();
            let want: Vec<bool> = decoded
                .iter()
                .zip(&sample.answers)
                .map(|(d, a)| *d == a.to_lowercase())
                .collect();
            assert_eq!(loose, want, "{layer}-{head} non-strict");
            // both readings from one projection: the same two answers
            let both = eval_head_lens_both(&b, &key, &sample, layer, head).unwrap();
            assert_eq!(both, (want, strict.clone()), "{layer}-{head} both");
            let mut renamed = sample.clone();
            renamed.answers = decoded.iter().map(|d| d.to_uppercase()).collect();
            let loose = eval_head_lens(&b, &key, &renamed, layer, head, false).unwrap();
            if decoded.iter().all(|d| !d.is_empty()) {
                found_decoded_match = true;
                assert!(loose.iter().all(|&x| x), "{layer}-{head}: {decoded:?}");
            }
        }
    }
    assert!(found_decoded_match);

    // embeddings + every head + every MLP = the final residual: the model's own accuracy
    let logits = b.logits(&key, Some(&pos)).unwrap();
    let am = argmax_rows(&logits);
    let mut own = sample.clone();
    own.labels = am.clone();
    let mut all = vec![LensNode::Embed];
    for layer in 0..L {
        for head in 0..=H {
            all.push(LensNode::head(layer, head));
        }
    }
    assert_eq!(eval_nodes(&b, &key, &own, &all).unwrap(), 1.0);
    assert_eq!(
        eval_nodes(&b, &key, &own, &[LensNode::LmHead]).unwrap(),
        1.0
    );
    let (_, model_acc) = logprob_acc(&logits, &sample.labels);
    assert_eq!(eval_nodes(&b, &key, &sample, &all).unwrap(), model_acc);
    assert_eq!(
        eval_nodes(&b, &key, &sample, &[LensNode::LmHead]).unwrap(),
        model_acc
    );
    // without the embeddings: the accuracy of the same sum computed by hand
    let no_embed = &all[1..];
    let mut sum = b
        .head_output(&key, 0, &HeadSel::All, Some(&pos))
        .unwrap()
        .sum(2)
        .unwrap();
    sum = (sum + b.mlp_output(&key, 0, Some(&pos)).unwrap()).unwrap();
    for layer in 1..L {
        sum = (sum + b.attn_output(&key, layer, Some(&pos)).unwrap()).unwrap();
        sum = (sum + b.mlp_output(&key, layer, Some(&pos)).unwrap()).unwrap();
    }
    let (_, want) = logprob_acc(&hand_lens(&sum), &own.labels);
    assert_eq!(eval_nodes(&b, &key, &own, no_embed).unwrap(), want);
    // attribution node ids convert
    let g = minarc::attribution::Graph::new(b.config(), 1);
    let lm: LensNode = g.lm_head_id().try_into().unwrap();
    assert_eq!(lm, LensNode::LmHead);
    let mlp: LensNode = g
        .id(1, Some(H), minarc::attribution::NodeType::Mlp)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(mlp, LensNode::head(1, H));
}

#[test]
fn head_matching_scores_index_the_attention_weights() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 9, 3);
    let key = cache(&b, &sample);
    let patterns = ["A-->V", "A-->A-", "A-->QV", "Qy->QV"];
    for last_k in [1, 2] {
        for (layer, head) in [(0, 0), (1, 3)] {
            let full = b
                .attn_weights(&key, layer, &HeadSel::One(head), None)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(); // [s,s]
            let got = get_head_matching_scores(&b, &key, &sample, &patterns, layer, head, last_k)
                .unwrap();
            assert_eq!(got.len(), patterns.len());
            for (p, score) in patterns.iter().zip(&got) {
                assert_eq!(score.pattern, *p);
                let (dst, src) = p.split_once("->").unwrap();
                let mut pairs: Vec<(usize, usize)> = sample
                    .positions(dst, last_k)
                    .unwrap()
                    .into_iter()
                    .zip(sample.positions(src, last_k).unwrap())
                    .collect();
                pairs.sort_unstable();
                let want: Vec<f32> = pairs.iter().map(|&(d, s)| full[d][s]).collect();
                assert_eq!(score.scores.len(), 4 * last_k);
                for (g, w) in score.scores.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-6, "{p} {layer}-{head}: {g} vs {w}");
                }
            }
        }
    }
    // MLP pseudo-head: 1 when SRC == DST
    let mlp = get_head_matching_scores(&b, &key, &sample, &["A-->A-", "A-->V"], 1, H, 2).unwrap();
    assert_eq!(mlp[0].scores, vec![1.0; 8]);
    assert_eq!(mlp[1].scores, vec![0.0; 8]);
    assert_eq!((mlp[0].mean(), mlp[1].mean()), (1.0, 0.0));
}

#[test]
fn bad_inputs_are_errors() {
    let b = local();
    let sample = puzzle_sample(&b, 0, 1, 3);
    let key = cache(&b, &sample);
    let err =
        |r: anyhow::Result<()>| -> String { format!("{:#}", r.expect_err("expected an error")) };
    let ok = |r: anyhow::Result<Vec<bool>>| r.map(|_| ());
    assert!(err(ok(eval_head_lens(&b, &key, &sample, L, 0, true))).contains("layer 2"));
    assert!(err(ok(eval_head_lens(&b, &key, &sample, 0, H + 1, true))).contains("head 5"));
    let lens = |f, t, k| eval_logit_lens(&b, &key, &sample, f, t, k).map(|_| ());
    assert!(err(lens(1, Some(1), 3)).contains("empty"));
    assert!(err(lens(0, Some(L + 1), 3)).contains("layers"));
    assert!(err(lens(0, None, 0)).contains("topk"));
    let hm =
        |p: &[&str], l, h, k| get_head_matching_scores(&b, &key, &sample, p, l, h, k).map(|_| ());
    assert!(err(hm(&["A-->V"], L, 0, 2)).contains("layer"));
    assert!(err(hm(&["A-->V"], 0, H + 1, 2)).contains("head"));
    assert!(err(hm(&["A-->K"], 0, 0, 2)).contains("K"));
    assert!(err(hm(&["A-"], 0, 0, 2)).contains("DST->SRC"));
    assert!(err(hm(&[], 0, 0, 2)).contains("pattern"));
    assert!(err(hm(&["A-->V"], 0, 0, 4)).contains("last_k"));
    let nodes = |n: &[LensNode]| eval_nodes(&b, &key, &sample, n).map(|_| ());
    assert!(err(nodes(&[])).contains("at least one"));
    assert!(err(nodes(&[LensNode::LmHead, LensNode::Embed])).contains("lm_head"));
    assert!(err(nodes(&[LensNode::Embed, LensNode::Embed])).contains("twice"));
    assert!(err(nodes(&[LensNode::head(L, 0)])).contains("layer"));
    assert!(err(nodes(&[LensNode::head(0, H + 1)])).contains("head"));
    // a sample that is not cached, and a cached key holding another prompt
    let other = SampleKey::new(DATASET, 9);
    assert!(err(ok(eval_head_lens(&b, &other, &sample, 0, 0, true))).contains("not cached"));
    let longer = puzzle_sample(&b, 0, 1, 4);
    assert!(err(ok(eval_head_lens(&b, &key, &longer, 0, 0, true))).contains("tokens"));
    let mut untokenized = sample.clone();
    untokenized.n_tokens = None;
    assert!(err(ok(eval_head_lens(&b, &key, &untokenized, 0, 0, true))).contains("tokenizer"));
    let mut mislabelled = sample.clone();
    mislabelled.labels[0] = b.config().vocab_size as u32;
    assert!(err(ok(eval_head_lens(&b, &key, &mislabelled, 0, 0, true))).contains("out of range"));
}

// ---------------------------------------------------------------- remote

fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.body_mut().read_to_vec().unwrap();
    let msg = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|e| e.error)
        .unwrap_or_default();
    (code, msg)
}

#[test]
fn remote_lens_logits_matches_local_and_rejects_malformed_requests() {
    let srv = RunningServer::start(
        local(),
        ServeOptions {
            port: 0,
            ..ServeOptions::default()
        },
    )
    .unwrap();
    let remote = Remote::connect(&srv.url(), None).unwrap();
    let want = local();
    let e = want.config().hidden_size;
    let x = Tensor::randn(0f32, 2.0, (2, 5, e), &Device::Cpu).unwrap();
    let d = max_abs_diff(
        &remote.lens_logits(&x).unwrap(),
        &want.lens_logits(&x).unwrap(),
    );
    eprintln!("remote vs local lens_logits: max |Δ| = {d:e}");
    assert!(d <= 1e-6);
    // the whole logit lens through the remote backend
    let sample = puzzle_sample(&want, 0, 4, 3);
    let (kr, kl) = (cache(&remote, &sample), cache(&want, &sample));
    let r = eval_logit_lens(&remote, &kr, &sample, 0, None, 2).unwrap();
    let l = eval_logit_lens(&want, &kl, &sample, 0, None, 2).unwrap();
    assert_eq!(r.acc, l.acc);
    for (a, b) in r.logprobs.iter().flatten().zip(l.logprobs.iter().flatten()) {
        assert!((a - b).abs() <= 1e-6);
    }
    let hr = eval_head_lens(&remote, &kr, &sample, 1, 2, false).unwrap();
    assert_eq!(
        hr,
        eval_head_lens(&want, &kl, &sample, 1, 2, false).unwrap()
    );

    let url = format!("{}/lens_logits", srv.url());
    let octet = "application/octet-stream";
    let good = Tensor::zeros((1, 2, e), DType::F32, &Device::Cpu).unwrap();
    let bad_shape = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let wrong_e = Tensor::zeros((1, 2, e + 1), DType::F32, &Device::Cpu).unwrap();
    let empty = serde_json::json!({});
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "JSON body",
            "application/json",
            b"{}".to_vec(),
            400,
            "safetensors",
        ),
        (
            "no request metadata",
            octet,
            encode_tensors(&[("x", &good)], None).unwrap(),
            400,
            "request",
        ),
        (
            "missing x",
            octet,
            encode_request(&empty, &[]).unwrap(),
            400,
            "\"x\"",
        ),
        (
            "extra tensor",
            octet,
            encode_request(&empty, &[("x", &good), ("y", &good)]).unwrap(),
            400,
            "\"y\"",
        ),
        (
            "unknown field",
            octet,
            encode_request(&serde_json::json!({"layer": 1}), &[("x", &good)]).unwrap(),
            400,
            "layer",
        ),
        (
            "rank 2",
            octet,
            encode_request(&empty, &[("x", &bad_shape)]).unwrap(),
            400,
            "[b,k,",
        ),
        (
            "wrong hidden size",
            octet,
            encode_request(&empty, &[("x", &wrong_e)]).unwrap(),
            400,
            "[b,k,",
        ),
        (
            "garbage",
            octet,
            b"\x05\x00\x00\x00\x00\x00\x00\x00junk".to_vec(),
            400,
            "safetensors",
        ),
    ];
    for (case, ctype, body, want_code, word) in cases {
        let (code, msg) = post(&url, ctype, &body);
        eprintln!("{case}: {code} {msg}");
        assert_eq!(code, want_code, "{case}: {msg}");
        assert!(msg.contains(word), "{case}: {msg:?} does not name {word:?}");
    }
    // still serving
    let d = max_abs_diff(
        &remote.lens_logits(&x).unwrap(),
        &want.lens_logits(&x).unwrap(),
    );
    assert!(d <= 1e-6);
    srv.shutdown().unwrap();
}
