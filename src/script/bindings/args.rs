//! Argument helpers of the native script functions: the error guard (errors prefixed with the
//! function name, panics caught, Ctrl-C reported as "interrupted") and int-list conversions.

use crate::script::state::panic_message;
use rhai::{Array, Dynamic, EvalAltResult, INT};

/// Result type of native script functions.
pub type RResult<T> = Result<T, Box<EvalAltResult>>;

/// Run a native function body: errors become Rhai errors prefixed with the function name,
/// and a panic is caught and reported instead of unwinding through the engine.
pub fn guard<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> RResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        // Ctrl-C seen by native work: the same error the engine raises when interrupted
        Ok(Err(e)) if e.chain().any(|c| c.is::<crate::cancel::Cancelled>()) => {
            Err(crate::script::state::interrupted_error())
        }
        Ok(Err(e)) => Err(format!("{name}(): {e:#}").into()),
        Err(p) => Err(format!("{name}(): internal error (panic): {}", panic_message(&p)).into()),
    }
}

/// Convert a script array of non-negative ints into sizes/indices.
pub fn usize_list(what: &str, arr: &Array) -> anyhow::Result<Vec<usize>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            let i = v
                .as_int()
                .map_err(|t| anyhow::anyhow!("{what}[{k}] must be an int, got {t}"))?;
            anyhow::ensure!(i >= 0, "{what}[{k}] must be >= 0, got {i}");
            Ok(i as usize)
        })
        .collect()
}

/// Convert a script array of ints (negative allowed).
pub fn int_list(what: &str, arr: &Array) -> anyhow::Result<Vec<INT>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.as_int()
                .map_err(|t| anyhow::anyhow!("{what}[{k}] must be an int, got {t}"))
        })
        .collect()
}

/// Sizes as a script array of ints.
pub fn int_array(v: &[usize]) -> Array {
    v.iter().map(|&x| Dynamic::from_int(x as INT)).collect()
}

/// An option map parsed into `T`, a `#[serde(deny_unknown_fields)]` struct with defaults (through
/// `rhai::serde`): an unknown key or a value of the wrong type is an error naming the key.
pub fn options<T: serde::de::DeserializeOwned>(map: &rhai::Map) -> anyhow::Result<T> {
    let value = Dynamic::from_map(map.clone());
    serde_path_to_error::deserialize(rhai::serde::DynamicDeserializer::new(&value)).map_err(|e| {
        let key = e.path().to_string();
        let msg = match &**e.inner() {
            EvalAltResult::ErrorParsing(p, _) => p.to_string(),
            EvalAltResult::ErrorMismatchOutputType(want, got, _) => {
                format!("must be {want}, got {got}")
            }
            other => other.to_string(),
        };
        let msg = msg
            .replace("unknown field", "unknown option")
            .replace("expected one of", "known:")
            .replace("usize", "a non-negative int")
            .replace("must be f64", "must be a number")
            .replace("alloc::string::String", "a string");
        if key.is_empty() || key == "." || msg.starts_with("unknown option") {
            anyhow::anyhow!("{msg}")
        } else {
            anyhow::anyhow!("option {key}: {msg}")
        }
    })
}

/// `#[serde(default, deserialize_with = "args::number")]` for an `Option<f64>` option that takes
/// an int or a float (Rhai keeps them apart; a plain `f64` field would refuse `1`).
pub fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct Num;
    impl serde::de::Visitor<'_> for Num {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
    }
    d.deserialize_any(Num).map(Some)
}
