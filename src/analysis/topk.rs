//! U1 `topk_md`: top-k over a tensor of any rank, with unravelled indices.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

/// The k largest entries of a tensor, largest first.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Per item: the multi-dimensional index and the (signed) value.
    pub items: Vec<(Vec<usize>, f32)>,
}

impl TopK {
    /// The per-axis form `(idx_axis0, idx_axis1, …)` and the values.
    pub fn per_axis(&self) -> (Vec<Vec<usize>>, Vec<f32>) {
        let mut axes = vec![Vec::with_capacity(self.items.len()); self.shape.len()];
        for (idx, _) in &self.items {
            for (a, &i) in idx.iter().enumerate() {
                axes[a].push(i);
            }
        }
        (axes, self.items.iter().map(|(_, v)| *v).collect())
    }
}

/// U1: flattens `t`, takes the `k` largest values (by signed value, or by |value| when `by_abs`),
/// and unravels the flat indices. Ties keep the lower flat index first. `k` larger than the number
/// of elements returns all of them. Values are always the signed originals. NaN is an error.
pub fn topk_md(t: &Tensor, k: usize, by_abs: bool) -> Result<TopK> {
    let shape = t.dims().to_vec();
    let v = t
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    ensure!(
        v.iter().all(|x| !x.is_nan()),
        "topk_md: the tensor contains NaN"
    );
    let key = |x: f32| if by_abs { x.abs() } else { x };
    let mut order: Vec<usize> = (0..v.len()).collect();
    let k = k.min(v.len());
    order.sort_by(|&a, &b| key(v[b]).total_cmp(&key(v[a])).then(a.cmp(&b)));
    let items = order[..k]
        .iter()
        .map(|&flat| {
            let mut idx = vec![0; shape.len()];
            let mut rem = flat;
            for a in (0..shape.len()).rev() {
                idx[a] = rem % shape[a];
                rem /= shape[a];
            }
            (idx, v[flat])
        })
        .collect();
    Ok(TopK { shape, items })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            top.items,
            vec![
                (vec![1, 0, 1], 5.0),
                (vec![0, 1, 1], 3.0),
                (vec![1, 1, 1], 3.0)
            ]
        );
        let (axes, vals) = top.per_axis();
        assert_eq!(axes, vec![vec![1, 0, 1], vec![0, 1, 1], vec![1, 1, 1]]);
        assert_eq!(vals, vec![5.0, 3.0, 3.0]);
        let top = topk_md(&t, 2, true).unwrap();
        assert_eq!(top.items, vec![(vec![0, 0, 2], -9.0), (vec![1, 0, 1], 5.0)]);
        assert_eq!(topk_md(&t, 100, false).unwrap().items.len(), 12);
    }

    #[test]
    fn topk_rejects_nan() {
        let t = Tensor::from_vec(vec![1.0f32, f32::NAN], 2, &Device::Cpu).unwrap();
        assert!(topk_md(&t, 1, false).is_err());
    }
}
