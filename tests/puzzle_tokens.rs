//! Token positions against real tokenizers built in the test: the fixture byte-level BPE and a
//! word-level tokenizer with different boundaries. Every tracked position must decode to the text
//! it claims, computed independently from the puzzle's grid and keys.

use minarc::puzzle::color::color_letter;
use minarc::puzzle::prompt::{PromptOptions, Style};
use minarc::puzzle::{Frame, KeyRanges, Puzzle, PuzzleParams, Sample, Track, gen_puzzle};
use minarc::tokenizer::{ENDOFTEXT, IM_END, IM_START, fixture_tokenizer};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Text of tokens, concatenated token by token (works for byte-level and word-level).
fn text(tok: &Tokenizer, ids: &[u32]) -> String {
    ids.iter()
        .map(|&id| tok.decode(&[id], false).unwrap())
        .collect()
}

/// The text of a track's first token, stripped of whitespace and quote characters.
fn core(tok: &Tokenizer, ids: &[u32], t: &Track) -> String {
    text(tok, &ids[t.token.unwrap()..t.token.unwrap() + 1])
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string()
}

fn range_text(tok: &Tokenizer, ids: &[u32], t: &Track) -> String {
    let (a, b) = t.tokens.unwrap();
    assert!(a == t.token.unwrap() && b > a);
    text(tok, &ids[a..b])
}

/// x/y track: the first token holds the first digit; the range covers all digits.
fn check_coord(tok: &Tokenizer, ids: &[u32], t: &Track, v: i32) {
    let digits = v.unsigned_abs().to_string();
    let first = text(tok, &ids[t.token.unwrap()..t.token.unwrap() + 1]);
    assert!(first.contains(&digits[..1]), "{first:?} vs {v}");
    assert!(range_text(tok, ids, t).contains(&digits), "{v}");
}

fn check_key(tok: &Tokenizer, ids: &[u32], k: &KeyRanges, (x, y): (i32, i32), key_text: &str) {
    check_coord(tok, ids, &k.x, x);
    check_coord(tok, ids, &k.y, y);
    if let Some(key) = &k.key {
        assert!(range_text(tok, ids, key).contains(key_text), "{key_text}");
    }
}

