//! The audio tower's configuration, read from the Hub `config.json` of
//! `microsoft/Phi-4-multimodal-instruct` (`audio_processor.config`, `embd_layer.audio_embd_layer`
//! and the language model's `hidden_size`).
//!
//! Missing keys take the values of the released checkpoint (which are also the defaults of
//! transformers' native `Phi4MultimodalAudioConfig`), not the class defaults of the Hub
//! remote-code `ConformerEncoder` (those describe other, unreleased variants: relu FFNs, sigmoid
//! GLU, no pointwise extension...). Settings that select an architecture phive does not
//! implement are rejected with an error naming the key instead of being silently ignored.

use serde_json::Value;

use crate::nn::activation::Activation;
use crate::{Error, Result};

/// Gate activation of the conformer convolution module's GLU (`conv_glu_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GluActivation {
    /// `σ(x)` (`sigmoid`, the classic GLU).
    Sigmoid,
    /// Any of the shared activations (`swish` for Phi-4-multimodal).
    Act(Activation),
}

/// Conformer audio encoder + projection configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Phi4AudioConfig {
    /// Mel bins per frame (`input_size`, 80).
    pub input_size: usize,
    /// Model width (`attention_dim`, 1024).
    pub hidden_size: usize,
    /// Attention heads (`attention_heads`, 16).
    pub num_heads: usize,
    /// FFN inner width (`linear_units`, 1536); the first FFN linear outputs twice this.
    pub intermediate_size: usize,
    /// Conformer blocks (`num_blocks`, 24).
    pub num_blocks: usize,
    /// FFN activation (`activation`, swish).
    pub activation: Activation,
    /// Activation after the depthwise conv (`conv_activation`, swish).
    pub conv_activation: Activation,
    /// GLU gate activation (`conv_glu_type`, swish).
    pub conv_glu_type: GluActivation,
    /// Whether the GLU has the `b1`/`b2` biases (`bias_in_glu`, true).
    pub bias_in_glu: bool,
    /// Depthwise conv kernel (`kernel_size`, 3).
    pub kernel_size: usize,
    /// Causal depthwise conv (left padding only; `causal`, true).
    pub causal: bool,
    /// Subsampling factor of the NeMo `dw_striding` front end (`time_reduction`, 8; a power of 2).
    pub time_reduction: usize,
    /// Channels of the subsampling convs (`nemo_conv_settings.conv_channels`, 1024).
    pub nemo_conv_channels: usize,
    /// Activation of the subsampling convs (`nemo_conv_settings.activation`, relu).
    pub nemo_activation: Activation,
    /// T5 bias clamp distance (`relative_attention_bias_args.t5_bias_max_distance`).
    pub bias_max_distance: usize,
    /// Symmetric T5 bias (`t5_bias_symmetric`, false).
    pub bias_symmetric: bool,
    /// Width of the language model the projections map into (top-level `hidden_size`).
    pub lm_hidden_size: usize,
    /// Subsampled frames per output token (`audio_embd_layer.compression_rate`, 8).
    pub compression_rate: usize,
    /// Extra frame stacking before the projection (`audio_embd_layer.downsample_rate`, 1).
    pub downsample_rate: usize,
}

impl Default for Phi4AudioConfig {
    /// The released Phi-4-multimodal-instruct audio tower.
    fn default() -> Self {
        Self {
            input_size: 80,
            hidden_size: 1024,
            num_heads: 16,
            intermediate_size: 1536,
            num_blocks: 24,
            activation: Activation::Silu,
            conv_activation: Activation::Silu,
            conv_glu_type: GluActivation::Act(Activation::Silu),
            bias_in_glu: true,
            kernel_size: 3,
            causal: true,
            time_reduction: 8,
            nemo_conv_channels: 1024,
            nemo_activation: Activation::Relu,
            bias_max_distance: 500,
            bias_symmetric: false,
            lm_hidden_size: 3072,
            compression_rate: 8,
            downsample_rate: 1,
        }
    }
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::checkpoint("config.json", format!("audio config: {msg}"))
}

fn get_usize(obj: &Value, key: &str, default: usize, ctx: &str) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("`{ctx}{key}` must be a non-negative integer, got {v}"))),
    }
}

fn get_i64(obj: &Value, key: &str, default: i64, ctx: &str) -> Result<i64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| bad(format!("`{ctx}{key}` must be an integer, got {v}"))),
    }
}

fn get_bool(obj: &Value, key: &str, default: bool, ctx: &str) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| bad(format!("`{ctx}{key}` must be a boolean, got {v}"))),
    }
}

