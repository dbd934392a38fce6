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
        Err(p) => Err(format!("{name}(): internal error (panic): {}", panic_message(&*p)).into()),
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

/// A number option that takes an int or a float (Rhai keeps them apart; a plain `f64` field
/// would refuse `1`). Use it inside arrays (`[Num; 2]`, `Vec<Num>`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl<'de> serde::Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// `#[serde(default, deserialize_with = "args::number")]` for an `Option<f64>` option that takes
/// an int or a float.
pub fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    <Num as serde::Deserialize>::deserialize(d).map(|n| Some(n.0))
}

/// `#[serde(default, deserialize_with = "args::count")]` for an `Option<usize>` option: an int
/// ≥ 0 (a negative int or a float is an error saying so).
pub fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct C;
    impl serde::de::Visitor<'_> for C {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an int >= 0")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("must be >= 0, got {v}")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<usize, E> {
            Err(E::custom(format!("must be an int, got {v}")))
        }
    }
    d.deserialize_any(C).map(Some)
}
