//! AdamW (decoupled weight decay) with global-norm gradient clipping and a linear warm-up +
//! cosine learning-rate schedule. Written here rather than taken from candle-nn so that its
//! moments can be saved and restored exactly (bit-identical resume).

use anyhow::{Context, Result};
use candle_core::{Tensor, Var, backprop::GradStore};

use super::config::OptimConfig;

/// Learning rate of step `t` (0-based): linear warm-up to `lr` over `warmup` steps, then a
/// cosine from `lr` to `min_lr` at the last step.
pub fn lr_at(o: &OptimConfig, t: usize) -> f64 {
    if t < o.warmup {
        return o.lr * (t + 1) as f64 / o.warmup as f64;
    }
    let span = o.steps.saturating_sub(o.warmup).max(1) as f64;
    let progress = ((t - o.warmup) as f64 / span).min(1.0);
    o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Moments of every variable and the number of updates done.
pub struct AdamW {
    /// First moments, one per variable.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Updates done so far.
    pub t: usize,
    /// Whether each variable is decayed (matrices yes; norm weights and biases no).
    decay: Vec<bool>,
}

impl AdamW {
    /// Zero moments for `vars`; `names` decide which are decayed.
    pub fn new(vars: &[Var], names: &[String]) -> Result<AdamW> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            t: 0,
            decay: names.iter().map(|n| decayed(n)).collect(),
        })
    }

    /// Restores saved moments.
    pub fn restore(
        vars: &[Var],
        names: &[String],
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        t: usize,
    ) -> Result<AdamW> {
        anyhow::ensure!(
            m.len() == vars.len() && v.len() == vars.len(),
            "the checkpoint has {} moments for {} variables",
            m.len(),
            vars.len()
        );
        Ok(AdamW {
            m,
            v,
            t,
            decay: names.iter().map(|n| decayed(n)).collect(),
        })
    }

    /// One update with learning rate `lr`; gradients are clipped to a global norm of
    /// `o.clip` first (when positive). Returns the gradient norm before clipping.
    pub fn step(
        &mut self,
        vars: &[Var],
        grads: &GradStore,
        o: &OptimConfig,
        lr: f64,
    ) -> Result<f64> {
        let gs: Vec<Tensor> = vars
            .iter()
            .map(|v| match grads.get(v) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0f64;
        for g in &gs {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        anyhow::ensure!(
            norm.is_finite(),
            "the gradient norm is {norm}: training diverged"
        );
        let scale = if o.clip > 0.0 && norm > o.clip {
            o.clip / norm
        } else {
            1.0
        };
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - o.beta1.powi(t);
        let bc2 = 1.0 - o.beta2.powi(t);
        for (i, var) in vars.iter().enumerate() {
            let g = (&gs[i] * scale)?;
            let m = ((&self.m[i] * o.beta1)? + (&g * (1.0 - o.beta1))?)?;
            let v = ((&self.v[i] * o.beta2)? + (g.sqr()? * (1.0 - o.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + o.eps)?)?;
            let p = var.as_tensor();
            let p = if self.decay[i] && o.weight_decay > 0.0 {
                (p * (1.0 - lr * o.weight_decay))?
            } else {
                p.clone()
            };
            var.set(&(p - (update * lr)?)?)
                .context("updating a weight")?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(norm)
    }
}

/// Matrices are decayed; norm weights and biases are not.
fn decayed(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias"))
}
