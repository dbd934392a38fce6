//! Compares the clustering against SciPy goldens written by
//! `scripts/reference/scipy_cluster_goldens.py` (tests/golden/cluster_scipy.json).
//! The test fails when the golden file is missing: generate it with SciPy and commit it.

use std::path::PathBuf;

use minarc::analysis::{ClusterMethod, dendrogram_leaf_order, fcluster_distance, linkage};
use serde_json::Value;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cluster_scipy.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "missing SciPy golden {} ({e}); run `python3 scripts/reference/scipy_cluster_goldens.py` \
             on a machine with numpy + scipy and commit the file",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("golden file is not valid JSON")
}

#[test]
fn linkage_ids_and_leaves_match_scipy() {
    let g = golden();
    let cases = g["cases"].as_array().expect("cases array");
    assert!(!cases.is_empty(), "golden has no cases");
    let mut n_cuts = 0;
    for case in cases {
        let name = format!(
            "{}/{}",
            case["name"].as_str().unwrap(),
            case["method"].as_str().unwrap()
        );
        let n = case["n"].as_u64().unwrap() as usize;
        let method: ClusterMethod = case["method"].as_str().unwrap().parse().unwrap();
        let cond: Vec<f64> = case["condensed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let z = linkage(&cond, n, method).unwrap();
        let want = case["linkage"].as_array().unwrap();
        assert_eq!(z.len(), want.len(), "{name}");
        for (r, (got, w)) in z.iter().zip(want).enumerate() {
            let w = w.as_array().unwrap();
            let (a, b, h, size) = (
                w[0].as_u64().unwrap() as usize,
                w[1].as_u64().unwrap() as usize,
                w[2].as_f64().unwrap(),
                w[3].as_u64().unwrap() as usize,
            );
            assert_eq!((got.a, got.b, got.size), (a, b, size), "{name} row {r}");
            assert!(
                (got.height - h).abs() <= 1e-9 * h.abs().max(1.0),
                "{name} row {r}: {} vs {h}",
                got.height
            );
        }
        let leaves: Vec<usize> = case["leaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            dendrogram_leaf_order(&z, n).unwrap(),
            leaves,
            "{name} leaves"
        );
        for cut in case["cuts"].as_array().unwrap() {
            let t = cut["threshold"].as_f64().unwrap();
            let ids: Vec<usize> = cut["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(
                fcluster_distance(&z, n, t).unwrap(),
                ids,
                "{name} at threshold {t}"
            );
            n_cuts += 1;
        }
    }
    assert!(n_cuts > 0);
}
