//! Resource limits. Every size, count, resolution or length that comes from a user, a file or a
//! request is checked against one of these *before* it is allocated or looped over, so bad
//! input is a clear error instead of an abort, an OOM kill or a lock held for minutes.
//!
//! Each [`Limit`] has a documented default and an environment variable that changes it
//! (docs/src/safety.md lists them all). Allocations are also checked against the
//! memory the machine has available right now ([`check_alloc`]).

use std::fmt;

/// A bounded quantity: its name, default and the environment variable that overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What is bounded, for error messages ("IG resolution (steps or n)").
    pub what: &'static str,
    /// Environment variable that sets another value (a positive integer).
    pub env: &'static str,
    /// The value when the variable is unset or unparsable.
    pub default: usize,
}

/// Integrated-gradient resolution: Seed `steps`, Gauss–Legendre / midpoint `n`, and the
/// adaptive mode's `max_resolution`.
pub const IG_RESOLUTION: Limit = Limit {
    what: "IG resolution (steps or n)",
    env: "MINARC_MAX_IG_RESOLUTION",
    default: 1024,
};

/// Elements of one tensor built or computed by a script (zeros, ones, arange, broadcasting
/// arithmetic, stack, cat, matmul, einsum intermediates, …): 2^28 f32 = 1 GiB.
pub const TENSOR_ELEMS: Limit = Limit {
    what: "tensor elements",
    env: "MINARC_MAX_TENSOR_ELEMS",
    default: 1 << 28,
};

/// Bytes of prompt text per position of the model's `max_position_embeddings`: a prompt
/// longer than `max_position_embeddings × this` cannot fit the model and is refused before it
/// is tokenized.
pub const PROMPT_BYTES_PER_POSITION: Limit = Limit {
    what: "prompt bytes per model position",
    env: "MINARC_PROMPT_BYTES_PER_POSITION",
    default: 64,
};

/// Bytes of a text a script tokenizes without a model (`encode`, `prompt_sample`).
pub const TEXT_BYTES: Limit = Limit {
    what: "bytes of text to tokenize",
    env: "MINARC_MAX_TEXT_BYTES",
    default: 16 << 20,
};

/// Samples in one batch request or one generated dataset.
pub const BATCH_SAMPLES: Limit = Limit {
    what: "samples in one batch",
    env: "MINARC_MAX_BATCH_SAMPLES",
    default: 100_000,
};

/// Samples in one batched forward (`forward(..., #{batch: N})`, `/batch_forward`'s `batch`).
pub const FORWARD_BATCH: Limit = Limit {
    what: "samples in one batched forward",
    env: "MINARC_MAX_FORWARD_BATCH",
    default: 256,
};

/// Intervention sets in one intervened forward request (each set is one forward).
pub const INTERVENTION_SETS: Limit = Limit {
    what: "intervention sets in one request",
    env: "MINARC_MAX_INTERVENTION_SETS",
    default: 65_536,
};

/// Generic count bound for script arguments that size a loop or a list (top-k, number of
/// puzzles, grid side, …) where no tighter bound is known.
pub const COUNT: Limit = Limit {
    what: "count",
    env: "MINARC_MAX_COUNT",
    default: 1 << 24,
};

/// A value over its limit (typed, so callers can branch, e.g. the server answers 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    /// Human-readable message naming the value, the limit and how to raise it.
    pub message: String,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LimitError {}

