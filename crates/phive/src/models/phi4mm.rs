//! Phi-4-multimodal (`Phi4MMForCausalLM`): the SigLIP image embedding with the dynamic-HD
//! feature assembly, the conformer audio embedding (`crate::audio`), and the Phi-4-mini decoder
//! with its two LoRA adapters, following the Hub's `modeling_phi4mm.py` (numerically checked
//! against transformers' native `Phi4MultimodalForCausalLM`).
//!
//! Image path, per image with a `rows × cols` crop grid (global view first):
//! SigLIP `hidden_states[layer_idx]` (no post-norm) → 32×32 → AvgPool 2×2 → 16×16×C; the global
//! view as 16 rows each followed by `sub_GN`; the sub-crops tiled into a `(16·rows)×(16·cols)`
//! grid, cut to the useful (non-padding) rows and columns of the pooled mask, each row followed by
//! `sub_GN`; `[sub ; glb_GN ; global]` → `img_projection` (Linear, GELU, Linear).
//!
//! Routing (Hub `input_mode`): a request with any image runs the vision adapter and the vision
//! audio projection, audio alone the speech adapter and projection, text alone no adapter; see
//! [`route`]. The adapter is chosen per forward call, so one loaded model serves all three.

use std::sync::Arc;

use candle_core::Tensor;
use serde::Deserialize;

use crate::audio::{AudioProjectionMode, Phi4AudioConfig, Phi4AudioEmbedding};
use crate::models::text_config::{config_error, Phi3TextConfig};
use crate::nn::activation::Activation;
use crate::nn::kv_cache::KvCache;
use crate::nn::linear::{Linear, LoadVb};
use crate::nn::lora::LoraSpec;
use crate::nn::phi3_decoder::Phi3Decoder;
use crate::vision::phi4mm_hd::{Phi4MMImage, CROP_SIZE};
use crate::vision::siglip::{SiglipVisionConfig, SiglipVisionTower};
use crate::{Error, Result};

/// `<|endoftext10|>`: the image placeholder token, repeated once per image token.
pub const IMAGE_TOKEN_ID: u32 = 200010;
/// `<|endoftext11|>`: the audio placeholder token, repeated once per audio token.
pub const AUDIO_TOKEN_ID: u32 = 200011;

/// Which LoRA adapter of the language model a forward call runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Adapter {
    /// Base weights only (text-only requests).
    None,
    /// `vision_lora` (requests with an image, with or without audio).
    Vision,
    /// `speech_lora` (audio-only requests).
    Speech,
}

impl Adapter {
    /// The adapter's name in tensor names (`lora_A.{name}.weight`), `None` for no adapter.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Adapter::None => None,
            Adapter::Vision => Some("vision"),
            Adapter::Speech => Some("speech"),
        }
    }
}

/// The Hub remote code's routing (`modeling_phi4mm.py`, `InputMode`): text → no adapter (the
/// audio projection mode is then irrelevant; `Speech`, as the reference reports); any image,
/// with or without audio → vision adapter and the vision audio projection; audio only → speech
/// adapter and the speech projection.
pub fn route(has_images: bool, has_audio: bool) -> (Adapter, AudioProjectionMode) {
    match (has_images, has_audio) {
        (true, _) => (Adapter::Vision, AudioProjectionMode::Vision),
        (false, true) => (Adapter::Speech, AudioProjectionMode::Speech),
        (false, false) => (Adapter::None, AudioProjectionMode::Speech),
    }
}

/// `vision_lora` / `speech_lora` (`dp`, the dropout, is ignored at inference).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoraConfig {
    /// Regex over module names selecting the projections that carry the adapter.
    pub layer: String,
    pub lora_alpha: f64,
    pub r: usize,
}

/// `embd_layer.image_embd_layer`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageEmbdLayerConfig {
    /// Crop side in pixels (448; must match the vision tower and the preprocessor).
    #[serde(default = "default_crop_size")]
    pub crop_size: usize,
    /// `"sub_glb"` (Hub) or `"glb_sub"`.
    #[serde(default = "default_hd_order")]
    pub hd_transform_order: String,
    /// Must be `"avg_pool_2d"` (the only compression the released model uses).
    #[serde(default)]
    pub image_token_compression_cls: Option<String>,
    /// `"mlp"` (Linear, GELU, Linear; Hub) or `"linear"`.
    #[serde(default = "default_projection")]
    pub projection_cls: String,
    /// Must be true.
    #[serde(default)]
    pub use_hd_transform: bool,
    /// Must be true.
    #[serde(default)]
    pub with_learnable_separator: bool,
}

