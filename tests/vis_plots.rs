//! Every plot function writes a valid PNG or SVG of the expected size.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use minarc::analysis::{ClusterMethod, DistanceKind, DistanceMatrix, cluster_distance_matrix};
use minarc::vis::GqaConfig;
use minarc::vis::plots::{
    DendrogramOptions, gqa_colors, plot_attention, plot_clustering, plot_group_patterns,
    plot_logit_lens,
};
use minarc::vis::tokens::write_tokens_html;

/// Width and height from a PNG's IHDR chunk, after checking the signature and the IEND trailer.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND");
    (
        u32::from_be_bytes(b[16..20].try_into().unwrap()),
        u32::from_be_bytes(b[20..24].try_into().unwrap()),
    )
}

fn svg_size(path: &Path) -> (u32, u32) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(
        s.trim_start().starts_with("<svg") && s.trim_end().ends_with("</svg>"),
        "{} is not an SVG",
        path.display()
    );
    let attr = |name: &str| -> u32 {
        let i = s.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        s[i..].split('"').next().unwrap().parse().unwrap()
    };
    (attr("width"), attr("height"))
}

fn clustering() -> minarc::analysis::Clustering {
    let n = 6;
    let keys = vec![(79, 10), (79, 11), (63, 61), (63, 62), (74, 21), (40, 64)];
    let pos = [0.0, 0.05, 0.4, 0.42, 0.25, 0.6];
    let v: Vec<f64> = (0..n * n)
        .map(|k| f64::abs(pos[k / n] - pos[k % n]))
        .collect();
    let d = DistanceMatrix::from_full(keys, v, DistanceKind::JensenShannon).unwrap();
    cluster_distance_matrix(d, Some(0.1), ClusterMethod::Average).unwrap()
}

#[test]
fn clustering_figure_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let c = clustering();
    let opts = DendrogramOptions {
        strengths: Some(vec![0.12, 0.05, 0.03, -0.02, 0.01, 0.004]),
        gqa: Some(GqaConfig {
            num_attention_heads: 64,
            num_key_value_heads: 8,
        }),
        ..Default::default()
    };
    plot_clustering(&c, &dir.path().join("d.png"), &opts).unwrap();
    assert_eq!(png_size(&dir.path().join("d.png")), (1800, 450));
    plot_clustering(&c, &dir.path().join("d.svg"), &opts).unwrap();
    assert_eq!(svg_size(&dir.path().join("d.svg")), (1800, 450));
    let small = DendrogramOptions {
        figsize: (6.0, 2.0),
        dpi: 100.0,
        ..Default::default()
    };
    plot_clustering(&c, &dir.path().join("s.png"), &small).unwrap();
    assert_eq!(png_size(&dir.path().join("s.png")), (600, 200));
    assert!(plot_clustering(&c, &dir.path().join("d.jpg"), &opts).is_err());
    let bad = DendrogramOptions {
        strengths: Some(vec![1.0]),
        ..Default::default()
    };
    assert!(plot_clustering(&c, &dir.path().join("b.png"), &bad).is_err());
}

#[test]
fn all_zero_distances_still_plot() {
    // defect 11: the heatmap's vmax must not fail when every distance is 0
    let dir = tempfile::tempdir().unwrap();
    let d = DistanceMatrix::from_full(
        vec![(1, 0), (1, 1), (2, 0)],
        vec![0.0; 9],
        DistanceKind::JensenShannon,
    )
    .unwrap();
    let c = cluster_distance_matrix(d, None, ClusterMethod::Average).unwrap();
    plot_clustering(&c, &dir.path().join("z.png"), &DendrogramOptions::default()).unwrap();
    assert_eq!(png_size(&dir.path().join("z.png")), (1800, 450));
}

#[test]
fn gqa_colours_only_for_shared_groups() {
    let cfg = GqaConfig {
        num_attention_heads: 64,
        num_key_value_heads: 8,
    };
    // (79,10) and (79,11) share group 1; (63,61),(63,62) share group 7; (74,21) alone; (40,64) is the MLP.
    let keys = [
        (79, 10),
        (79, 11),
        (63, 61),
        (63, 62),
        (74, 21),
        (40, 64),
        (79, 17),
    ];
    let c = gqa_colors(&keys, &cfg).unwrap();
    assert!(c[0].is_some() && c[0] == c[1]);
    assert!(c[2].is_some() && c[2] == c[3] && c[2] != c[0]);
    assert_eq!((c[4], c[5], c[6]), (None, None, None));
    assert!(
        gqa_colors(
            &keys,
            &GqaConfig {
                num_attention_heads: 64,
                num_key_value_heads: 7
            }
        )
        .is_err()
    );
}

#[test]
fn group_patterns_lens_and_attention() {
    let dir = tempfile::tempdir().unwrap();
    let aw: Vec<((usize, usize), Tensor)> = [(79, 10), (79, 11), (63, 61)]
        .iter()
        .map(|k| {
            (
                *k,
                Tensor::ones((2, 4, 30), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let mut groups = BTreeMap::new();
    groups.insert(1, vec![(79, 10), (79, 11)]);
    groups.insert(2, vec![(63, 61)]);
    plot_group_patterns(&groups, &aw, 20, &dir.path().join("g.png"), 100.0).unwrap();
    assert_eq!(png_size(&dir.path().join("g.png")), (1000, 400)); // 5n × 4 inches
    plot_group_patterns(&groups, &aw, 20, &dir.path().join("g.svg"), 100.0).unwrap();
    assert_eq!(svg_size(&dir.path().join("g.svg")), (1000, 400));
    groups.insert(3, vec![(1, 1)]);
    assert!(plot_group_patterns(&groups, &aw, 20, &dir.path().join("x.png"), 100.0).is_err());

    let lens = vec![[0.1, 0.2, 0.3], [0.2, -0.5, 0.7]];
    plot_logit_lens(&lens, 10, "Accuracy", &dir.path().join("l.png"), 150.0).unwrap();
    assert_eq!(png_size(&dir.path().join("l.png")), (1800, 450));
    plot_logit_lens(&lens, 10, "Accuracy", &dir.path().join("l.svg"), 100.0).unwrap();
    assert_eq!(svg_size(&dir.path().join("l.svg")), (1200, 300));
    assert!(plot_logit_lens(&[], 0, "x", &dir.path().join("e.png"), 150.0).is_err());

    let toks: Vec<String> = ["a", "b", "\n", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows = vec![vec![0.1, 0.2, 0.3, 0.4], vec![0.0, 1.0, 0.0, 0.0]];
    let labels = vec!["act".to_string(), "B ✓".to_string()];
    plot_attention(&toks, &rows, &labels, "58-3", &dir.path().join("a.png")).unwrap();
    let (w, h) = png_size(&dir.path().join("a.png"));
    assert_eq!(w, 800); // minimum width for few tokens
    assert!(h >= 240);
    plot_attention(&toks, &rows, &labels, "58-3", &dir.path().join("a.svg")).unwrap();
    assert_eq!(svg_size(&dir.path().join("a.svg")), (w, h));
    assert!(plot_attention(&toks, &rows[..1], &labels, "x", &dir.path().join("b.png")).is_err());

    write_tokens_html(&dir.path().join("t.html"), &toks, &rows, &labels, "58-3").unwrap();
    let html = std::fs::read_to_string(dir.path().join("t.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
}
