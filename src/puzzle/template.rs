//! The words of a puzzle prompt: every piece of text the verbaliser writes around the tracked
//! pieces (grid keys and colours, query keys, answers) comes from a [`PromptTemplate`]. The
//! default is the project's own wording; a JSON file can replace any of its fields (the others
//! keep the default). Token positions still come from the tokenizer's offsets of the rendered
//! prompt, so they stay right whatever the words are.
//!
//! Fields may hold placeholders in braces, filled at render time: `{what}` and `{q}` (the colour
//! quote) in `grid_description`; `{a}` and `{b}` (the coordinates of the header row and of the
//! first column) in `what_markdown`; `{k}` (1-based) in `example_title` and
//! `test_title_numbered`. A placeholder a field does not know is an error when the file is read.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The words of a puzzle prompt (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptTemplate {
    /// The chat system message.
    pub system: String,
    /// The grid-format description; `{what}` is the style's description, `{q}` the quote.
    pub grid_description: String,
    /// `{what}` of the dict style.
    pub what_dict: String,
    /// `{what}` of the list style.
    pub what_list: String,
    /// `{what}` of the markdown style (`{a}` header-row coordinate, `{b}` first-column one).
    pub what_markdown: String,
    /// Before the relation definitions.
    pub relations_intro: String,
    /// After the relation definitions.
    pub relations_outro: String,
    /// The reply instruction.
    pub reply_instruction: String,
    /// The line before each example.
    pub separator: String,
    /// Title of train example `{k}`.
    pub example_title: String,
    /// Title of the only test example.
    pub test_title: String,
    /// Title of test example `{k}` when there are several.
    pub test_title_numbered: String,
    /// The question line before the query key.
    pub question_head: String,
    /// The code line of the dict style, up to the query key.
    pub code_head_dict: String,
    /// The code line of the list style, up to the query key.
    pub code_head_list: String,
    /// The code line of the markdown style, up to the query key.
    pub code_head_markdown: String,
    /// The code line after the query key.
    pub code_tail: String,
    /// Written before each answer colour (the answer token is the one after it).
    pub answer_head: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        PromptTemplate {
            system: "You are a helpful assistant.".into(),
            grid_description: "# A grid is written as {what}.\n# Colors are single letters such as {q}K{q} or {q}B{q}; x grows to the right and y grows downward. For example:\n".into(),
            what_dict: "a dict that maps the (x,y) coordinate of each cell to its color".into(),
            what_list: "a list of [x,y,color] items, one for each cell".into(),
            what_markdown: "a markdown table: the header row holds the {a} coordinates and the first column holds the {b} coordinates".into(),
            relations_intro: "# The functions below define positional relations between a candidate cell (x,y) and a queried cell (x0,y0).\n\n".into(),
            relations_outro: "\n# pos_relation_fn is one of the functions above. Work out which one from the examples, then answer the questions.\n\n".into(),
            reply_instruction: "# **Reply with \"Answer: <Color>\" only, without any intermediate reasoning.**\n\n".into(),
            separator: "------------------------------".into(),
            example_title: "# Example {k}".into(),
            test_title: "# Test".into(),
            test_title_numbered: "# Test {k}".into(),
            question_head: "# Question: what color is the cell in relation pos_relation_fn to the cell".into(),
            code_head_dict: "[color for (x,y), color in grid.items() if pos_relation_fn(x,y, *".into(),
            code_head_list: "[color for x, y, color in grid if pos_relation_fn(x,y, *".into(),
            code_head_markdown: "[color for (x,y), color in cells(grid) if pos_relation_fn(x,y, *".into(),
            code_tail: ")][0] = ?\n".into(),
            answer_head: "Answer: ".into(),
        }
    }
}

/// The placeholders each field may use.
const PLACEHOLDERS: [(&str, &[&str]); 4] = [
    ("grid_description", &["what", "q"]),
    ("what_markdown", &["a", "b"]),
    ("example_title", &["k"]),
    ("test_title_numbered", &["k"]),
];

impl PromptTemplate {
    /// Reads a JSON file of fields (missing ones keep the default wording) and checks it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::limits::read_text_file(path)
            .with_context(|| format!("cannot read prompt template {}", path.display()))?;
        let t: PromptTemplate = serde_json::from_str(&text)
            .with_context(|| format!("prompt template {}", path.display()))?;
        t.validate()
            .with_context(|| format!("prompt template {}", path.display()))?;
        Ok(t)
    }

    /// Checks the placeholders of every field and that the answer head is not empty.
    pub fn validate(&self) -> Result<()> {
        let j = serde_json::to_value(self)?;
        for (field, v) in j.as_object().into_iter().flatten() {
            let text = v.as_str().unwrap_or_default();
            let allowed: &[&str] = PLACEHOLDERS
                .iter()
                .find(|(f, _)| f == field)
                .map_or(&[], |(_, p)| *p);
            let mut rest = text;
            while let Some(i) = rest.find('{') {
                let after = &rest[i + 1..];
                let Some(j) = after.find('}') else {
                    bail!("field {field}: an unclosed '{{'");
                };
                let name = &after[..j];
                if !allowed.contains(&name) {
                    bail!(
                        "field {field}: unknown placeholder {{{name}}} (allowed here: {})",
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    );
                }
                rest = &after[j + 1..];
            }
        }
        if self.answer_head.is_empty() {
            bail!("field answer_head must not be empty (the answer token follows it)");
        }
        Ok(())
    }

    /// A field with its placeholders filled.
    pub fn fill(text: &str, vars: &[(&str, &str)]) -> String {
        let mut out = text.to_string();
        for (k, v) in vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }
}
