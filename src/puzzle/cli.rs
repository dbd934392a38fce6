//! `minarc puzzles`: generate a dataset of samples as JSONL.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{ArgAction, Args};
use tokenizers::Tokenizer;

use super::dataset::write_jsonl;
use super::generate::{PuzzleParams, QueryFilter, gen_puzzle, trace_winners};
use super::grid::Frame;
use super::prompt::{PromptOptions, Style};
use super::sample::Sample;
use crate::tokenizer::{fixture_tokenizer, load_tokenizer};

/// Arguments of `minarc puzzles` (defaults: the notebook's W1 configuration).
#[derive(Args, Debug, Clone)]
pub struct PuzzlesArgs {
    /// Relation set: neighbor, side, corner, mirror_rotate, all, side+at, or a comma-separated list
    /// of relation names (e.g. left_of,above).
    #[arg(long, default_value = "side+at")]
    pub relations: String,
    /// Grid extent along x.
    #[arg(long, default_value_t = 5)]
    pub n: usize,
    /// Grid extent along y.
    #[arg(long, default_value_t = 5)]
    pub m: usize,
    /// Coordinate frame: corner or center (center needs odd n and m).
    #[arg(long, default_value = "corner")]
    pub frame: String,
    /// Number of colours (2..=10).
    #[arg(long = "n-color", default_value_t = 5)]
    pub n_color: usize,
    /// Train examples per puzzle.
    #[arg(long = "n-train", default_value_t = 5)]
    pub n_train: usize,
    /// Test examples per puzzle.
    #[arg(long = "n-test", default_value_t = 0)]
    pub n_test: usize,
    /// Questions per train example.
    #[arg(long = "q-train", default_value_t = 4)]
    pub q_train: usize,
    /// Questions per test example.
    #[arg(long = "q-test", default_value_t = 1)]
    pub q_test: usize,
    /// Which cells are asked about: unique (P5's ambiguity filter: the answer colour sits at
    /// exactly one candidate cell) or distinct (every relation's candidate cell holds a
    /// different colour, whatever the hidden relation; needs n-color ≥ the number of
    /// relations, and about 8–10 colours to be quick).
    #[arg(long, default_value = "unique")]
    pub filter: String,
    /// Seeds: `A..B` (half-open), `A..=B`, or a single seed; one sample per seed.
    #[arg(long, default_value = "0..25")]
    pub seeds: String,
    /// Grid style: dict, list or markdown.
    #[arg(long, default_value = "dict")]
    pub style: String,
    /// Rows iterate over y (true, the default) or over x (`--transpose false`).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub transpose: bool,
    /// Quote written around colour letters, e.g. \' or \".
    #[arg(long = "color-quote", default_value = "")]
    pub color_quote: String,
    /// Leave out the relation-definition block.
    #[arg(long = "no-instructions")]
    pub no_instructions: bool,
    /// A JSON file of prompt words replacing the project's own (see `minarc puzzles
    /// --write-template FILE` for the default; missing fields keep it).
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Write the default prompt words as a JSON template to FILE and exit.
    #[arg(long = "write-template")]
    pub write_template: Option<PathBuf>,
    /// Tokenizer for the token fields: a tokenizer.json file, a model folder holding one, or
    /// `fixture` for the built-in fixture tokenizer.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Output JSONL file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the first prompt to stdout.
    #[arg(long)]
    pub show: bool,
}

/// Why the command failed: bad parameters (exit code 2) or a failure while running (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum PuzzlesError {
    /// The parameters are invalid.
    #[error("{0:#}")]
    BadParams(anyhow::Error),
    /// Generation, tokenization or writing failed.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Parses a seed range: `A..B`, `A..=B` or `A`.
pub fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| anyhow!("bad seed range {s:?}: {t:?} is not a non-negative integer"))
    };
    let range = if let Some((a, b)) = s.split_once("..=") {
        num(a)?..num(b)?.checked_add(1).context("seed range overflows")?
    } else if let Some((a, b)) = s.split_once("..") {
        num(a)?..num(b)?
    } else {
        let a = num(s)?;
        a..a + 1
    };
    if range.is_empty() {
        bail!("seed range {s:?} is empty");
    }
    check_seed_count(&range)?;
    Ok(range)
}

/// A seed range makes one sample per seed: at most [`crate::limits::BATCH_SAMPLES`].
pub fn check_seed_count(range: &std::ops::Range<u64>) -> Result<()> {
    let n = range.end.saturating_sub(range.start);
    crate::limits::BATCH_SAMPLES.check(usize::try_from(n).unwrap_or(usize::MAX), "seeds")?;
    Ok(())
}

/// Validated settings.
struct Plan {
    params: PuzzleParams,
    opts: PromptOptions,
    seeds: std::ops::Range<u64>,
}

