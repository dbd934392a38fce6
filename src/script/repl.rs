//! `minarc repl`: a terminal-independent line-evaluation core ([`ReplCore`]) and the
//! rustyline front-end ([`run_terminal`]) with persistent history, tab completion and Ctrl-C.

use crate::script::errors::ErrorKind;
use crate::script::host::Host;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Source name used in error messages for typed input.
pub const REPL_SOURCE: &str = "<repl>";

const COMMANDS: [&str; 5] = [":help", ":load", ":reset", ":quit", ":exit"];
const KEYWORDS: [&str; 22] = [
    "let", "const", "fn", "if", "else", "for", "in", "while", "loop", "do", "until", "break",
    "continue", "return", "throw", "try", "catch", "switch", "true", "false", "print", "debug",
];

/// The result of feeding one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplOutput {
    /// Brackets are still open: more lines are needed.
    Continue,
    /// Nothing to show (a statement, or an empty line).
    Nothing,
    /// The value of the evaluated input.
    Value(String),
    /// Output of a `:` command (help text, confirmation).
    Info(String),
    /// A formatted error; the host state is unchanged.
    Error(String),
    /// The evaluation was interrupted (Ctrl-C).
    Interrupted(String),
    /// `:quit`.
    Quit,
}

impl ReplOutput {
    /// The text to show, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            ReplOutput::Value(s)
            | ReplOutput::Info(s)
            | ReplOutput::Error(s)
            | ReplOutput::Interrupted(s) => Some(s),
            _ => None,
        }
    }
}

/// The REPL without a terminal: feed lines, get outputs; completion candidates.
pub struct ReplCore {
    host: Host,
    buffer: String,
}

