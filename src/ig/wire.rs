//! Serde for tensors in request/response structs: `{"shape": [..], "data": [f32..]}` (f32, CPU).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A tensor as plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major f32 values.
    pub data: Vec<f32>,
}

impl WireTensor {
    /// From a tensor (converted to f32 on the CPU).
    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Self> {
        let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(Self {
            shape: t.dims().to_vec(),
            data: t.flatten_all()?.to_vec1::<f32>()?,
        })
    }
    /// To a CPU f32 tensor (checks that the shape matches the data length).
    pub fn to_tensor(&self) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.data.clone(), self.shape.as_slice(), &Device::Cpu)
    }
}

/// `#[serde(with = "opt_tensor")]` for `Option<Tensor>`.
pub mod opt_tensor {
    use super::*;

    /// Serializes as `null` or a [`WireTensor`].
    pub fn serialize<S: Serializer>(t: &Option<Tensor>, s: S) -> Result<S::Ok, S::Error> {
        let w = match t {
            Some(t) => Some(WireTensor::from_tensor(t).map_err(serde::ser::Error::custom)?),
            None => None,
        };
        w.serialize(s)
    }

    /// Deserializes `null` or a [`WireTensor`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Tensor>, D::Error> {
        match Option::<WireTensor>::deserialize(d)? {
            None => Ok(None),
            Some(w) => w.to_tensor().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// `#[serde(with = "tensor")]` for `Tensor`.
pub mod tensor {
    use super::*;

    /// Serializes as a [`WireTensor`].
    pub fn serialize<S: Serializer>(t: &Tensor, s: S) -> Result<S::Ok, S::Error> {
        WireTensor::from_tensor(t)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    /// Deserializes a [`WireTensor`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tensor, D::Error> {
        WireTensor::deserialize(d)?
            .to_tensor()
            .map_err(serde::de::Error::custom)
    }
}
