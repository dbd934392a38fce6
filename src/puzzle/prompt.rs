//! P6–P10: prompt verbalisation with position tracking.
//!
//! The prompt is built as one string while recording the byte span of every tracked piece
//! ([`Track`]): per grid cell the key, x, y and colour; per question the query key and colour in
//! the question line and the key in the code line; per answer the colour letter; per grid the
//! opening and closing lines. [`resolve_tokens`] then maps the spans to token positions using the
//! tokenizer's offsets of a single encoding of the whole prompt, so positions are right for any
//! tokenizer and any coordinate width (no tokens-per-cell assumption).
//!
//! Layout (own wording, structure of the seed's P9/P10): ChatML system + user prefix; a grid-format
//! description with a 3×3 example grid in the chosen style and frame; unless `remove_instructions`,
//! the relation-definition block; the "Answer: <Color>" instruction; then per example a 30-dash
//! separator, `# Example k` (train) or `# Test` (test), the grid, and per question a question line
//! ending in ` (x0,y0):C0?`, a code line, and `Answer: C`. Test questions are answered in
//! assistant turns; the answers are written into the prompt (teacher forcing).
//!
//! `transpose` (default true): each printed row of the grid holds one y value with cells in
//! increasing x, i.e. the picture as seen on screen. With `transpose = false` each printed row holds
//! one x value with cells in increasing y (the picture's transpose); cell keys still read (x,y),
//! and in the markdown style the header row then holds the y coordinates and the first column x.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::color::color_letter;
use super::grid::Grid;
use super::relation::fn_defs;
pub use super::template::PromptTemplate;
use super::{CellRanges, Example, GridRanges, KeyRanges, Puzzle, Track};
use crate::tokenizer::{IM_END, IM_START};

/// Grid verbalisation style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// `grid = {` + rows of ` (x,y):C,` + `}`.
    Dict,
    /// `grid = [` + rows of ` [x,y,C],` + `]`.
    List,
    /// A markdown table: header row of x coordinates, first column y.
    Markdown,
}

impl Style {
    /// Parses `dict`, `list`, `markdown` (also `markdown table` / `markdown_table`).
    pub fn parse(s: &str) -> Result<Style> {
        match s {
            "dict" => Ok(Style::Dict),
            "list" => Ok(Style::List),
            "markdown" | "markdown table" | "markdown_table" | "md" => Ok(Style::Markdown),
            _ => bail!("unknown style {s:?} (expected dict, list or markdown)"),
        }
    }

    /// The style's name.
    pub fn name(self) -> &'static str {
        match self {
            Style::Dict => "dict",
            Style::List => "list",
            Style::Markdown => "markdown",
        }
    }
}

/// How a puzzle is verbalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptOptions {
    /// Grid style.
    pub style: Style,
    /// Rows iterate over y (true, default) or over x (false); see the module docs.
    pub transpose: bool,
    /// Written around every colour letter, e.g. `'` gives `'K'`. Empty by default.
    pub color_quote: String,
    /// Leave out the relation-definition block.
    pub remove_instructions: bool,
    /// The words of the prompt (None: the project's own wording, [`PromptTemplate::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PromptTemplate>,
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            style: Style::Dict,
            transpose: true,
            color_quote: String::new(),
            remove_instructions: false,
            template: None,
        }
    }
}

impl PromptOptions {
    /// Checks the options (the quote must not contain letters, digits or whitespace, so that the
    /// colour letter stays a piece of its own).
    pub fn validate(&self) -> Result<()> {
        if self
            .color_quote
            .chars()
            .any(|c| c.is_alphanumeric() || c.is_whitespace())
        {
            bail!(
                "color quote {:?} must not contain letters, digits or whitespace",
                self.color_quote
            );
        }
        Ok(())
    }
}

/// The ChatML prefix of the default wording: system turn and the opening of the user turn.
pub fn chat_prefix() -> String {
    chat_prefix_with(&PromptTemplate::default().system)
}

/// The ChatML prefix with a system message.
pub fn chat_prefix_with(system: &str) -> String {
    format!("{IM_START}system\n{system}{IM_END}\n{IM_START}user\n")
}

