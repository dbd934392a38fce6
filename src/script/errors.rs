//! Script errors formatted as `file:line:col: message`, followed by the offending source
//! line and a caret under the column, then the chain of script-function calls (innermost first).

use rhai::{EvalAltResult, ParseError, Position};
use std::fmt;

/// What went wrong, for callers that branch (e.g. the REPL and exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The script did not parse.
    Parse,
    /// The script failed while running.
    Runtime,
    /// The evaluation was stopped by an interrupt (Ctrl-C).
    Interrupted,
    /// The script file could not be read.
    Io,
}

/// A located script error, ready to print (boxed details; fields are reached through `Deref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError(Box<ErrorDetails>);

impl std::ops::Deref for ScriptError {
    type Target = ErrorDetails;
    fn deref(&self) -> &ErrorDetails {
        &self.0
    }
}

/// The parts of a [`ScriptError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetails {
    /// Parse, runtime, interrupted or I/O.
    pub kind: ErrorKind,
    /// Source name of the file the error is in: the script as given on the command line, or
    /// an imported module's path as reached from it (e.g. `scripts/lib/common.rhai`).
    pub source_name: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub col: Option<usize>,
    /// The message without position decoration.
    pub message: String,
    /// The offending source line, when the position is known.
    pub source_line: Option<String>,
    /// Enclosing script-function calls and module imports, innermost first.
    pub call_stack: Vec<Frame>,
}

/// One enclosing call or import of a located error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `function 'f'` or `module 'lib/x'`.
    pub what: String,
    /// The file holding the call or the `import` statement.
    pub source_name: String,
    /// 1-based line of the call, when known.
    pub line: Option<usize>,
    /// 1-based column of the call, when known.
    pub col: Option<usize>,
}

impl Frame {
    fn location(&self) -> String {
        location(&self.source_name, self.line, self.col)
    }
}

fn location(source: &str, line: Option<usize>, col: Option<usize>) -> String {
    match (line, col) {
        (Some(l), Some(c)) => format!("{source}:{l}:{c}"),
        (Some(l), None) => format!("{source}:{l}"),
        _ => source.to_string(),
    }
}

/// Message of a single error level without position suffix and without the generic
/// "Runtime error: " prefix for errors raised by native functions.
fn bare_message(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorRuntime(d, _) if !d.is_unit() => d.to_string(),
        EvalAltResult::ErrorTerminated(..) => "interrupted".to_string(),
        EvalAltResult::ErrorParsing(p, _) => format!("syntax error: {p}"),
        // Display of a single level carries no position.
        other => other.to_string(),
    }
}

fn line_col(pos: Position) -> (Option<usize>, Option<usize>) {
    (pos.line(), pos.position())
}