fn default_crop_size() -> usize {
    CROP_SIZE
}
fn default_hd_order() -> String {
    "sub_glb".into()
}
fn default_projection() -> String {
    "mlp".into()
}

/// `embd_layer`: the image and audio embedding settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EmbdLayerConfig {
    /// Absent: the checkpoint has no image encoder.
    #[serde(default)]
    pub image_embd_layer: Option<ImageEmbdLayerConfig>,
}

/// `img_processor`: which SigLIP hidden state feeds the projection (`null` on the Hub).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImgProcessorConfig {
    /// Hugging Face `hidden_states` index (default −2: the penultimate layer's output).
    #[serde(default = "default_layer_idx")]
    pub layer_idx: isize,
    /// Must be `"patch"`.
    #[serde(default = "default_type_feature")]
    pub type_feature: String,
}

impl Default for ImgProcessorConfig {
    fn default() -> Self {
        Self { layer_idx: default_layer_idx(), type_feature: default_type_feature() }
    }
}

fn default_layer_idx() -> isize {
    -2
}
fn default_type_feature() -> String {
    "patch".into()
}

/// The fields of Phi-4-multimodal's Hub `config.json` that phive reads (unknown keys are
/// ignored). The audio tower's keys are read by [`Phi4AudioConfig::from_model_config`] from the
/// same JSON, kept in [`Phi4MMConfig::raw`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Phi4MMConfig {
    /// The language model's keys.
    #[serde(flatten)]
    pub text: Phi3TextConfig,
    pub embd_layer: EmbdLayerConfig,
    /// `null` on the Hub: defaults apply.
    #[serde(default)]
    pub img_processor: Option<ImgProcessorConfig>,
    #[serde(default)]
    pub vision_lora: Option<LoraConfig>,
    #[serde(default)]
    pub speech_lora: Option<LoraConfig>,
    /// SigLIP geometry (phive extension, HF `SiglipVisionConfig` keys); so400m-448 if absent.
    #[serde(default)]
    pub vision_config: Option<SiglipVisionConfig>,
    /// The whole `config.json` (for the audio tower's settings).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

impl Phi4MMConfig {
    /// Parses a `config.json` value (use [`Phi4MMConfig::validate`] to check support).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let mut c = Self::deserialize(value)
            .map_err(|e| config_error(format!("invalid Phi-4-multimodal config: {e}")))?;
        c.raw = value.clone();
        Ok(c)
    }

    /// The SigLIP geometry: `vision_config` or the real so400m-patch14-448.
    pub fn vision_config(&self) -> SiglipVisionConfig {
        self.vision_config.clone().unwrap_or_default()
    }

    /// `img_processor` or its defaults.
    pub fn img_processor(&self) -> ImgProcessorConfig {
        self.img_processor.clone().unwrap_or_default()
    }

    /// Whether the checkpoint has an audio encoder (`audio_processor` present).
    pub fn has_audio(&self) -> bool {
        self.raw.get("audio_processor").is_some_and(|v| !v.is_null())
    }

    /// The LoRA adapters described by the config, as decoder specs.
    pub fn lora_specs(&self) -> Result<Vec<LoraSpec>> {
        let mut specs = Vec::new();
        for (name, c) in [("vision", &self.vision_lora), ("speech", &self.speech_lora)] {
            if let Some(c) = c {
                specs.push(LoraSpec::new(name, &c.layer, c.lora_alpha, c.r)?);
            }
        }
        Ok(specs)
    }

    /// Rejects configurations phive does not implement, with a message naming the key.
    pub fn validate(&self) -> Result<()> {
        if let Some(e) = &self.embd_layer.image_embd_layer {
            if !e.use_hd_transform || !e.with_learnable_separator {
                return Err(config_error(
                    "embd_layer.image_embd_layer.use_hd_transform and with_learnable_separator must be true \
                     (only the HD image path is implemented)",
                ));
            }
            if e.hd_transform_order != "sub_glb" && e.hd_transform_order != "glb_sub" {
                return Err(config_error(format!(
                    "embd_layer.image_embd_layer.hd_transform_order {:?} is not supported (expected \"sub_glb\" or \"glb_sub\")",
                    e.hd_transform_order
                )));
            }
            if e.image_token_compression_cls.as_deref() != Some("avg_pool_2d") {
                return Err(config_error(format!(
                    "embd_layer.image_embd_layer.image_token_compression_cls {:?} is not supported (expected \"avg_pool_2d\")",
                    e.image_token_compression_cls
                )));
            }
            if e.projection_cls != "mlp" && e.projection_cls != "linear" {
                return Err(config_error(format!(
                    "embd_layer.image_embd_layer.projection_cls {:?} is not supported (expected \"mlp\" or \"linear\")",
                    e.projection_cls
                )));
            }
            let v = self.vision_config();
            if e.crop_size != CROP_SIZE || v.image_size != CROP_SIZE {
                return Err(config_error(format!(
                    "embd_layer.image_embd_layer.crop_size {} and vision image_size {} must both be {CROP_SIZE} \
                     (the dynamic-HD preprocessing is fixed to {CROP_SIZE}-pixel crops)",
                    e.crop_size, v.image_size
                )));
            }
            if !v.patches_per_side().is_multiple_of(2) {
                return Err(config_error(format!(
                    "vision image_size / patch_size = {} patches per side must be even for the 2x2 pooling",
                    v.patches_per_side()
                )));
            }
            let p = self.img_processor();
            if p.type_feature != "patch" {
                return Err(config_error(format!(
                    "img_processor.type_feature {:?} is not supported (expected \"patch\")",
                    p.type_feature
                )));
            }
        }
        self.lora_specs()?;
        self.text.decoder_config()?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Projection {
    Mlp(Linear, Linear),
    Linear(Linear),
}

impl Projection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Mlp(a, b) => b.forward(&Activation::GeluErf.forward(&a.forward(x)?)?),
            Projection::Linear(a) => a.forward(x),
        }
    }
}

