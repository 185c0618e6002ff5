//! The ISQ target types and GGML's conventions for promotion and fallback.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

/// A weight storage type for in-situ quantization (`--isq TYPE`).
///
/// The GGML block types are stored in GGML's block layout and multiplied with integer SIMD after
/// quantizing each activation row to 8 bits: Q4K and Q6K by phive's own kernels
/// ([`crate::kernels`]), the others by candle's. `F16` and `BF16` are dense
/// half-precision storage: half the memory of f32, computed in f32 (see [`crate::quant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IsqType {
    /// 32-weight blocks, 4-bit, one f16 scale (4.5 bits per weight).
    Q4_0,
    /// 32-weight blocks, 4-bit, f16 scale and minimum (5.0 bpw).
    Q4_1,
    /// 32-weight blocks, 5-bit, one scale (5.5 bpw).
    Q5_0,
    /// 32-weight blocks, 5-bit, scale and minimum (6.0 bpw).
    Q5_1,
    /// 32-weight blocks, 8-bit, one scale (8.5 bpw).
    Q8_0,
    /// 256-weight super-blocks, 2-bit k-quant (2.625 bpw).
    Q2K,
    /// 256-weight super-blocks, 3-bit k-quant (3.4375 bpw).
    Q3K,
    /// 256-weight super-blocks, 4-bit k-quant (4.5 bpw).
    Q4K,
    /// 256-weight super-blocks, 5-bit k-quant (5.5 bpw).
    Q5K,
    /// 256-weight super-blocks, 6-bit k-quant (6.5625 bpw).
    Q6K,
    /// 256-weight super-blocks, 8-bit k-quant (9.125 bpw; GGML's intermediate type).
    Q8K,
    /// Dense IEEE half precision.
    F16,
    /// Dense bfloat16 (the checkpoint's own precision for the Phi models: lossless for them).
    BF16,
}

impl IsqType {
    /// Every type, in the order `--help` and error messages list them.
    pub const ALL: [IsqType; 13] = [
        IsqType::Q4_0,
        IsqType::Q4_1,
        IsqType::Q5_0,
        IsqType::Q5_1,
        IsqType::Q8_0,
        IsqType::Q2K,
        IsqType::Q3K,
        IsqType::Q4K,
        IsqType::Q5K,
        IsqType::Q6K,
        IsqType::Q8K,
        IsqType::F16,
        IsqType::BF16,
    ];

