//! Work spread over several backends (`forward` / `mr` over a list of models): the one place
//! that runs shares of a list on their own threads. Item `j` of a list belongs to a share (by
//! default `j % n`, round robin over n backends); each share runs in item order on its own
//! thread and stops at its first error; results come back in item order, and the error is that
//! of the lowest failing item, so the outcome is the one a single backend would give.

use anyhow::{Context, Result, ensure};

use super::Backend;
use crate::model::{CaptureSpec, SampleInput};

/// Which share (of `n_shares`) handles each of `n_items` list entries: `j % n_shares`.
pub fn assignment(n_items: usize, n_shares: usize) -> Vec<usize> {
    (0..n_items).map(|j| j % n_shares.max(1)).collect()
}

/// Groups item positions by share label, in first-seen order of the labels.
pub fn shares_of<K: PartialEq>(labels: &[K]) -> Vec<Vec<usize>> {
    let mut keys: Vec<&K> = Vec::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (j, k) in labels.iter().enumerate() {
        match keys.iter().position(|&x| x == k) {
            Some(g) => out[g].push(j),
            None => {
                keys.push(k);
                out.push(vec![j]);
            }
        }
    }
    out
}

/// Runs `f(j)` for every item position in `shares` (each share on its own thread, in order,
/// stopping at its first error). A panic inside `f(j)` becomes `on_panic(j, message)`. Returns the
/// `n_items` results in item order, or the error of the lowest failing item; `missing(j)` is the
/// error for an item no share covered.
pub fn run_shares<T: Send, E: Send>(
    n_items: usize,
    shares: &[Vec<usize>],
    f: &(dyn Fn(usize) -> Result<T, E> + Sync),
    on_panic: &(dyn Fn(usize, String) -> E + Sync),
    missing: &dyn Fn(usize) -> E,
) -> Result<Vec<T>, E> {
    let run_one = |j: usize| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(j)))
            .unwrap_or_else(|p| Err(on_panic(j, panic_message(p.as_ref()))))
    };
    let slots: Vec<(usize, Result<T, E>)> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(share.len());
                    for &j in share {
                        let r = run_one(j);
                        let failed = r.is_err();
                        out.push((j, r));
                        if failed {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(shares)
            .flat_map(|(h, share)| {
                h.join().unwrap_or_else(|p| {
                    let j = share.first().copied().unwrap_or(0);
                    vec![(j, Err(on_panic(j, panic_message(p.as_ref()))))]
                })
            })
            .collect()
    });
    let mut vals: Vec<Option<T>> = (0..n_items).map(|_| None).collect();
    let mut first_err: Option<(usize, E)> = None;
    for (j, r) in slots {
        match r {
            Ok(v) if j < n_items => vals[j] = Some(v),
            Ok(_) => {}
            Err(e) if first_err.as_ref().is_none_or(|(k, _)| j < *k) => first_err = Some((j, e)),
            Err(_) => {}
        }
    }
    if let Some((_, e)) = first_err {
        return Err(e);
    }
    vals.into_iter()
        .enumerate()
        .map(|(j, v)| v.ok_or_else(|| missing(j)))
        .collect()
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f(backend, item)` for every item on `backends[j % n]` (one thread per backend) and
/// returns the results in item order. Errors name the backend (and whatever `f` adds).
pub fn spread_map<I: Sync, T: Send>(
    backends: &[&dyn Backend],
    items: &[I],
    f: &(dyn Fn(&dyn Backend, &I) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    ensure!(!backends.is_empty(), "no backends to spread the work over");
    let n = backends.len();
    let shares = shares_of(&assignment(items.len(), n));
    run_shares(
        items.len(),
        &shares,
        &|j| {
            let b = backends[j % n];
            f(b, &items[j]).with_context(|| format!("on {}", b.describe()))
        },
        &|j, msg| {
            let b = backends[j % n];
            anyhow::anyhow!("on {}: internal error (panic): {msg}", b.describe())
        },
        &|j| anyhow::anyhow!("no result for item {j}"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_assignment() {
        assert_eq!(assignment(5, 2), vec![0, 1, 0, 1, 0]);
        assert_eq!(assignment(3, 1), vec![0, 0, 0]);
        assert_eq!(assignment(2, 4), vec![0, 1]);
        assert_eq!(
            shares_of(&assignment(5, 2)),
            vec![vec![0, 2, 4], vec![1, 3]]
        );
    }

    #[test]
    fn results_in_item_order_and_lowest_error_wins() {
        let shares = vec![vec![0, 2, 4], vec![1, 3]];
        let sq = |j: usize| -> Result<usize, String> { Ok(j * j) };
        let ok = run_shares(5, &shares, &sq, &|_, m| m, &|j| format!("missing {j}")).unwrap();
        assert_eq!(ok, vec![0, 1, 4, 9, 16]);
        let bad = |j: usize| -> Result<usize, String> {
            if j == 4 {
                panic!("boom {j}");
            }
            if j == 3 {
                Err(format!("item {j}"))
            } else {
                Ok(j)
            }
        };
        let e = run_shares(5, &shares, &bad, &|_, m| m, &|j| format!("missing {j}")).unwrap_err();
        assert_eq!(e, "item 3");
        let only4 =
            |j: usize| -> Result<usize, String> { if j == 4 { panic!("boom") } else { Ok(j) } };
        let panicked = |j: usize, m: String| format!("{j}: {m}");
        let e = run_shares(5, &shares, &only4, &panicked, &|j| format!("missing {j}")).unwrap_err();
        assert_eq!(e, "4: boom");
        let e = run_shares(3, &[vec![0, 1]], &sq, &|_, m| m, &|j| {
            format!("missing {j}")
        })
        .unwrap_err();
        assert_eq!(e, "missing 2");
    }
}
