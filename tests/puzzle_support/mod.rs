//! Shared helpers for the token-position tests (fixture, word-level and the real Qwen2.5
//! tokenizer): every tracked position of a sample must decode to the text it claims, computed
//! independently from the puzzle's grid and keys.
#![allow(dead_code)]

use minarc::puzzle::color::color_letter;
use minarc::puzzle::prompt::{PromptOptions, Style};
use minarc::puzzle::{Frame, KeyRanges, Puzzle, PuzzleParams, Sample, Track, gen_puzzle};
use tokenizers::Tokenizer;

/// Text of tokens, concatenated token by token (works for byte-level and word-level).
pub fn text(tok: &Tokenizer, ids: &[u32]) -> String {
    ids.iter()
        .map(|&id| tok.decode(&[id], false).unwrap())
        .collect()
}

/// The text of a track's first token, stripped of whitespace and quote characters.
pub fn core(tok: &Tokenizer, ids: &[u32], t: &Track) -> String {
    text(tok, &ids[t.token.unwrap()..t.token.unwrap() + 1])
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string()
}

pub fn range_text(tok: &Tokenizer, ids: &[u32], t: &Track) -> String {
    let (a, b) = t.tokens.unwrap();
    assert!(a == t.token.unwrap() && b > a);
    text(tok, &ids[a..b])
}

/// x/y track: the first token holds the first digit; the range covers all digits.
pub fn check_coord(tok: &Tokenizer, ids: &[u32], t: &Track, v: i32) {
    let digits = v.unsigned_abs().to_string();
    let first = text(tok, &ids[t.token.unwrap()..t.token.unwrap() + 1]);
    assert!(first.contains(&digits[..1]), "{first:?} vs {v}");
    assert!(range_text(tok, ids, t).contains(&digits), "{v}");
}

pub fn check_key(tok: &Tokenizer, ids: &[u32], k: &KeyRanges, (x, y): (i32, i32), key_text: &str) {
    check_coord(tok, ids, &k.x, x);
    check_coord(tok, ids, &k.y, y);
    if let Some(key) = &k.key {
        assert!(range_text(tok, ids, key).contains(key_text), "{key_text}");
    }
}

/// Checks every tracked position of a sample against the puzzle's own data; each grid colour
/// token must be the colour letter alone.
pub fn check_sample(tok: &Tokenizer, s: &Sample) {
    assert_eq!(check_sample_glued(tok, s, None), 0);
}

/// Whether a grid colour token's text (whitespace and quotes stripped) is the letter, or, when
/// `glue` is given, the glue followed by the letter (a tokenizer may merge the separator before
/// an unquoted letter into the letter's token, e.g. ",K"). Panics on anything else; returns
/// true for a glued token.
fn grid_colour(core: &str, letter: &str, glue: Option<&str>, what: &str) -> bool {
    if core == letter {
        return false;
    }
    let glued = glue.map(|g| format!("{g}{letter}"));
    assert_eq!(Some(core), glued.as_deref(), "{what}: expected {letter:?}");
    true
}

/// [`check_sample`], where a grid colour token (cells and the `V` span) may also be the `glue`
/// followed by the letter. Returns the number of grid cells whose colour token is glued; every
/// other tracked position (question colours, answers, keys, spans) is checked as strictly as in
/// [`check_sample`].
pub fn check_sample_glued(tok: &Tokenizer, s: &Sample, glue: Option<&str>) -> usize {
    let mut n_glued = 0;
    let enc = tok.encode(s.prompt.as_str(), false).unwrap();
    let ids = enc.get_ids();
    assert_eq!(s.n_tokens, Some(ids.len()));
    let style = s.params.prompt.style;
    let p: &Puzzle = s
        .puzzle
        .as_ref()
        .expect("a generated sample has its puzzle");
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
                let c = core(tok, ids, &cell.color);
                n_glued += grid_colour(&c, &letter, glue, &format!("cell ({x},{y})")) as usize;
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
        let c = t.trim().trim_matches(|c| c == '\'' || c == '"');
        grid_colour(c, &s.answers[i], glue, "V span");
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
    n_glued
}

pub fn sample(params: &PuzzleParams, opts: &PromptOptions, tok: &Tokenizer) -> Sample {
    let p = gen_puzzle(params).unwrap();
    Sample::build(0, p, opts, Some(tok)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// All styles × frames × quotes × transpose, with a test section.
pub fn variants() -> Vec<(PuzzleParams, PromptOptions)> {
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
                        ..PuzzleParams::default()
                    };
                    let opts = PromptOptions {
                        style,
                        transpose,
                        color_quote: quote.into(),
                        remove_instructions: seed % 2 == 0,
                        template: None,
                    };
                    out.push((params, opts));
                }
            }
        }
    }
    out
}

/// Grids with two-digit coordinates: 12×12 corner (0..=11) and 23×23 center (−11..=11), in every
/// style, with the text of the printed corner cell (x = y = 11 or −11) that the prompt must hold.
pub fn multi_digit_variants() -> Vec<(PuzzleParams, PromptOptions, String)> {
    let mut out = Vec::new();
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
            let c = if frame == Frame::Corner { "11" } else { "-11" };
            let corner_cell = match style {
                Style::Dict => format!(" ({c},{c}):"),
                Style::List => format!(" [{c},{c},"),
                Style::Markdown => format!("| {c} |"),
            };
            out.push((params, opts, corner_cell));
        }
    }
    out
}

/// Runs `minarc puzzles ARGS`.
pub fn minarc_puzzles(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_minarc"))
        .arg("puzzles")
        .args(args)
        .output()
        .unwrap()
}
