//! Renders sample figures into a directory (default /tmp/vis-look) for visual inspection.
//! Usage: cargo run --example vis_look [-- OUT_DIR]

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use minarc::analysis::{ClusterMethod, DistanceKind, DistanceMatrix, cluster_distance_matrix};
use minarc::vis::GqaConfig;
use minarc::vis::plots::{
    DendrogramOptions, plot_attention, plot_clustering, plot_group_patterns, plot_logit_lens,
};
use rand::{Rng, SeedableRng};

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/vis-look".into()),
    );
    std::fs::create_dir_all(&out)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // 22 heads in three families of attention patterns over 40 keys, 8 query rows, 5 samples.
    let keys: Vec<(usize, usize)> = vec![
        (79, 10),
        (77, 54),
        (76, 35),
        (78, 61),
        (74, 35),
        (73, 1),
        (64, 12),
        (63, 61),
        (79, 11),
        (76, 33),
        (63, 62),
        (62, 45),
        (72, 8),
        (65, 42),
        (74, 21),
        (78, 60),
        (77, 50),
        (62, 40),
        (64, 14),
        (73, 3),
        (75, 9),
        (71, 20),
    ];
    let (n_s, n_q, s) = (5usize, 8usize, 40usize);
    let mut aw = Vec::new();
    for (idx, k) in keys.iter().enumerate() {
        let family = idx % 3;
        let mut v = vec![0f32; n_s * n_q * s];
        for smp in 0..n_s {
            for q in 0..n_q {
                let row = &mut v[(smp * n_q + q) * s..(smp * n_q + q + 1) * s];
                for (j, x) in row.iter_mut().enumerate() {
                    *x = rng.random::<f32>() * 0.3;
                    let target = match family {
                        0 => 30 + q,
                        1 => 5 + 2 * q,
                        _ => 0,
                    };
                    if j == target {
                        *x += 6.0 + (k.1 % 3) as f32;
                    }
                }
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= sum);
            }
        }
        aw.push((*k, Tensor::from_vec(v, (n_s, n_q, s), &Device::Cpu)?));
    }
    let c = minarc::analysis::cluster_heads(
        &aw,
        &minarc::analysis::ClusterOptions {
            threshold: Some(0.3),
            ..Default::default()
        },
    )?;
    print!(
        "{}",
        minarc::analysis::cluster_summary(&c.groups, Some(&c.metrics), None)?
    );
    let strengths: Vec<f64> = (0..keys.len()).map(|i| 0.12 / (1.0 + i as f64)).collect();
    let opts = DendrogramOptions {
        strengths: Some(strengths),
        gqa: Some(GqaConfig {
            num_attention_heads: 64,
            num_key_value_heads: 8,
        }),
        ..Default::default()
    };
    plot_clustering(&c, &out.join("dendrogram.png"), &opts)?;
    plot_clustering(&c, &out.join("dendrogram.svg"), &opts)?;
    plot_group_patterns(&c.groups, &aw, 150, &out.join("groups.png"), 100.0)?;
    let lens: Vec<[f64; 3]> = (0..24)
        .map(|l| {
            [
                l as f64 / 30.0,
                (l as f64 / 26.0).min(1.0),
                (l as f64 / 24.0).powf(0.5),
            ]
        })
        .collect();
    plot_logit_lens(&lens, 0, "Accuracy", &out.join("lens.png"), 150.0)?;
    let toks: Vec<String> = "<|im_start|> user \n ( 3 , 3 ): B ( 3 , 4 ): R \n Answer : B"
        .split(' ')
        .map(String::from)
        .collect();
    let rows: Vec<Vec<f32>> = (0..3)
        .map(|r| {
            (0..toks.len())
                .map(|t| {
                    if t == 5 + r {
                        0.7
                    } else {
                        0.3 / toks.len() as f32
                    }
                })
                .collect()
        })
        .collect();
    plot_attention(
        &toks,
        &rows,
        &["act".into(), "B ✓".into(), "R ✗".into()],
        "Head 58-3",
        &out.join("attn.png"),
    )?;
    // all-zero distances (defect 11) must still render
    let z = DistanceMatrix::from_full(
        vec![(1, 0), (1, 1), (2, 0)],
        vec![0.0; 9],
        DistanceKind::JensenShannon,
    )?;
    plot_clustering(
        &cluster_distance_matrix(z, None, ClusterMethod::Average)?,
        &out.join("zeros.png"),
        &DendrogramOptions::default(),
    )?;
    graph_look(&out)?;
    let toks: Vec<String> = "<|im_start|>user\n ( 3 , 3 ): B ( 3 , 4 ): R\n Answer : B"
        .split(' ')
        .map(String::from)
        .collect();
    let rows: Vec<Vec<f32>> = (0..3)
        .map(|r| {
            (0..toks.len())
                .map(|t| {
                    if t == 4 + 2 * r {
                        0.8
                    } else {
                        0.05 * (t % 3) as f32 - 0.04
                    }
                })
                .collect()
        })
        .collect();
    let labels: Vec<String> = vec!["act".into(), "q->".into(), "B ✓".into()];
    minarc::vis::tokens::write_tokens_html(
        &out.join("tokens.html"),
        &toks,
        &rows,
        &labels,
        "show_attn 58-3",
    )?;
    print!(
        "{}",
        minarc::vis::tokens::render_tokens_ansi(&toks, &rows, &labels)?
    );
    println!("wrote figures to {}", out.display());
    Ok(())
}

