//! Direct logit attribution: the contribution of each head, MLP and the embedding to the logit
//! of a token, in logit units, with the final RMSNorm linearised at the cached scale:
//! DLA_c\[p\] = Σ_e W_U\[t_p, e\] · w_e · c\[p, e\] / √(var_p + ε), where c is the component's
//! residual contribution, w the final norm's weight and var_p the cached mean square of the final
//! residual at p. The residual is the sum of the embedding and every head and MLP output, so the
//! contributions add up to the model's logit (o_proj has no bias).
//!
//! Shape letters: L layers, H heads, k positions, e hidden.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

use crate::backend::{Act, Backend, HeadSel, SampleKey};

/// Direct logit attributions of one sample.
pub struct Dla {
    /// `[L, H+1, k]`: heads, and the MLP in column H.
    pub components: Tensor,
    /// `[k]`: the embedding's contribution.
    pub embed: Tensor,
    /// `[k]`: the sum of every contribution (equals the model's logit).
    pub total: Tensor,
    /// `[k]`: the model's own logit of each token (from the cached forward).
    pub logits: Tensor,
}

/// Direct logit attribution of `tokens[i]` at `positions[i]` (one token per position) of a
/// cached sample.
pub fn direct_logit_attribution(
    backend: &dyn Backend,
    key: &SampleKey,
    positions: &[usize],
    tokens: &[u32],
) -> Result<Dla> {
    let cfg = backend.config();
    let (nl, nh, v) = (
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.vocab_size,
    );
    ensure!(!positions.is_empty(), "no positions");
    ensure!(
        tokens.len() == positions.len(),
        "{} tokens for {} positions",
        tokens.len(),
        positions.len()
    );
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= v) {
        anyhow::bail!("token id {t} out of range (vocab size {v})");
    }
    let k = positions.len();
    let rows: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
    let w_u = backend.weight("lm_head.weight", Some(&rows))?; // [k,e]
    let w_n = backend.weight("model.norm.weight", None)?; // [e]
    let var = backend
        .activation(key, &Act::InputNormVar(nl), Some(positions))?
        .to_dtype(DType::F32)?
        .reshape((k, 1))?;
    // d[p, e] = W_U[t_p, e] · w_e / √(var_p + ε)
    let d = w_u
        .broadcast_mul(&w_n.unsqueeze(0)?)?
        .broadcast_div(&(var + cfg.rms_norm_eps)?.sqrt()?)?; // [k,e]
    let host =
        |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?) };
    let mut per_layer = Vec::with_capacity(nl);
    for l in 0..nl {
        crate::cancel::check()?;
        let heads =
            host(backend.head_output(key, l, &HeadSel::All, Some(positions))?)?.squeeze(0)?; // [k,n,e]
        let h = heads.broadcast_mul(&d.unsqueeze(1)?)?.sum(2)?; // [k,n]
        let mlp = host(backend.mlp_output(key, l, Some(positions))?)?.squeeze(0)?; // [k,e]
        let m = (mlp * &d)?.sum(1)?.unsqueeze(1)?; // [k,1]
        per_layer.push(Tensor::cat(&[h, m], 1)?.t()?); // [H+1,k]
    }
    let components = Tensor::stack(&per_layer, 0)?; // [L,H+1,k]
    let emb = host(backend.hidden_states(key, 0, Some(positions))?)?.squeeze(0)?; // [k,e]
    let embed = (emb * &d)?.sum(1)?; // [k]
    let total = (components.sum(0)?.sum(0)? + &embed)?;
    let lg = host(backend.logits(key, Some(positions))?)?.squeeze(0)?; // [k,v]
    let idx = Tensor::new(tokens, lg.device())?.unsqueeze(1)?;
    let logits = lg.gather(&idx, 1)?.squeeze(1)?;
    debug_assert_eq!(components.dims(), &[nl, nh + 1, k]);
    Ok(Dla {
        components,
        embed,
        total,
        logits,
    })
}
