//! Byte budget and least-recently-used bookkeeping for [`super::Local`]'s activation cache.
//!
//! The store keeps every sample it was asked to forward. With a budget, the activations of the
//! least recently used samples are dropped when a new sample would push the resident bytes over
//! the budget; the sample's input (prompt, labels, token ids, capture spec) is kept, so
//! [`super::Local::sample`] recomputes an evicted sample on demand (the forward is deterministic,
//! so the recomputed activations are the same).

use std::collections::HashMap;

use anyhow::{Result, bail};

use super::{SampleInput, SampleKey};
use crate::model::outputs::CaptureSpec;

/// What is kept of an evicted sample: enough to forward it again.
#[derive(Debug, Clone)]
pub struct Evicted {
    /// The input as given at forward time.
    pub input: SampleInput,
    /// Its token ids.
    pub token_ids: Vec<u32>,
    /// How it was captured.
    pub capture: CaptureSpec,
    /// Where its activations were spilled (read back instead of recomputed), if they were.
    pub spilled: Option<std::path::PathBuf>,
}

/// Activation-cache figures of a [`super::Local`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Byte budget of resident activations (None = unlimited).
    pub budget: Option<usize>,
    /// Bytes of resident activations.
    pub resident_bytes: usize,
    /// Samples whose activations are held.
    pub resident_samples: usize,
    /// Samples whose activations were evicted (read back from the spill folder or recomputed
    /// on demand).
    pub evicted_samples: usize,
    /// Evictions since start.
    pub evictions: u64,
}

/// LRU order and sizes of resident samples, plus the inputs of evicted ones.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    budget: Option<usize>,
    tick: u64,
    evictions: u64,
    /// Resident samples: (last use tick, bytes).
    resident: HashMap<SampleKey, (u64, usize)>,
    /// Evicted samples.
    evicted: HashMap<SampleKey, Evicted>,
}

impl Lru {
    /// Sets the byte budget (None = unlimited). Takes effect at the next admission.
    pub fn set_budget(&mut self, budget: Option<usize>) {
        self.budget = budget;
    }

    /// Marks a resident sample as just used.
    pub fn touch(&mut self, key: &SampleKey) {
        self.tick += 1;
        if let Some(e) = self.resident.get_mut(key) {
            e.0 = self.tick;
        }
    }

    /// Fails when one sample of `bytes` can never fit the budget.
    pub fn check_fits(&self, key: &SampleKey, bytes: usize) -> Result<()> {
        if let Some(b) = self.budget
            && bytes > b
        {
            bail!(
                "sample {} of dataset {:?} needs {bytes} bytes of activations, more than the \
                 whole activation-cache budget of {b} bytes",
                key.index,
                key.dataset
            );
        }
        Ok(())
    }

    /// Records `key` as resident with `bytes` (most recently used) and returns the samples to
    /// evict, least recently used first, so that the resident bytes fit the budget.
    pub fn admit(&mut self, key: &SampleKey, bytes: usize) -> Vec<SampleKey> {
        self.tick += 1;
        self.evicted.remove(key);
        self.resident.insert(key.clone(), (self.tick, bytes));
        let Some(budget) = self.budget else {
            return vec![];
        };
        let mut used = self.resident_bytes();
        let mut order: Vec<(u64, SampleKey, usize)> = self
            .resident
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, &(t, b))| (t, k.clone(), b))
            .collect();
        order.sort();
        let mut victims = vec![];
        for (_, k, b) in order {
            if used <= budget {
                break;
            }
            used -= b;
            victims.push(k);
        }
        victims
    }

    /// Moves a resident sample to the evicted set.
    pub fn mark_evicted(&mut self, key: &SampleKey, kept: Evicted) {
        self.resident.remove(key);
        self.evicted.insert(key.clone(), kept);
        self.evictions += 1;
    }

    /// The kept input of an evicted sample.
    pub fn evicted(&self, key: &SampleKey) -> Option<&Evicted> {
        self.evicted.get(key)
    }

    /// Indices of the evicted samples of a dataset.
    pub fn evicted_indices(&self, dataset: &str) -> Vec<usize> {
        self.evicted
            .keys()
            .filter(|k| k.dataset == dataset)
            .map(|k| k.index)
            .collect()
    }

    /// Forgets everything about a dataset.
    pub fn forget_dataset(&mut self, dataset: &str) {
        self.resident.retain(|k, _| k.dataset != dataset);
        self.evicted.retain(|k, _| k.dataset != dataset);
    }

    /// Bytes of resident activations.
    pub fn resident_bytes(&self) -> usize {
        self.resident.values().map(|&(_, b)| b).sum()
    }

    /// Current figures.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            budget: self.budget,
            resident_bytes: self.resident_bytes(),
            resident_samples: self.resident.len(),
            evicted_samples: self.evicted.len(),
            evictions: self.evictions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> SampleKey {
        SampleKey::new("d", i)
    }

    fn kept(i: usize) -> Evicted {
        Evicted {
            input: SampleInput {
                index: i,
                ..Default::default()
            },
            token_ids: vec![1, 2],
            capture: CaptureSpec::full(),
            spilled: None,
        }
    }

    #[test]
    fn evicts_least_recently_used_until_under_budget() {
        let mut lru = Lru::default();
        lru.set_budget(Some(250));
        assert!(lru.admit(&key(0), 100).is_empty());
        assert!(lru.admit(&key(1), 100).is_empty());
        lru.touch(&key(0)); // 1 is now the least recently used
        let v = lru.admit(&key(2), 100);
        assert_eq!(v, vec![key(1)]);
        lru.mark_evicted(&key(1), kept(1));
        assert_eq!(lru.resident_bytes(), 200);
        // A big sample pushes out both others, oldest first.
        let v = lru.admit(&key(3), 240);
        assert_eq!(v, vec![key(0), key(2)]);
        for k in &v {
            lru.mark_evicted(k, kept(k.index));
        }
        let s = lru.stats();
        assert_eq!(
            (s.resident_samples, s.evicted_samples, s.evictions),
            (1, 3, 3)
        );
        assert_eq!(s.resident_bytes, 240);
        // Readmitting an evicted sample removes it from the evicted set.
        let v = lru.admit(&key(1), 10);
        assert!(v.is_empty());
        assert!(lru.evicted(&key(1)).is_none());
        let mut ev = lru.evicted_indices("d");
        ev.sort();
        assert_eq!(ev, vec![0, 2]);
    }

    #[test]
    fn oversized_sample_and_unlimited_budget() {
        let mut lru = Lru::default();
        assert!(lru.check_fits(&key(0), usize::MAX).is_ok());
        assert!(lru.admit(&key(0), 1 << 40).is_empty());
        lru.set_budget(Some(10));
        let err = lru.check_fits(&key(1), 11).unwrap_err().to_string();
        assert!(
            err.contains("11 bytes") && err.contains("10 bytes"),
            "{err}"
        );
        lru.forget_dataset("d");
        assert_eq!(lru.stats().resident_samples, 0);
    }
}