impl PromptOptions {
    /// The words in force.
    pub fn words(&self) -> std::borrow::Cow<'_, PromptTemplate> {
        match &self.template {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => std::borrow::Cow::Owned(PromptTemplate::default()),
        }
    }
}

/// The seed's 3×3 example grid, indexed [x][y].
const EXAMPLE_GRID: [[u8; 3]; 3] = [[1, 0, 1], [2, 3, 4], [0, 1, 0]];

/// The separator line before each example (default wording).
pub const SEPARATOR: &str = "------------------------------";

/// Appends text and records spans.
struct Writer<'a> {
    text: String,
    quote: &'a str,
}

impl Writer<'_> {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn track(&mut self, s: &str) -> Track {
        let start = self.text.len();
        self.text.push_str(s);
        Track::span(start, self.text.len())
    }

    /// Writes a coordinate; the track covers its digits only (not the sign).
    fn coord(&mut self, v: i32) -> Track {
        if v < 0 {
            self.push("-");
        }
        self.track(&v.unsigned_abs().to_string())
    }

    /// Writes `x,y` (no parentheses) and returns the key over it.
    fn xy(&mut self, x: i32, y: i32) -> KeyRanges {
        let start = self.text.len();
        let xt = self.coord(x);
        self.push(",");
        let yt = self.coord(y);
        KeyRanges {
            key: Some(Track::span(start, self.text.len())),
            x: xt,
            y: yt,
        }
    }

    /// Writes `(x,y)`; the key covers the parentheses.
    fn paren_key(&mut self, x: i32, y: i32) -> KeyRanges {
        let start = self.text.len();
        self.push("(");
        let mut k = self.xy(x, y);
        self.push(")");
        k.key = Some(Track::span(start, self.text.len()));
        k
    }

    /// Writes a quoted colour letter; the track covers the letter only.
    fn color(&mut self, c: u8) -> Track {
        let q = self.quote.to_string();
        self.push(&q);
        let t = self.track(&color_letter(c).to_string());
        self.push(&q);
        t
    }
}

/// The printed rows: (row label coordinate, cells as (x, y)).
fn rows(grid: &Grid, transpose: bool) -> Vec<(i32, Vec<(i32, i32)>)> {
    if transpose {
        grid.ys()
            .map(|y| (y, grid.xs().map(|x| (x, y)).collect()))
            .collect()
    } else {
        grid.xs()
            .map(|x| (x, grid.ys().map(|y| (x, y)).collect()))
            .collect()
    }
}

/// Verbalises a grid (P7) in the writer's style, returning the tracked ranges.
fn write_grid(w: &mut Writer, grid: &Grid, opts: &PromptOptions) -> GridRanges {
    let mut cells = vec![vec![CellRanges::default(); grid.m]; grid.n];
    let mut set = |x: i32, y: i32, r: CellRanges| {
        let (i, j) = grid.storage_index(x, y).expect("cell inside grid");
        cells[i][j] = r;
    };
    let (prefix, suffix);
    match opts.style {
        Style::Dict | Style::List => {
            let (open, close) = if opts.style == Style::Dict {
                ("grid = {", "}\n\n")
            } else {
                ("grid = [", "]\n\n")
            };
            prefix = w.track(open);
            w.push("\n");
            for (_, row) in rows(grid, opts.transpose) {
                for (x, y) in row {
                    w.push(" ");
                    let (key, color) = if opts.style == Style::Dict {
                        let key = w.paren_key(x, y);
                        w.push(":");
                        (key, w.color(grid[(x, y)]))
                    } else {
                        w.push("[");
                        let key = w.xy(x, y);
                        w.push(",");
                        let color = w.color(grid[(x, y)]);
                        w.push("]");
                        (key, color)
                    };
                    w.push(",");
                    set(x, y, CellRanges { key, color });
                }
                w.push("\n");
            }
            suffix = w.track(close);
        }
        Style::Markdown => {
            prefix = w.track("grid =");
            let corner = if opts.transpose { "y\\x" } else { "x\\y" };
            w.push(&format!("\n| {corner} |"));
            let header: Vec<i32> = if opts.transpose {
                grid.xs().collect()
            } else {
                grid.ys().collect()
            };
            let mut col_labels = Vec::new();
            for &c in &header {
                w.push(" ");
                col_labels.push(w.coord(c));
                w.push(" |");
            }
            w.push(&format!("\n|---|{}\n", "---|".repeat(header.len())));
            for (label, row) in rows(grid, opts.transpose) {
                w.push("| ");
                let row_label = w.coord(label);
                w.push(" |");
                for (col, (x, y)) in row.into_iter().enumerate() {
                    w.push(" ");
                    let color = w.color(grid[(x, y)]);
                    w.push(" |");
                    let (xt, yt) = if opts.transpose {
                        (col_labels[col].clone(), row_label.clone())
                    } else {
                        (row_label.clone(), col_labels[col].clone())
                    };
                    let key = KeyRanges {
                        key: None,
                        x: xt,
                        y: yt,
                    };
                    set(x, y, CellRanges { key, color });
                }
                w.push("\n");
            }
            suffix = w.track("\n");
        }
    }
    GridRanges {
        prefix,
        cells,
        suffix,
    }
}

