//! P2: the sixteen positional relations, their groups, English phrases and the Python-like
//! definition blocks pasted into prompts. The y axis points down ("above" means y − 1).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// A positional relation: `rel(x, y, x0, y0)` holds when cell (x,y) stands in the relation to the
/// queried cell (x0,y0). Each relation has a forward map (x0,y0) → (x,y), see [`Relation::target`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Relation {
    /// `x == x0 and y == y0`.
    At,
    /// `x == x0 - 1 and y == y0`.
    LeftOf,
    /// `x == x0 + 1 and y == y0`.
    RightOf,
    /// `x == x0 and y == y0 - 1`.
    Above,
    /// `x == x0 and y == y0 + 1`.
    Below,
    /// `x == x0 - 1 and y == y0 - 1`.
    UpperLeftOf,
    /// `x == x0 - 1 and y == y0 + 1`.
    LowerLeftOf,
    /// `x == x0 + 1 and y == y0 - 1`.
    UpperRightOf,
    /// `x == x0 + 1 and y == y0 + 1`.
    LowerRightOf,
    /// `x == -x0 and y == y0`.
    MirrorXOf,
    /// `x == x0 and y == -y0`.
    MirrorYOf,
    /// `x == -x0 and y == -y0`.
    MirrorOriginOf,
    /// `x == y0 and y == x0`.
    MirrorDiag1Of,
    /// `x == -y0 and y == -x0`.
    MirrorDiag2Of,
    /// `x == y0 and y == -x0`.
    RotateCwOf,
    /// `x == -y0 and y == x0`.
    RotateCcwOf,
}

/// The relation type that decides which query cells are eligible (P5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationType {
    /// Neighbour relations: border cells are never queried.
    Neighbor,
    /// Mirror/rotate relations: cells on the axes and diagonals are never queried.
    MirrorRotate,
}

use Relation::*;

/// `neighbor_relations` in the seed's order.
pub const NEIGHBOR: [Relation; 9] = [
    At,
    LeftOf,
    RightOf,
    Above,
    Below,
    UpperLeftOf,
    LowerLeftOf,
    UpperRightOf,
    LowerRightOf,
];
/// `side_neighbor_relations`.
pub const SIDE: [Relation; 4] = [LeftOf, RightOf, Above, Below];
/// `corner_neighbor_relations`.
pub const CORNER: [Relation; 4] = [UpperLeftOf, LowerLeftOf, UpperRightOf, LowerRightOf];
/// `mirror_rotate_relations`.
pub const MIRROR_ROTATE: [Relation; 7] = [
    MirrorXOf,
    MirrorYOf,
    MirrorOriginOf,
    MirrorDiag1Of,
    MirrorDiag2Of,
    RotateCwOf,
    RotateCcwOf,
];
/// `all_relations` = neighbor + mirror_rotate.
pub const ALL: [Relation; 16] = [
    At,
    LeftOf,
    RightOf,
    Above,
    Below,
    UpperLeftOf,
    LowerLeftOf,
    UpperRightOf,
    LowerRightOf,
    MirrorXOf,
    MirrorYOf,
    MirrorOriginOf,
    MirrorDiag1Of,
    MirrorDiag2Of,
    RotateCwOf,
    RotateCcwOf,
];

/// Names of the relation sets accepted by [`relation_set`].
pub const SET_NAMES: [&str; 6] = [
    "neighbor",
    "side",
    "corner",
    "mirror_rotate",
    "all",
    "side+at",
];