fn plan(args: &PuzzlesArgs) -> Result<Plan> {
    let params = PuzzleParams {
        relations: args.relations.clone(),
        n: args.n,
        m: args.m,
        frame: Frame::parse(&args.frame)?,
        n_color: args.n_color,
        n_train: args.n_train,
        n_test: args.n_test,
        q_train: args.q_train,
        q_test: args.q_test,
        seed: 0,
        filter: QueryFilter::parse(&args.filter)?,
    };
    params.validate()?;
    let opts = PromptOptions {
        style: Style::parse(&args.style)?,
        transpose: args.transpose,
        color_quote: args.color_quote.clone(),
        remove_instructions: args.no_instructions,
        template: args
            .template
            .as_deref()
            .map(crate::puzzle::template::PromptTemplate::from_file)
            .transpose()?,
    };
    opts.validate()?;
    let seeds = parse_seeds(&args.seeds)?;
    if args.out.is_none() && !args.show {
        bail!("nothing to do: give --out FILE.jsonl and/or --show");
    }
    Ok(Plan {
        params,
        opts,
        seeds,
    })
}

fn load(spec: &str) -> Result<Tokenizer> {
    if spec == "fixture" {
        fixture_tokenizer()
    } else {
        load_tokenizer(std::path::Path::new(spec))
    }
}

/// Generates one sample per seed.
pub fn generate(
    params: &PuzzleParams,
    opts: &PromptOptions,
    seeds: std::ops::Range<u64>,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<Sample>> {
    seeds
        .enumerate()
        .map(|(index, seed)| {
            let p = PuzzleParams {
                seed,
                ..params.clone()
            };
            let puzzle = gen_puzzle(&p)?;
            Sample::build(index, puzzle, opts, tokenizer)
        })
        .collect()
}

/// A one-line summary: count, relation histogram, token lengths.
fn summary(samples: &[Sample]) -> String {
    let mut hist = BTreeMap::new();
    for s in samples {
        *hist.entry(s.rel_fn.as_str()).or_insert(0usize) += 1;
    }
    let hist: Vec<String> = hist.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let lens: Vec<usize> = samples.iter().filter_map(|s| s.n_tokens).collect();
    let tokens = match (lens.iter().min(), lens.iter().max()) {
        (Some(a), Some(b)) if a == b => format!("{a} tokens each"),
        (Some(a), Some(b)) => format!("{a}..{b} tokens"),
        _ => "no tokenizer".to_string(),
    };
    // the trace of the query filter: puzzles whose query cells alone name the hidden relation
    let named = samples
        .iter()
        .filter_map(|s| s.puzzle.as_ref())
        .filter(|p| trace_winners(p) == [p.rel_fn])
        .count();
    let filter = samples
        .first()
        .map_or("unique", |s| s.params.puzzle.filter.name());
    format!(
        "{} samples; relations: {}; {tokens}; filter {filter}: the query cells alone name the \
         hidden relation in {named} of {}",
        samples.len(),
        hist.join(", "),
        samples.len()
    )
}

/// Runs the command.
pub fn run(args: &PuzzlesArgs) -> Result<(), PuzzlesError> {
    if let Some(path) = &args.write_template {
        let text =
            serde_json::to_string_pretty(&crate::puzzle::template::PromptTemplate::default())
                .map_err(|e| PuzzlesError::Failed(e.into()))?;
        std::fs::write(path, text + "\n").map_err(|e| {
            PuzzlesError::Failed(anyhow::anyhow!("writing {}: {e}", path.display()))
        })?;
        eprintln!("wrote the default prompt words to {}", path.display());
        return Ok(());
    }
    let plan = plan(args).map_err(PuzzlesError::BadParams)?;
    let tok = args
        .tokenizer
        .as_deref()
        .map(load)
        .transpose()
        .map_err(PuzzlesError::BadParams)?;
    let samples = generate(&plan.params, &plan.opts, plan.seeds, tok.as_ref())
        .map_err(PuzzlesError::Failed)?;
    if args.show {
        println!("{}", samples[0].prompt);
    }
    if let Some(out) = &args.out {
        write_jsonl(out, &samples).map_err(PuzzlesError::Failed)?;
        eprintln!("wrote {} to {}", summary(&samples), out.display());
    }
    Ok(())
}

/// Runs the command and returns the process exit code (0, 1 on failure, 2 on bad parameters),
/// printing a one-line error on stderr.
pub fn main(args: &PuzzlesArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                PuzzlesError::BadParams(_) => 2,
                PuzzlesError::Failed(_) => 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_seeds("0..25").unwrap(), 0..25);
        assert_eq!(parse_seeds("3..=5").unwrap(), 3..6);
        assert_eq!(parse_seeds("7").unwrap(), 7..8);
        for bad in ["5..5", "9..2", "a..3", "-1..4", ""] {
            assert!(parse_seeds(bad).is_err(), "{bad}");
        }
    }
}