/// The grid-format description lines for a style.
fn grid_description(opts: &PromptOptions, t: &PromptTemplate) -> String {
    let (a, b) = if opts.transpose {
        ("x", "y")
    } else {
        ("y", "x")
    };
    let what = match opts.style {
        Style::Dict => t.what_dict.clone(),
        Style::List => t.what_list.clone(),
        Style::Markdown => PromptTemplate::fill(&t.what_markdown, &[("a", a), ("b", b)]),
    };
    PromptTemplate::fill(
        &t.grid_description,
        &[("what", &what), ("q", &opts.color_quote)],
    )
}

/// The code line of a question, up to (not including) the query key.
fn code_line_head(style: Style, t: &PromptTemplate) -> &str {
    match style {
        Style::Dict => &t.code_head_dict,
        Style::List => &t.code_head_list,
        Style::Markdown => &t.code_head_markdown,
    }
}

/// The question line text before the query key (default wording).
pub const QUESTION_HEAD: &str =
    "# Question: what color is the cell in relation pos_relation_fn to the cell";

/// Writes one example (P8, with the test section indexed correctly).
fn write_example(
    w: &mut Writer,
    ex: &mut Example,
    title: &str,
    is_test: bool,
    last_test_example: bool,
    opts: &PromptOptions,
    t: &PromptTemplate,
) {
    w.push(&format!("{}\n{title}\n", t.separator));
    ex.input_ranges = Some(write_grid(w, &ex.input, opts));
    let n_qa = ex.output.len();
    for (i, qa) in ex.output.iter_mut().enumerate() {
        w.push(&t.question_head);
        w.push(" ");
        let (x0, y0) = qa.query.key;
        qa.query.key_ranges = Some(w.paren_key(x0, y0));
        w.push(":");
        qa.query.value_ranges = Some(w.color(qa.query.value));
        w.push("?\n");
        w.push(code_line_head(opts.style, t));
        qa.query.key_ranges_in_code = Some(w.paren_key(x0, y0));
        w.push(&t.code_tail);
        if is_test {
            w.push(&format!("{IM_END}\n{IM_START}assistant\n"));
        }
        w.push(&t.answer_head);
        qa.answer.value_ranges = Some(w.color(qa.answer.value));
        if !is_test {
            w.push("\n\n");
        } else if !(last_test_example && i + 1 == n_qa) {
            w.push(&format!("{IM_END}\n{IM_START}user\n"));
        }
    }
}

