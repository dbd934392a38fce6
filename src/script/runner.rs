//! `minarc run FILE [-- args]`: run one script; errors are printed as
//! `file:line:col: message` with the offending line, and the exit code is non-zero.

use crate::script::errors::{ErrorKind, ScriptError};
use crate::script::host::Host;
use rhai::Dynamic;
use std::path::Path;

/// Exit code of a script that failed to parse or run.
pub const EXIT_ERROR: i32 = 1;
/// Exit code of a script stopped by Ctrl-C.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Run `path` in `host` with the constant `ARGS` set to `args`.
pub fn run(host: &mut Host, path: &Path, args: Vec<String>) -> Result<Dynamic, ScriptError> {
    host.set_args(args);
    host.run_file(path)
}

/// Exit code for a run result: 0, [`EXIT_ERROR`] or [`EXIT_INTERRUPTED`].
pub fn exit_code(result: &Result<Dynamic, ScriptError>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) if e.kind == ErrorKind::Interrupted => EXIT_INTERRUPTED,
        Err(_) => EXIT_ERROR,
    }
}