fn get_str<'a>(obj: &'a Value, key: &str, default: &'a str, ctx: &str) -> Result<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| bad(format!("`{ctx}{key}` must be a string, got {v}"))),
    }
}

fn activation(obj: &Value, key: &str, default: &str, ctx: &str) -> Result<Activation> {
    let name = get_str(obj, key, default, ctx)?;
    Activation::from_name(name).map_err(|e| bad(format!("`{ctx}{key}`: {e}")))
}

impl Phi4AudioConfig {
    /// Reads the audio tower configuration from a Phi-4-multimodal `config.json` value.
    /// A missing `audio_processor` section is an error (the checkpoint has no audio tower).
    pub fn from_model_config(config: &Value) -> Result<Self> {
        let d = Self::default();
        let ap = config
            .get("audio_processor")
            .filter(|v| !v.is_null())
            .ok_or_else(|| bad("`audio_processor` is missing: this checkpoint has no audio encoder"))?;
        if let Some(name) = ap.get("name").and_then(Value::as_str) {
            if name != "cascades" {
                return Err(bad(format!(
                    "`audio_processor.name` is {name:?}; only \"cascades\" (the conformer) is supported"
                )));
            }
        }
        let empty = Value::Object(Default::default());
        let a = ap.get("config").unwrap_or(&empty);
        let c = "audio_processor.config.";
        let input_layer = get_str(a, "input_layer", "nemo_conv", c)?;
        if input_layer != "nemo_conv" {
            return Err(bad(format!("`{c}input_layer` is {input_layer:?}; only \"nemo_conv\" is supported")));
        }
        let nemo = a.get("nemo_conv_settings").unwrap_or(&empty);
        let nc = "audio_processor.config.nemo_conv_settings.";
        let sub = get_str(nemo, "subsampling", "dw_striding", nc)?;
        if sub != "dw_striding" {
            return Err(bad(format!("`{nc}subsampling` is {sub:?}; only \"dw_striding\" is supported")));
        }
        if get_bool(nemo, "is_causal", false, nc)? {
            return Err(bad(format!("`{nc}is_causal` = true is not supported")));
        }
        let nemo_activation = match nemo.get("activation") {
            Some(Value::String(_)) => activation(nemo, "activation", "relu", nc)?,
            _ => d.nemo_activation,
        };
        if get_bool(a, "batch_norm", false, c)? {
            return Err(bad(format!("`{c}batch_norm` = true is not supported")));
        }
        if get_usize(a, "ext_pw_kernel_size", 1, c)? != 1 {
            return Err(bad(format!("`{c}ext_pw_kernel_size` must be 1")));
        }
        if get_bool(a, "linear_glu_in_convm", false, c)? {
            return Err(bad(format!("`{c}linear_glu_in_convm` = true is not supported")));
        }
        if get_usize(a, "depthwise_multiplier", 1, c)? != 1 {
            return Err(bad(format!("`{c}depthwise_multiplier` must be 1")));
        }
        if get_usize(a, "attention_group_size", 1, c)? != 1 {
            return Err(bad(format!("`{c}attention_group_size` must be 1")));
        }
        let chunk_size = get_i64(a, "chunk_size", -1, c)?;
        if chunk_size > 0 {
            return Err(bad(format!(
                "`{c}chunk_size` = {chunk_size}: streaming (chunked) attention masks are not supported"
            )));
        }
        let rel = a.get("relative_attention_bias_args").unwrap_or(&empty);
        let rc = "audio_processor.config.relative_attention_bias_args.";
        let rel_type = get_str(rel, "type", "t5", rc)?;
        if rel_type != "t5" {
            return Err(bad(format!("`{rc}type` is {rel_type:?}; only \"t5\" is supported")));
        }
        let glu_name = get_str(a, "conv_glu_type", "swish", c)?;
        let conv_glu_type = if glu_name == "sigmoid" {
            GluActivation::Sigmoid
        } else {
            GluActivation::Act(
                Activation::from_name(glu_name).map_err(|e| bad(format!("`{c}conv_glu_type`: {e}")))?,
            )
        };
        let embd = config.get("embd_layer").and_then(|e| e.get("audio_embd_layer")).unwrap_or(&empty);
        let ec = "embd_layer.audio_embd_layer.";
        if get_bool(embd, "use_qformer", false, ec)? {
            return Err(bad(format!("`{ec}use_qformer` = true is not supported")));
        }
        if get_bool(embd, "use_conv_downsample", false, ec)? {
            return Err(bad(format!("`{ec}use_conv_downsample` = true is not supported")));
        }
        let proj = get_str(embd, "projection_cls", "mlp", ec)?;
        if proj != "mlp" {
            return Err(bad(format!("`{ec}projection_cls` is {proj:?}; only \"mlp\" is supported")));
        }

        let hidden_size = get_usize(a, "attention_dim", d.hidden_size, c)?;
        let cfg = Self {
            input_size: get_usize(a, "input_size", d.input_size, c)?,
            hidden_size,
            num_heads: get_usize(a, "attention_heads", d.num_heads, c)?,
            intermediate_size: get_usize(a, "linear_units", d.intermediate_size, c)?,
            num_blocks: get_usize(a, "num_blocks", d.num_blocks, c)?,
            activation: activation(a, "activation", "swish", c)?,
            conv_activation: activation(a, "conv_activation", "swish", c)?,
            conv_glu_type,
            bias_in_glu: get_bool(a, "bias_in_glu", d.bias_in_glu, c)?,
            kernel_size: get_usize(a, "kernel_size", d.kernel_size, c)?,
            causal: get_bool(a, "causal", d.causal, c)?,
            time_reduction: get_usize(a, "time_reduction", d.time_reduction, c)?,
            nemo_conv_channels: get_usize(nemo, "conv_channels", d.nemo_conv_channels, nc)?,
            nemo_activation,
            // The native config's default is 1000; every released config sets 500.
            bias_max_distance: get_usize(rel, "t5_bias_max_distance", 1000, rc)?,
            bias_symmetric: get_bool(rel, "t5_bias_symmetric", false, rc)?,
            lm_hidden_size: get_usize(config, "hidden_size", d.lm_hidden_size, "")?,
            compression_rate: get_usize(embd, "compression_rate", d.compression_rate, ec)?,
            downsample_rate: get_usize(embd, "downsample_rate", d.downsample_rate, ec)?,
        };
        // Channel widths of the conv module must equal the model width (the residual adds them).
        for key in ["ext_pw_out_channel", "depthwise_seperable_out_channel"] {
            let v = get_usize(a, key, hidden_size, c)?;
            if v != hidden_size {
                return Err(bad(format!(
                    "`{c}{key}` = {v} differs from attention_dim = {hidden_size}; not supported"
                )));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values are usable; called by [`Self::from_model_config`] and the loader.
    pub fn validate(&self) -> Result<()> {
        let c = "audio_processor.config.";
        for (name, v) in [
            ("input_size", self.input_size),
            ("attention_dim", self.hidden_size),
            ("attention_heads", self.num_heads),
            ("linear_units", self.intermediate_size),
            ("kernel_size", self.kernel_size),
            ("nemo_conv_settings.conv_channels", self.nemo_conv_channels),
            ("relative_attention_bias_args.t5_bias_max_distance", self.bias_max_distance),
        ] {
            if v == 0 {
                return Err(bad(format!("`{c}{name}` must be positive")));
            }
        }
        if self.lm_hidden_size == 0 {
            return Err(bad("`hidden_size` must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(bad(format!(
                "`{c}attention_dim` ({}) is not a multiple of `attention_heads` ({})",
                self.hidden_size, self.num_heads
            )));
        }
        if self.time_reduction < 2 || !self.time_reduction.is_power_of_two() {
            return Err(bad(format!(
                "`{c}time_reduction` = {} must be a power of two >= 2",
                self.time_reduction
            )));
        }
        if !self.causal && self.kernel_size.is_multiple_of(2) {
            return Err(bad(format!(
                "`{c}kernel_size` = {} must be odd for a non-causal conv module",
                self.kernel_size
            )));
        }
        if self.compression_rate != self.time_reduction {
            return Err(bad(format!(
                "`embd_layer.audio_embd_layer.compression_rate` ({}) differs from `{c}time_reduction` ({}); \
                 the token count would not match the encoder output",
                self.compression_rate, self.time_reduction
            )));
        }
        if self.downsample_rate != 1 {
            return Err(bad(format!(
                "`embd_layer.audio_embd_layer.downsample_rate` = {} is not supported (only 1)",
                self.downsample_rate
            )));
        }
        Ok(())
    }

    /// Frequency bins left after subsampling: `input_size` halved (rounding up) log2(time_reduction) times.
    pub fn nemo_final_size(&self) -> usize {
        let mut f = self.input_size;
        let mut r = self.time_reduction;
        while r > 1 {
            f = f.div_ceil(2);
            r /= 2;
        }
        f
    }

    /// Number of relative-position buckets of the T5 bias table.
    pub fn num_bias_buckets(&self) -> usize {
        if self.bias_symmetric {
            self.bias_max_distance
        } else {
            2 * self.bias_max_distance
        }
    }
}
