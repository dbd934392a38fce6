//! Map-reduce over several backends (`mr` over a list of models): sample `j` of a list goes to
//! `backends[j % n]`, each backend works through its share on its own thread, and the results
//! are reduced in sample order, so the answer is the one a single backend would give.

use anyhow::{Context, Result, ensure};

use crate::attribution::{Mean, SampleRef};
use crate::backend::Backend;
use crate::model::{CaptureSpec, SampleInput};

/// Which backend (of `n_backends`) handles each of `n_samples` list entries: `j % n_backends`.
pub fn assignment(n_samples: usize, n_backends: usize) -> Vec<usize> {
    (0..n_samples).map(|j| j % n_backends.max(1)).collect()
}

/// Runs `f(backend, item)` for every item on its assigned backend (one thread per backend) and
/// returns the results in item order. Errors name the backend (and whatever `f` adds).
pub fn spread_map<I: Sync, T: Send>(
    backends: &[&dyn Backend],
    items: &[I],
    f: &(dyn Fn(&dyn Backend, &I) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    ensure!(!backends.is_empty(), "no backends to spread the work over");
    let n = backends.len();
    let per_backend: Vec<Result<Vec<(usize, T)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = backends
            .iter()
            .enumerate()
            .map(|(b, backend)| {
                s.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| j % n == b)
                        .map(|(j, it)| {
                            f(*backend, it)
                                .map(|t| (j, t))
                                .with_context(|| format!("on {}", backend.describe()))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")))
            })
            .collect()
    });
    let mut slots: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
    for r in per_backend {
        for (j, t) in r? {
            slots[j] = Some(t);
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(j, t)| t.with_context(|| format!("no result for item {j}")))
        .collect()
}

/// Forwards `inputs[j]` into `dataset` on `backends[j % n]`; returns each seq_len in order.
pub fn forward_spread(
    backends: &[&dyn Backend],
    dataset: &str,
    inputs: &[SampleInput],
    capture: &CaptureSpec,
    force: bool,
) -> Result<Vec<usize>> {
    spread_map(backends, inputs, &|b, inp: &SampleInput| {
        b.forward_sample(dataset, inp, capture, force)
            .with_context(|| format!("forward of sample {} of {dataset:?}", inp.index))
    })
}

/// Map-reduce over several backends: `f(backend, sample)` for `samples[j]` runs on
/// `backends[j % n]` (the assignment [`forward_spread`] used), and the results are averaged
/// elementwise in sample order (as [`crate::attribution::mr`] does on one backend).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_assignment() {
        assert_eq!(assignment(5, 2), vec![0, 1, 0, 1, 0]);
        assert_eq!(assignment(3, 1), vec![0, 0, 0]);
        assert_eq!(assignment(2, 4), vec![0, 1]);
    }
}
