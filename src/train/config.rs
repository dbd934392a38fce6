//! The training configuration (`minarc train --config FILE`, TOML or JSON): model size, puzzle
//! distribution, optimiser and run settings. Every field has a default, so a file names only
//! what it changes; unknown fields are an error. All sizes are bounded before anything is
//! allocated.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::puzzle::template::PromptTemplate;
use crate::puzzle::{Frame, PromptOptions, PuzzleParams, QueryFilter, Style};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model size.
    pub model: NetConfig,
    /// The puzzle distribution trained on.
    pub puzzles: PuzzleDist,
    /// Optimiser and schedule.
    pub optim: OptimConfig,
    /// Seeds, held-out set, evaluation and checkpoints.
    pub run: RunConfig,
}

/// Size of the Qwen2-architecture model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden size e.
    pub hidden: usize,
    /// Query heads n (divides e).
    pub heads: usize,
    /// Key/value heads (divides n).
    pub kv_heads: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// Tie lm_head to the embedding.
    pub tie_embeddings: bool,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest sequence the model is configured for.
    pub max_positions: usize,
    /// The tokenizer: `word` (one token per cell key, see `tokenizer::word_tokenizer`) or
    /// `fixture` (the fixture byte-level BPE).
    pub tokenizer: TokenizerKind,
}

/// Which tokenizer a trained model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// [`crate::tokenizer::word_tokenizer`].
    Word,
    /// [`crate::tokenizer::fixture_tokenizer`].
    Fixture,
}

impl TokenizerKind {
    /// Builds the tokenizer.
    pub fn build(self) -> Result<tokenizers::Tokenizer> {
        match self {
            TokenizerKind::Word => crate::tokenizer::word_tokenizer(),
            TokenizerKind::Fixture => crate::tokenizer::fixture_tokenizer(),
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            layers: 4,
            hidden: 128,
            heads: 4,
            kv_heads: 4,
            intermediate: 512,
            tie_embeddings: false,
            rope_theta: 10_000.0,
            max_positions: 2048,
            tokenizer: TokenizerKind::Word,
        }
    }
}

/// The puzzle distribution: each step draws one (grid size, n_train) variant uniformly, and
/// every sequence of the batch is a fresh puzzle of that variant (so the batch shares one
/// token layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PuzzleDist {
    /// Relation set (see `minarc puzzles --help`).
    pub relations: String,
    /// Grid sizes [n, m] drawn from.
    pub sizes: Vec<[usize; 2]>,
    /// Coordinate frame.
    pub frame: Frame,
    /// Number of colours.
    pub n_color: usize,
    /// Which cells are asked about: `unique` (P5's ambiguity filter, the default) or
    /// `distinct` (candidate cells of pairwise different colours, independent of the hidden
    /// relation, so only the answers carry it).
    pub filter: QueryFilter,
    /// Numbers of train examples drawn from. The largest is the evaluation variant and must be
    /// ≥ 3 (the evaluated answers are those of the last two examples, each after a worked
    /// example); smaller ones give short sequences with one or two grids.
    pub n_train: Vec<usize>,
    /// Questions per example.
    #[serde(rename = "Q_train")]
    pub q_train: usize,
    /// Grid style.
    pub style: Style,
    /// Leave out the relation-definition block.
    pub remove_instructions: bool,
    /// The prompt words (None: the project's default wording).
    pub template: Option<PromptTemplate>,
    /// A curriculum: stages that replace the relations, n_train or Q_train above for the
    /// steps before their `until_step` (the first stage whose `until_step` exceeds the step is
    /// in force; after the last one, the distribution above). Evaluations always use the
    /// distribution above.
    pub curriculum: Vec<Stage>,
}