impl Relation {
    /// The seed's function name, e.g. `left_of`.
    pub fn name(self) -> &'static str {
        match self {
            At => "at",
            LeftOf => "left_of",
            RightOf => "right_of",
            Above => "above",
            Below => "below",
            UpperLeftOf => "upper_left_of",
            LowerLeftOf => "lower_left_of",
            UpperRightOf => "upper_right_of",
            LowerRightOf => "lower_right_of",
            MirrorXOf => "mirror_x_of",
            MirrorYOf => "mirror_y_of",
            MirrorOriginOf => "mirror_origin_of",
            MirrorDiag1Of => "mirror_diag1_of",
            MirrorDiag2Of => "mirror_diag2_of",
            RotateCwOf => "rotate_cw_of",
            RotateCcwOf => "rotate_ccw_of",
        }
    }

    /// Looks a relation up by its name.
    pub fn from_name(name: &str) -> Result<Relation> {
        match ALL.iter().find(|r| r.name() == name) {
            Some(r) => Ok(*r),
            None => bail!(
                "unknown relation {name:?} (known: {})",
                ALL.map(Relation::name).join(", ")
            ),
        }
    }

    /// The forward map: the cell (x,y) that stands in this relation to (x0,y0).
    pub fn target(self, x0: i32, y0: i32) -> (i32, i32) {
        match self {
            At => (x0, y0),
            LeftOf => (x0 - 1, y0),
            RightOf => (x0 + 1, y0),
            Above => (x0, y0 - 1),
            Below => (x0, y0 + 1),
            UpperLeftOf => (x0 - 1, y0 - 1),
            LowerLeftOf => (x0 - 1, y0 + 1),
            UpperRightOf => (x0 + 1, y0 - 1),
            LowerRightOf => (x0 + 1, y0 + 1),
            MirrorXOf => (-x0, y0),
            MirrorYOf => (x0, -y0),
            MirrorOriginOf => (-x0, -y0),
            MirrorDiag1Of => (y0, x0),
            MirrorDiag2Of => (-y0, -x0),
            RotateCwOf => (y0, -x0),
            RotateCcwOf => (-y0, x0),
        }
    }

    /// The predicate `rel(x, y, x0, y0)`.
    pub fn holds(self, x: i32, y: i32, x0: i32, y0: i32) -> bool {
        self.target(x0, y0) == (x, y)
    }

    /// The relation type (`relation_type` in the seed).
    pub fn group(self) -> RelationType {
        if MIRROR_ROTATE.contains(&self) {
            RelationType::MirrorRotate
        } else {
            RelationType::Neighbor
        }
    }

    /// Names of every named set this relation belongs to.
    pub fn groups(self) -> Vec<&'static str> {
        SET_NAMES
            .iter()
            .copied()
            .filter(|s| relation_set(s).is_ok_and(|v| v.contains(&self)))
            .collect()
    }

    /// English phrase: "at", "the left neighbor of", "the upper neighbor of", ….
    pub fn phrase(self) -> String {
        match self {
            At => "at".to_string(),
            MirrorXOf => "the mirror image across the y axis of".to_string(),
            MirrorYOf => "the mirror image across the x axis of".to_string(),
            MirrorOriginOf => "the mirror image through the origin of".to_string(),
            MirrorDiag1Of => "the mirror image across the line y = x of".to_string(),
            MirrorDiag2Of => "the mirror image across the line y = -x of".to_string(),
            RotateCwOf => "the clockwise rotation by 90 degrees of".to_string(),
            RotateCcwOf => "the counterclockwise rotation by 90 degrees of".to_string(),
            _ => {
                let words = self
                    .name()
                    .trim_end_matches("_of")
                    .replace("above", "upper")
                    .replace("below", "lower")
                    .replace('_', " ");
                format!("the {words} neighbor of")
            }
        }
    }

    /// The `return` expression of the relation's Python-like definition.
    fn python_body(self) -> &'static str {
        match self {
            At => "x == x0 and y == y0",
            LeftOf => "x == x0 - 1 and y == y0",
            RightOf => "x == x0 + 1 and y == y0",
            Above => "x == x0 and y == y0 - 1",
            Below => "x == x0 and y == y0 + 1",
            UpperLeftOf => "x == x0 - 1 and y == y0 - 1",
            LowerLeftOf => "x == x0 - 1 and y == y0 + 1",
            UpperRightOf => "x == x0 + 1 and y == y0 - 1",
            LowerRightOf => "x == x0 + 1 and y == y0 + 1",
            MirrorXOf => "x == -x0 and y == y0",
            MirrorYOf => "x == x0 and y == -y0",
            MirrorOriginOf => "x == -x0 and y == -y0",
            MirrorDiag1Of => "x == y0 and y == x0",
            MirrorDiag2Of => "x == -y0 and y == -x0",
            RotateCwOf => "x == y0 and y == -x0",
            RotateCcwOf => "x == -y0 and y == x0",
        }
    }

    /// The relation's Python-like definition: a meaning comment, a worked example around (2,6)
    /// computed from [`Relation::target`], and the `return` line.
    pub fn fn_def(self) -> String {
        let (x0, y0) = (2, 6);
        let (x, y) = self.target(x0, y0);
        let meaning = match self {
            At => "(x,y) is the queried cell (x0,y0) itself.".to_string(),
            _ => format!("(x,y) is {} (x0,y0).", self.phrase()),
        };
        format!(
            "def {name}(x,y, x0,y0):\n    # {meaning}\n    # e.g. {name}(*({x},{y}), *({x0},{y0})) == True\n    return {body}\n",
            name = self.name(),
            body = self.python_body()
        )
    }
}

