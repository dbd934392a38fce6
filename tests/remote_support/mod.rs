//! Shared helpers of the remote tests: the `tiny` fixture model folder written once per test
//! binary, a local backend on it, and a server on an ephemeral loopback port.
#![allow(dead_code)]

use std::path::Path;

use candle_core::{DType, Device};
use minarc::backend::{Backend, Local};
use minarc::model::{CaptureSpec, SampleInput};
use minarc::remote::{RunningServer, ServeOptions};

#[path = "../common/mod.rs"]
mod common;

#[allow(unused_imports)] // not every test binary reads them
pub use common::{TINY_H as H, TINY_L as L};

/// The fixture model folder (written once per test binary).
pub fn model_dir() -> &'static Path {
    common::tiny_model_dir()
}

/// A fresh local backend on the fixture model.
pub fn local() -> Local {
    Local::load(model_dir(), DType::F32, &Device::Cpu).unwrap()
}

/// Server options for tests: ephemeral loopback port.
pub fn opts() -> ServeOptions {
    ServeOptions {
        port: 0,
        ..ServeOptions::default()
    }
}

/// A server on 127.0.0.1:0 with its own backend on the fixture model.
pub fn server(opts: ServeOptions) -> RunningServer {
    RunningServer::start(local(), opts).unwrap()
}

/// Distinct prompts (different lengths and content).
pub const PROMPTS: [&str; 4] = [
    "What is the color of the cell (1,2)? Answer: B",
    "A grid is represented as a dict of cells; the answer is R",
    "Infer this positional relation function. Answer: G",
    "pack my box with five dozen liquor jugs",
];

/// A sample with no labels.
pub fn input(index: usize, prompt: &str) -> SampleInput {
    SampleInput {
        index,
        prompt: prompt.to_string(),
        ..Default::default()
    }
}

/// Forwards `PROMPTS[i]` as sample i of `dataset` for every i in `indices`.
pub fn forward_all(b: &dyn Backend, dataset: &str, indices: &[usize]) {
    for &i in indices {
        b.forward_sample(dataset, &input(i, PROMPTS[i]), &CaptureSpec::full(), false)
            .unwrap();
    }
}

#[allow(unused_imports)] // not every test binary reads them
pub use common::{f64_rows, f64_vec, max_abs_diff};

/// Raw HTTP request (status, body) without the client's error handling.
pub fn raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(url).header("Content-Type", content_type);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body)
        }
    };
    let mut resp = resp.unwrap();
    let code = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    (code, bytes)
}
