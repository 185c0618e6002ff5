//! Activation functions named the way Hugging Face configs name them (`hidden_act`).

use candle_core::Tensor;

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

    /// Applies the activation elementwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            Self::GeluErf => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Silu => x.silu()?,
            Self::Relu => x.relu()?,
        })
    }
}
