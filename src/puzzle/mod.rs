//! MinARC puzzles and prompts (spec §1, P1–P12): the colour alphabet, positional relations,
//! origin-shifted grids, the puzzle generator, prompt verbalisation with token-position tracking,
//! the per-sample record and the JSONL dataset format.
//!
//! Data model (P4): a [`Puzzle`] holds train and test [`Example`]s; each example has an input
//! [`Grid`](grid::Grid) and a list of [`Qa`] pairs (query cell → answer cell). Verbalisation
//! ([`prompt::gen_prompt`]) fills every [`Track`] with the byte span of the text it stands for;
//! tokenization ([`prompt::resolve_tokens`]) then fills the token positions.

pub mod aggregate;
pub mod cli;
pub mod color;
pub mod dataset;
pub mod generate;
pub mod grid;
pub mod prompt;
pub mod relation;
pub mod sample;
pub mod template;

use serde::{Deserialize, Serialize};

pub use generate::{PuzzleParams, QueryFilter, gen_puzzle};
pub use grid::{Frame, Grid};
pub use prompt::{PromptOptions, Style};
pub use relation::Relation;
pub use sample::Sample;

/// A tracked piece of the prompt: its byte span and, once tokenized, its token positions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// Byte offset of the first byte of the piece in the prompt.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// Index of the token that contains byte `start`.
    pub token: Option<usize>,
    /// Half-open range of all tokens overlapping `start..end`.
    pub tokens: Option<(usize, usize)>,
}

impl Track {
    /// A track over `start..end` without token positions yet.
    pub fn span(start: usize, end: usize) -> Track {
        Track {
            start,
            end,
            token: None,
            tokens: None,
        }
    }
}

/// Tracked pieces of a printed cell coordinate `(x,y)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRanges {
    /// The whole key text, e.g. `(3,-1)` (dict/list styles and question/code lines). For the
    /// markdown style a cell has no key text of its own and this is None.
    pub key: Option<Track>,
    /// The digits of x (the sign, if any, is not included; `token` is the first digit's token).
    pub x: Track,
    /// The digits of y (as for x).
    pub y: Track,
}

/// Tracked pieces of one grid cell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRanges {
    /// The cell coordinate. In the markdown style x and y point at the header/first-column labels.
    pub key: KeyRanges,
    /// The colour letter (without quotes).
    pub color: Track,
}

/// Tracked pieces of a verbalised grid (the seed's `GridRanges`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridRanges {
    /// The opening line(s), e.g. `grid = {`.
    pub prefix: Track,
    /// Per-cell ranges in storage order: `cells[ix][iy]`.
    pub cells: Vec<Vec<CellRanges>>,
    /// The closing line with its blank line, e.g. `}\n\n`.
    pub suffix: Track,
}

/// A cell with its colour and the tracked places where the prompt mentions it (the seed's `Item`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// (x, y) in the grid's frame.
    pub key: (i32, i32),
    /// Colour index.
    pub value: u8,
    /// Query: the key in the question line. Answer: None (the answer key is never printed).
    pub key_ranges: Option<KeyRanges>,
    /// Query: the colour in the question line. Answer: the answer colour letter.
    pub value_ranges: Option<Track>,
    /// Query: the key in the code line. Answer: None.
    pub key_ranges_in_code: Option<KeyRanges>,
}

impl Item {
    /// An untracked item.
    pub fn new(key: (i32, i32), value: u8) -> Item {
        Item {
            key,
            value,
            key_ranges: None,
            value_ranges: None,
            key_ranges_in_code: None,
        }
    }
}

/// One question: the query cell and the cell that answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qa {
    /// The queried cell (x0, y0).
    pub query: Item,
    /// The cell in relation `rel_fn` to the query.
    pub answer: Item,
}

/// One example: a grid and its questions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The grid.
    pub input: Grid,
    /// Questions with answers, in sample order.
    pub output: Vec<Qa>,
    /// Tracked pieces of the grid text, filled by verbalisation.
    pub input_ranges: Option<GridRanges>,
}

/// A puzzle: the hidden relation and the train/test examples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Puzzle {
    /// The hidden relation.
    pub rel_fn: Relation,
    /// The relation set the puzzle was generated with (the ambiguity filter's set).
    pub relations: Vec<Relation>,
    /// The generation parameters.
    pub params: PuzzleParams,
    /// Worked examples.
    pub train: Vec<Example>,
    /// Test examples (their answers are also written into the prompt: prompts are teacher-forced).
    pub test: Vec<Example>,
}