impl ReplCore {
    /// A REPL over `host`.
    pub fn new(host: Host) -> Self {
        Self {
            host,
            buffer: String::new(),
        }
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Is a multi-line input pending?
    pub fn is_continuing(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The prompt to show for the next line.
    pub fn prompt(&self) -> &'static str {
        if self.is_continuing() {
            "   ...> "
        } else {
            "minarc> "
        }
    }

    /// Drop a pending multi-line input (Ctrl-C at the prompt).
    pub fn cancel_input(&mut self) {
        self.buffer.clear();
    }

    /// Feed one line of input.
    pub fn feed_line(&mut self, line: &str) -> ReplOutput {
        if self.buffer.is_empty() && line.trim_start().starts_with(':') {
            return self.command(line.trim());
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        if needs_more_input(&self.buffer) {
            return ReplOutput::Continue;
        }
        let src = std::mem::take(&mut self.buffer);
        if src.trim().is_empty() {
            return ReplOutput::Nothing;
        }
        self.eval(REPL_SOURCE, &src)
    }

    fn eval(&mut self, name: &str, src: &str) -> ReplOutput {
        match self.host.eval_source(name, src, true) {
            Ok(v) if v.is_unit() => ReplOutput::Nothing,
            Ok(v) => ReplOutput::Value(self.host.display_value(&v)),
            Err(e) if e.kind == ErrorKind::Interrupted => ReplOutput::Interrupted(e.to_string()),
            Err(e) => ReplOutput::Error(e.to_string()),
        }
    }

    fn command(&mut self, line: &str) -> ReplOutput {
        let (cmd, arg) = match line.split_once(char::is_whitespace) {
            Some((c, a)) => (c, a.trim()),
            None => (line, ""),
        };
        match cmd {
            ":help" | ":h" if arg.is_empty() => ReplOutput::Info(self.help_all()),
            ":help" | ":h" => self.help_one(arg),
            ":load" | ":l" if arg.is_empty() => ReplOutput::Error(":load needs a file path".into()),
            ":load" | ":l" => self.load(Path::new(arg)),
            ":reset" => {
                self.host.reset();
                ReplOutput::Info(
                    "script variables and functions dropped; models and host state kept".into(),
                )
            }
            ":quit" | ":q" | ":exit" => ReplOutput::Quit,
            _ => ReplOutput::Error(format!("unknown command {cmd} (try :help)")),
        }
    }

    fn load(&mut self, path: &Path) -> ReplOutput {
        match crate::limits::read_text_file(path) {
            Ok(src) => {
                let out = self.eval(&path.display().to_string(), &src);
                if out == ReplOutput::Nothing {
                    ReplOutput::Info(format!("loaded {}", path.display()))
                } else {
                    out
                }
            }
            Err(e) => ReplOutput::Error(format!("{}: cannot read: {e}", path.display())),
        }
    }

    fn help_all(&self) -> String {
        let docs = self.host.docs();
        let mut out = String::from("Commands:\n");
        out.push_str(
            "  :help [name]   list every function, or show one function's signatures and docs\n",
        );
        out.push_str("  :load FILE     run a script file in this session (its variables and functions stay)\n");
        out.push_str(
            "  :reset         drop script variables and functions, keep models and caches\n",
        );
        out.push_str("  :quit          leave (also Ctrl-D)\n");
        out.push_str("Keys: Tab completes, Ctrl-C interrupts a running evaluation or clears the line.\n\nTypes:\n");
        for t in docs.types() {
            out.push_str(&format!("  {:10} {}\n", t.name, t.doc));
        }
        out.push_str("\nFunctions:\n");
        for l in docs.help_lines() {
            out.push_str(&format!("  {l}\n"));
        }
        out
    }

    fn help_one(&self, name: &str) -> ReplOutput {
        let docs = self.host.docs();
        let mut out = String::new();
        if let Some(t) = docs.lookup_type(name) {
            out.push_str(&format!("type {}: {}\n", t.name, t.doc));
        }
        for f in docs.lookup(name) {
            out.push_str(&format!("{}\n    {}\n", f.signature, f.doc));
        }
        if out.is_empty() {
            ReplOutput::Error(format!("no function or type named {name}"))
        } else {
            ReplOutput::Info(out.trim_end().to_string())
        }
    }

    /// Every word completion can offer: functions, types, keywords, scope variables and
    /// script functions.
    pub fn completion_words(&self) -> Vec<String> {
        let docs = self.host.docs();
        let mut words = docs.identifier_names();
        words.extend(docs.types().iter().map(|t| t.name.clone()));
        words.extend(KEYWORDS.iter().map(|k| k.to_string()));
        words.extend(self.host.scope_names());
        words.extend(self.host.script_fn_names());
        words.sort();
        words.dedup();
        words
    }

    /// Completion candidates for the word ending at byte `pos` of `line`.
    pub fn complete(&self, line: &str, pos: usize) -> Vec<String> {
        complete_with(&self.completion_words(), line, pos)
    }
}

/// Byte offset where the word being completed starts.
pub fn completion_start(line: &str, pos: usize) -> usize {
    let head = &line[..pos.min(line.len())];
    if head.starts_with(':') && !head.contains(' ') {
        return 0;
    }
    if let Some(rest) = head.strip_prefix(":load ") {
        return head.len() - rest.trim_start().len();
    }
    head.char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map(|(i, _)| i)
        .unwrap_or(head.len())
}

/// Completion against a word list: `:` commands at line start, file names after `:load`,
/// identifiers elsewhere (nothing for an empty prefix).
pub fn complete_with(words: &[String], line: &str, pos: usize) -> Vec<String> {
    let head = &line[..pos.min(line.len())];
    if head.starts_with(':') && !head.contains(' ') {
        return COMMANDS
            .iter()
            .filter(|c| c.starts_with(head))
            .map(|c| c.to_string())
            .collect();
    }
    if let Some(rest) = head.strip_prefix(":load ") {
        return complete_path(rest.trim_start());
    }
    let start = completion_start(line, pos);
    let prefix = &head[start..];
    if prefix.is_empty() {
        return Vec::new();
    }
    words
        .iter()
        .filter(|w| w.starts_with(prefix))
        .cloned()
        .collect()
}

fn complete_path(prefix: &str) -> Vec<String> {
    let (dir, stem) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let read_dir = if dir.is_empty() {
        Path::new(".")
    } else {
        Path::new(dir)
    };
    let Ok(entries) = std::fs::read_dir(read_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let slash = if e.path().is_dir() { "/" } else { "" };
            name.starts_with(stem)
                .then(|| format!("{dir}{name}{slash}"))
        })
        .collect();
    out.sort();
    out
}

/// Does the input still have open brackets, an open backtick string or an open block comment?
pub fn needs_more_input(src: &str) -> bool {
    let mut depth: i64 = 0;
    let mut chars = src.chars().peekable();
    let mut block_comments = 0usize;
    while let Some(c) = chars.next() {
        if block_comments > 0 {
            match (c, chars.peek()) {
                ('*', Some('/')) => {
                    chars.next();
                    block_comments -= 1;
                }
                ('/', Some('*')) => {
                    chars.next();
                    block_comments += 1;
                }
                _ => {}
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block_comments = 1;
            }
            '"' | '\'' => {
                // Ordinary strings and chars end at the line end if unterminated (a parse error).
                while let Some(s) = chars.next() {
                    if s == '\\' {
                        chars.next();
                    } else if s == c || s == '\n' {
                        break;
                    }
                }
            }
            '`' => {
                let mut closed = false;
                for s in chars.by_ref() {
                    if s == '`' {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return true;
                }
            }
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            _ => {}
        }
    }
    depth > 0 || block_comments > 0
}

/// The history file: `$MINARC_HOME/history`, else `~/.local/share/minarc/history`.
pub fn history_path() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("MINARC_HOME") {
        return Some(PathBuf::from(home).join("history"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/minarc/history"))
}

mod terminal {
    use super::complete_with;
    use rustyline::completion::Completer;
    use rustyline::highlight::Highlighter;
    use rustyline::hint::Hinter;
    use rustyline::validate::Validator;
    use rustyline::{Context, Helper};

    /// rustyline helper: completion from a word list refreshed before each prompt.
    pub struct ReplHelper {
        pub words: Vec<String>,
    }

    impl Completer for ReplHelper {
        type Candidate = String;
        fn complete(
            &self,
            line: &str,
            pos: usize,
            _ctx: &Context<'_>,
        ) -> rustyline::Result<(usize, Vec<String>)> {
            Ok((
                super::completion_start(line, pos),
                complete_with(&self.words, line, pos),
            ))
        }
    }
    impl Hinter for ReplHelper {
        type Hint = String;
    }
    impl Highlighter for ReplHelper {}
    impl Validator for ReplHelper {}
    impl Helper for ReplHelper {}
}

/// Run the interactive REPL on the terminal until `:quit` or Ctrl-D.
pub fn run_terminal(host: Host) -> Result<()> {
    run_terminal_with(host, None)
}

/// The terminal REPL; with a live view, every evaluated entry is published to it.
pub fn run_terminal_with(host: Host, view: Option<crate::script::cli::ViewSession>) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut core = ReplCore::new(host);
    let mut editor: rustyline::Editor<terminal::ReplHelper, rustyline::history::DefaultHistory> =
        rustyline::Editor::new().context("cannot start the line editor")?;
    editor.set_helper(Some(terminal::ReplHelper { words: Vec::new() }));
    let history = history_path();
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            // History is a convenience: a read-only home must not stop the REPL.
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.load_history(h);
    }
    println!("minarc script REPL: :help lists functions, :quit leaves.");
    if let Some(v) = &view {
        println!("live view: {}", v.url());
    }
    let mut entries = 0usize;
    loop {
        if let Some(helper) = editor.helper_mut() {
            helper.words = core.completion_words();
        }
        match editor.readline(core.prompt()) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let out = core.feed_line(&line);
                let mut error = None;
                match &out {
                    ReplOutput::Quit => break,
                    ReplOutput::Error(s) | ReplOutput::Interrupted(s) => {
                        eprintln!("{s}");
                        error = Some(s.clone());
                    }
                    other => {
                        if let Some(s) = other.text() {
                            match &view {
                                // through the host's output so the view gets it too
                                Some(_) => core.host().state().output().line(s),
                                None => println!("{s}"),
                            }
                        }
                    }
                }
                if let Some(v) = &view
                    && !core.is_continuing()
                {
                    entries += 1;
                    v.publish_error(entries, error);
                }
            }
            Err(ReadlineError::Interrupted) => core.cancel_input(),
            Err(ReadlineError::Eof) => {
                if core.is_continuing() {
                    core.cancel_input();
                } else {
                    break;
                }
            }
            Err(e) => return Err(e).context("line editor failed"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
