//! `minarc graph`: renders a graph-view JSON file (see [`super::graph::GraphView`]) as a
//! self-contained HTML page, optionally GQA-merged, with optional DOT and JSON exports.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

use super::GqaConfig;
use super::graph::{merge_gqa_groups, read_json, render_dot, to_json};
use super::html::{HtmlOptions, write_html};
use super::layout::minimize_crossings;

/// Arguments of `minarc graph`.
#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// Graph view JSON (nodes with id/layer/head/heads/node_type/pattern, edges with from/to/score).
    pub json: PathBuf,
    /// Output HTML file.
    #[arg(long, default_value = "graph.html")]
    pub html: PathBuf,
    /// Also write Graphviz DOT here.
    #[arg(long)]
    pub dot: Option<PathBuf>,
    /// Also write the (merged) view as JSON here.
    #[arg(long)]
    pub out_json: Option<PathBuf>,
    /// Number of query heads (num_attention_heads); with --kv-heads enables --merge-gqa / --gqa-layout.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Number of KV heads (num_key_value_heads).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Merge the attention nodes of each (layer, KV group) first (prints CONFLICT/MERGE lines).
    #[arg(long)]
    pub merge_gqa: bool,
    /// Place nodes by GQA group instead of minimising crossings.
    #[arg(long)]
    pub gqa_layout: bool,
    /// Base node radius.
    #[arg(long, default_value_t = 6.0)]
    pub node_size: f64,
    /// Page title.
    #[arg(long, default_value = "minarc attribution graph")]
    pub title: String,
}

/// Runs `minarc graph`.
pub fn run(args: &GraphArgs) -> Result<()> {
    let mut view = read_json(&args.json)?;
    let gqa = match (args.heads, args.kv_heads) {
        (Some(h), Some(k)) => Some(GqaConfig {
            num_attention_heads: h,
            num_key_value_heads: k,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--heads and --kv-heads must be given together"),
    };
    if args.merge_gqa || args.gqa_layout {
        ensure!(
            gqa.is_some(),
            "--merge-gqa and --gqa-layout need --heads and --kv-heads"
        );
    }
    if args.merge_gqa {
        let cfg = gqa.context("GQA config")?;
        let (merged, log) =
            merge_gqa_groups(&view, cfg.num_attention_heads, cfg.num_key_value_heads)?;
        print!("{log}");
        view = merged;
    }
    let opts = HtmlOptions {
        title: args.title.clone(),
        node_size: args.node_size,
        reduce_crossings: !args.gqa_layout,
        gqa,
        ..Default::default()
    };
    let path = write_html(&view, &opts, &args.html)?;
    println!("{}", path.display());
    if let Some(dot) = &args.dot {
        let layout = minimize_crossings(&view, opts.max_iterations)?;
        std::fs::write(dot, render_dot(&view, Some(&layout))?)
            .with_context(|| format!("writing {}", dot.display()))?;
    }
    if let Some(out) = &args.out_json {
        std::fs::write(out, to_json(&view)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
