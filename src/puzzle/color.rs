//! P1: the ten-letter colour alphabet.

/// Colour letters, indexed 0–9. Puzzles with `n_color = c` use the first `c` of them.
pub const COLOR_LETTERS: [char; 10] = ['K', 'B', 'R', 'G', 'Y', 'E', 'P', 'O', 'T', 'M'];

/// English names of the colours, same order as [`COLOR_LETTERS`].
pub const COLOR_NAMES: [&str; 10] = [
    "black", "blue", "red", "green", "yellow", "grey", "pink", "orange", "teal", "maroon",
];

/// Largest supported number of colours.
pub const MAX_COLORS: usize = COLOR_LETTERS.len();

/// The letter of colour `index` (panics only on an index ≥ 10, which the generator never produces).
pub fn color_letter(index: u8) -> char {
    COLOR_LETTERS[index as usize]
}

/// The colour index of a letter, if it is one of the ten.
pub fn color_index(letter: char) -> Option<u8> {
    COLOR_LETTERS
        .iter()
        .position(|&c| c == letter)
        .map(|i| i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_roundtrip_and_default_five() {
        for i in 0..10u8 {
            assert_eq!(color_index(color_letter(i)), Some(i));
        }
        assert_eq!(color_index('X'), None);
        let first5: String = COLOR_LETTERS[..5].iter().collect();
        assert_eq!(first5, "KBRGY");
    }
}
