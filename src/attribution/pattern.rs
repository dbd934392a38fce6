//! Spans and attention patterns (A9): `DST->SRC` pattern strings, span names resolved to token
//! positions per sample (built-in spans through [`Sample::positions`], plus user-defined spans:
//! a named list of positions per sample).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backend::SampleKey;
use crate::puzzle::Sample;
use crate::puzzle::sample::DEFAULT_LAST_K;

/// One sample as attribution sees it (the seed's `r`): its key in the backend's store and, when
/// available, the puzzle record its spans are resolved from.
#[derive(Debug, Clone)]
pub struct SampleRef {
    /// Dataset name + sample index (r.index).
    pub key: SampleKey,
    /// The puzzle sample (token positions of A, V, QV, Qy); None = only user-defined spans and
    /// the lm_head positions (answer_indices − 1 from the backend's sample metadata) work.
    pub sample: Option<Arc<Sample>>,
}

impl SampleRef {
    /// A sample with its puzzle record.
    pub fn new(key: SampleKey, sample: Option<Arc<Sample>>) -> Self {
        Self { key, sample }
    }
    /// The sample index.
    pub fn index(&self) -> usize {
        self.key.index
    }
    /// `dataset[index]` for messages.
    pub fn describe(&self) -> String {
        format!(
            "sample {} of dataset {:?}",
            self.key.index, self.key.dataset
        )
    }
}

/// A parsed `DST->SRC` pattern, e.g. `A-->V` (the query at `A-` attends to the answer cell `V`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    /// Destination span (the node's output positions).
    pub dst: String,
    /// Source span (the attended positions).
    pub src: String,
}

impl Pattern {
    /// Parses `DST->SRC` (split on the last `->`, so `A-->V` gives `A-` and `V`).
    pub fn parse(s: &str) -> Result<Self> {
        let i = s
            .rfind("->")
            .with_context(|| format!("attention pattern {s:?} must look like DST->SRC"))?;
        let (dst, src) = (s[..i].trim(), s[i + 2..].trim());
        if dst.is_empty() || src.is_empty() {
            bail!("attention pattern {s:?} has an empty DST or SRC");
        }
        Ok(Self {
            dst: dst.to_string(),
            src: src.to_string(),
        })
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.dst, self.src)
    }
}

/// Resolves span names to positions: user-defined spans first, then the built-in A9 spans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spans {
    /// How many trailing train examples built-in spans cover (must match how answer_indices
    /// were built; default 2).
    pub last_k: usize,
    /// User-defined spans: name → (dataset, sample index) → positions.
    user: HashMap<String, BTreeMap<(String, usize), Vec<usize>>>,
}

impl Default for Spans {
    fn default() -> Self {
        Self {
            last_k: DEFAULT_LAST_K,
            user: HashMap::new(),
        }
    }
}

impl Spans {
    /// Defines (or replaces) `name` for one sample.
    pub fn define(&mut self, name: &str, key: &SampleKey, positions: Vec<usize>) -> Result<()> {
        if name.is_empty() || name.contains("->") {
            bail!("invalid span name {name:?}");
        }
        if positions.is_empty() {
            bail!("span {name:?} for sample {} has no positions", key.index);
        }
        self.user
            .entry(name.to_string())
            .or_default()
            .insert((key.dataset.clone(), key.index), positions);
        Ok(())
    }

    /// Removes a user-defined span everywhere; returns whether it existed.
    pub fn undefine(&mut self, name: &str) -> bool {
        self.user.remove(name).is_some()
    }

    /// Names of the user-defined spans.
    pub fn user_spans(&self) -> Vec<String> {
        let mut v: Vec<String> = self.user.keys().cloned().collect();
        v.sort();
        v
    }

    /// Positions of `span` in sample `r` (the seed's get_pos_ids_by_span).
    pub fn positions(&self, r: &SampleRef, span: &str) -> Result<Vec<usize>> {
        if let Some(per) = self.user.get(span) {
            return per
                .get(&(r.key.dataset.clone(), r.key.index))
                .cloned()
                .with_context(|| {
                    format!(
                        "user-defined span {span:?} has no positions for {}",
                        r.describe()
                    )
                });
        }
        let s = r.sample.as_ref().with_context(|| {
            format!(
                "span {span:?} needs the puzzle record of {} (none given) or a user-defined span",
                r.describe()
            )
        })?;
        s.positions(span, self.last_k)
            .with_context(|| format!("resolving span {span:?} in {}", r.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_patterns() {
        let p = Pattern::parse("A-->V").unwrap();
        assert_eq!((p.dst.as_str(), p.src.as_str()), ("A-", "V"));
        let p = Pattern::parse("A-->A-").unwrap();
        assert_eq!((p.dst.as_str(), p.src.as_str()), ("A-", "A-"));
        assert!(Pattern::parse("A-").is_err());
        assert!(Pattern::parse("->V").is_err());
    }

    #[test]
    fn user_spans() {
        let mut s = Spans::default();
        let k = SampleKey::new("d", 3);
        s.define("K", &k, vec![4, 7]).unwrap();
        let r = SampleRef::new(k, None);
        assert_eq!(s.positions(&r, "K").unwrap(), vec![4, 7]);
        let other = SampleRef::new(SampleKey::new("d", 4), None);
        assert!(s.positions(&other, "K").is_err());
        assert!(s.positions(&r, "V").is_err());
    }
}
