//! [`LoadedModel`]: the one place where the model family is matched. Everything above it (the
//! pipeline's prompt preparation, the engine, the front ends) talks to a model through these
//! methods: turn a conversation into token ids and preprocessed media, encode one media item,
//! embed a chunk of tokens, run one batched forward pass, and project hidden states to logits.

use candle_core::Tensor;
use image::DynamicImage;

use super::phi3v::{Phi3V, Phi3VConfig};
use super::phi4mm::{route, Adapter, Phi4MM, Phi4MMConfig, AUDIO_TOKEN_ID, IMAGE_TOKEN_ID};
use super::preprocess::PreprocessOptions;
use crate::audio::{log_mel_features, AudioProjectionMode, DecodedAudio};
use crate::checkpoint::Architecture;
use crate::nn::kv_cache::{KvGeometry, KvPool};
use crate::nn::linear::LoadVb;
use crate::nn::phi3_decoder::{BatchRow, Phi3Decoder};
use crate::prompt::{
    expand_phi3v, expand_phi4mm, place_media_tags, ChatMessage, MediaKind, MediaSpan, Placeholder,
    PromptTokens, RenderedMessage,
};
use crate::vision::{phi3v_hd, phi4mm_hd};
use crate::{Error, Result};

/// Content key of one media item ([`LoadedModel::media_key`]).
pub type MediaKey = [u8; 32];

/// A loaded network of a supported family, with its preprocessing settings.
pub enum LoadedModel {
    /// Phi-3.5-vision.
    Phi3V { model: Box<Phi3V>, images: phi3v_hd::Phi3VImageProcessorConfig },
    /// Phi-4-multimodal.
    Phi4MM { model: Box<Phi4MM>, images: phi4mm_hd::Phi4MMImageProcessorConfig },
}

/// A request's media after preprocessing, in the form its model family consumes.
pub enum PreparedMedia {
    /// Phi-3.5-vision: HD-transformed images.
    Phi3V(Vec<phi3v_hd::Phi3VImage>),
    /// Phi-4-multimodal: dynamic-HD images, log-mel features `[T, 80]` per clip, and the
    /// adapter and audio projection the request's media choose.
    Phi4MM {
        images: Vec<phi4mm_hd::Phi4MMImage>,
        audios: Vec<Tensor>,
        adapter: Adapter,
        projection: AudioProjectionMode,
    },
}

impl LoadedModel {
    /// Builds the network of `architecture` from its config and weights, with `preprocess`
    /// overriding the preprocessor config (checked before the weights are read).
    pub fn load(
        architecture: Architecture,
        config: serde_json::Value,
        config_path: &std::path::Path,
        preprocessor_path: &std::path::Path,
        preprocess: &PreprocessOptions,
        vb: LoadVb,
    ) -> Result<Self> {
        Ok(match architecture {
            Architecture::Phi3V => {
                let model_config: Phi3VConfig = serde_json::from_value(config)
                    .map_err(|e| Error::checkpoint(config_path, format!("invalid model config: {e}")))?;
                let images =
                    preprocess.phi3v(&phi3v_hd::Phi3VImageProcessorConfig::from_file(preprocessor_path)?)?;
                LoadedModel::Phi3V { model: Box::new(Phi3V::new(&model_config, vb)?), images }
            }
            Architecture::Phi4MM => {
                let model_config = Phi4MMConfig::from_json(&config)?;
                let images = preprocess
                    .phi4mm(&phi4mm_hd::Phi4MMImageProcessorConfig::from_file(preprocessor_path)?)?;
                LoadedModel::Phi4MM { model: Box::new(Phi4MM::new(&model_config, vb)?), images }
            }
        })
    }

    fn decoder(&self) -> &Phi3Decoder {
        match self {
            LoadedModel::Phi3V { model, .. } => model.decoder(),
            LoadedModel::Phi4MM { model, .. } => model.decoder(),
        }
    }

    /// Where the model's weights live.
    pub fn device(&self) -> &candle_core::Device {
        self.decoder().device()
    }

    /// The language model's precision.
    pub fn decoder_dtype(&self) -> candle_core::DType {
        self.decoder().dtype()
    }

    /// Whether the language model computes as the reference does: f32 activations over
    /// unquantized f32 projections (no ISQ, no GGUF, no half precision).
    pub fn computes_exactly(&self) -> bool {
        let footprint = self.lm_footprint();
        self.decoder_dtype() == candle_core::DType::F32 && footprint.bytes == 4 * footprint.params
    }