/// One curriculum stage (fields left out keep the main distribution's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The stage is in force for steps below this (and above the previous stage's).
    pub until_step: usize,
    /// Relation set of the stage.
    #[serde(default)]
    pub relations: Option<String>,
    /// Numbers of train examples of the stage.
    #[serde(default)]
    pub n_train: Option<Vec<usize>>,
    /// Questions per example of the stage.
    #[serde(default, rename = "Q_train")]
    pub q_train: Option<usize>,
}

impl Default for PuzzleDist {
    fn default() -> Self {
        PuzzleDist {
            relations: "side+at".into(),
            sizes: vec![[5, 5]],
            frame: Frame::Corner,
            n_color: 5,
            filter: QueryFilter::Unique,
            n_train: vec![3],
            q_train: 4,
            style: Style::Dict,
            remove_instructions: true,
            template: Some(compact_template()),
            curriculum: Vec::new(),
        }
    }
}

/// The compact prompt words: no system message, no descriptions or instructions, a `#` line
/// before each example, `Q (x0,y0):C?`, the key again on the code line, and `A:C`.
pub fn compact_template() -> PromptTemplate {
    PromptTemplate {
        system: String::new(),
        grid_description: String::new(),
        relations_intro: String::new(),
        relations_outro: String::new(),
        reply_instruction: String::new(),
        separator: String::new(),
        example_title: "#".into(),
        test_title: "#".into(),
        test_title_numbered: "#".into(),
        question_head: "Q".into(),
        code_head_dict: String::new(),
        code_head_list: String::new(),
        code_head_markdown: String::new(),
        code_tail: "\n".into(),
        answer_head: "A:".into(),
        ..PromptTemplate::default()
    }
}

/// AdamW with linear warm-up and cosine decay, global-norm gradient clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// Decoupled weight decay (matrices only; norms and biases are not decayed).
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    /// Weight of the query-colour lookups in the loss relative to the answers (0 = answers only).
    pub query_loss_weight: f64,
    /// Weight of an auxiliary next-token loss on every other prompt token (grid coordinates,
    /// punctuation, the repeated query key; random grid colours add a constant), as its own
    /// mean added to the target loss (0 = off). Dense signal for the positional and copying
    /// heads the lookups are built from.
    pub context_loss_weight: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            steps: 2000,
            batch: 8,
            lr: 2e-3,
            min_lr: 1e-4,
            warmup: 100,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            clip: 1.0,
            query_loss_weight: 1.0,
            context_loss_weight: 0.0,
        }
    }
}

/// Seeds, held-out set, evaluation and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of the weight initialisation and of the training-puzzle stream.
    pub seed: u64,
    /// Puzzle seeds 0..held_out are never trained on (the evaluations and the main job use them).
    pub held_out: u64,
    /// Held-out evaluation every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Held-out puzzles per periodic evaluation (seeds 0..eval_samples).
    pub eval_samples: usize,
    /// Held-out puzzles of the final evaluation (seeds 0..final_eval_samples).
    pub final_eval_samples: usize,
    /// Checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            held_out: 1_000_000,
            eval_every: 100,
            eval_samples: 64,
            final_eval_samples: 500,
            checkpoint_every: 100,
        }
    }
}

/// Upper bounds of the configuration (checked before anything is allocated).
const MAX_LAYERS: usize = 64;
const MAX_HIDDEN: usize = 8192;
const MAX_STEPS: usize = 10_000_000;
const MAX_BATCH: usize = 4096;
const MAX_EVAL: usize = 100_000;
const MAX_POSITIONS: usize = 65_536;

