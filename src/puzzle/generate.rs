//! P5: the puzzle generator.
//!
//! Randomness comes from `ChaCha8Rng::seed_from_u64(seed)` and only portable operations
//! (`random_range` over `u32`, a hand-written partial Fisher–Yates), so a seed gives the same
//! puzzle on every machine. Puzzles are distribution-equivalent to the seed implementation's
//! (same structure: rel_fn drawn first, uniform grids, the same candidate rules and ambiguity
//! filter, distinct queries sampled without replacement, reseed with `seed + 100` at the test
//! section, at most `(n_train + n_test)·100` grid attempts) but not byte-identical to its
//! NumPy/CPython MT19937 streams.

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::color::MAX_COLORS;
use super::grid::{Frame, Grid};
use super::relation::{Relation, RelationType, relation_set};
use super::{Example, Item, Puzzle, Qa};

/// Generation parameters (P5's arguments). Defaults are the notebook's W1 configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PuzzleParams {
    /// Relation set: a named set or a comma-separated list (see [`relation_set`]).
    pub relations: String,
    /// Grid extent along x.
    pub n: usize,
    /// Grid extent along y.
    pub m: usize,
    /// Coordinate frame.
    pub frame: Frame,
    /// Number of colours (2..=10).
    pub n_color: usize,
    /// Number of train examples (≥ 1).
    pub n_train: usize,
    /// Number of test examples.
    pub n_test: usize,
    /// Questions per train example.
    #[serde(rename = "Q_train")]
    pub q_train: usize,
    /// Questions per test example.
    #[serde(rename = "Q_test")]
    pub q_test: usize,
    /// RNG seed.
    pub seed: u64,
    /// Which cells may be asked about (default: P5's ambiguity filter).
    #[serde(default, skip_serializing_if = "QueryFilter::is_unique")]
    pub filter: QueryFilter,
}

/// Which cells of a grid a puzzle may ask about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryFilter {
    /// P5's ambiguity filter (the seed's design): a cell is asked about when the answer colour
    /// sits at exactly one of the query's candidate cells (one per relation of the set). Which
    /// cells pass depends on the hidden relation, so the query cells alone tell it apart (for
    /// side+at, a no-answer rule names the relation in every puzzle checked).
    #[default]
    Unique,
    /// A cell is asked about when every relation of the set has an in-bounds cell for it and
    /// those candidate cells hold pairwise different colours. The rule does not look at the
    /// hidden relation, so grids and query cells carry no trace of it: only the answers do.
    /// Needs n_color ≥ the number of relations (side+at: 5), and many more for such cells to
    /// be common (5 candidates: 3.8 % of cells at 5 colours, 30 % at 10).
    Distinct,
}

impl QueryFilter {
    /// Parses `unique` or `distinct`.
    pub fn parse(s: &str) -> Result<QueryFilter> {
        match s {
            "unique" => Ok(QueryFilter::Unique),
            "distinct" => Ok(QueryFilter::Distinct),
            _ => bail!("unknown query filter {s:?} (expected unique or distinct)"),
        }
    }

    /// The filter's name as used on the command line and in option maps.
    pub fn name(self) -> &'static str {
        match self {
            QueryFilter::Unique => "unique",
            QueryFilter::Distinct => "distinct",
        }
    }

    /// True for the default (which serialisation leaves out, so older files read the same).
    pub fn is_unique(&self) -> bool {
        *self == QueryFilter::Unique
    }
}

impl Default for PuzzleParams {
    fn default() -> Self {
        PuzzleParams {
            relations: "side+at".to_string(),
            n: 5,
            m: 5,
            frame: Frame::Corner,
            n_color: 5,
            n_train: 5,
            n_test: 0,
            q_train: 4,
            q_test: 1,
            seed: 0,
            filter: QueryFilter::Unique,
        }
    }
}

/// Largest grid side `n` / `m` (ARC grids are at most 30×30).
pub const MAX_GRID_SIDE: usize = 64;
/// Largest number of examples (train + test) of one puzzle.
pub const MAX_EXAMPLES: usize = 256;

