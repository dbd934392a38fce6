//! The keys and values of (sample, layer) pairs, shared by attention-weight reads and attn_a
//! backwards, which otherwise project the whole sequence once per head: a byte-bounded cache,
//! least recently used out first.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::KvProj;

/// Bytes of keys and values kept at most (the main job on the default model needs about
/// 135 MiB for all its samples and layers).
pub const KV_CACHE_BYTES: usize = 256 << 20;

/// (dataset, sample index, layer).
pub type KvKey = (String, usize, usize);

struct Entry {
    kv: Arc<KvProj>,
    /// Identity of the cached sample the entry was computed from: an entry of a sample that
    /// has since been replaced under the same key is never returned.
    sample: usize,
    used: u64,
}

/// The cache.
pub struct KvCache {
    budget: usize,
    bytes: usize,
    clock: u64,
    map: HashMap<KvKey, Entry>,
}

impl Default for KvCache {
    fn default() -> Self {
        Self::with_budget(KV_CACHE_BYTES)
    }
}

impl KvCache {
    /// An empty cache holding at most `budget` bytes.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            clock: 0,
            map: HashMap::new(),
        }
    }

    /// The entry of `key` computed from sample `sample` (an identity, see [`KvCache::insert`]).
    pub fn get(&mut self, key: &KvKey, sample: usize) -> Option<Arc<KvProj>> {
        self.clock += 1;
        let e = self.map.get_mut(key)?;
        if e.sample != sample {
            return None;
        }
        e.used = self.clock;
        Some(e.kv.clone())
    }

    /// Stores an entry, dropping the least recently used ones over the budget (an entry larger
    /// than the whole budget is not kept).
    pub fn insert(&mut self, key: KvKey, sample: usize, kv: Arc<KvProj>) {
        let bytes = kv.bytes();
        if bytes > self.budget {
            return;
        }
        self.clock += 1;
        let e = Entry {
            kv,
            sample,
            used: self.clock,
        };
        if let Some(old) = self.map.insert(key, e) {
            self.bytes -= old.kv.bytes();
        }
        self.bytes += bytes;
        while self.bytes > self.budget {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes -= e.kv.bytes();
            }
        }
    }

    /// Drops the entries of one sample (`index` Some), of a dataset (None), or all (`dataset`
    /// None).
    pub fn forget(&mut self, dataset: Option<&str>, index: Option<usize>) {
        let mut freed = 0;
        self.map.retain(|(d, i, _), e| {
            let hit = dataset.is_none_or(|ds| ds == d) && index.is_none_or(|ix| ix == *i);
            if hit {
                freed += e.kv.bytes();
            }
            !hit
        });
        self.bytes -= freed;
    }

    /// (entries, bytes).
    pub fn stats(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn kv(j: usize) -> Arc<KvProj> {
        let t = Tensor::zeros((1, 1, j, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        Arc::new(KvProj {
            keys: t.clone(),
            values: t,
        })
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        // each entry: 2 tensors × j·4 f32 = 32·j bytes
        let mut c = KvCache::with_budget(32 * 30);
        c.insert(("a".into(), 0, 0), 1, kv(10));
        c.insert(("a".into(), 1, 0), 2, kv(10));
        assert!(c.get(&("a".into(), 0, 0), 1).is_some()); // (a,0) is now the most recent
        c.insert(("a".into(), 2, 0), 3, kv(10));
        assert_eq!(c.stats(), (3, 960));
        c.insert(("b".into(), 0, 0), 4, kv(10)); // over budget: (a,1) is the oldest
        assert_eq!(c.stats(), (3, 960));
        assert!(c.get(&("a".into(), 1, 0), 2).is_none());
        assert!(c.get(&("a".into(), 0, 0), 1).is_some());
        // another sample under the same key is a miss
        assert!(c.get(&("a".into(), 0, 0), 99).is_none());
        // larger than the budget: not kept
        c.insert(("c".into(), 0, 0), 5, kv(31));
        assert!(c.get(&("c".into(), 0, 0), 5).is_none());
        c.forget(Some("a"), Some(2));
        assert_eq!(c.stats(), (2, 640));
        c.forget(Some("a"), None);
        assert_eq!(c.stats(), (1, 320));
        c.forget(None, None);
        assert_eq!(c.stats(), (0, 0));
    }
}
