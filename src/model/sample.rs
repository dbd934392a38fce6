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
