//! Activation functions named the way Hugging Face configs name them (`hidden_act`).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::elementwise::{map, silu_mul, Map};
use crate::Result;

/// An activation from a config's `hidden_act` string, with Hugging Face's `ACT2FN` meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(1.702x)` (`quick_gelu`, CLIP).
    QuickGelu,
    /// Exact GELU with erf (`gelu`; `nn.GELU()` in the Phi-3.5 image projection).
    GeluErf,
    /// Tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`; SigLIP).
    GeluTanh,
    /// `x·σ(x)` (`silu`, `swish`; Phi decoders).
    Silu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Parses a `hidden_act` value; unknown names are an error rather than a silent default.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "silu" | "swish" => Self::Silu,
            "relu" => Self::Relu,
            other => return Err(format!("unsupported activation {other:?}")),
        })
    }

    /// The vectorised CPU map computing this activation, where there is one.
    pub(crate) fn vectorised(&self) -> Option<Map> {
        match self {
            Self::QuickGelu => Some(Map::QuickGelu),
            Self::GeluTanh => Some(Map::GeluTanh),
            _ => None,
        }
    }

    /// Applies the activation elementwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(kind) = self.vectorised().filter(|_| x.device().is_cpu() && x.dtype() == DType::F32) {
            return Ok(x.contiguous()?.apply_op1_no_bwd(&Elementwise(kind))?);
        }
        Ok(match self {
            Self::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            Self::GeluErf => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Silu => x.silu()?,
            Self::Relu => x.relu()?,
        })
    }

    /// `up·act(gate)` for a fused `gate | up` projection `[rows, 2n]`: `[rows, n]`. SiLU on f32
    /// CPU tensors (every Phi decoder's MLP) runs as one vectorised pass over the halves;
    /// anything else goes through [`Activation::forward`] and a product.
    pub fn gated(&self, gate_up: &Tensor) -> Result<Tensor> {
        let (_, width) = gate_up.dims2()?;
        let n = width / 2;
        if *self == Self::Silu && gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 {
            return Ok(gate_up.contiguous()?.apply_op1_no_bwd(&GatedSilu)?);
        }
        Ok((gate_up.narrow(1, n, n)? * self.forward(&gate_up.narrow(1, 0, n)?)?)?)
    }
}

/// `up·silu(gate)` over the rows of a contiguous `[rows, 2n]` `gate | up` tensor, on all cores.
struct GatedSilu;

impl CustomOp1 for GatedSilu {
    fn name(&self) -> &'static str {
        "phive-gated-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else { candle_core::bail!("{}: f32 only", self.name()) };
        let (Some((a, z)), &[rows, width]) = (l.contiguous_offsets(), l.dims()) else {
            candle_core::bail!("{}: a contiguous [rows, 2n] tensor only", self.name())
        };
        let n = width / 2;
        let mut out = vec![0f32; rows * n];
        out.par_chunks_mut(n.max(1)).zip(x[a..z].par_chunks(width.max(1))).for_each(|(d, row)| {
            let (gate, up) = row.split_at(n);
            silu_mul(gate, &up[..n], d)
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

/// A vectorised map on all cores (the towers' MLP activations are tens of millions of values).
struct Elementwise(Map);

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        "phive-elementwise"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        const CHUNK: usize = 16 * 1024;
        let CpuStorage::F32(x) = s else { candle_core::bail!("{}: f32 only", self.name()) };
        let Some((a, z)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: non-contiguous", self.name())
        };
        let src = &x[a..z];
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| map(self.0, s, d));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::max_abs_diff;

    /// The vectorised GELUs agree with candle's scalar ones (libm's `exp`/`tanh`) to float
    /// rounding, on a tensor with more than one chunk and a ragged tail.
    #[test]
    fn vectorised_gelus_match_candle() {
        let x = Tensor::randn(0f32, 3.0, (3, 11_111), &candle_core::Device::Cpu).unwrap();
        let quick = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(max_abs_diff(&Activation::QuickGelu.forward(&x).unwrap(), &quick) < 1e-5);
        assert!(max_abs_diff(&Activation::GeluTanh.forward(&x).unwrap(), &x.gelu().unwrap()) < 1e-5);
        // A strided view is made contiguous first.
        let t = x.t().unwrap();
        assert!(max_abs_diff(&Activation::QuickGelu.forward(&t).unwrap(), &quick.t().unwrap()) < 1e-5);
    }

    /// The fused `up·silu(gate)` agrees with candle's narrow, SiLU (libm's `exp`) and product.
    #[test]
    fn gated_silu_matches_candle() {
        for (rows, n) in [(1, 5), (3, 4_099)] {
            let gu = Tensor::randn(0f32, 3.0, (rows, 2 * n), &candle_core::Device::Cpu).unwrap();
            let want = (gu.narrow(1, n, n).unwrap() * gu.narrow(1, 0, n).unwrap().silu().unwrap()).unwrap();
            let got = Activation::Silu.gated(&gu).unwrap();
            assert_eq!(got.dims(), &[rows, n]);
            assert!(max_abs_diff(&got, &want) < 1e-5);
            // Other activations take the unfused path.
            let relu = Activation::Relu.gated(&gu).unwrap();
            let want = (gu.narrow(1, n, n).unwrap() * gu.narrow(1, 0, n).unwrap().relu().unwrap()).unwrap();
            assert_eq!(max_abs_diff(&relu, &want), 0.0);
        }
    }
}
