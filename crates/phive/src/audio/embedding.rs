//! `Phi4AudioEmbedding`: the conformer plus the two projection MLPs into the language model
//! (`model.embed_tokens_extend.audio_embed` in the Hub checkpoint).

use candle_core::Tensor;

use super::config::Phi4AudioConfig;
use super::conformer::ConformerEncoder;
use crate::nn::linear::{Linear, LoadVb};
use crate::Result;

/// Which projection maps audio features into the language model. The Hub model picks `Vision`
/// whenever the request also has an image (the vision LoRA adapter is then active) and `Speech`
/// otherwise (audio only: speech adapter; text only: no adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioProjectionMode {
    /// `audio_projection.speech` (native `{up,down}_proj_for_speech`).
    Speech,
    /// `audio_projection.vision` (native `{up,down}_proj_for_vision_speech`).
    Vision,
}

/// `Linear(D → H) → GELU(erf) → Linear(H → H)`.
struct Projection {
    up: Linear,
    down: Linear,
}

impl Projection {
    fn load(vb: &LoadVb, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            up: Linear::load(&vb.pp("0"), in_dim, out_dim, true)?,
            down: Linear::load(&vb.pp("2"), out_dim, out_dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&self.up.forward(x)?.gelu_erf()?)
    }
}

/// The audio tower of Phi-4-multimodal: conformer encoder + speech/vision projections.
pub struct Phi4AudioEmbedding {
    encoder: ConformerEncoder,
    speech: Projection,
    vision: Projection,
    cfg: Phi4AudioConfig,
}

impl Phi4AudioEmbedding {
    /// Loads from `vb` rooted at `model.embed_tokens_extend.audio_embed` (Hub remote-code names:
    /// `encoder.*`, `audio_projection.{speech,vision}.{0,2}.*`). Use an f32 `VarBuilder`: the
    /// encoder runs in f32 (bf16 checkpoints are upcast on load).
    pub fn load(vb: &LoadVb, cfg: &Phi4AudioConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size * cfg.downsample_rate;
        let proj = vb.pp("audio_projection");
        Ok(Self {
            encoder: ConformerEncoder::load(&vb.pp("encoder"), cfg)?,
            speech: Projection::load(&proj.pp("speech"), d, cfg.lm_hidden_size)?,
            vision: Projection::load(&proj.pp("vision"), d, cfg.lm_hidden_size)?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration the tower was loaded with.
    pub fn config(&self) -> &Phi4AudioConfig {
        &self.cfg
    }

    /// Placeholder tokens the features of `frames` mel frames expand to (with the
    /// `audio_feat_stride` of 1 that Phi-4-multimodal uses); equals the rows [`Self::encode`]
    /// returns.
    pub fn num_tokens(&self, frames: usize) -> usize {
        super::mel::num_audio_tokens(frames, self.cfg.compression_rate, 1, self.cfg.downsample_rate)
    }

    /// Conformer output `[ceil(T/8), D]` for `[T, 80]` log-mel features (before projection).
    pub fn encode_hidden(&self, features: &Tensor) -> Result<Tensor> {
        self.encoder.forward(features)
    }

    /// Encodes one utterance's `[T, 80]` log-mel features into `[num_tokens(T), lm_hidden]`
    /// embeddings for the audio placeholder positions.
    pub fn encode(&self, features: &Tensor, mode: AudioProjectionMode) -> Result<Tensor> {
        let h = self.encoder.forward(features)?;
        match mode {
            AudioProjectionMode::Speech => self.speech.forward(&h),
            AudioProjectionMode::Vision => self.vision.forward(&h),
        }
    }
}
