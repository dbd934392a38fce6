//! U2: map-reduce over a dataset — run a function per sample and average the results
//! elementwise (the seed's `mr(fn)(results, …)`), with a progress bar, an interrupt check and
//! errors that name the failing sample.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};

use super::pattern::SampleRef;
use crate::backend::Backend;
use crate::backend::spread::spread_map;

/// Results that can be averaged elementwise over samples.
pub trait Mean: Sized {
    /// The elementwise mean of equally shaped results (non-empty).
    fn mean_of(items: Vec<Self>) -> Result<Self>;
}

impl Mean for Tensor {
    fn mean_of(items: Vec<Self>) -> Result<Self> {
        ensure!(!items.is_empty(), "nothing to average");
        let d = items[0].dims().to_vec();
        if let Some(t) = items.iter().find(|t| t.dims() != d.as_slice()) {
            bail!("cannot average results of shapes {d:?} and {:?}", t.dims());
        }
        Ok(Tensor::stack(&items, 0)?.mean(0)?)
    }
}

impl Mean for f64 {
    fn mean_of(items: Vec<Self>) -> Result<Self> {
        ensure!(!items.is_empty(), "nothing to average");
        Ok(items.iter().sum::<f64>() / items.len() as f64)
    }
}

impl Mean for f32 {
    fn mean_of(items: Vec<Self>) -> Result<Self> {
        Ok(f64::mean_of(items.into_iter().map(f64::from).collect())? as f32)
    }
}

impl<T: Mean> Mean for Vec<T> {
    fn mean_of(items: Vec<Self>) -> Result<Self> {
        ensure!(!items.is_empty(), "nothing to average");
        let n = items[0].len();
        ensure!(
            items.iter().all(|v| v.len() == n),
            "lists of different lengths"
        );
        let mut cols: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
        for v in items {
            for (c, x) in cols.iter_mut().zip(v) {
                c.push(x);
            }
        }
        cols.into_iter().map(T::mean_of).collect()
    }
}

impl<A: Mean, B: Mean> Mean for (A, B) {
    fn mean_of(items: Vec<Self>) -> Result<Self> {
        let (a, b): (Vec<A>, Vec<B>) = items.into_iter().unzip();
        Ok((A::mean_of(a)?, B::mean_of(b)?))
    }
}

impl<K: Ord + Clone, V: Mean> Mean for BTreeMap<K, V> {
    fn mean_of(items: Vec<Self>) -> Result<Self> {
        ensure!(!items.is_empty(), "nothing to average");
        let keys: Vec<K> = items[0].keys().cloned().collect();
        ensure!(
            items
                .iter()
                .all(|m| m.len() == keys.len() && keys.iter().all(|k| m.contains_key(k))),
            "maps with different keys"
        );
        let mut cols: BTreeMap<K, Vec<V>> = BTreeMap::new();
        for m in items {
            for (k, v) in m {
                cols.entry(k).or_default().push(v);
            }
        }
        cols.into_iter()
            .map(|(k, v)| Ok((k, V::mean_of(v)?)))
            .collect()
    }
}

/// Options of [`mr`].
#[derive(Default)]
pub struct MrOptions<'a> {
    /// Show a progress bar (stderr).
    pub progress: bool,
    /// Polled before each sample; returning true stops with an "interrupted" error.
    pub interrupt: Option<&'a dyn Fn() -> bool>,
    /// Progress-bar message.
    pub label: String,
}

/// Calls `f` on each sample and returns the elementwise mean of the results. An error names the
/// sample it happened on.
pub fn mr<T: Mean>(
    samples: &[SampleRef],
    opts: &MrOptions,
    mut f: impl FnMut(&SampleRef) -> Result<T>,
) -> Result<T> {
    ensure!(!samples.is_empty(), "map-reduce over an empty dataset");
    let bar = if opts.progress {
        let b = ProgressBar::new(samples.len() as u64);
        if let Ok(st) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}<{eta}")
        {
            b.set_style(st);
        }
        b.set_message(opts.label.clone());
        b
    } else {
        ProgressBar::hidden()
    };
    let mut out = Vec::with_capacity(samples.len());
    for r in samples {
        if opts.interrupt.is_some_and(|i| i()) {
            bar.abandon();
            bail!("interrupted before {}", r.describe());
        }
        out.push(f(r).with_context(|| format!("on {}", r.describe()))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    T::mean_of(out)
}

/// Map-reduce over several backends: `f(backend, sample)` for `samples[j]` runs on
/// `backends[j % n]` (the assignment of [`crate::backend::spread::forward_spread`]), and the
/// results are averaged elementwise in sample order, as [`mr`] does on one backend.
pub fn mr_spread<T: Mean + Send>(
    backends: &[&dyn Backend],
    samples: &[SampleRef],
    f: impl Fn(&dyn Backend, &SampleRef) -> Result<T> + Sync,
) -> Result<T> {
    ensure!(!samples.is_empty(), "map-reduce over an empty dataset");
    let out = spread_map(backends, samples, &|b, r: &SampleRef| {
        f(b, r).with_context(|| r.describe())
    })?;
    T::mean_of(out)
}
