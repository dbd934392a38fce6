//! P3: a grid with a coordinate frame. Corner frames use x ∈ [0, n), y ∈ [0, m); center frames
//! (odd n and m only) use x ∈ [−(n−1)/2, (n−1)/2] and y likewise, so coordinates can be negative.
//! Cells are addressed as `grid[(x, y)]`, x first; the y axis points down.

use std::ops::{Index, RangeInclusive};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Where the coordinate origin sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// Origin at the top-left cell: x ∈ [0, n), y ∈ [0, m).
    Corner,
    /// Origin at the central cell (n and m odd): x ∈ [−(n−1)/2, (n−1)/2].
    Center,
}

impl Frame {
    /// Parses `corner` or `center`.
    pub fn parse(s: &str) -> Result<Frame> {
        match s {
            "corner" => Ok(Frame::Corner),
            "center" | "centre" => Ok(Frame::Center),
            _ => bail!("unknown frame {s:?} (expected corner or center)"),
        }
    }

    /// The frame's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Frame::Corner => "corner",
            Frame::Center => "center",
        }
    }

    /// Storage offset of coordinate 0 along an axis of length `len`.
    pub fn origin(self, len: usize) -> i32 {
        match self {
            Frame::Corner => 0,
            Frame::Center => (len as i32 - 1) / 2,
        }
    }

    /// Checks that an n×m grid can use this frame.
    pub fn check_size(self, n: usize, m: usize) -> Result<()> {
        if n == 0 || m == 0 {
            bail!("grid size must be at least 1×1, got {n}×{m}");
        }
        if self == Frame::Center && (n.is_multiple_of(2) || m.is_multiple_of(2)) {
            bail!("the center frame needs odd n and m, got {n}×{m}");
        }
        Ok(())
    }
}

/// An n×m grid of colour indices in a coordinate frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    /// Extent along x.
    pub n: usize,
    /// Extent along y.
    pub m: usize,
    /// Coordinate frame.
    pub frame: Frame,
    /// Colours in storage order, `colors[ix][iy]` with ix = x − x_min, iy = y − y_min.
    pub colors: Vec<Vec<u8>>,
}

impl Grid {
    /// Builds a grid from storage-order colours `colors[ix][iy]` (n rows of m entries).
    pub fn new(frame: Frame, colors: Vec<Vec<u8>>) -> Result<Grid> {
        let n = colors.len();
        let m = colors.first().map_or(0, Vec::len);
        frame.check_size(n, m)?;
        if colors.iter().any(|c| c.len() != m) {
            bail!("grid rows have different lengths");
        }
        Ok(Grid {
            n,
            m,
            frame,
            colors,
        })
    }

    /// The x coordinates, in increasing order.
    pub fn xs(&self) -> RangeInclusive<i32> {
        let o = self.frame.origin(self.n);
        -o..=self.n as i32 - 1 - o
    }

    /// The y coordinates, in increasing order.
    pub fn ys(&self) -> RangeInclusive<i32> {
        let o = self.frame.origin(self.m);
        -o..=self.m as i32 - 1 - o
    }

    /// Whether (x, y) lies inside the grid.
    pub fn contains(&self, x: i32, y: i32) -> bool {
        self.xs().contains(&x) && self.ys().contains(&y)
    }

    /// Whether (x, y) lies on the outer border of the grid.
    pub fn on_border(&self, x: i32, y: i32) -> bool {
        let (xs, ys) = (self.xs(), self.ys());
        x == *xs.start() || x == *xs.end() || y == *ys.start() || y == *ys.end()
    }

    /// Storage indices (ix, iy) of (x, y), if inside.
    pub fn storage_index(&self, x: i32, y: i32) -> Option<(usize, usize)> {
        self.contains(x, y).then(|| {
            (
                (x + self.frame.origin(self.n)) as usize,
                (y + self.frame.origin(self.m)) as usize,
            )
        })
    }

    /// The colour at (x, y), or None outside the grid.
    pub fn get(&self, x: i32, y: i32) -> Option<u8> {
        self.storage_index(x, y).map(|(i, j)| self.colors[i][j])
    }
}

impl Index<(i32, i32)> for Grid {
    type Output = u8;
    /// Panics outside the grid; use [`Grid::get`] for checked access.
    fn index(&self, (x, y): (i32, i32)) -> &u8 {
        let (i, j) = self
            .storage_index(x, y)
            .unwrap_or_else(|| panic!("({x},{y}) is outside the {}×{} grid", self.n, self.m));
        &self.colors[i][j]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_frame_uses_negative_coordinates() {
        // colors[ix][iy]: a 3×3 grid whose colour encodes its storage index 3·ix + iy.
        let colors = (0..3u8)
            .map(|i| (0..3u8).map(|j| 3 * i + j).collect())
            .collect();
        let g = Grid::new(Frame::Center, colors).unwrap();
        assert_eq!(g.xs(), -1..=1);
        assert_eq!(g[(-1, -1)], 0);
        assert_eq!(g[(0, 0)], 4);
        assert_eq!(g[(1, -1)], 6);
        assert_eq!(g[(-1, 1)], 2);
        assert_eq!(g.get(2, 0), None);
        assert!(g.on_border(1, 0) && !g.on_border(0, 0));
        let c = Grid::new(Frame::Corner, g.colors.clone()).unwrap();
        assert_eq!(c[(0, 0)], 0);
        assert_eq!(c[(2, 1)], 7);
        assert_eq!(c.get(-1, 0), None);
    }

    #[test]
    fn even_center_is_rejected() {
        assert!(Grid::new(Frame::Center, vec![vec![0; 4]; 3]).is_err());
        assert!(Frame::Center.check_size(5, 4).is_err());
        assert!(Frame::Corner.check_size(4, 4).is_ok());
    }
}
