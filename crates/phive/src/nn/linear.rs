//! The projection layer every model goes through.
//!
//! All weight matmuls of the networks happen in [`Linear::forward`], so that quantized weights
//! (ISQ) and per-request LoRA adapters (Phi-4-multimodal) can later be added in this one place
//! without touching the model code.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::Result;

/// How the weight of a [`Linear`] is stored. Only dense weights exist today; a quantized
/// variant (candle `QMatMul`) is the planned addition.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A dense `[out, in]` weight, as stored in the checkpoint.
    Dense(Tensor),
}

/// `y = x Wᵀ + b` over the last dimension of `x`, any number of leading dimensions.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    /// Wraps an existing `[out, in]` weight and optional `[out]` bias.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if let Some(b) = &bias {
            let n = b.dims1()?;
            if n != out_dim {
                return Err(candle_core::Error::Msg(format!(
                    "linear bias has {n} elements but the weight has {out_dim} rows"
                ))
                .into());
            }
        }
        Ok(Self { weight: LinearWeight::Dense(weight), bias, in_dim, out_dim })
    }

    /// Loads `weight` ([out, in]) and, when `bias` is true, `bias` ([out]) under `vb`.
    /// A missing tensor or a wrong shape is an error naming the tensor.
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Self::from_weights(weight, bias)
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The stored weight.
    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// Applies the layer to `x` [..., in] and returns [..., out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(candle_core::Error::Msg("linear input must have rank >= 1".into()).into());
        };
        if last != self.in_dim {
            return Err(candle_core::Error::Msg(format!(
                "linear expects {} input features, got shape {:?}",
                self.in_dim, dims
            ))
            .into());
        }
        let rows: usize = lead.iter().product();
        // Flatten the leading dims into one row dimension: one 2-D gemm, no broadcast copies.
        let x2 = if x.is_contiguous() {
            x.reshape((rows, last))?
        } else {
            x.contiguous()?.reshape((rows, last))?
        };
        let y = match &self.weight {
            LinearWeight::Dense(w) => x2.matmul(&w.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_dim);
        Ok(y.reshape(out_dims)?)
    }
}
