//! Many concurrent clients, and the activation cache under a tiny byte budget.

mod remote_support;

use candle_core::Tensor;
use minarc::backend::{Backend, HeadSel, Local, SampleKey};
use minarc::model::CaptureSpec;
use minarc::remote::wire::Getter;
use minarc::remote::{Remote, ServeOptions};
use remote_support::*;

/// Expected tensors of (sample, call) for the request mix, computed in-process.
fn request_mix(b: &dyn Backend, ds: &str, i: usize, r: usize) -> Tensor {
    let key = SampleKey::new(ds, i);
    let l = r % L;
    match r % 5 {
        0 => b.hidden_states(&key, r % (L + 1), None),
        1 => b.attn_weights(&key, l, &HeadSel::One(r % H), Some(&[1, 2])),
        2 => b.head_output(&key, l, &HeadSel::All, None),
        3 => b.mlp_output(&key, l, Some(&[0])),
        _ => b.logits(&key, None),
    }
    .unwrap()
}

fn check_mix(remote: &Remote, local: &Local, ds: &str, rounds: usize, salt: usize) -> usize {
    let mut n = 0;
    for r in 0..rounds {
        let i = (r + salt) % 3;
        let got = request_mix(remote, ds, i, r + salt);
        let want = request_mix(local, ds, i, r + salt);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "{ds}/{i} request {r}: differs by {d}");
        n += 1;
    }
    n
}