impl From<Relation> for String {
    fn from(r: Relation) -> String {
        r.name().to_string()
    }
}

impl TryFrom<String> for Relation {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Relation> {
        Relation::from_name(&s)
    }
}

/// Resolves a relation set: a named set (`neighbor`, `side`, `corner`, `mirror_rotate`, `all`,
/// `side+at` = side followed by at, the notebook's set) or a comma-separated list of relation names.
/// Order matters: the generator picks `rel_fn` by index.
pub fn relation_set(spec: &str) -> Result<Vec<Relation>> {
    let spec = spec.trim();
    let set = match spec {
        "neighbor" => NEIGHBOR.to_vec(),
        "side" => SIDE.to_vec(),
        "corner" => CORNER.to_vec(),
        "mirror_rotate" => MIRROR_ROTATE.to_vec(),
        "all" => ALL.to_vec(),
        "side+at" => {
            let mut v = SIDE.to_vec();
            v.push(At);
            v
        }
        "" => bail!("empty relation set"),
        _ => {
            let mut v = Vec::new();
            for name in spec.split(',') {
                let r = Relation::from_name(name.trim()).map_err(|e| {
                    anyhow::anyhow!("{e}; or use a named set: {}", SET_NAMES.join(", "))
                })?;
                if v.contains(&r) {
                    bail!("relation {} appears twice in {spec:?}", r.name());
                }
                v.push(r);
            }
            v
        }
    };
    Ok(set)
}

