//! Datasets as JSON Lines: one [`Sample`] per line, prompt included.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::Sample;

/// Writes samples to `path`, one JSON object per line.
pub fn write_jsonl(path: &Path, samples: &[Sample]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    for s in samples {
        serde_json::to_writer(&mut w, s)
            .with_context(|| format!("writing sample {} to {}", s.index, path.display()))?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads samples from a JSONL file (blank lines are skipped); errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Sample>> {
    let meta = std::fs::metadata(path).with_context(|| format!("opening {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    crate::limits::check_alloc(
        meta.len() as u128 * 4,
        &format!("reading {}", path.display()),
    )?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {} line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let s: Sample = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a valid sample", path.display(), i + 1))?;
        out.push(s);
    }
    Ok(out)
}
