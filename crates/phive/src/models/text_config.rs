//! The language-model keys that Phi-3.5-vision's and Phi-4-multimodal's `config.json` share:
//! the Phi-3 decoder's geometry, RoPE and LongRoPE, read as transformers' `Phi3Config` reads
//! them. Each model config flattens this in beside its own media keys.

use serde::Deserialize;

use crate::nn::activation::Activation;
use crate::nn::phi3_decoder::Phi3DecoderConfig;
use crate::nn::rotary::{RopeScalingConfig, RotaryConfig};
use crate::{Error, Result};

/// A `config.json` problem, attributed to that file.
pub(crate) fn config_error(message: impl Into<String>) -> Error {
    Error::checkpoint("config.json", message)
}

fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_partial_rotary() -> f64 {
    1.0
}

/// The Phi-3 decoder keys of a Phi vision model's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Phi3TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// LongRoPE factors; absent means plain RoPE.
    #[serde(default)]
    pub rope_scaling: Option<RopeScalingConfig>,
    /// Fraction of each head that is rotated (0.75 for Phi-4-mini, all of it for Phi-3.5).
    #[serde(default = "default_partial_rotary")]
    pub partial_rotary_factor: f64,
    pub max_position_embeddings: usize,
    /// Required with `rope_scaling`.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
}

impl Phi3TextConfig {
    /// Key/value heads: `num_key_value_heads`, or one per attention head.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The decoder geometry these keys describe.
    pub fn decoder_config(&self) -> Result<Phi3DecoderConfig> {
        let head_dim = self.hidden_size / self.num_attention_heads.max(1);
        let long_rope =
            RopeScalingConfig::long_rope(self.rope_scaling.as_ref(), self.original_max_position_embeddings)
                .map_err(config_error)?;
        Ok(Phi3DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_kv_heads(),
            rms_norm_eps: self.rms_norm_eps,
            rope: RotaryConfig {
                head_dim,
                partial_rotary_factor: self.partial_rotary_factor,
                theta: self.rope_theta,
                max_position_embeddings: self.max_position_embeddings,
                long_rope,
            },
            sliding_window: self.sliding_window,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: Activation::from_name(&self.hidden_act).map_err(config_error)?,
        })
    }
}