    /// The canonical name (`Q4K`, `Q8_0`, `BF16`), as `Display` prints it and GGUF metadata records it.
    pub fn name(self) -> &'static str {
        match self {
            IsqType::Q4_0 => "Q4_0",
            IsqType::Q4_1 => "Q4_1",
            IsqType::Q5_0 => "Q5_0",
            IsqType::Q5_1 => "Q5_1",
            IsqType::Q8_0 => "Q8_0",
            IsqType::Q2K => "Q2K",
            IsqType::Q3K => "Q3K",
            IsqType::Q4K => "Q4K",
            IsqType::Q5K => "Q5K",
            IsqType::Q6K => "Q6K",
            IsqType::Q8K => "Q8K",
            IsqType::F16 => "F16",
            IsqType::BF16 => "BF16",
        }
    }

    /// The candle/GGML storage type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            IsqType::Q4_0 => GgmlDType::Q4_0,
            IsqType::Q4_1 => GgmlDType::Q4_1,
            IsqType::Q5_0 => GgmlDType::Q5_0,
            IsqType::Q5_1 => GgmlDType::Q5_1,
            IsqType::Q8_0 => GgmlDType::Q8_0,
            IsqType::Q2K => GgmlDType::Q2K,
            IsqType::Q3K => GgmlDType::Q3K,
            IsqType::Q4K => GgmlDType::Q4K,
            IsqType::Q5K => GgmlDType::Q5K,
            IsqType::Q6K => GgmlDType::Q6K,
            IsqType::Q8K => GgmlDType::Q8K,
            IsqType::F16 => GgmlDType::F16,
            IsqType::BF16 => GgmlDType::BF16,
        }
    }

    /// The ISQ type stored as `dtype`, if it is one (F32 and Q8_1 are not ISQ targets).
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml() == dtype)
    }

    /// Dense half-precision storage (no blocks).
    pub fn is_dense(self) -> bool {
        matches!(self, IsqType::F16 | IsqType::BF16)
    }

    /// Weights per block: a weight's input width must be a multiple of this.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// Storage cost in bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        let d = self.ggml();
        d.type_size() as f64 * 8.0 / d.block_size() as f64
    }

    /// The type for output-sensitive tensors (`lm_head`), as GGML and mistral.rs do it:
    /// Q2K/Q3K/Q4K/Q4_0/Q4_1 → Q6K; Q5K/Q6K/Q8K/Q5_x/Q8_0 → Q8_0; F16/BF16 unchanged.
    /// (llama.cpp's Q4_K_M keeps `output.weight` at Q6_K for the same reason: the logits are
    /// the most quantization-sensitive matmul.)
    pub fn promoted(self) -> IsqType {
        match self {
            IsqType::Q2K | IsqType::Q3K | IsqType::Q4K | IsqType::Q4_0 | IsqType::Q4_1 => IsqType::Q6K,
            IsqType::Q5K | IsqType::Q6K | IsqType::Q8K | IsqType::Q5_0 | IsqType::Q5_1 | IsqType::Q8_0 => {
                IsqType::Q8_0
            }
            IsqType::F16 | IsqType::BF16 => self,
        }
    }

    /// The next type to try when a tensor's width is not a multiple of the block size, following
    /// llama.cpp's `llama_tensor_get_type` fallback: Q2K/Q3K → Q4_0 (llama.cpp uses IQ4_NL, which
    /// candle lacks; Q4_0 is the same size), Q4K → Q5_0, Q5K → Q5_1, Q6K/Q8K → Q8_0, and any
    /// 32-block type → F16. `None` for the dense types, which fit every width.
    pub fn fallback(self) -> Option<IsqType> {
        match self {
            IsqType::Q2K | IsqType::Q3K => Some(IsqType::Q4_0),
            IsqType::Q4K => Some(IsqType::Q5_0),
            IsqType::Q5K => Some(IsqType::Q5_1),
            IsqType::Q6K | IsqType::Q8K => Some(IsqType::Q8_0),
            IsqType::Q4_0 | IsqType::Q4_1 | IsqType::Q5_0 | IsqType::Q5_1 | IsqType::Q8_0 => {
                Some(IsqType::F16)
            }
            IsqType::F16 | IsqType::BF16 => None,
        }
    }

    /// `self`, or the first type of its fallback chain whose block size divides `in_dim`.
    pub fn fit(self, in_dim: usize) -> IsqType {
        let mut t = self;
        while !in_dim.is_multiple_of(t.block_size()) {
            match t.fallback() {
                Some(next) => t = next,
                None => break,
            }
        }
        t
    }

    /// The comma-separated list of valid names (for help texts and errors).
    pub fn valid_names() -> String {
        Self::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for IsqType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An `--isq` value that names no type; its message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIsqTypeError {
    /// What was given.
    pub given: String,
}

impl fmt::Display for ParseIsqTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown ISQ type {:?}; valid types are {}", self.given, IsqType::valid_names())
    }
}

impl std::error::Error for ParseIsqTypeError {}

impl FromStr for IsqType {
    type Err = ParseIsqTypeError;

    /// Case-insensitive; `_` is optional inside k-quant names (`q4k`, `Q4_K`, `q4_k` all parse).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s.trim().to_ascii_uppercase();
        let squashed: String = key.chars().filter(|&c| c != '_').collect();
        IsqType::ALL
            .into_iter()
            .find(|t| {
                let name = t.name();
                name == key || (name.ends_with('K') && name == squashed)
            })
            .ok_or_else(|| ParseIsqTypeError { given: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for t in IsqType::ALL {
            assert_eq!(t.name().parse::<IsqType>().unwrap(), t);
            assert_eq!(t.name().to_lowercase().parse::<IsqType>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!("q4_k".parse::<IsqType>().unwrap(), IsqType::Q4K);
        assert_eq!(" Q6K ".parse::<IsqType>().unwrap(), IsqType::Q6K);
        // Q8_0 and Q8K are different types: the underscore is only optional before K.
        assert!("q80".parse::<IsqType>().is_err());
        let e = "q3".parse::<IsqType>().unwrap_err().to_string();
        assert!(e.contains("Q4K") && e.contains("BF16") && e.contains("\"q3\""), "{e}");
    }

    #[test]
    fn fit_follows_the_fallback_chain() {
        assert_eq!(IsqType::Q4K.fit(3072), IsqType::Q4K);
        assert_eq!(IsqType::Q4K.fit(64), IsqType::Q5_0);
        assert_eq!(IsqType::Q2K.fit(96), IsqType::Q4_0);
        assert_eq!(IsqType::Q6K.fit(128), IsqType::Q8_0);
        assert_eq!(IsqType::Q4K.fit(48), IsqType::F16);
        assert_eq!(IsqType::BF16.fit(7), IsqType::BF16);
        assert_eq!(IsqType::Q4K.promoted().fit(64), IsqType::Q8_0);
    }
}
