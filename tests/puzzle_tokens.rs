//! Token positions against real tokenizers built in the test: the fixture byte-level BPE and a
//! word-level tokenizer with different boundaries. Every tracked position must decode to the text
//! it claims, computed independently from the puzzle's grid and keys (the checks live in
//! tests/puzzle_support, shared with tests/qwen_tokenizer.rs).

mod puzzle_support;

use minarc::puzzle::prompt::PromptOptions;
use minarc::puzzle::{PuzzleParams, Sample, gen_puzzle};
use minarc::tokenizer::{ENDOFTEXT, IM_END, IM_START, fixture_tokenizer};
use puzzle_support::{check_sample, multi_digit_variants, sample, variants};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

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
    for (params, opts, corner_cell) in multi_digit_variants() {
        let s = sample(&params, &opts, &tok);
        assert!(s.prompt.contains(&corner_cell), "{corner_cell}");
        check_sample(&tok, &s);
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

/// Other words around the tracked pieces: every position still decodes to its text, the labels
/// follow the new answer head, and the words appear where the template puts them.
#[test]
fn a_prompt_template_changes_the_words_and_keeps_the_positions() {
    use minarc::puzzle::template::PromptTemplate;
    let tok = fixture_tokenizer().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("words.json");
    std::fs::write(
        &path,
        r###"{"system": "Tu es un assistant.",
            "example_title": "## Exemple numéro {k}",
            "question_head": "# Quelle est la couleur de la case liée à la case",
            "answer_head": "Réponse: ",
            "what_dict": "un dict des cases (x,y) vers leur couleur",
            "separator": "=========="}"###,
    )
    .unwrap();
    let t = PromptTemplate::from_file(&path).unwrap();
    assert_eq!(
        t.code_tail,
        PromptTemplate::default().code_tail,
        "unset fields keep the default"
    );
    for (params, mut opts) in variants().into_iter().take(6) {
        opts.template = Some(t.clone());
        let s = sample(&params, &opts, &tok);
        check_sample(&tok, &s);
        assert!(s.prompt.contains("system\nTu es un assistant."));
        assert!(s.prompt.contains("## Exemple numéro 1\n") && !s.prompt.contains("# Example 1"));
        assert!(s.prompt.contains("==========\n"));
        assert!(s.prompt.matches("Réponse: ").count() >= s.answers.len());
        // the label is the token after the new head, and it is the answer's candidate
        let enc = tok.encode(s.prompt.as_str(), false).unwrap();
        for (&a, &l) in s.answer_indices.iter().zip(&s.labels) {
            assert_eq!(enc.get_ids()[a], l);
            let before = &s.prompt[..enc.get_offsets()[a].0];
            assert!(
                before
                    .trim_end_matches(['\'', '"', ' '])
                    .ends_with("Réponse:"),
                "{before:?}"
            );
        }
    }
    // the default template written out reads back as the default, and gives the same prompt
    let out = dir.path().join("default.json");
    std::fs::write(
        &out,
        serde_json::to_string(&PromptTemplate::default()).unwrap(),
    )
    .unwrap();
    let d = PromptTemplate::from_file(&out).unwrap();
    assert_eq!(d, PromptTemplate::default());
    let (params, opts) = variants().remove(0);
    let mut with = opts.clone();
    with.template = Some(d);
    assert_eq!(
        sample(&params, &opts, &tok).prompt,
        sample(&params, &with, &tok).prompt
    );
    // a head the tokenizer joins to the letter is refused: with the word-level tokenizer,
    // "AnswerB" is one word
    let (params, mut opts) = variants().remove(0);
    opts.template = Some(PromptTemplate {
        answer_head: "Answer".into(),
        ..PromptTemplate::default()
    });
    let plain =
        Sample::build(0, minarc::puzzle::gen_puzzle(&params).unwrap(), &opts, None).unwrap();
    let words = word_level(&[plain.prompt]);
    let e = format!(
        "{:#}",
        Sample::build(
            0,
            minarc::puzzle::gen_puzzle(&params).unwrap(),
            &opts,
            Some(&words)
        )
        .unwrap_err()
    );
    assert!(e.contains("joins it to the end of the answer head"), "{e}");
    // bad files are clear errors
    for (text, words) in [
        (r#"{"answer_head": ""}"#, "answer_head"),
        (
            r##"{"example_title": "# Ex {n}"}"##,
            "unknown placeholder {n}",
        ),
        (r#"{"question": "x"}"#, "unknown field"),
        (r#"{"separator": 3}"#, "invalid type"),
        (r##"{"test_title_numbered": "# T {k"}"##, "unclosed"),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = format!("{:#}", PromptTemplate::from_file(&path).unwrap_err());
        assert!(e.contains(words) && e.contains("words.json"), "{text}: {e}");
    }
}