/// Builds the prompt for a puzzle (P9), filling the byte spans of every tracked piece.
pub fn gen_prompt(puzzle: &mut Puzzle, opts: &PromptOptions) -> Result<String> {
    opts.validate()?;
    let words = opts.words();
    let t: &PromptTemplate = &words;
    let mut w = Writer {
        text: chat_prefix_with(&t.system),
        quote: &opts.color_quote,
    };
    w.push(&grid_description(opts, t));
    let frame = puzzle
        .train
        .first()
        .map(|e| e.input.frame)
        .unwrap_or(super::Frame::Corner);
    let example = Grid::new(frame, EXAMPLE_GRID.iter().map(|r| r.to_vec()).collect())?;
    write_grid(&mut w, &example, opts);
    if !opts.remove_instructions {
        w.push(&t.relations_intro);
        w.push(&fn_defs(&puzzle.relations));
        w.push(&t.relations_outro);
    }
    w.push(&t.reply_instruction);
    for (k, ex) in puzzle.train.iter_mut().enumerate() {
        let title = PromptTemplate::fill(&t.example_title, &[("k", &(k + 1).to_string())]);
        write_example(&mut w, ex, &title, false, false, opts, t);
    }
    let n_test = puzzle.test.len();
    for (k, ex) in puzzle.test.iter_mut().enumerate() {
        let title = if n_test == 1 {
            t.test_title.clone()
        } else {
            PromptTemplate::fill(&t.test_title_numbered, &[("k", &(k + 1).to_string())])
        };
        write_example(&mut w, ex, &title, true, k + 1 == n_test, opts, t);
    }
    Ok(w.text)
}

/// Token position lookup over the offsets of one encoding (byte offsets, non-decreasing).
pub struct TokenMap<'a> {
    offsets: &'a [(usize, usize)],
}

impl<'a> TokenMap<'a> {
    /// Wraps an encoding's offsets.
    pub fn new(offsets: &'a [(usize, usize)]) -> Self {
        TokenMap { offsets }
    }

    /// The token containing byte `b` and the token range overlapping `b..end`.
    pub fn locate(&self, b: usize, end: usize) -> Result<(usize, (usize, usize))> {
        let i = self.offsets.partition_point(|o| o.1 <= b);
        match self.offsets.get(i) {
            Some(&(s, _)) if s <= b => {
                let j = self.offsets.partition_point(|o| o.0 < end).max(i + 1);
                Ok((i, (i, j)))
            }
            _ => bail!("no token covers byte {b} of the prompt"),
        }
    }

    /// Fills a track's token fields.
    pub fn fill(&self, t: &mut Track) -> Result<()> {
        let (tok, range) = self.locate(t.start, t.end)?;
        t.token = Some(tok);
        t.tokens = Some(range);
        Ok(())
    }

    fn fill_key(&self, k: &mut KeyRanges) -> Result<()> {
        if let Some(key) = &mut k.key {
            self.fill(key)?;
        }
        self.fill(&mut k.x)?;
        self.fill(&mut k.y)
    }
}

