//! P12: the small aggregation helpers the seed used as pandas aggregators over per-sample results
//! (e.g. per-answer correctness lists grouped by relation).

use anyhow::{Result, ensure};

/// Rounds to 3 decimals, as the seed's aggregators report.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `abs_sum`: Σ |x| over the values.
pub fn abs_sum(values: &[f64]) -> f64 {
    values.iter().map(|x| x.abs()).sum()
}

/// `mean_elementwise`: the elementwise mean of equal-length lists, rounded to 3 decimals
/// (e.g. per-answer-position accuracy over samples).
pub fn mean_elementwise(series: &[Vec<f64>]) -> Result<Vec<f64>> {
    ensure!(!series.is_empty(), "mean_elementwise of no lists");
    let n = series[0].len();
    ensure!(
        series.iter().all(|s| s.len() == n),
        "mean_elementwise needs lists of equal length (found {:?})",
        series.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let k = series.len() as f64;
    Ok((0..n)
        .map(|i| round3(series.iter().map(|s| s[i]).sum::<f64>() / k))
        .collect())
}

/// `mean_of_mean`: the mean over all elements of all lists, rounded to 3 decimals.
pub fn mean_of_mean(series: &[Vec<f64>]) -> Result<f64> {
    let count: usize = series.iter().map(Vec::len).sum();
    ensure!(count > 0, "mean_of_mean of no values");
    Ok(round3(series.iter().flatten().sum::<f64>() / count as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_by_hand() {
        assert_eq!(abs_sum(&[1.5, -2.0, 0.25]), 3.75);
        // columns: (1+0+1)/3 = 0.667, (0+0+1)/3 = 0.333, (1+1+1)/3 = 1
        let s = vec![
            vec![1.0, 0.0, 1.0],
            vec![0.0, 0.0, 1.0],
            vec![1.0, 1.0, 1.0],
        ];
        assert_eq!(mean_elementwise(&s).unwrap(), vec![0.667, 0.333, 1.0]);
        // 6 ones out of 9 values
        assert_eq!(mean_of_mean(&s).unwrap(), 0.667);
        // unequal lists: the grand mean counts every value once: (1 + 0 + 0.5) / 3
        assert_eq!(mean_of_mean(&[vec![1.0], vec![0.0, 0.5]]).unwrap(), 0.5);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(mean_elementwise(&[]).is_err());
        assert!(mean_elementwise(&[vec![1.0], vec![1.0, 2.0]]).is_err());
        assert!(mean_of_mean(&[vec![]]).is_err());
    }
}
