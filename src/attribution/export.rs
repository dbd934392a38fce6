//! Export: attribution tensors to safetensors and JSON, the graph to JSON.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::graph::Graph;
use crate::ig::wire::WireTensor;

/// Saves named tensors (as f32) to a safetensors file.
pub fn save_safetensors(tensors: &[(&str, &Tensor)], path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.to_string(),
                t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
            ))
        })
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&map, path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Loads every tensor of a safetensors file.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    // the whole file is read: refuse devices, pipes and files larger than the free memory
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    crate::limits::check_alloc(meta.len() as u128, &format!("reading {}", path.display()))?;
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))
}

/// A tensor as JSON `{"shape": [...], "data": [...]}`.
pub fn tensor_to_json(t: &Tensor) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(WireTensor::from_tensor(t)?)?)
}

/// Writes named tensors as one JSON object `{name: {shape, data}}`.
pub fn save_tensors_json(tensors: &[(&str, &Tensor)], path: &Path) -> Result<()> {
    let mut m = serde_json::Map::new();
    for (n, t) in tensors {
        m.insert(n.to_string(), tensor_to_json(t)?);
    }
    std::fs::write(path, serde_json::to_string(&m)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The graph (nodes with patterns and spans, edges with scores) as JSON.
pub fn graph_to_json(g: &Graph) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(g.to_view())?)
}

/// Writes [`graph_to_json`] to a file (pretty-printed).
pub fn save_graph_json(g: &Graph, path: &Path) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(&graph_to_json(g)?)?)
        .with_context(|| format!("writing {}", path.display()))
}