/// Checks every tracked position of a sample against the puzzle's own data.
fn check_sample(tok: &Tokenizer, s: &Sample) {
    let enc = tok.encode(s.prompt.as_str(), false).unwrap();
    let ids = enc.get_ids();
    assert_eq!(s.n_tokens, Some(ids.len()));
    let style = s.params.prompt.style;
    let p: &Puzzle = s.puzzle.as_ref().unwrap();
    for ex in p.train.iter().chain(&p.test) {
        let gr = ex.input_ranges.as_ref().unwrap();
        let open = match style {
            Style::Dict => "grid = {",
            Style::List => "grid = [",
            Style::Markdown => "grid =",
        };
        assert!(range_text(tok, ids, &gr.prefix).contains(open));
        let close = range_text(tok, ids, &gr.suffix);
        match style {
            Style::Dict => assert!(close.contains('}')),
            Style::List => assert!(close.contains(']')),
            Style::Markdown => assert!(close.contains('\n')),
        }
        for x in ex.input.xs() {
            for y in ex.input.ys() {
                let (i, j) = ex.input.storage_index(x, y).unwrap();
                let cell = &gr.cells[i][j];
                let letter = color_letter(ex.input[(x, y)]).to_string();
                assert_eq!(core(tok, ids, &cell.color), letter, "cell ({x},{y})");
                let key_text = match style {
                    Style::Dict => format!("({x},{y})"),
                    _ => format!("{x},{y}"),
                };
                check_key(tok, ids, &cell.key, (x, y), &key_text);
                assert_eq!(cell.key.key.is_some(), style != Style::Markdown);
            }
        }
        for qa in &ex.output {
            let q = &qa.query;
            let key_text = format!("({},{})", q.key.0, q.key.1);
            check_key(tok, ids, q.key_ranges.as_ref().unwrap(), q.key, &key_text);
            check_key(
                tok,
                ids,
                q.key_ranges_in_code.as_ref().unwrap(),
                q.key,
                &key_text,
            );
            let qv = q.value_ranges.as_ref().unwrap();
            assert_eq!(
                core(tok, ids, qv),
                color_letter(ex.input[q.key]).to_string()
            );
            let a = qa.answer.value_ranges.as_ref().unwrap();
            let target = p.rel_fn.target(q.key.0, q.key.1);
            assert_eq!(
                core(tok, ids, a),
                color_letter(ex.input[target]).to_string()
            );
            // The question's colour token comes after its key tokens, the code key after both.
            let qk = q.key_ranges.as_ref().unwrap();
            assert!(qk.y.token.unwrap() < qv.token.unwrap());
            assert!(qv.token.unwrap() < q.key_ranges_in_code.as_ref().unwrap().x.token.unwrap());
        }
    }
    // Answers, labels and candidates.
    let n_sel = s.params.puzzle.q_train * s.params.puzzle.n_train.min(2);
    assert_eq!(s.answers.len(), n_sel);
    assert_eq!(s.answer_indices.len(), n_sel);
    assert_eq!(s.candidate_ids.len(), s.params.puzzle.n_color);
    for (c, &id) in s.candidate_ids.iter().enumerate() {
        let t = tok.decode(&[id], false).unwrap();
        assert_eq!(t.trim(), color_letter(c as u8).to_string());
    }
    for i in 0..n_sel {
        let pos = s.answer_indices[i];
        assert_eq!(s.labels[i], ids[pos]);
        assert_eq!(text(tok, &ids[pos..pos + 1]).trim(), s.answers[i]);
    }
    // Spans (A9).
    assert_eq!(s.positions("A", 2).unwrap(), s.answer_indices);
    let am = s.positions("A-", 2).unwrap();
    assert!(am.iter().zip(&s.answer_indices).all(|(a, b)| a + 1 == *b));
    if s.params.prompt.color_quote.is_empty() {
        // A- is the token just before the answer, inside "Answer: C".
        for (k, &i) in am.iter().enumerate() {
            let pair = text(tok, &ids[i..i + 2]);
            assert!(
                format!("Answer: {}", s.answers[k]).ends_with(&pair),
                "{pair:?}"
            );
            assert!(pair.len() > s.answers[k].len());
        }
    }
    let v = s.positions("V", 2).unwrap();
    for (i, &pos) in v.iter().enumerate() {
        let t = text(tok, &ids[pos..pos + 1]);
        assert_eq!(
            t.trim().trim_matches(|c| c == '\'' || c == '"'),
            s.answers[i]
        );
    }
    let qa_list: Vec<_> = p.train[p.train.len().saturating_sub(2)..]
        .iter()
        .flat_map(|e| &e.output)
        .collect();
    let qv = s.positions("QV", 2).unwrap();
    let qy = s.positions("Qy", 2).unwrap();
    for (i, qa) in qa_list.iter().enumerate() {
        let t = text(tok, &ids[qv[i]..qv[i] + 1]);
        let letter = color_letter(qa.query.value).to_string();
        assert_eq!(t.trim().trim_matches(|c| c == '\'' || c == '"'), letter);
        let y = qa.query.key.1.unsigned_abs().to_string();
        assert!(text(tok, &ids[qy[i]..qy[i] + 1]).contains(&y[..1]));
        assert!(qy[i] < qv[i]);
    }
    let up = s.positions("A^", 2).unwrap();
    let q = s.params.puzzle.q_train;
    for (i, &pos) in up.iter().enumerate() {
        let expect = if i % q == 0 {
            s.answer_indices[i]
        } else {
            s.answer_indices[i - 1]
        };
        assert_eq!(pos, expect);
    }
    assert!(s.positions("K", 2).is_err());
    assert!(s.positions("A", 0).is_err());
    assert!(s.positions("A", s.params.puzzle.n_train + 1).is_err());
}