#[test]
fn eight_concurrent_clients_get_exact_answers() {
    let srv = server(opts());
    let url = srv.url();
    let local = local();
    forward_all(&local, "c", &[0, 1, 2]);
    forward_all(&Remote::connect(&url, None).unwrap(), "c", &[0, 1, 2]);
    let total: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (url, local) = (&url, &local);
                s.spawn(move || {
                    let remote = Remote::connect(url, None).unwrap();
                    let mut n = check_mix(&remote, local, "c", 30, t);
                    // Heavy work from every client at once: forwards into own datasets.
                    let ds = format!("t{t}");
                    let p = PROMPTS[t % PROMPTS.len()];
                    let s = remote
                        .forward_sample(&ds, &input(t, p), &CaptureSpec::full(), false)
                        .unwrap();
                    assert_eq!(s, local.encode(p).unwrap().len());
                    let h = remote
                        .hidden_states(&SampleKey::new(&ds, t), 1, None)
                        .unwrap();
                    let want = local.hidden_states(&SampleKey::new("c", 0), 1, None);
                    if t % PROMPTS.len() == 0 {
                        assert!(max_abs_diff(&h, &want.unwrap()) <= 1e-6);
                    }
                    remote.status().unwrap();
                    n += 3;
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(total, 8 * 33);
    let remote = Remote::connect(&url, None).unwrap();
    let names: Vec<String> = remote
        .datasets()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 9, "{names:?}");
}

fn sample_bytes(local: &Local, ds: &str, i: usize) -> usize {
    local
        .sample(&SampleKey::new(ds, i))
        .unwrap()
        .outputs
        .bytes()
}

#[test]
fn tiny_cache_budget_evicts_lru_samples_and_recomputes_them_exactly() {
    let local = local();
    forward_all(&local, "e", &[0, 1, 2]);
    let sizes: Vec<usize> = (0..3).map(|i| sample_bytes(&local, "e", i)).collect();
    let biggest = *sizes.iter().max().unwrap();
    // Room for one sample plus a bit: never two of them.
    let budget = biggest + sizes.iter().min().unwrap() / 2;
    let srv = server(ServeOptions {
        cache_bytes: Some(budget),
        ..opts()
    });
    let remote = Remote::connect(&srv.url(), None).unwrap();
    for i in 0..3 {
        forward_all(&remote, "e", &[i]);
        let c = remote.status().unwrap().cache;
        assert!(c.resident_bytes <= budget, "{c:?}");
        assert_eq!(c.budget, Some(budget));
    }
    let c = remote.status().unwrap().cache;
    assert_eq!(
        (c.resident_samples, c.evicted_samples, c.evictions),
        (1, 2, 2)
    );
    assert_eq!(c.resident_bytes, sizes[2]);
    // Every sample is still listed; evicted ones are marked so and recomputed on demand.
    assert_eq!(
        remote.datasets().unwrap(),
        vec![("e".to_string(), vec![0, 1, 2])]
    );
    let info = remote.sample_info(&SampleKey::new("e", 0)).unwrap();
    assert!(!info.resident);
    assert_eq!(
        info.seq_len,
        local.seq_len(&SampleKey::new("e", 0)).unwrap()
    );
    for i in [0, 1, 2, 0] {
        let key = SampleKey::new("e", i);
        for l in 0..=L {
            let d = max_abs_diff(
                &remote.hidden_states(&key, l, None).unwrap(),
                &local.hidden_states(&key, l, None).unwrap(),
            );
            assert_eq!(d, 0.0, "sample {i} layer {l}");
        }
        assert!(remote.sample_info(&key).unwrap().resident);
        assert!(remote.status().unwrap().cache.resident_bytes <= budget);
    }
    // Averages over a dataset with evicted samples recompute them too.
    let mean = remote
        .get(
            Getter::HiddenStates,
            "e",
            None,
            1,
            &HeadSel::All,
            Some(&[0, 1]),
        )
        .unwrap();
    let mut sum = local
        .hidden_states(&SampleKey::new("e", 0), 1, Some(&[0, 1]))
        .unwrap();
    for i in 1..3 {
        sum = (sum
            + local
                .hidden_states(&SampleKey::new("e", i), 1, Some(&[0, 1]))
                .unwrap())
        .unwrap();
    }
    assert!(max_abs_diff(&mean, &(sum / 3.0).unwrap()) <= 1e-6);
    // Concurrent readers of evicted samples: recomputation is serialised, answers exact.
    std::thread::scope(|s| {
        for t in 0..8 {
            let (url, local) = (srv.url(), &local);
            s.spawn(move || {
                let remote = Remote::connect(&url, None).unwrap();
                check_mix(&remote, local, "e", 12, t);
            });
        }
    });
    assert!(remote.status().unwrap().cache.resident_bytes <= budget);
    // Deleting the dataset forgets its evicted samples too.
    remote.drop_dataset("e").unwrap();
    let c = remote.status().unwrap().cache;
    assert_eq!(
        (c.resident_samples, c.evicted_samples, c.resident_bytes),
        (0, 0, 0)
    );
}

#[test]
fn a_sample_larger_than_the_whole_budget_is_refused_clearly() {
    let local = local();
    forward_all(&local, "x", &[0]);
    let need = sample_bytes(&local, "x", 0);
    let srv = server(ServeOptions {
        cache_bytes: Some(need - 1),
        ..opts()
    });
    let remote = Remote::connect(&srv.url(), None).unwrap();
    let err = remote
        .forward_sample("x", &input(0, PROMPTS[0]), &CaptureSpec::full(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{need} bytes")) && err.contains("budget") && err.contains("422"),
        "{err}"
    );
    assert!(!remote.has_sample(&SampleKey::new("x", 0)).unwrap());
    // Capturing less fits.
    let spec = CaptureSpec {
        positions: Some(vec![0, 1]),
        ..CaptureSpec::full()
    };
    remote
        .forward_sample("x", &input(0, PROMPTS[0]), &spec, false)
        .unwrap();
    let h = remote
        .hidden_states(&SampleKey::new("x", 0), 1, Some(&[1]))
        .unwrap();
    let w = local
        .hidden_states(&SampleKey::new("x", 0), 1, Some(&[1]))
        .unwrap();
    assert!(max_abs_diff(&h, &w) <= 1e-6);
}

#[test]
fn map_reduce_spreads_a_dataset_over_two_servers() {
    use minarc::attribution::{MrOptions, SampleRef, mr, mr_spread};
    use minarc::backend::spread::forward_spread;
    let (s1, s2) = (server(opts()), server(opts()));
    let r1 = Remote::connect(&s1.url(), None).unwrap();
    let r2 = Remote::connect(&s2.url(), None).unwrap();
    let backends: [&dyn Backend; 2] = [&r1, &r2];
    let inputs: Vec<_> = (0..4).map(|i| input(i, PROMPTS[i])).collect();
    let lens = forward_spread(&backends, "s", &inputs, &CaptureSpec::full(), false).unwrap();
    let local = local();
    for (i, p) in PROMPTS.iter().enumerate() {
        assert_eq!(lens[i], local.encode(p).unwrap().len());
    }
    // Each sample went to exactly one server.
    assert_eq!(r1.datasets().unwrap(), vec![("s".to_string(), vec![0, 2])]);
    assert_eq!(r2.datasets().unwrap(), vec![("s".to_string(), vec![1, 3])]);
    forward_all(&local, "s", &[0, 1, 2, 3]);
    let samples: Vec<SampleRef> = (0..4)
        .map(|i| SampleRef::new(SampleKey::new("s", i), None))
        .collect();
    let f = |b: &dyn Backend, r: &SampleRef| b.hidden_states(&r.key, 1, Some(&[0, 1]));
    let spread = mr_spread(&backends, &samples, f).unwrap();
    let single = mr(&samples, &MrOptions::default(), |r| f(&local, r)).unwrap();
    assert!(max_abs_diff(&spread, &single) <= 1e-6);
    // An error names the sample and the server.
    let bad = [SampleRef::new(SampleKey::new("s", 9), None)];
    let err = format!("{:#}", mr_spread(&backends, &bad, f).unwrap_err());
    assert!(err.contains("sample 9") && err.contains(&s1.url()), "{err}");
}