/// A graph shaped like the notebook's (V17): layers 61–80, GQA groups of 8 heads.
fn graph_look(out: &std::path::Path) -> Result<()> {
    use minarc::vis::graph::{
        GraphView, ViewEdge, ViewNode, merge_gqa_groups, render_dot, to_json,
    };
    use minarc::vis::html::{HtmlOptions, write_html};
    let lm = ViewNode::new(80, None, "lm_head", Some("A-->A-"));
    let spec: Vec<(usize, usize, &str, &str)> = vec![
        (79, 10, "attn_v", "A-->A-"),
        (79, 11, "attn_v", "A-->A-"),
        (78, 61, "attn_v", "A-->A-"),
        (76, 35, "attn_v", "A-->A-"),
        (74, 35, "attn_v", "A-->A-"),
        (78, 60, "attn_q", "A-->V"),
        (74, 21, "attn_v", "A-->QV"),
        (73, 1, "attn_q", "A-->V"),
        (72, 8, "attn_k", "A-->K"),
        (65, 42, "attn_v", "X->A-"),
        (64, 12, "attn_q", "A-->V"),
        (63, 61, "attn_q", "V->A-"),
        (63, 62, "attn_q", "V->A-"),
        (62, 45, "attn_q", "V->A-"),
        (62, 40, "attn_v", "X->A-"),
        (61, 7, "attn_qns", "A-->X"),
    ];
    let mut nodes = vec![lm.clone()];
    for (l, h, t, p) in &spec {
        nodes.push(ViewNode::new(*l, Some(*h), t, Some(p)));
    }
    nodes.push(ViewNode::new(77, Some(64), "mlp", None));
    nodes.push(ViewNode::new(70, Some(64), "mlp_g", None));
    let mut edges = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (i, a) in nodes.iter().enumerate() {
        for b in nodes.iter().skip(i + 1).chain(std::iter::once(&nodes[0])) {
            let (lo, hi) = if a.layer < b.layer { (a, b) } else { continue };
            if hi.is_lm_head() && lo.layer >= 74 || rng.random::<f32>() < 0.4 {
                let s = if hi.is_lm_head() {
                    0.02 + 0.1 * rng.random::<f32>()
                } else {
                    0.0135 * rng.random::<f32>() - 0.002
                };
                edges.push(ViewEdge {
                    from: lo.id.clone(),
                    to: hi.id.clone(),
                    score: s,
                });
            }
        }
    }
    let g = GraphView { nodes, edges };
    let (merged, log) = merge_gqa_groups(&g, 64, 8)?;
    print!("{log}");
    let p = write_html(
        &merged,
        &HtmlOptions {
            title: "GQA-merged attribution graph".into(),
            ..Default::default()
        },
        &out.join("graph.html"),
    )?;
    std::fs::write(out.join("graph.dot"), render_dot(&merged, None)?)?;
    std::fs::write(out.join("graph.json"), to_json(&merged)?)?;
    println!(
        "graph: {} nodes, {} edges -> {}",
        merged.nodes.len(),
        merged.edges.len(),
        p.display()
    );
    Ok(())
}