impl PuzzleParams {
    /// Checks the parameters and resolves the relation set. Every error here is a bad parameter
    /// (the CLI exits with code 2); `gen_puzzle` can then only fail by running out of attempts.
    pub fn validate(&self) -> Result<Vec<Relation>> {
        let relations = relation_set(&self.relations)?;
        self.frame.check_size(self.n, self.m)?;
        if !(2..=MAX_COLORS).contains(&self.n_color) {
            bail!(
                "n_color must be in 2..={MAX_COLORS} (one colour cannot make an unambiguous puzzle), got {}",
                self.n_color
            );
        }
        if self.n_train == 0 {
            bail!("n_train must be at least 1 (answers are read from the train examples)");
        }
        if self.n > MAX_GRID_SIDE || self.m > MAX_GRID_SIDE {
            bail!(
                "grid {}×{} is too large (sides at most {MAX_GRID_SIDE})",
                self.n,
                self.m
            );
        }
        if self.n_train.saturating_add(self.n_test) > MAX_EXAMPLES {
            bail!(
                "n_train + n_test = {} is too many examples (at most {MAX_EXAMPLES})",
                self.n_train.saturating_add(self.n_test)
            );
        }
        if self.filter == QueryFilter::Distinct && self.n_color < relations.len() {
            bail!(
                "filter distinct needs at least as many colours as relations ({} relations in {:?}), got n_color={}",
                relations.len(),
                self.relations,
                self.n_color
            );
        }
        let shape = Grid::new(self.frame, vec![vec![0; self.m]; self.n])?;
        for (section, count, q) in [
            ("Q_train", self.n_train, self.q_train),
            ("Q_test", self.n_test, self.q_test),
        ] {
            if count == 0 {
                continue;
            }
            if q == 0 {
                bail!("{section} must be at least 1");
            }
            if self.filter == QueryFilter::Distinct {
                let avail = shared_cells(&shape, &relations).len();
                if q > avail {
                    bail!(
                        "{section}={q} is impossible with filter distinct: only {avail} cells of a {}×{} {} grid have a cell for every relation of {:?}",
                        self.n,
                        self.m,
                        self.frame.name(),
                        self.relations
                    );
                }
            }
            for &r in &relations {
                let avail = eligible_cells(&shape, r).len();
                if q > avail {
                    bail!(
                        "{section}={q} is impossible: relation {} has only {avail} eligible query cells on a {}×{} {} grid",
                        r.name(),
                        self.n,
                        self.m,
                        self.frame.name()
                    );
                }
            }
        }
        Ok(relations)
    }
}

/// Uniform integer in 0..n from a portable `u32` draw.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    rng.random_range(0..n as u32) as usize
}