/// The SigLIP tower with the HD assembly and projection.
#[derive(Debug, Clone)]
struct ImageEmbedding {
    tower: SiglipVisionTower,
    glb_gn: Tensor,
    sub_gn: Tensor,
    projection: Projection,
    sub_first: bool,
}

/// Phi-4-multimodal: image and audio embeddings plus the language model with its adapters.
#[derive(Clone)]
pub struct Phi4MM {
    cfg: Phi4MMConfig,
    decoder: Phi3Decoder,
    image: Option<ImageEmbedding>,
    audio: Option<Arc<Phi4AudioEmbedding>>,
}

impl std::fmt::Debug for Phi4MM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phi4MM")
            .field("layers", &self.cfg.text.num_hidden_layers)
            .field("hidden_size", &self.cfg.text.hidden_size)
            .field("adapters", &self.decoder.adapter_names())
            .field("image", &self.image.is_some())
            .field("audio", &self.audio.is_some())
            .finish()
    }
}

impl Phi4MM {
    /// Validates `config` and loads all weights from `vb` rooted at the checkpoint root (Hub
    /// names: `model.embed_tokens.weight`, `model.layers.{i}.*.base_layer.weight` with
    /// `lora_{A,B}.{vision,speech}`, `model.embed_tokens_extend.image_embed.*`,
    /// `model.embed_tokens_extend.audio_embed.*`). The image (audio) encoder is built only when
    /// the config describes one. Use an f32 `VarBuilder`.
    pub fn new(config: &Phi4MMConfig, vb: LoadVb) -> Result<Self> {
        config.validate()?;
        let decoder =
            Phi3Decoder::new_with_adapters(&config.text.decoder_config()?, &vb, &config.lora_specs()?)?;
        let image = match &config.embd_layer.image_embd_layer {
            Some(e) => Some(Self::load_image(config, e, &vb.pp("model.embed_tokens_extend.image_embed"))?),
            None => None,
        };
        let audio = if config.has_audio() {
            let acfg = Phi4AudioConfig::from_model_config(&config.raw)?;
            Some(Arc::new(Phi4AudioEmbedding::load(&vb.pp("model.embed_tokens_extend.audio_embed"), &acfg)?))
        } else {
            None
        };
        Ok(Self { cfg: config.clone(), decoder, image, audio })
    }

    fn load_image(config: &Phi4MMConfig, e: &ImageEmbdLayerConfig, vi: &LoadVb) -> Result<ImageEmbedding> {
        let vcfg = config.vision_config();
        let tower = SiglipVisionTower::new(&vcfg, &vi.pp("img_processor"), config.img_processor().layer_idx)?;
        let c = vcfg.hidden_size;
        let glb_gn = vi.get((1, 1, c), "glb_GN")?.flatten_all()?;
        let sub_gn = vi.get((1, 1, 1, c), "sub_GN")?.flatten_all()?;
        let h = config.text.hidden_size;
        let vp = vi.pp("img_projection");
        let projection = if e.projection_cls == "mlp" {
            Projection::Mlp(Linear::load(&vp.pp("0"), c, h, true)?, Linear::load(&vp.pp("2"), h, h, true)?)
        } else {
            Projection::Linear(Linear::load(&vp, c, h, true)?)
        };
        Ok(ImageEmbedding { tower, glb_gn, sub_gn, projection, sub_first: e.hd_transform_order == "sub_glb" })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Phi4MMConfig {
        &self.cfg
    }

    /// The language model (for diagnostics and tests).
    pub fn decoder(&self) -> &Phi3Decoder {
        &self.decoder
    }

    /// The audio tower, when the checkpoint has one.
    pub fn audio(&self) -> Option<&Phi4AudioEmbedding> {
        self.audio.as_deref()
    }

    /// An empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        self.decoder.new_cache()
    }