/// The function-definition block for a relation set: `at` first, then the set's other relations in
/// [`ALL`] order, separated by blank lines.
pub fn fn_defs(relations: &[Relation]) -> String {
    let mut rels = vec![At];
    rels.extend(
        ALL.iter()
            .copied()
            .filter(|r| *r != At && relations.contains(r)),
    );
    rels.iter()
        .map(|r| r.fn_def())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_hand_written_cases() {
        // (relation, (x0,y0), expected (x,y)) written out by hand; y points down.
        let cases = [
            (At, (2, 3), (2, 3)),
            (LeftOf, (2, 3), (1, 3)),
            (RightOf, (2, 3), (3, 3)),
            (Above, (2, 3), (2, 2)),
            (Below, (2, 3), (2, 4)),
            (UpperLeftOf, (2, 3), (1, 2)),
            (LowerLeftOf, (2, 3), (1, 4)),
            (UpperRightOf, (2, 3), (3, 2)),
            (LowerRightOf, (2, 3), (3, 4)),
            (MirrorXOf, (2, -1), (-2, -1)),
            (MirrorYOf, (2, -1), (2, 1)),
            (MirrorOriginOf, (2, -1), (-2, 1)),
            (MirrorDiag1Of, (2, -1), (-1, 2)),
            (MirrorDiag2Of, (2, -1), (1, -2)),
            // The seed's rotate_cw_of is (y0, −x0): clockwise in y-up math axes.
            (RotateCwOf, (1, 0), (0, -1)),
            (RotateCwOf, (2, -1), (-1, -2)),
            (RotateCcwOf, (2, -1), (1, 2)),
            (LeftOf, (0, 0), (-1, 0)),
            (MirrorOriginOf, (-1, 1), (1, -1)),
        ];
        for (r, (x0, y0), t) in cases {
            assert_eq!(r.target(x0, y0), t, "{}", r.name());
            assert!(r.holds(t.0, t.1, x0, y0));
            assert!(!r.holds(t.0 + 1, t.1, x0, y0));
        }
    }

    #[test]
    fn rotations_and_mirrors_are_involutions_or_inverses() {
        for x0 in -3..=3 {
            for y0 in -3..=3 {
                for r in [
                    MirrorXOf,
                    MirrorYOf,
                    MirrorOriginOf,
                    MirrorDiag1Of,
                    MirrorDiag2Of,
                ] {
                    let (x, y) = r.target(x0, y0);
                    assert_eq!(r.target(x, y), (x0, y0));
                }
                let (x, y) = RotateCwOf.target(x0, y0);
                assert_eq!(RotateCcwOf.target(x, y), (x0, y0));
                // Four quarter turns give the identity.
                let mut p = (x0, y0);
                for _ in 0..4 {
                    p = RotateCwOf.target(p.0, p.1);
                }
                assert_eq!(p, (x0, y0));
            }
        }
    }

    #[test]
    fn sets_names_groups_and_phrases() {
        assert_eq!(
            relation_set("side+at").unwrap(),
            vec![LeftOf, RightOf, Above, Below, At]
        );
        assert_eq!(relation_set("all").unwrap().len(), 16);
        assert_eq!(relation_set("neighbor").unwrap().len(), 9);
        assert_eq!(
            relation_set(" at, mirror_x_of").unwrap(),
            vec![At, MirrorXOf]
        );
        assert!(relation_set("").is_err());
        assert!(relation_set("sideways").is_err());
        assert!(relation_set("at,at").is_err());
        for r in ALL {
            assert_eq!(Relation::from_name(r.name()).unwrap(), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
        }
        assert_eq!(LeftOf.phrase(), "the left neighbor of");
        assert_eq!(Above.phrase(), "the upper neighbor of");
        assert_eq!(LowerRightOf.phrase(), "the lower right neighbor of");
        assert_eq!(At.phrase(), "at");
        assert_eq!(At.group(), RelationType::Neighbor);
        assert_eq!(RotateCwOf.group(), RelationType::MirrorRotate);
        assert_eq!(LeftOf.groups(), vec!["neighbor", "side", "all", "side+at"]);
        assert_eq!(UpperLeftOf.groups(), vec!["neighbor", "corner", "all"]);
    }

    #[test]
    fn fn_defs_examples_hold() {
        let text = fn_defs(&relation_set("mirror_rotate").unwrap());
        assert!(text.starts_with("def at(x,y, x0,y0):"));
        assert_eq!(text.matches("def ").count(), 8);
        // Every worked example `name(*(x,y), *(x0,y0)) == True` must satisfy the relation.
        for line in text.lines().filter(|l| l.contains("# e.g. ")) {
            let call = line.split("# e.g. ").nth(1).unwrap();
            let name = &call[..call.find('(').unwrap()];
            let nums: Vec<i32> = call[name.len()..]
                .split(|c: char| !(c.is_ascii_digit() || c == '-'))
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            let r = Relation::from_name(name).unwrap();
            assert!(r.holds(nums[0], nums[1], nums[2], nums[3]), "{line}");
        }
    }
}