/// `k` distinct elements of `items`, in draw order (partial Fisher–Yates).
fn sample_distinct<T: Copy>(rng: &mut ChaCha8Rng, items: &[T], k: usize) -> Vec<T> {
    let mut pool = items.to_vec();
    for i in 0..k {
        let j = i + below(rng, pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

/// Query cells allowed by the relation's type, with an in-bounds target, independent of colours:
/// neighbor type skips border cells; mirror_rotate skips x = 0, y = 0, x = y and x = −y.
/// Order: x outer, y inner.
pub fn eligible_cells(grid: &Grid, rel: Relation) -> Vec<(i32, i32)> {
    let mut cells = Vec::new();
    for x in grid.xs() {
        for y in grid.ys() {
            let skip = match rel.group() {
                RelationType::Neighbor => grid.on_border(x, y),
                RelationType::MirrorRotate => x == 0 || y == 0 || x == y || x == -y,
            };
            let (tx, ty) = rel.target(x, y);
            if !skip && grid.contains(tx, ty) {
                cells.push((x, y));
            }
        }
    }
    cells
}

/// Number of relations in `relations` whose in-bounds target of (x0,y0) has colour `color`.
pub fn count_matching(grid: &Grid, relations: &[Relation], x0: i32, y0: i32, color: u8) -> usize {
    relations
        .iter()
        .filter(|r| {
            let (x, y) = r.target(x0, y0);
            grid.get(x, y) == Some(color)
        })
        .count()
}

/// Candidate query cells of a grid: eligible cells that pass the ambiguity filter (exactly one
/// relation of the set, necessarily `rel`, yields the answer colour).
pub fn candidates(grid: &Grid, rel: Relation, relations: &[Relation]) -> Vec<(i32, i32)> {
    eligible_cells(grid, rel)
        .into_iter()
        .filter(|&(x0, y0)| {
            let (x, y) = rel.target(x0, y0);
            count_matching(grid, relations, x0, y0, grid[(x, y)]) <= 1
        })
        .collect()
}

/// Cells eligible for every relation of the set (x outer, y inner), independent of colours.
pub fn shared_cells(grid: &Grid, relations: &[Relation]) -> Vec<(i32, i32)> {
    let mut cells = match relations.first() {
        Some(&r) => eligible_cells(grid, r),
        None => return Vec::new(),
    };
    for &r in &relations[1..] {
        let other = eligible_cells(grid, r);
        cells.retain(|c| other.contains(c));
    }
    cells
}

/// Candidate query cells under [`QueryFilter::Distinct`]: cells eligible for every relation of
/// the set whose candidate cells (one per relation) are distinct cells of pairwise different
/// colours. The hidden relation plays no part.
pub fn distinct_candidates(grid: &Grid, relations: &[Relation]) -> Vec<(i32, i32)> {
    shared_cells(grid, relations)
        .into_iter()
        .filter(|&(x0, y0)| {
            let mut seen = [false; MAX_COLORS];
            relations.iter().all(|r| {
                let c = grid[r.target(x0, y0)] as usize;
                !std::mem::replace(&mut seen[c], true)
            })
        })
        .collect()
}

/// What the query cells alone say about the hidden relation, reading no answer: the relations
/// of the set whose candidate cell holds a colour no other candidate cell holds at the most
/// queries of the train examples. Under [`QueryFilter::Unique`] the hidden relation's cell always
/// does, so a single winner usually names it; under [`QueryFilter::Distinct`] every relation's
/// cell always does, so all relations tie.
pub fn trace_winners(p: &Puzzle) -> Vec<Relation> {
    let unique_at = |r: Relation| -> usize {
        p.train
            .iter()
            .flat_map(|ex| ex.output.iter().map(move |qa| (&ex.input, qa.query.key)))
            .filter(|&(g, (x0, y0))| {
                let (x, y) = r.target(x0, y0);
                g.get(x, y)
                    .is_some_and(|c| count_matching(g, &p.relations, x0, y0, c) == 1)
            })
            .count()
    };
    let counts: Vec<(Relation, usize)> = p.relations.iter().map(|&r| (r, unique_at(r))).collect();
    let best = counts.iter().map(|c| c.1).max().unwrap_or(0);
    counts
        .into_iter()
        .filter(|c| c.1 == best)
        .map(|c| c.0)
        .collect()
}

/// A uniformly random grid (x outer, y inner draw order).
fn random_grid(rng: &mut ChaCha8Rng, p: &PuzzleParams) -> Result<Grid> {
    let colors = (0..p.n)
        .map(|_| (0..p.m).map(|_| below(rng, p.n_color) as u8).collect())
        .collect();
    Grid::new(p.frame, colors)
}

/// Generates a puzzle (P5). Deterministic in `params` (seed included).
pub fn gen_puzzle(params: &PuzzleParams) -> Result<Puzzle> {
    let relations = params.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let rel_fn = relations[below(&mut rng, relations.len())];
    let total = params.n_train + params.n_test;
    let max_attempts = total * 100;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut reseeded = false;
    for _ in 0..max_attempts {
        let k = train.len() + test.len();
        let in_train = k < params.n_train;
        if !in_train && !reseeded {
            rng = ChaCha8Rng::seed_from_u64(params.seed.wrapping_add(100));
            reseeded = true;
        }
        let q = if in_train {
            params.q_train
        } else {
            params.q_test
        };
        let grid = random_grid(&mut rng, params)?;
        let cands = match params.filter {
            QueryFilter::Unique => candidates(&grid, rel_fn, &relations),
            QueryFilter::Distinct => distinct_candidates(&grid, &relations),
        };
        if cands.len() < q {
            continue;
        }
        let output = sample_distinct(&mut rng, &cands, q)
            .into_iter()
            .map(|(x0, y0)| {
                let t = rel_fn.target(x0, y0);
                Qa {
                    query: Item::new((x0, y0), grid[(x0, y0)]),
                    answer: Item::new(t, grid[t]),
                }
            })
            .collect();
        let ex = Example {
            input: grid,
            output,
            input_ranges: None,
        };
        if in_train { &mut train } else { &mut test }.push(ex);
        if train.len() + test.len() == total {
            return Ok(Puzzle {
                rel_fn,
                relations,
                params: params.clone(),
                train,
                test,
            });
        }
    }
    bail!(
        "seed {}: could not generate puzzle: {} of {total} examples ({} train, {} test) after {max_attempts} grid attempts (relation {}, {}×{} {} grid, n_color={}, Q_train={}, Q_test={}, filter {})",
        params.seed,
        train.len() + test.len(),
        params.n_train,
        params.n_test,
        rel_fn.name(),
        params.n,
        params.m,
        params.frame.name(),
        params.n_color,
        params.q_train,
        params.q_test,
        params.filter.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligible_cells_follow_the_type_rules() {
        let g = Grid::new(Frame::Center, vec![vec![0; 5]; 5]).unwrap();
        // Neighbor relations: the 3×3 interior of a 5×5 grid.
        assert_eq!(eligible_cells(&g, Relation::LeftOf).len(), 9);
        // mirror_x_of: x ≠ 0, y ≠ 0, |x| ≠ |y| on a 5×5 center grid: (±1,±2), (±2,±1) = 8 cells.
        let cells = eligible_cells(&g, Relation::MirrorXOf);
        assert_eq!(cells.len(), 8);
        assert!(cells.contains(&(-1, 2)) && !cells.contains(&(1, 1)));
        // Corner frame: every mirror target of an eligible cell is out of bounds.
        let c = Grid::new(Frame::Corner, vec![vec![0; 5]; 5]).unwrap();
        assert!(eligible_cells(&c, Relation::MirrorOriginOf).is_empty());
        // mirror_diag1_of on a 5×5 corner grid: x = 0 or y = 0 removes 9 cells, x = y removes
        // 4 more ((1,1)..(4,4)), x = −y none, all targets (y,x) are in bounds → 12 cells.
        assert_eq!(eligible_cells(&c, Relation::MirrorDiag1Of).len(), 12);
    }

    #[test]
    fn ambiguity_filter_by_hand() {
        // 3×3 corner grid, colors[x][y]; query the center (1,1).
        // left (0,1)=R, right (2,1)=R, above (1,0)=B, below (1,2)=G.
        let colors = vec![vec![0, 2, 0], vec![1, 0, 3], vec![0, 2, 0]];
        let g = Grid::new(Frame::Corner, colors).unwrap();
        let side = relation_set("side").unwrap();
        assert_eq!(count_matching(&g, &side, 1, 1, 2), 2);
        assert!(candidates(&g, Relation::LeftOf, &side).is_empty());
        assert_eq!(candidates(&g, Relation::Above, &side), vec![(1, 1)]);
        assert_eq!(candidates(&g, Relation::Below, &side), vec![(1, 1)]);
    }

    #[test]
    fn distinct_filter_by_hand() {
        // The grid above: (1,1)'s five candidates are at (1,1)=0, left (0,1)=2, right (2,1)=2,
        // above (1,0)=1, below (1,2)=3: left and right share colour 2, so the cell fails
        // whatever the hidden relation.
        let colors = vec![vec![0, 2, 0], vec![1, 0, 3], vec![0, 2, 0]];
        let g = Grid::new(Frame::Corner, colors).unwrap();
        let side_at = relation_set("side+at").unwrap();
        assert!(distinct_candidates(&g, &side_at).is_empty());
        // Recolour the right neighbour to 4: five different colours, so the cell passes.
        let colors = vec![vec![0, 2, 0], vec![1, 0, 3], vec![0, 4, 0]];
        let g = Grid::new(Frame::Corner, colors).unwrap();
        assert_eq!(distinct_candidates(&g, &side_at), vec![(1, 1)]);
        // The query's own colour 0 repeated at a side cell fails it again.
        let colors = vec![vec![0, 0, 0], vec![1, 0, 3], vec![0, 4, 0]];
        let g = Grid::new(Frame::Corner, colors).unwrap();
        assert!(distinct_candidates(&g, &side_at).is_empty());
        // shared_cells: the intersection of the relations' eligible cells; a set whose
        // relations have no common cell (a side relation and a corner-frame mirror) has none.
        let c = Grid::new(Frame::Corner, vec![vec![0; 5]; 5]).unwrap();
        assert_eq!(shared_cells(&c, &side_at).len(), 9);
        let mixed = relation_set("left_of,mirror_origin_of").unwrap();
        assert!(shared_cells(&c, &mixed).is_empty());
    }

    #[test]
    fn distinct_filter_puzzles_answer_unambiguously() {
        let p = PuzzleParams {
            n: 7,
            m: 7,
            n_color: 8,
            n_train: 3,
            filter: QueryFilter::Distinct,
            ..PuzzleParams::default()
        };
        for seed in 0..40 {
            let puzzle = gen_puzzle(&PuzzleParams { seed, ..p.clone() }).unwrap();
            for ex in &puzzle.train {
                for qa in &ex.output {
                    let (x0, y0) = qa.query.key;
                    let cols: Vec<u8> = puzzle
                        .relations
                        .iter()
                        .map(|r| ex.input[r.target(x0, y0)])
                        .collect();
                    for (i, a) in cols.iter().enumerate() {
                        assert!(!cols[i + 1..].contains(a), "seed {seed}: {cols:?}");
                    }
                    assert_eq!(qa.answer.value, ex.input[puzzle.rel_fn.target(x0, y0)]);
                }
            }
        }
    }

    #[test]
    fn the_trace_by_hand() {
        // One 3×3 example, side+at, query (1,1): at=0, left (0,1)=2, right (2,1)=2, above
        // (1,0)=1, below (1,2)=3. Unique colours: at, above, below; left and right share 2.
        let colors = vec![vec![0, 2, 0], vec![1, 0, 3], vec![0, 2, 0]];
        let g = Grid::new(Frame::Corner, colors).unwrap();
        let relations = relation_set("side+at").unwrap();
        let qa = |t: (i32, i32)| Qa {
            query: Item::new((1, 1), 0),
            answer: Item::new(t, g[t]),
        };
        let puzzle = |out: Vec<Qa>| Puzzle {
            rel_fn: Relation::Above,
            relations: relations.clone(),
            params: PuzzleParams::default(),
            train: vec![Example {
                input: g.clone(),
                output: out,
                input_ranges: None,
            }],
            test: Vec::new(),
        };
        let mut w = trace_winners(&puzzle(vec![qa((1, 0))]));
        w.sort_by_key(|r| r.name());
        let mut want = vec![Relation::At, Relation::Above, Relation::Below];
        want.sort_by_key(|r| r.name());
        assert_eq!(w, want);
    }

    #[test]
    fn validation_rejects_bad_parameters() {
        let ok = PuzzleParams::default();
        assert!(ok.validate().is_ok());
        let bad = [
            PuzzleParams {
                frame: Frame::Center,
                n: 4,
                ..ok.clone()
            },
            PuzzleParams {
                n_color: 11,
                ..ok.clone()
            },
            PuzzleParams {
                n_color: 1,
                ..ok.clone()
            },
            PuzzleParams {
                q_train: 10,
                ..ok.clone()
            },
            PuzzleParams {
                n_test: 1,
                q_test: 0,
                ..ok.clone()
            },
            PuzzleParams {
                relations: "mirror_rotate".into(),
                ..ok.clone()
            },
            PuzzleParams {
                relations: "".into(),
                ..ok.clone()
            },
            PuzzleParams {
                n_train: 0,
                ..ok.clone()
            },
            // Five relations cannot show five different colours with four.
            PuzzleParams {
                n_color: 4,
                filter: QueryFilter::Distinct,
                ..ok.clone()
            },
            // side+at on 3×3: one cell has a cell for every relation.
            PuzzleParams {
                n: 3,
                m: 3,
                q_train: 2,
                filter: QueryFilter::Distinct,
                ..ok.clone()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
        // 9 interior cells on 5×5: Q_train = 9 is possible.
        assert!(PuzzleParams { q_train: 9, ..ok }.validate().is_ok());
    }

    #[test]
    fn impossible_seed_names_the_seed() {
        // Two colours, all 9 neighbor relations and 9 distinct queries: the filter almost never passes.
        let p = PuzzleParams {
            relations: "neighbor".into(),
            n_color: 2,
            q_train: 9,
            seed: 4242,
            ..PuzzleParams::default()
        };
        let err = gen_puzzle(&p).unwrap_err().to_string();
        assert!(
            err.contains("seed 4242") && err.contains("500 grid attempts"),
            "{err}"
        );
    }
}