    fn image_embedding(&self) -> Result<&ImageEmbedding> {
        self.image.as_ref().ok_or_else(|| {
            Error::InvalidRequest("this Phi-4-multimodal checkpoint has no image encoder".into())
        })
    }

    /// Selected SigLIP patch features `[crops, g², C]` (HF `hidden_states[layer_idx]`).
    pub fn siglip_features(&self, image: &Phi4MMImage) -> Result<Tensor> {
        // Preprocessing makes the crops on the CPU; the tower runs where the model is.
        let device = self.decoder.device();
        let (pixels, mask) = (image.pixel_values.to_device(device)?, image.patch_mask.to_device(device)?);
        self.image_embedding()?.tower.forward(&pixels, &mask)
    }

    /// Projected features `[num_image_tokens, hidden]` of one preprocessed image, to be written
    /// over its placeholder tokens.
    pub fn encode_image(&self, image: &Phi4MMImage) -> Result<Tensor> {
        let ie = self.image_embedding()?;
        let feats = self.siglip_features(image)?;
        let all = self.hd_tokens(ie, &feats, image)?;
        if all.dim(0)? != image.num_image_tokens {
            return Err(candle_core::Error::Msg(format!(
                "image produced {} tokens, preprocessing promised {}",
                all.dim(0)?,
                image.num_image_tokens
            ))
            .into());
        }
        ie.projection.forward(&all)
    }

    /// HD assembly before the projection: SigLIP features `[1 + rows·cols, g², C]` → pooled
    /// `[tokens, C]` in `hd_transform_order`.
    fn hd_tokens(&self, ie: &ImageEmbedding, feats: &Tensor, image: &Phi4MMImage) -> Result<Tensor> {
        let (n, p, c) = feats.dims3()?;
        let g = ie.tower.config().patches_per_side();
        let (rows, cols) = image.grid();
        if p != g * g || n != 1 + rows * cols || rows == 0 || cols == 0 {
            return Err(Error::InvalidRequest(format!(
                "image with a {rows}x{cols} crop grid needs {} crops of {} patches, got features {:?}",
                1 + rows * cols,
                g * g,
                feats.shape()
            )));
        }
        let m = g / 2;
        // AvgPool2d(2, 2) in PyTorch's summation order: (0,0) + (0,1) + (1,0) + (1,1), then / 4.
        let x = feats.reshape((n, m, 2, m, 2, c))?;
        let tap = |dy: usize, dx: usize| -> Result<Tensor> { Ok(x.narrow(2, dy, 1)?.narrow(4, dx, 1)?) };
        let sum = (((tap(0, 0)? + tap(0, 1)?)? + tap(1, 0)?)? + tap(1, 1)?)?;
        let pooled = (sum / 4.0)?.reshape((n, m, m, c))?;
        let global = self.add_newline(ie, &pooled.get(0)?)?;
        let sub = pooled
            .narrow(0, 1, rows * cols)?
            .reshape((rows, cols, m, m, c))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((rows * m, cols * m, c))?;
        // Useful rows / columns: the pooled (mask[0::2, 0::2]) sub-crop mask's first column
        // and first row.
        let mask: Vec<u8> = image.patch_mask.to_dtype(candle_core::DType::U8)?.flatten_all()?.to_vec1()?;
        let at = |crop: usize, y: usize, x: usize| mask[(crop * g + y) * g + x] != 0;
        let useful_h = (0..rows).map(|r| (0..g).step_by(2).filter(|&y| at(1 + r * cols, y, 0)).count()).sum();
        let useful_w = (0..cols).map(|q| (0..g).step_by(2).filter(|&x| at(1 + q, 0, x)).count()).sum();
        let sub = sub.narrow(0, 0, useful_h)?.narrow(1, 0, useful_w)?;
        let sub = self.add_newline(ie, &sub)?;
        let glb = ie.glb_gn.reshape((1, c))?;
        Ok(if ie.sub_first {
            Tensor::cat(&[&sub, &glb, &global], 0)?
        } else {
            Tensor::cat(&[&global, &glb, &sub], 0)?
        })
    }

