//! Integrated-gradient path rules (A1, A6) and the completeness delta.
//!
//! A rule gives points α on the path baseline(=0) → x and weights summing to 1; the node backward
//! returns the weighted mean of the gradients at α·x (the *path-averaged gradient*, A6). The
//! attribution is that gradient times the activation (A18).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Path quadrature rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum IgRule {
    /// The seed's rule: `steps+1` points α = i/steps, i = 0..=steps (both ends), equal weights.
    /// `steps = 0` is the plain gradient at α = 1.
    Seed {
        /// Number of intervals.
        steps: usize,
    },
    /// Gauss–Legendre with `n` nodes on \[0, 1\].
    GaussLegendre {
        /// Number of nodes.
        n: usize,
    },
    /// Riemann midpoint: α = (i + ½)/n, i = 0..n, equal weights.
    RiemannMidpoint {
        /// Number of points.
        n: usize,
    },
}

impl Default for IgRule {
    fn default() -> Self {
        Self::Seed { steps: 4 }
    }
}

impl IgRule {
    /// The plain gradient at α = 1.
    pub const PLAIN: IgRule = IgRule::Seed { steps: 0 };

    /// Checks the resolution: n ≥ 1 for Gauss–Legendre and midpoint, and steps / n at most
    /// [`crate::limits::IG_RESOLUTION`] (a rule over the limit would allocate and loop without
    /// bound).
    pub fn validate(&self) -> Result<()> {
        let (name, r) = match *self {
            IgRule::Seed { steps } => ("seed steps", steps),
            IgRule::GaussLegendre { n } => ("gauss_legendre n", n),
            IgRule::RiemannMidpoint { n } => ("riemann_midpoint n", n),
        };
        if r == 0 && !matches!(self, IgRule::Seed { .. }) {
            bail!("{} needs n >= 1", name.trim_end_matches(" n"));
        }
        crate::limits::IG_RESOLUTION.check(r, name)?;
        Ok(())
    }

    /// (α, weight) pairs; weights sum to 1. Fails for a rule that [`IgRule::validate`] refuses.
    pub fn points(&self) -> Result<Vec<(f64, f64)>> {
        self.validate()?;
        match *self {
            IgRule::Seed { steps: 0 } => Ok(vec![(1.0, 1.0)]),
            IgRule::Seed { steps } => {
                let w = 1.0 / (steps + 1) as f64;
                Ok((0..=steps).map(|i| (i as f64 / steps as f64, w)).collect())
            }
            IgRule::RiemannMidpoint { n } => {
                if n == 0 {
                    bail!("riemann_midpoint needs n ≥ 1");
                }
                let w = 1.0 / n as f64;
                Ok((0..n).map(|i| ((i as f64 + 0.5) * w, w)).collect())
            }
            IgRule::GaussLegendre { n } => gauss_legendre_01(n),
        }
    }

    /// The same rule with a different resolution (steps or n).
    pub fn with_resolution(&self, r: usize) -> IgRule {
        match self {
            IgRule::Seed { .. } => IgRule::Seed { steps: r },
            IgRule::GaussLegendre { .. } => IgRule::GaussLegendre { n: r },
            IgRule::RiemannMidpoint { .. } => IgRule::RiemannMidpoint { n: r },
        }
    }

    /// Its resolution (steps or n).
    pub fn resolution(&self) -> usize {
        match *self {
            IgRule::Seed { steps } => steps,
            IgRule::GaussLegendre { n } | IgRule::RiemannMidpoint { n } => n,
        }
    }
}

/// Gauss–Legendre nodes and weights mapped to \[0, 1\] (weights sum to 1), by Newton iteration on
/// the Legendre polynomial P_n.
pub fn gauss_legendre_01(n: usize) -> Result<Vec<(f64, f64)>> {
    if n == 0 {
        bail!("gauss_legendre needs n ≥ 1");
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // initial guess (Tricomi)
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (p, d) = legendre(n, x);
            dp = d;
            let dx = p / d;
            x -= dx;
            if dx.abs() < 1e-15 {
                break;
            }
        }
        let (_, d) = legendre(n, x);
        if d != 0.0 {
            dp = d;
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        // map [-1,1] → [0,1]: α = (1 - x)/2 (ascending), weight/2
        out.push(((1.0 - x) / 2.0, w / 2.0));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// (P_n(x), P_n'(x)).
fn legendre(n: usize, x: f64) -> (f64, f64) {
    let (mut p0, mut p1) = (1.0, x);
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let k = k as f64;
        let p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1;
        p1 = p2;
    }
    let d = n as f64 * (x * p1 - p0) / (x * x - 1.0);
    (p1, d)
}

/// Completeness of IG on a scalar objective: Σ grad·x against f(x) − f(baseline).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Completeness {
    /// f(x).
    pub f_x: f64,
    /// f(baseline) (baseline 0).
    pub f_baseline: f64,
    /// Σ grad·x with the path-averaged grad.
    pub sum_grad_x: f64,
    /// |Σ grad·x − (f(x) − f(baseline))| / |f(x) − f(baseline)|.
    pub delta: f64,
    /// The rule that produced it.
    pub rule: IgRule,
}

impl Completeness {
    /// Computes the relative delta.
    pub fn new(f_x: f64, f_baseline: f64, sum_grad_x: f64, rule: IgRule) -> Self {
        let diff = f_x - f_baseline;
        let delta = (sum_grad_x - diff).abs() / diff.abs().max(f64::MIN_POSITIVE);
        Self {
            f_x,
            f_baseline,
            sum_grad_x,
            delta,
            rule,
        }
    }
}

/// Adaptive mode for scalar objectives: double the resolution from `rule` until the completeness
/// delta is ≤ `tol` or the resolution would exceed `max_resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adaptive {
    /// Tolerance on the relative delta (default 0.05).
    pub tol: f64,
    /// Largest steps / n tried (default 256).
    pub max_resolution: usize,
}

impl Adaptive {
    /// Checks `tol` (finite, > 0) and `max_resolution` (≥ 1, at most
    /// [`crate::limits::IG_RESOLUTION`]).
    pub fn validate(&self) -> Result<()> {
        if !(self.tol.is_finite() && self.tol > 0.0) {
            bail!(
                "adaptive tol must be a positive finite number, got {}",
                self.tol
            );
        }
        if self.max_resolution == 0 {
            bail!("adaptive max_resolution must be ≥ 1");
        }
        crate::limits::IG_RESOLUTION.check(self.max_resolution, "adaptive max_resolution")?;
        Ok(())
    }
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            tol: 0.05,
            max_resolution: 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        for n in 1..8 {
            let pts = gauss_legendre_01(n).unwrap();
            // exact for degree ≤ 2n-1: ∫0^1 α^p dα = 1/(p+1)
            for p in 0..(2 * n) {
                let s: f64 = pts.iter().map(|(a, w)| w * a.powi(p as i32)).sum();
                assert!(
                    (s - 1.0 / (p as f64 + 1.0)).abs() < 1e-12,
                    "n={n} p={p} s={s}"
                );
            }
        }
    }

    #[test]
    fn seed_rule_points() {
        let p = IgRule::Seed { steps: 4 }.points().unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[0].0, 0.0);
        assert_eq!(p[4].0, 1.0);
        assert!((p.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(IgRule::PLAIN.points().unwrap(), vec![(1.0, 1.0)]);
        let m = IgRule::RiemannMidpoint { n: 2 }.points().unwrap();
        assert_eq!(m, vec![(0.25, 0.5), (0.75, 0.5)]);
    }
}
