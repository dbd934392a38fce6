//! U1: top-k over a multi-dimensional tensor.

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The k largest entries of a tensor: per entry its multi-index and value, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    /// Multi-indices (one `Vec` of length rank per entry).
    pub indices: Vec<Vec<usize>>,
    /// The values (signed, also when ranked by |value|).
    pub values: Vec<f32>,
}

impl TopK {
    /// Per-axis index arrays (the seed's `(idx_axis0, idx_axis1, …)`).
    pub fn axes(&self) -> Vec<Vec<usize>> {
        let rank = self.indices.first().map_or(0, Vec::len);
        (0..rank)
            .map(|a| self.indices.iter().map(|ix| ix[a]).collect())
            .collect()
    }
}

/// U1: the k largest entries of `t` (any rank, a 0-d tensor is one entry), by signed value or
/// by |value| (`by_abs`); values are always the signed originals. Ties keep the flat
/// (row-major) order; k larger than the tensor gives every entry. NaN is an error (a NaN
/// attribution means something upstream broke, and no rank for it is right).
pub fn topk_md(t: &Tensor, k: usize, by_abs: bool) -> Result<TopK> {
    let dims = t.dims().to_vec();
    let vals = t
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    ensure!(
        vals.iter().all(|x| !x.is_nan()),
        "topk_md: the tensor contains NaN"
    );
    let key = |v: f32| if by_abs { v.abs() } else { v };
    let mut order: Vec<usize> = (0..vals.len()).collect();
    // stable: equal keys keep the flat order
    order.sort_by(|&a, &b| key(vals[b]).total_cmp(&key(vals[a])));
    order.truncate(k);
    let unravel = |mut f: usize| {
        let mut ix = vec![0; dims.len()];
        for a in (0..dims.len()).rev() {
            ix[a] = f % dims[a];
            f /= dims[a];
        }
        ix
    };
    Ok(TopK {
        indices: order.iter().map(|&f| unravel(f)).collect(),
        values: order.iter().map(|&f| vals[f]).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn topk_3d() {
        // [2,2,2] values 0..8 with a large negative
        let v = vec![0., 1., 2., -9., 4., 5., 6., 7.];
        let t = Tensor::from_vec(v, (2, 2, 2), &Device::Cpu).unwrap();
        let top = topk_md(&t, 2, false).unwrap();
        assert_eq!(top.indices, vec![vec![1, 1, 1], vec![1, 1, 0]]);
        assert_eq!(top.values, vec![7., 6.]);
        let top = topk_md(&t, 1, true).unwrap();
        assert_eq!(top.indices, vec![vec![0, 1, 1]]);
        assert_eq!(top.values, vec![-9.]);
        assert_eq!(topk_md(&t, 3, false).unwrap().axes()[0], vec![1, 1, 1]);
        assert_eq!(topk_md(&t, 100, false).unwrap().values.len(), 8);
    }

    #[test]
    fn topk_3d_by_value_and_abs() {
        // shape [2, 2, 3]; flat index f = 6a + 3b + c
        let mut v = vec![0.0f32; 12];
        v[7] = 5.0; // (1,0,1)
        v[2] = -9.0; // (0,0,2)
        v[10] = 3.0; // (1,1,1)
        v[4] = 3.0; // (0,1,1) ties with 10, lower flat index first
        let t = Tensor::from_vec(v, (2, 2, 3), &Device::Cpu).unwrap();
        let top = topk_md(&t, 3, false).unwrap();
        assert_eq!(
            top.indices,
            vec![vec![1, 0, 1], vec![0, 1, 1], vec![1, 1, 1]]
        );
        assert_eq!(top.values, vec![5.0, 3.0, 3.0]);
        assert_eq!(
            top.axes(),
            vec![vec![1, 0, 1], vec![0, 1, 1], vec![1, 1, 1]]
        );
        let top = topk_md(&t, 2, true).unwrap();
        assert_eq!(top.indices, vec![vec![0, 0, 2], vec![1, 0, 1]]);
        assert_eq!(top.values, vec![-9.0, 5.0]);
        assert_eq!(topk_md(&t, 100, false).unwrap().values.len(), 12);
    }

    #[test]
    fn topk_rejects_nan() {
        let t = Tensor::from_vec(vec![1.0f32, f32::NAN], 2, &Device::Cpu).unwrap();
        assert!(topk_md(&t, 1, false).is_err());
    }
}