    /// `[R, W, D]` → `[R·(W+1), D]` with `sub_GN` after every row.
    fn add_newline(&self, ie: &ImageEmbedding, x: &Tensor) -> Result<Tensor> {
        let (r, w, d) = x.dims3()?;
        let nl = ie.sub_gn.reshape((1, 1, d))?.broadcast_as((r, 1, d))?;
        Ok(Tensor::cat(&[&x.contiguous()?, &nl.contiguous()?], 1)?.reshape((r * (w + 1), d))?)
    }

    /// Projected features `[num_audio_tokens, hidden]` of one clip's `[T, 80]` log-mel features
    /// under the projection `mode` (take it from [`route`]).
    pub fn encode_audio(&self, features: &Tensor, mode: AudioProjectionMode) -> Result<Tensor> {
        let audio = self.audio.as_ref().ok_or_else(|| {
            Error::InvalidRequest("this Phi-4-multimodal checkpoint has no audio encoder".into())
        })?;
        audio.encode(features, mode)
    }

    /// Input embeddings `[1, seq, hidden]`: `token_ids` embedded, then each `(start, features)`
    /// span (`features` `[n, hidden]`, from [`Phi4MM::encode_image`] / [`Phi4MM::encode_audio`])
    /// written over positions `start..start + n`. Ids under a span are ignored (placeholders);
    /// all others must be in the vocabulary. Spans must not overlap.
    pub fn embed(&self, token_ids: &[u32], media: &[(usize, Tensor)]) -> Result<Tensor> {
        self.decoder.embed_with_media(token_ids, media)
    }

    /// Runs the decoder with `adapter` over `embeds` `[1, seq, hidden]` at positions
    /// `cache.len()..`, appends to the cache and returns the final-normed hidden states. Keep the
    /// same adapter for every call of one sequence (the cached keys depend on it).
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache, adapter: Adapter) -> Result<Tensor> {
        self.decoder.forward_with_adapter(embeds, cache, adapter.name())
    }

    /// Logits `[rows.len(), vocab]` for the given rows of `hidden` `[1, seq, hidden]` (tied
    /// `lm_head` = `embed_tokens` on the Hub checkpoint).
    pub fn logits(&self, hidden: &Tensor, rows: &[usize]) -> Result<Tensor> {
        self.decoder.logits(hidden, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_matches_hub_input_mode() {
        assert_eq!(route(false, false), (Adapter::None, AudioProjectionMode::Speech));
        assert_eq!(route(true, false), (Adapter::Vision, AudioProjectionMode::Vision));
        assert_eq!(route(true, true), (Adapter::Vision, AudioProjectionMode::Vision));
        assert_eq!(route(false, true), (Adapter::Speech, AudioProjectionMode::Speech));
        assert_eq!(Adapter::None.name(), None);
        assert_eq!(Adapter::Speech.name(), Some("speech"));
    }

    fn tiny_json() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/phi4mm-tiny/config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn hub_config_parses_and_validates() {
        let c = Phi4MMConfig::from_json(&tiny_json()).unwrap();
        c.validate().unwrap();
        assert!(c.has_audio());
        assert_eq!(c.img_processor().layer_idx, -2);
        let d = c.text.decoder_config().unwrap();
        assert_eq!((d.num_key_value_heads, d.rope.partial_rotary_factor), (2, 0.75));
        let specs = c.lora_specs().unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs[0].applies_to("model.layers.1.mlp.down_proj"));
        assert!(!specs[0].applies_to("model.embed_tokens"));
        for (key, value, needle) in [
            ("image_token_compression_cls", serde_json::json!("conv"), "image_token_compression_cls"),
            ("crop_size", serde_json::json!(336), "crop_size"),
            ("use_hd_transform", serde_json::json!(false), "use_hd_transform"),
        ] {
            let mut j = tiny_json();
            j["embd_layer"]["image_embd_layer"][key] = value;
            let e = Phi4MMConfig::from_json(&j).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut j = tiny_json();
        j["vision_lora"]["layer"] = serde_json::json!("(");
        assert!(Phi4MMConfig::from_json(&j)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vision_lora"));
        let mut j = tiny_json();
        j.as_object_mut().unwrap().remove("hidden_size");
        assert!(Phi4MMConfig::from_json(&j).unwrap_err().to_string().contains("hidden_size"));
    }
}