/// Fills the token positions of every tracked piece of a verbalised puzzle from the offsets of
/// the encoding of its prompt.
pub fn resolve_tokens(puzzle: &mut Puzzle, offsets: &[(usize, usize)]) -> Result<()> {
    let map = TokenMap::new(offsets);
    for ex in puzzle.train.iter_mut().chain(puzzle.test.iter_mut()) {
        let Some(gr) = &mut ex.input_ranges else {
            bail!("resolve_tokens: the puzzle has not been verbalised");
        };
        map.fill(&mut gr.prefix)?;
        map.fill(&mut gr.suffix)?;
        for cell in gr.cells.iter_mut().flatten() {
            map.fill_key(&mut cell.key)?;
            map.fill(&mut cell.color)?;
        }
        for qa in &mut ex.output {
            for k in [&mut qa.query.key_ranges, &mut qa.query.key_ranges_in_code]
                .into_iter()
                .flatten()
            {
                map.fill_key(k)?;
            }
            for t in [&mut qa.query.value_ranges, &mut qa.answer.value_ranges]
                .into_iter()
                .flatten()
            {
                map.fill(t)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::puzzle::{Frame, Item, Qa, Relation};

    fn tiny_puzzle(frame: Frame) -> Puzzle {
        // colors[x][y] on a 3×3 grid; one left_of question on the central cell.
        let grid = Grid::new(frame, vec![vec![0, 1, 2], vec![3, 4, 0], vec![1, 2, 3]]).unwrap();
        let (q, a) = match frame {
            Frame::Corner => ((1, 1), (0, 1)),
            Frame::Center => ((0, 0), (-1, 0)),
        };
        let ex = Example {
            output: vec![Qa {
                query: Item::new(q, grid[q]),
                answer: Item::new(a, grid[a]),
            }],
            input: grid,
            input_ranges: None,
        };
        Puzzle {
            rel_fn: Relation::LeftOf,
            relations: vec![Relation::LeftOf, Relation::RightOf],
            params: crate::puzzle::PuzzleParams::default(),
            train: vec![ex.clone()],
            test: vec![ex],
        }
    }

    #[test]
    fn dict_prompt_text_by_hand() {
        let mut p = tiny_puzzle(Frame::Corner);
        let text = gen_prompt(&mut p, &PromptOptions::default()).unwrap();
        let expected_grid = "grid = {\n (0,0):K, (1,0):G, (2,0):B,\n (0,1):B, (1,1):Y, (2,1):R,\n (0,2):R, (1,2):K, (2,2):G,\n}\n\n";
        assert!(
            text.contains(&format!("# Example 1\n{expected_grid}")),
            "{text}"
        );
        assert!(text.contains(
            "to the cell (1,1):Y?\n[color for (x,y), color in grid.items() if pos_relation_fn(x,y, *(1,1))][0] = ?\nAnswer: B\n\n"
        ));
        assert!(text.starts_with(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        ));
        assert!(text.ends_with("<|im_end|>\n<|im_start|>assistant\nAnswer: B"));
        assert!(text.contains("def left_of(x,y, x0,y0):") && text.contains("def at(x,y, x0,y0):"));
        assert!(!text.contains("def below("));
        let ranges = p.train[0].input_ranges.as_ref().unwrap();
        let cell = &ranges.cells[2][1]; // (2,1) = R
        assert_eq!(&text[cell.color.start..cell.color.end], "R");
        assert_eq!(
            &text[cell.key.key.as_ref().unwrap().start..cell.key.key.as_ref().unwrap().end],
            "(2,1)"
        );
        assert_eq!(&text[ranges.prefix.start..ranges.prefix.end], "grid = {");
    }

    #[test]
    fn center_list_markdown_and_no_transpose_by_hand() {
        let mut p = tiny_puzzle(Frame::Center);
        let opts = PromptOptions {
            style: Style::List,
            color_quote: "'".into(),
            remove_instructions: true,
            ..PromptOptions::default()
        };
        let text = gen_prompt(&mut p, &opts).unwrap();
        assert!(
            text.contains("grid = [\n [-1,-1,'K'], [0,-1,'G'], [1,-1,'B'],\n"),
            "{text}"
        );
        assert!(text.contains("to the cell (0,0):'Y'?\n") && text.contains("Answer: 'B'\n\n"));
        assert!(!text.contains("def "));
        let opts = PromptOptions {
            style: Style::Markdown,
            transpose: false,
            ..PromptOptions::default()
        };
        let mut p = tiny_puzzle(Frame::Center);
        let text = gen_prompt(&mut p, &opts).unwrap();
        // Rows are x values, columns y values: row x=-1 holds colors[0][*] = K B R.
        assert!(text.contains("grid =\n| x\\y | -1 | 0 | 1 |\n|---|---|---|---|\n| -1 | K | B | R |\n| 0 | G | Y | K |\n"), "{text}");
        let cell = &p.train[0].input_ranges.as_ref().unwrap().cells[1][2]; // (0,1) = K
        assert_eq!(&text[cell.color.start..cell.color.end], "K");
        assert_eq!(&text[cell.key.y.start..cell.key.y.end], "1");
        assert_eq!(&text[cell.key.x.start - 2..cell.key.x.end], "| 0");
    }

    #[test]
    fn token_map_locates_spans() {
        let offsets = [(0, 2), (2, 3), (3, 3), (3, 7), (8, 9)];
        let m = TokenMap::new(&offsets);
        assert_eq!(m.locate(0, 1).unwrap(), (0, (0, 1)));
        assert_eq!(m.locate(1, 5).unwrap(), (0, (0, 4)));
        assert_eq!(m.locate(4, 9).unwrap(), (3, (3, 5)));
        assert!(m.locate(7, 8).is_err());
        assert!(m.locate(9, 10).is_err());
    }
}