fn sample(params: &PuzzleParams, opts: &PromptOptions, tok: &Tokenizer) -> Sample {
    let p = gen_puzzle(params).unwrap();
    Sample::build(0, p, opts, Some(tok)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// All styles × frames × quotes × transpose, with a test section.
fn variants() -> Vec<(PuzzleParams, PromptOptions)> {
    let mut out = Vec::new();
    let mut seed = 0;
    for style in [Style::Dict, Style::List, Style::Markdown] {
        for frame in [Frame::Corner, Frame::Center] {
            for quote in ["", "'", "\""] {
                for transpose in [true, false] {
                    seed += 1;
                    let params = PuzzleParams {
                        relations: if frame == Frame::Center {
                            "all"
                        } else {
                            "side+at"
                        }
                        .into(),
                        n: 5,
                        m: if frame == Frame::Center { 7 } else { 4 },
                        frame,
                        n_color: 6,
                        n_train: 3,
                        n_test: 2,
                        q_train: 2,
                        q_test: 2,
                        seed,
                    };
                    let opts = PromptOptions {
                        style,
                        transpose,
                        color_quote: quote.into(),
                        remove_instructions: seed % 2 == 0,
                    };
                    out.push((params, opts));
                }
            }
        }
    }
    out
}

#[test]
fn fixture_positions_decode_to_their_text() {
    let tok = fixture_tokenizer().unwrap();
    for (params, opts) in variants() {
        let s = sample(&params, &opts, &tok);
        check_sample(&tok, &s);
    }
}

#[test]
fn default_prompt_answers_are_single_space_letter_tokens() {
    let tok = fixture_tokenizer().unwrap();
    let s = sample(&PuzzleParams::default(), &PromptOptions::default(), &tok);
    check_sample(&tok, &s);
    assert_eq!(s.answers.len(), 8);
    for (i, &label) in s.labels.iter().enumerate() {
        let expect = tok.token_to_id(&format!("Ġ{}", s.answers[i])).unwrap();
        assert_eq!(label, expect);
    }
    let letters: Vec<u32> = ["K", "B", "R", "G", "Y"]
        .iter()
        .map(|l| tok.token_to_id(&format!("Ġ{l}")).unwrap())
        .collect();
    assert_eq!(s.candidate_ids, letters);
    // Same configuration, different seeds: identical token length (layouts coincide).
    let s2 = sample(
        &PuzzleParams {
            seed: 9,
            ..PuzzleParams::default()
        },
        &PromptOptions::default(),
        &tok,
    );
    assert_eq!(s.n_tokens, s2.n_tokens);
    assert_eq!(s.answer_indices, s2.answer_indices);
}

#[test]
fn multi_digit_coordinates() {
    let tok = fixture_tokenizer().unwrap();
    for (frame, n) in [(Frame::Corner, 12), (Frame::Center, 23)] {
        for style in [Style::Dict, Style::List, Style::Markdown] {
            let params = PuzzleParams {
                n,
                m: n,
                frame,
                n_train: 2,
                seed: n as u64,
                ..PuzzleParams::default()
            };
            let opts = PromptOptions {
                style,
                ..PromptOptions::default()
            };
            let s = sample(&params, &opts, &tok);
            let c = if frame == Frame::Corner { "11" } else { "-11" };
            let corner_cell = match style {
                Style::Dict => format!(" ({c},{c}):"),
                Style::List => format!(" [{c},{c},"),
                Style::Markdown => format!("| {c} |"),
            };
            assert!(s.prompt.contains(&corner_cell), "{corner_cell}");
            check_sample(&tok, &s);
        }
    }
}

/// A word-level tokenizer whose vocabulary is every piece of the given prompts: numbers are whole
/// words, spaces are tokens of their own, punctuation runs are single tokens.
fn word_level(prompts: &[String]) -> Tokenizer {
    let split = Split::new(
        SplitPattern::Regex(r"\w+|[^\w\s]+|\s+".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap();
    let mut tok = Tokenizer::new(WordLevel::default());
    tok.with_pre_tokenizer(Some(split));
    tok.add_special_tokens([ENDOFTEXT, IM_START, IM_END].map(|s| AddedToken::from(s, true)))
        .unwrap();
    let mut vocab = std::collections::BTreeSet::new();
    for p in prompts {
        for piece in p.split(IM_START).flat_map(|s| s.split(IM_END)) {
            let pre = tok.get_pre_tokenizer().unwrap();
            let mut pts = tokenizers::PreTokenizedString::from(piece);
            tokenizers::PreTokenizer::pre_tokenize(pre, &mut pts).unwrap();
            for (s, _, _) in pts.get_splits(
                tokenizers::OffsetReferential::Original,
                tokenizers::OffsetType::Byte,
            ) {
                vocab.insert(s.to_string());
            }
        }
    }
    vocab.insert("[UNK]".to_string());
    let vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut full = Tokenizer::new(model);
    full.with_pre_tokenizer(tok.get_pre_tokenizer().cloned());
    full.add_special_tokens([ENDOFTEXT, IM_START, IM_END].map(|s| AddedToken::from(s, true)))
        .unwrap();
    full
}

#[test]
fn word_level_positions_decode_to_their_text() {
    let mut variants = variants();
    variants.push((
        PuzzleParams {
            n: 12,
            m: 12,
            n_train: 2,
            ..PuzzleParams::default()
        },
        PromptOptions::default(),
    ));
    let prompts: Vec<String> = variants
        .iter()
        .map(|(p, o)| {
            Sample::build(0, gen_puzzle(p).unwrap(), o, None)
                .unwrap()
                .prompt
        })
        .collect();
    let tok = word_level(&prompts);
    let unk = tok.token_to_id("[UNK]").unwrap();
    for (params, opts) in &variants {
        let s = sample(params, opts, &tok);
        let enc = tok.encode(s.prompt.as_str(), false).unwrap();
        assert!(!enc.get_ids().contains(&unk));
        // Different boundaries than the BPE: "12" is one token, the answer token is the bare letter.
        check_sample(&tok, &s);
    }
}

#[test]
fn without_tokenizer_only_char_spans() {
    let p = gen_puzzle(&PuzzleParams::default()).unwrap();
    let s = Sample::build(3, p, &PromptOptions::default(), None).unwrap();
    assert_eq!(s.index, 3);
    assert_eq!(s.n_tokens, None);
    assert!(s.answer_indices.is_empty() && s.labels.is_empty());
    assert_eq!(s.answers.len(), 8);
    let a = s.puzzle.as_ref().unwrap().train[4].output[3]
        .answer
        .value_ranges
        .as_ref()
        .unwrap();
    assert_eq!(a.token, None);
    assert_eq!(&s.prompt[a.start..a.end], s.answers[7]);
    assert!(s.positions("A", 2).is_err());
}