impl TrainConfig {
    /// Reads a TOML (`.toml`) or JSON file.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            meta.len() <= 1 << 20,
            "{} is {} bytes: a training config is at most 1 MiB",
            path.display(),
            meta.len()
        );
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: TrainConfig = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        } else {
            let de = &mut serde_json::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(de)
                .with_context(|| format!("parsing {}", path.display()))?
        };
        cfg.validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(cfg)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Checks every bound and that every puzzle variant can be generated.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        ensure!(
            (1..=MAX_LAYERS).contains(&m.layers),
            "model.layers must be in 1..={MAX_LAYERS}, got {}",
            m.layers
        );
        ensure!(
            (1..=MAX_HIDDEN).contains(&m.hidden) && (1..=4 * MAX_HIDDEN).contains(&m.intermediate),
            "model.hidden must be in 1..={MAX_HIDDEN} and model.intermediate in 1..={}",
            4 * MAX_HIDDEN
        );
        ensure!(
            m.max_positions <= MAX_POSITIONS,
            "model.max_positions must be at most {MAX_POSITIONS}"
        );
        ensure!(
            m.rope_theta.is_finite() && m.rope_theta > 1.0,
            "model.rope_theta must be a finite number above 1"
        );
        self.model_config(1)?.validate()?;
        let o = &self.optim;
        ensure!(
            (1..=MAX_STEPS).contains(&o.steps),
            "optim.steps must be in 1..={MAX_STEPS}, got {}",
            o.steps
        );
        ensure!(
            (1..=MAX_BATCH).contains(&o.batch),
            "optim.batch must be in 1..={MAX_BATCH}, got {}",
            o.batch
        );
        for (name, v) in [
            ("lr", o.lr),
            ("min_lr", o.min_lr),
            ("weight_decay", o.weight_decay),
            ("clip", o.clip),
            ("query_loss_weight", o.query_loss_weight),
            ("context_loss_weight", o.context_loss_weight),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "optim.{name} must be a finite number ≥ 0, got {v}"
            );
        }
        ensure!(o.lr > 0.0, "optim.lr must be positive");
        ensure!(
            (0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2),
            "optim.beta1 and optim.beta2 must be in [0, 1)"
        );
        ensure!(
            o.eps.is_finite() && o.eps > 0.0,
            "optim.eps must be positive"
        );
        let r = &self.run;
        ensure!(
            (1..=MAX_EVAL).contains(&r.eval_samples)
                && (1..=MAX_EVAL).contains(&r.final_eval_samples),
            "run.eval_samples and run.final_eval_samples must be in 1..={MAX_EVAL}"
        );
        ensure!(
            r.held_out >= r.eval_samples.max(r.final_eval_samples) as u64,
            "run.held_out ({}) must cover the evaluation seeds 0..{}",
            r.held_out,
            r.eval_samples.max(r.final_eval_samples)
        );
        ensure!(r.held_out < u64::MAX / 2, "run.held_out is too large");
        let p = &self.puzzles;
        ensure!(!p.sizes.is_empty(), "puzzles.sizes is empty");
        ensure!(!p.n_train.is_empty(), "puzzles.n_train is empty");
        ensure!(
            p.sizes.len() <= 64 && p.n_train.len() <= 64,
            "puzzles.sizes and puzzles.n_train take at most 64 entries each"
        );
        if p.n_train.iter().copied().max().unwrap_or(0) < 3 {
            bail!(
                "puzzles.n_train: the largest value is the evaluation variant and must be at least 3 (the evaluated answers are those of the last two examples, each after a worked example)"
            );
        }
        self.prompt_options().validate()?;
        ensure!(
            p.curriculum.len() <= 64,
            "puzzles.curriculum takes at most 64 stages"
        );
        let mut last = 0;
        for (i, st) in p.curriculum.iter().enumerate() {
            ensure!(
                st.until_step > last,
                "puzzles.curriculum: stage {} ends at step {}, not after the previous stage ({last})",
                i + 1,
                st.until_step
            );
            last = st.until_step;
            let n = st.n_train.as_ref().map_or(1, |v| v.len());
            ensure!(
                (1..=64).contains(&n),
                "puzzles.curriculum: stage {} needs 1..=64 n_train values",
                i + 1
            );
        }
        // the main distribution, then every stage
        for step in std::iter::once(usize::MAX).chain(p.curriculum.iter().map(|s| s.until_step - 1))
        {
            for v in self.variants_at(step) {
                v.validate().with_context(|| {
                    format!(
                        "puzzle variant {}×{} with relations {}, n_train {}, Q_train {}{}",
                        v.n,
                        v.m,
                        v.relations,
                        v.n_train,
                        v.q_train,
                        if step == usize::MAX {
                            String::new()
                        } else {
                            format!(" (curriculum, step {step})")
                        }
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every (size, n_train) variant of the main distribution as generation parameters (seed 0).
    pub fn variants(&self) -> Vec<PuzzleParams> {
        self.variants_at(usize::MAX)
    }

    /// The variants in force at `step` (the curriculum stage's, else the main distribution's).
    pub fn variants_at(&self, step: usize) -> Vec<PuzzleParams> {
        let p = &self.puzzles;
        let stage = p.curriculum.iter().find(|s| step < s.until_step);
        let relations = stage
            .and_then(|s| s.relations.clone())
            .unwrap_or_else(|| p.relations.clone());
        let n_train = stage
            .and_then(|s| s.n_train.clone())
            .unwrap_or_else(|| p.n_train.clone());
        let q_train = stage.and_then(|s| s.q_train).unwrap_or(p.q_train);
        p.sizes
            .iter()
            .flat_map(|&[n, m]| {
                let relations = relations.clone();
                n_train.iter().map(move |&k| PuzzleParams {
                    relations: relations.clone(),
                    n,
                    m,
                    frame: p.frame,
                    n_color: p.n_color,
                    n_train: k,
                    n_test: 0,
                    q_train,
                    q_test: 1,
                    seed: 0,
                    filter: p.filter,
                })
            })
            .collect()
    }

    /// The variant the held-out evaluations, the model card and the main job use: the first
    /// size with the largest n_train.
    pub fn eval_variant(&self) -> PuzzleParams {
        let k = self.puzzles.n_train.iter().copied().max().unwrap_or(3);
        let v = self.variants();
        v.iter()
            .find(|p| p.n_train == k)
            .cloned()
            .unwrap_or_else(|| v[0].clone())
    }

    /// The prompt options of every training sequence.
    pub fn prompt_options(&self) -> PromptOptions {
        PromptOptions {
            style: self.puzzles.style,
            transpose: true,
            color_quote: String::new(),
            remove_instructions: self.puzzles.remove_instructions,
            template: self.puzzles.template.clone(),
        }
    }

    /// The model's config.json for a vocabulary of `vocab` tokens.
    pub fn model_config(&self, vocab: usize) -> Result<ModelConfig> {
        let m = &self.model;
        if m.heads == 0
            || m.kv_heads == 0
            || !m.hidden.is_multiple_of(m.heads)
            || !m.heads.is_multiple_of(m.kv_heads)
        {
            bail!(
                "model.heads ({}) must divide model.hidden ({}) and be a multiple of model.kv_heads ({})",
                m.heads,
                m.hidden,
                m.kv_heads
            );
        }
        if !(m.hidden / m.heads).is_multiple_of(2) {
            bail!(
                "the head dim hidden/heads = {} must be even (RoPE)",
                m.hidden / m.heads
            );
        }
        let mut cfg = crate::model::fixture::Preset::Small.config();
        cfg.vocab_size = vocab;
        cfg.hidden_size = m.hidden;
        cfg.intermediate_size = m.intermediate;
        cfg.num_hidden_layers = m.layers;
        cfg.num_attention_heads = m.heads;
        cfg.num_key_value_heads = Some(m.kv_heads);
        cfg.tie_word_embeddings = m.tie_embeddings;
        cfg.rope_theta = m.rope_theta;
        cfg.max_position_embeddings = m.max_positions;
        cfg.sliding_window = Some(m.max_positions);
        cfg.max_window_layers = Some(m.layers);
        cfg.torch_dtype = Some("float32".into());
        Ok(cfg)
    }
}
