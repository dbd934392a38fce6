//! Tensor files: safetensors (and JSON for reading by other tools).

use super::args::guard;
use crate::attribution::export::{load_safetensors, save_safetensors, save_tensors_json};
use crate::script::docs::Registrar;
use crate::script::tensor::Tensor;
use anyhow::{Context, Result, anyhow, bail};
use rhai::{Dynamic, Map};
use std::path::Path;

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Writes named tensors: `.json` as `{name: {shape, data}}`, anything else as safetensors.
fn save(named: &[(String, Tensor)], path: &str) -> Result<()> {
    let p = Path::new(path);
    create_parent(p)?;
    let refs: Vec<(&str, &candle_core::Tensor)> =
        named.iter().map(|(n, t)| (n.as_str(), &t.0)).collect();
    if p.extension().and_then(|e| e.to_str()) == Some("json") {
        save_tensors_json(&refs, p)
    } else {
        save_safetensors(&refs, p)
    }
}

fn map_tensors(m: &Map) -> Result<Vec<(String, Tensor)>> {
    anyhow::ensure!(!m.is_empty(), "no tensors to save");
    m.iter()
        .map(|(k, v)| {
            let t = v
                .read_lock::<Tensor>()
                .map(|t| t.clone())
                .ok_or_else(|| anyhow!("{k} is a {}, expected a Tensor", v.type_name()))?;
            Ok((k.to_string(), t))
        })
        .collect()
}

fn load_one(path: &str, name: Option<&str>) -> Result<Tensor> {
    let mut all = load_safetensors(Path::new(path))?;
    let mut names: Vec<String> = all.keys().cloned().collect();
    names.sort();
    let key = match name {
        Some(n) => n.to_string(),
        None if all.len() == 1 => names[0].clone(),
        None => bail!(
            "{path} holds {} tensors ({}); name one or use load_tensors",
            all.len(),
            names.join(", ")
        ),
    };
    all.remove(&key)
        .map(Tensor)
        .ok_or_else(|| anyhow!("{path} has no tensor {key:?} (it has {})", names.join(", ")))
}

/// Register tensor files (domain "tensor").
pub fn register(r: &mut Registrar) {
    r.func(
        "save_tensor",
        "save_tensor(t: Tensor, path: String)",
        "Write one tensor (as f32, named \"tensor\") to a safetensors file (.json: {tensor: {shape, data}}).",
        |t: Tensor, path: &str| guard("save_tensor", || save(&[("tensor".to_string(), t)], path)),
    )
    .func(
        "save_tensors",
        "save_tensors(tensors: Map, path: String)",
        "Write named tensors #{name: Tensor, ...} to a safetensors file (.json: JSON).",
        |m: Map, path: &str| guard("save_tensors", || save(&map_tensors(&m)?, path)),
    )
    .func(
        "load_tensor",
        "load_tensor(path: String) -> Tensor",
        "Read the only tensor of a safetensors file (any float dtype, returned as stored).",
        |path: &str| guard("load_tensor", || load_one(path, None)),
    )
    .func(
        "load_tensor",
        "load_tensor(path: String, name: String) -> Tensor",
        "Read one named tensor of a safetensors file.",
        |path: &str, name: &str| guard("load_tensor", || load_one(path, Some(name))),
    )
    .func(
        "load_tensors",
        "load_tensors(path: String) -> Map",
        "Read every tensor of a safetensors file as #{name: Tensor}.",
        |path: &str| {
            guard("load_tensors", || {
                let all = load_safetensors(Path::new(path))?;
                Ok(all
                    .into_iter()
                    .map(|(k, t)| (k.into(), Dynamic::from(Tensor(t))))
                    .collect::<Map>())
            })
        },
    );
}