impl ScriptError {
    /// Build from a runtime (or wrapped parse) error of a script named `source_name` with text
    /// `source`. Errors inside imported modules are located in the module's own file (its
    /// source name is its path, which is read for the source line); every enclosing function
    /// call and import is a [`Frame`] located in the file that holds it.
    pub fn from_eval(source_name: &str, source: &str, err: &EvalAltResult) -> Self {
        let mut frames = Vec::new();
        let mut ctx = source_name.to_string();
        let mut cur = err;
        loop {
            let (what, inner_src, inner, pos) = match cur {
                EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                    // a function from another file (an imported module) names its file
                    let from = if !src.is_empty() && *src != ctx {
                        format!(" (defined in {src})")
                    } else {
                        String::new()
                    };
                    (
                        format!("function '{name}'{from}"),
                        src.as_str(),
                        inner,
                        *pos,
                    )
                }
                EvalAltResult::ErrorInModule(path, inner, pos) => {
                    (format!("module '{path}'"), path.as_str(), inner, *pos)
                }
                _ => break,
            };
            let (line, col) = line_col(pos);
            frames.push(Frame {
                what,
                source_name: ctx.clone(),
                line,
                col,
            });
            if !inner_src.is_empty() {
                ctx = inner_src.to_string();
            }
            cur = inner;
        }
        frames.reverse();
        let kind = match cur {
            EvalAltResult::ErrorParsing(..) => ErrorKind::Parse,
            EvalAltResult::ErrorTerminated(..) => ErrorKind::Interrupted,
            _ => ErrorKind::Runtime,
        };
        let (line, col) = line_col(cur.position());
        let text = if ctx == source_name {
            Some(source.to_string())
        } else {
            std::fs::read_to_string(&ctx).ok()
        };
        Self::located(
            kind,
            &ctx,
            text.as_deref().unwrap_or(""),
            line,
            col,
            bare_message(cur),
            frames,
        )
    }

    /// Build from a parse error.
    pub fn from_parse(source_name: &str, source: &str, err: &ParseError) -> Self {
        let (line, col) = line_col(err.position());
        let message = format!("syntax error: {}", err.err_type());
        Self::located(
            ErrorKind::Parse,
            source_name,
            source,
            line,
            col,
            message,
            Vec::new(),
        )
    }

    /// An error reading the script itself.
    pub fn io(source_name: &str, err: &std::io::Error) -> Self {
        ScriptError(Box::new(ErrorDetails {
            kind: ErrorKind::Io,
            source_name: source_name.to_string(),
            line: None,
            col: None,
            message: format!("cannot read script: {err}"),
            source_line: None,
            call_stack: Vec::new(),
        }))
    }

    fn located(
        kind: ErrorKind,
        source_name: &str,
        source: &str,
        line: Option<usize>,
        col: Option<usize>,
        message: String,
        call_stack: Vec<Frame>,
    ) -> Self {
        let source_line = line
            .and_then(|l| source.lines().nth(l.saturating_sub(1)))
            .map(|s| s.to_string());
        ScriptError(Box::new(ErrorDetails {
            kind,
            source_name: source_name.to_string(),
            line,
            col,
            message,
            source_line,
            call_stack,
        }))
    }

    /// `file:line:col` (or `file` when unknown).
    pub fn location(&self) -> String {
        location(&self.source_name, self.line, self.col)
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let (Some(src), Some(l)) = (&self.source_line, self.line) {
            let gutter = l.to_string();
            write!(f, "\n {gutter} | {src}")?;
            if let Some(c) = self.col {
                // Keep tabs so the caret lines up under the offending character.
                let pad: String = src
                    .chars()
                    .take(c.saturating_sub(1))
                    .map(|ch| if ch == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n {} | {pad}^", " ".repeat(gutter.len()))?;
            }
        }
        for fr in &self.call_stack {
            let verb = if fr.what.starts_with("module") {
                "in import of"
            } else {
                "in call to"
            };
            write!(f, "\n  {verb} {} at {}", fr.what, fr.location())?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_sits_under_the_column() {
        let src = "let a = 1;\nlet b = a +* 2;\n";
        let engine = rhai::Engine::new();
        let err = engine.compile(src).unwrap_err();
        let e = ScriptError::from_parse("x.rhai", src, &err);
        let text = e.to_string();
        assert!(text.starts_with("x.rhai:2:"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], " 2 | let b = a +* 2;");
        let caret_col = lines[2].find('^').unwrap() - " 2 | ".len() + 1;
        assert_eq!(Some(caret_col), e.col);
    }

    #[test]
    fn runtime_error_in_script_fn_reports_inner_position_and_call() {
        let src = "fn f(x) {\n  x.nope()\n}\nf(1);\n";
        let engine = rhai::Engine::new();
        let err = engine.run(src).unwrap_err();
        let e = ScriptError::from_eval("s.rhai", src, &err);
        assert_eq!(e.kind, ErrorKind::Runtime);
        assert_eq!(e.line, Some(2));
        assert_eq!(e.source_line.as_deref(), Some("  x.nope()"));
        assert_eq!(e.call_stack.len(), 1);
        assert_eq!(e.call_stack[0].what, "function 'f'");
        assert_eq!(e.call_stack[0].line, Some(4));
        assert!(
            e.to_string()
                .contains("in call to function 'f' at s.rhai:4:1")
        );
    }
}
