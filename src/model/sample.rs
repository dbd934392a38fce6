//! What one forwarded sample keeps: its input ([`SampleInput`]), its token ids and the captured
//! activations ([`CachedSample`]).

use serde::{Deserialize, Serialize};

use super::outputs::{CaptureSpec, Outputs};

/// What the caller knows about a sample when it is forwarded (kept as its metadata).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SampleInput {
    /// Sample index within its dataset.
    pub index: usize,
    /// The prompt text (tokenized by the backend's tokenizer).
    pub prompt: String,
    /// Answer token ids, one per answer position (may be omitted on the wire: none).
    #[serde(default)]
    pub labels: Vec<u32>,
    /// Candidate answer token ids (logits mask, A3; omitted: none).
    #[serde(default)]
    pub candidate_ids: Vec<u32>,
    /// Positions whose next-token prediction is the answer (one per label; omitted: none).
    #[serde(default)]
    pub answer_indices: Vec<usize>,
    /// What the lm_head node and the causal metrics measure (omitted: the seed's log-prob).
    #[serde(default, skip_serializing_if = "Objective::is_default")]
    pub objective: Objective,
}

/// The objective of a sample: what its lm_head node measures at the positions that predict the
/// answers (`answer_indices − 1`), as a mean over them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Objective {
    /// The seed's A2–A4: log-prob of the label, over the candidates when the sample has some
    /// (the other logits masked with −1e4), else over the full vocabulary.
    #[default]
    LogProb,
    /// Log-prob of the label over the full vocabulary (candidates are not used).
    FullVocab,
    /// logit(label) − logit(foil), one foil token per label (IOI-style logit difference).
    LogitDiff {
        /// Foil token ids, one per label.
        foils: Vec<u32>,
    },
    /// The seed's `reduction='argmax'`: the labels are replaced by the model's own prediction
    /// (over the candidates when given) when the sample is forwarded; then as `LogProb`.
    Argmax,
}

impl Objective {
    /// Whether this is the default (`LogProb`).
    pub fn is_default(&self) -> bool {
        *self == Objective::LogProb
    }

    /// A short name: log_prob, full_vocab, logit_diff or argmax.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::LogProb => "log_prob",
            Objective::FullVocab => "full_vocab",
            Objective::LogitDiff { .. } => "logit_diff",
            Objective::Argmax => "argmax",
        }
    }
}

impl SampleInput {
    /// The positions that predict the answers, `answer_indices − 1` (the `A-` span: the lm_head
    /// objective, the lens and the causal metrics read the logits there).
    pub fn answer_positions(&self) -> anyhow::Result<Vec<usize>> {
        self.answer_indices
            .iter()
            .map(|&a| {
                a.checked_sub(1).ok_or_else(|| {
                    anyhow::anyhow!(
                        "sample {}: answer at position 0 has no preceding token",
                        self.index
                    )
                })
            })
            .collect()
    }
}

/// A cached sample: what was asked, its tokens, and the captured activations.
#[derive(Debug, Clone)]
pub struct CachedSample {
    /// The input as given to `forward_sample`.
    pub input: SampleInput,
    /// Token ids of the prompt.
    pub token_ids: Vec<u32>,
    /// Captured activations (CPU).
    pub outputs: Outputs,
    /// How the activations were captured (to recompute an evicted sample).
    pub capture: CaptureSpec,
}