impl Limit {
    /// The value in force: the environment variable when set to a positive integer, else the
    /// default.
    pub fn get(&self) -> usize {
        std::env::var(self.env)
            .ok()
            .and_then(|v| v.trim().replace('_', "").parse::<usize>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(self.default)
    }

    /// `Err` when `value` exceeds the limit; `name` says which argument it was.
    pub fn check(&self, value: usize, name: &str) -> Result<(), LimitError> {
        let max = self.get();
        if value > max {
            return Err(LimitError {
                message: format!(
                    "{name} = {value} exceeds the limit of {max} {} (set {} to raise it)",
                    self.what, self.env
                ),
            });
        }
        Ok(())
    }
}

/// Whether environment variable `name` is set to something other than empty, `0` or `false`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

/// Largest text file read whole (configs, shard indices, scripts, graph JSON, datasets): 256 MiB.
pub const MAX_TEXT_FILE: u64 = 256 << 20;

/// Reads a text file whole after checking it is a regular file (not a device or a pipe) of at
/// most [`MAX_TEXT_FILE`] bytes.
pub fn read_text_file(path: &std::path::Path) -> std::io::Result<String> {
    read_text_file_max(path, MAX_TEXT_FILE)
}

/// [`read_text_file`] with a smaller limit of `max` bytes, for files that are always small.
pub fn read_text_file_max(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "file of {} is larger than the {} limit for text files",
                fmt_bytes(meta.len() as u128),
                fmt_bytes(max as u128)
            ),
        ));
    }
    std::fs::read_to_string(path)
}

/// Memory the system reports as available now (Linux `MemAvailable`), in bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&text, "MemAvailable:")
}

/// Total memory of the machine (Linux `MemTotal`), in bytes.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&text, "MemTotal:")
}

fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Human-readable byte count (GiB/MiB/KiB).
pub fn fmt_bytes(b: u128) -> String {
    const K: f64 = 1024.0;
    let x = b as f64;
    if x >= K * K * K {
        format!("{:.1} GiB", x / (K * K * K))
    } else if x >= K * K {
        format!("{:.1} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{b} bytes")
    }
}

/// Allocations below this many bytes (64 MiB) are not compared with the free memory, so small
/// tensor ops do not read `/proc/meminfo` each time.
pub const SMALL_ALLOC: u128 = 64 << 20;

/// `Err` when allocating `bytes` for `what` would exceed the memory available now. Call it
/// before allocating anything whose size comes from outside.
pub fn check_alloc(bytes: u128, what: &str) -> Result<(), LimitError> {
    if bytes < SMALL_ALLOC {
        return Ok(());
    }
    if let Some(avail) = available_memory()
        && bytes > avail as u128
    {
        return Err(LimitError {
            message: format!(
                "{what} needs {} but only {} of memory is available",
                fmt_bytes(bytes),
                fmt_bytes(avail as u128)
            ),
        });
    }
    Ok(())
}

/// Checks a tensor of `shape` with `elem_bytes` bytes per element: its element count against
/// [`TENSOR_ELEMS`] (overflow-safe) and its size against the available memory.
pub fn check_tensor(shape: &[usize], elem_bytes: usize, what: &str) -> Result<(), LimitError> {
    let elems = shape
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX);
    let max = TENSOR_ELEMS.get();
    if elems > max as u128 {
        return Err(LimitError {
            message: format!(
                "{what} of shape {shape:?} has {elems} elements, over the limit of {max} {} \
                 (set {} to raise it)",
                TENSOR_ELEMS.what, TENSOR_ELEMS.env
            ),
        });
    }
    check_alloc(elems * elem_bytes as u128, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed() {
        let t = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(meminfo_field(t, "MemAvailable:"), Some(2048 * 1024));
        assert_eq!(meminfo_field(t, "MemTotal:"), Some(24_000_000 * 1024));
        assert_eq!(meminfo_field(t, "Nope:"), None);
    }

    #[test]
    fn limits_refuse_values_over_the_bound_and_name_the_variable() {
        assert!(IG_RESOLUTION.check(IG_RESOLUTION.default, "steps").is_ok());
        let e = IG_RESOLUTION
            .check(IG_RESOLUTION.default + 1, "steps")
            .unwrap_err();
        assert!(e.message.contains("MINARC_MAX_IG_RESOLUTION"), "{e}");
        assert!(check_tensor(&[100_000, 100_000], 4, "zeros").is_err());
        assert!(check_tensor(&[usize::MAX, usize::MAX, 2], 4, "zeros").is_err());
        assert!(check_tensor(&[3, 4], 4, "zeros").is_ok());
        assert!(check_alloc(u128::MAX, "x").is_err() || available_memory().is_none());
    }
}
