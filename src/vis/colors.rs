//! Colour tables: matplotlib's qualitative tab10/tab20 and the RdYlBu and Blues colour maps.

/// An sRGB colour.
pub type Rgb = (u8, u8, u8);

/// matplotlib tab10.
pub const TAB10: [Rgb; 10] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
];

/// matplotlib tab20.
pub const TAB20: [Rgb; 20] = [
    (0x1f, 0x77, 0xb4),
    (0xae, 0xc7, 0xe8),
    (0xff, 0x7f, 0x0e),
    (0xff, 0xbb, 0x78),
    (0x2c, 0xa0, 0x2c),
    (0x98, 0xdf, 0x8a),
    (0xd6, 0x27, 0x28),
    (0xff, 0x98, 0x96),
    (0x94, 0x67, 0xbd),
    (0xc5, 0xb0, 0xd5),
    (0x8c, 0x56, 0x4b),
    (0xc4, 0x9c, 0x94),
    (0xe3, 0x77, 0xc2),
    (0xf7, 0xb6, 0xd2),
    (0x7f, 0x7f, 0x7f),
    (0xc7, 0xc7, 0xc7),
    (0xbc, 0xbd, 0x22),
    (0xdb, 0xdb, 0x8d),
    (0x17, 0xbe, 0xcf),
    (0x9e, 0xda, 0xe5),
];

/// Qualitative colours for `n` groups (V11): tab10 without its grey (index 7) for up to 9 groups,
/// otherwise tab20 (cycled beyond 20).
pub fn qualitative(n: usize) -> Vec<Rgb> {
    if n <= 9 {
        TAB10
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 7)
            .map(|(_, c)| *c)
            .take(n)
            .collect()
    } else {
        (0..n).map(|i| TAB20[i % 20]).collect()
    }
}

/// ColorBrewer RdYlBu (11 classes), low = red, high = blue, as matplotlib's `RdYlBu`.
const RDYLBU: [Rgb; 11] = [
    (0xa5, 0x00, 0x26),
    (0xd7, 0x30, 0x27),
    (0xf4, 0x6d, 0x43),
    (0xfd, 0xae, 0x61),
    (0xfe, 0xe0, 0x90),
    (0xff, 0xff, 0xbf),
    (0xe0, 0xf3, 0xf8),
    (0xab, 0xd9, 0xe9),
    (0x74, 0xad, 0xd1),
    (0x45, 0x75, 0xb4),
    (0x31, 0x36, 0x95),
];

/// ColorBrewer Blues (9 classes), low = white, high = dark blue.
const BLUES: [Rgb; 9] = [
    (0xf7, 0xfb, 0xff),
    (0xde, 0xeb, 0xf7),
    (0xc6, 0xdb, 0xef),
    (0x9e, 0xca, 0xe1),
    (0x6b, 0xae, 0xd6),
    (0x42, 0x92, 0xc6),
    (0x21, 0x71, 0xb5),
    (0x08, 0x51, 0x9c),
    (0x08, 0x30, 0x6b),
];

/// A continuous colour map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMap {
    /// Red–yellow–blue (distances: red = close).
    RdYlBu,
    /// White to blue (attention).
    Blues,
}

impl ColorMap {
    /// Colour at `t` in [0, 1] (clamped; NaN maps to 0), linear between the table's stops.
    pub fn at(self, t: f64) -> Rgb {
        let stops: &[Rgb] = match self {
            ColorMap::RdYlBu => &RDYLBU,
            ColorMap::Blues => &BLUES,
        };
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let x = t * (stops.len() - 1) as f64;
        let i = (x.floor() as usize).min(stops.len() - 2);
        let f = x - i as f64;
        let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
        let (a, b) = (stops[i], stops[i + 1]);
        (lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
    }

    /// Colour of `v` scaled linearly from `[vmin, vmax]` (a degenerate range maps to the low end).
    pub fn scaled(self, v: f64, vmin: f64, vmax: f64) -> Rgb {
        let span = vmax - vmin;
        self.at(if span > 0.0 { (v - vmin) / span } else { 0.0 })
    }
}

/// `#rrggbb`.
pub fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualitative_drops_grey_then_switches_to_tab20() {
        let q = qualitative(9);
        assert_eq!(q.len(), 9);
        assert!(!q.contains(&(0x7f, 0x7f, 0x7f)));
        assert_eq!(q[7], TAB10[8]);
        let q = qualitative(12);
        assert_eq!(q[1], TAB20[1]);
        assert_eq!(qualitative(25)[21], TAB20[1]);
    }

    #[test]
    fn colormap_endpoints_and_midpoint() {
        assert_eq!(ColorMap::RdYlBu.at(0.0), (0xa5, 0x00, 0x26));
        assert_eq!(ColorMap::RdYlBu.at(1.0), (0x31, 0x36, 0x95));
        assert_eq!(ColorMap::RdYlBu.at(0.5), (0xff, 0xff, 0xbf));
        // halfway between stops 0 and 1 of Blues: ((f7+de)/2, (fb+eb)/2, (ff+f7)/2) rounded
        assert_eq!(ColorMap::Blues.at(0.0625), (0xeb, 0xf3, 0xfb));
        assert_eq!(
            ColorMap::Blues.scaled(5.0, 0.0, 0.0),
            ColorMap::Blues.at(0.0)
        );
        assert_eq!(hex((1, 0xab, 255)), "#01abff");
    }
}