    /// Longest sequence (prompt plus completion) the model accepts.
    pub fn context_length(&self) -> usize {
        self.decoder().config().rope.max_position_embeddings
    }

    /// Parameters and stored bytes of the language model's projections (see
    /// [`Phi3Decoder::lm_footprint`]), for the roofline figures of `phive bench`.
    pub fn lm_footprint(&self) -> crate::nn::linear::WeightFootprint {
        self.decoder().lm_footprint()
    }

    /// Number of rows of the logits (the embedding table's size, which may exceed the
    /// tokenizer's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.decoder().config().vocab_size
    }

    /// The crop limit images are preprocessed with unless a request sets its own, by its
    /// request field name: `("num_crops", 4)`.
    pub fn crop_limit(&self) -> (&'static str, usize) {
        match self {
            LoadedModel::Phi3V { images, .. } => ("num_crops", images.num_crops),
            LoadedModel::Phi4MM { images, .. } => ("dynamic_hd", images.dynamic_hd),
        }
    }

    /// Checks `preprocess` against this model's family and ranges.
    pub fn check_preprocess(&self, preprocess: &PreprocessOptions) -> Result<()> {
        match self {
            LoadedModel::Phi3V { images, .. } => preprocess.phi3v(images).map(drop),
            LoadedModel::Phi4MM { images, .. } => preprocess.phi4mm(images).map(drop),
        }
    }

    /// Whether requests may carry audio (Phi-4-multimodal with an audio encoder).
    pub fn accepts_audio(&self) -> bool {
        matches!(self, LoadedModel::Phi4MM { model, .. } if model.audio().is_some())
    }

    /// The shape of the KV memory with blocks of `block_size` positions.
    pub fn kv_geometry(&self, block_size: usize) -> KvGeometry {
        self.decoder().kv_geometry(block_size)
    }

    /// Places media tags, renders them with `render` (the chat template), preprocesses the
    /// media (with the request's `preprocess` overrides) and tokenizes. The caller has checked
    /// that the messages reference exactly `images` and `audios`.
    pub fn prepare(
        &self,
        messages: &[ChatMessage],
        images: &[DynamicImage],
        audios: &[DecodedAudio],
        preprocess: &PreprocessOptions,
        render: &dyn Fn(&[RenderedMessage]) -> Result<String>,
        tokenizer: &tokenizers::Tokenizer,
    ) -> Result<(PromptTokens, String, PreparedMedia)> {
        match self {
            LoadedModel::Phi3V { images: config, .. } => {
                let config = preprocess.phi3v(config)?;
                let rendered = place_media_tags(messages, &[MediaKind::Image], "\n")?;
                let text = render(&rendered)?;
                let images = images
                    .iter()
                    .map(|img| phi3v_hd::preprocess(img, &config))
                    .collect::<Result<Vec<_>>>()?;
                let counts: Vec<usize> = images.iter().map(|i| i.num_image_tokens).collect();
                let tokens = expand_phi3v(tokenizer, &text, &counts, 0)?;
                Ok((tokens, text, PreparedMedia::Phi3V(images)))
            }
            LoadedModel::Phi4MM { model, images: config } => {
                let config = preprocess.phi4mm(config)?;
                let kinds: &[MediaKind] = if self.accepts_audio() {
                    &[MediaKind::Image, MediaKind::Audio]
                } else {
                    &[MediaKind::Image]
                };
                let rendered = place_media_tags(messages, kinds, "")?;
                let text = render(&rendered)?;
                let images = images
                    .iter()
                    .map(|img| phi4mm_hd::preprocess(img, &config))
                    .collect::<Result<Vec<_>>>()?;
                let features = audios.iter().map(log_mel_features).collect::<Result<Vec<_>>>()?;
                let image_counts: Vec<usize> = images.iter().map(|i| i.num_image_tokens).collect();
                let audio_counts = match model.audio() {
                    Some(audio) => {
                        features.iter().map(|f| Ok(audio.num_tokens(f.dim(0)?))).collect::<Result<_>>()?
                    }
                    None => Vec::new(),
                };
                let tokens = expand_phi4mm(
                    tokenizer,
                    &text,
                    &[
                        Placeholder { kind: MediaKind::Image, token: IMAGE_TOKEN_ID, counts: &image_counts },
                        Placeholder { kind: MediaKind::Audio, token: AUDIO_TOKEN_ID, counts: &audio_counts },
                    ],
                )?;
                let (adapter, projection) = route(!images.is_empty(), !features.is_empty());
                let media = PreparedMedia::Phi4MM { images, audios: features, adapter, projection };
                Ok((tokens, text, media))
            }
        }
    }

    /// The media of a prompt that has none (plain text completion).
    pub fn no_media(&self) -> PreparedMedia {
        match self {
            LoadedModel::Phi3V { .. } => PreparedMedia::Phi3V(Vec::new()),
            LoadedModel::Phi4MM { .. } => {
                let (adapter, projection) = route(false, false);
                PreparedMedia::Phi4MM { images: Vec::new(), audios: Vec::new(), adapter, projection }
            }
        }
    }

    /// The LoRA adapter every forward pass of a request with `media` runs under.
    pub fn adapter(&self, media: &PreparedMedia) -> Option<&'static str> {
        match media {
            PreparedMedia::Phi3V(_) => None,
            PreparedMedia::Phi4MM { adapter, .. } => adapter.name(),
        }
    }

    /// Projected features `[span.len, hidden]` of the media item behind `span`.
    pub fn encode(&self, media: &PreparedMedia, span: &MediaSpan) -> Result<Tensor> {
        match (self, media) {
            (LoadedModel::Phi3V { model, .. }, PreparedMedia::Phi3V(images)) => {
                let image = &images[span.index];
                model.encode_image(&image.pixel_values, image.grid())
            }
            (LoadedModel::Phi4MM { model, .. }, PreparedMedia::Phi4MM { images, audios, projection, .. }) => {
                match span.kind {
                    MediaKind::Image => model.encode_image(&images[span.index]),
                    MediaKind::Audio => model.encode_audio(&audios[span.index], *projection),
                }
            }
            _ => Err(Error::InvalidRequest("the prompt was prepared by a different model".into())),
        }
    }

    /// A content key for the media item behind `span`: SHA-256 over what its encoder consumes
    /// (the preprocessed crops with their grid and patch mask, or the log-mel features, with
    /// their shapes) and the setting that changes its output (Phi-4's audio projection). The same
    /// picture from any source gets one key; a changed pixel, or a crop limit that changes the
    /// crops, gets another (a limit that does not change them shares the features).
    pub fn media_key(&self, media: &PreparedMedia, span: &MediaSpan) -> Result<MediaKey> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let mut feed = |label: &str, t: &Tensor| -> Result<()> {
            hash.update(label.as_bytes());
            for d in t.dims() {
                hash.update((*d as u64).to_le_bytes());
            }
            let values = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            hash.update(bytemuck::cast_slice::<f32, u8>(&values));
            Ok(())
        };
        match (media, span.kind) {
            (PreparedMedia::Phi3V(images), _) => {
                let image = &images[span.index];
                feed(&format!("phi3v image, grid {:?}", image.grid()), &image.pixel_values)?
            }
            (PreparedMedia::Phi4MM { images, .. }, MediaKind::Image) => {
                let image = &images[span.index];
                feed(&format!("phi4mm image, grid {:?}", image.grid()), &image.pixel_values)?;
                feed("patch mask", &image.patch_mask)?;
            }
            (PreparedMedia::Phi4MM { audios, projection, .. }, MediaKind::Audio) => {
                let label = match projection {
                    AudioProjectionMode::Speech => "phi4mm audio, speech projection",
                    AudioProjectionMode::Vision => "phi4mm audio, vision projection",
                };
                feed(label, &audios[span.index])?;
            }
        }
        Ok(hash.finalize().into())
    }

    /// Input embeddings `[ids.len(), hidden]`, with each `(start, features)` written over its
    /// positions (relative to `ids`).
    pub fn embed(&self, ids: &[u32], media: &[(usize, Tensor)]) -> Result<Tensor> {
        Ok(self.decoder().embed_with_media(ids, media)?.squeeze(0)?)
    }

    /// The position count past which LongRoPE's long factors apply, if the model has them (see
    /// [`crate::nn::rotary::RotaryEmbedding::batch_tables`]).
    pub fn long_rope_after(&self) -> Option<usize> {
        self.decoder().rotary().long_factors_after()
    }

    /// One batched forward pass, abandoned (`None`) when `stop()` holds at one of the stopping
    /// points of a layer (see [`Phi3Decoder::forward_batch_unless`]).
    pub fn forward_batch_unless(
        &self,
        embeds: &Tensor,
        rows: &[BatchRow],
        kv: &mut KvPool,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>> {
        self.decoder().forward_batch_unless(embeds, rows, kv, stop)
    }

    /// Logits `[rows.len(), vocab]` of the given rows of packed hidden states.
    pub fn logits(&self, hidden: &Tensor, rows: &[usize]) -> Result<Tensor> {
        self.decoder().logits(hidden, rows)
    }
}
