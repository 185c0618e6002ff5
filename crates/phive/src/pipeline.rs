//! A loaded model ready to answer chat requests: checkpoint → preprocessing → prompt →
//! model → generation. Front ends (CLI, server, SDKs) talk to this and hold no model logic.

use std::ops::ControlFlow;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use image::DynamicImage;

use crate::audio::{log_mel_features, AudioProjectionMode, DecodedAudio};
use crate::checkpoint::{Architecture, Checkpoint, TokenizerBundle};
use crate::engine::{generate, Completion, Delta, GenerationParams, SequenceModel};
use crate::models::phi3v::{Phi3V, Phi3VConfig};
use crate::models::phi4mm::{route, Adapter, Phi4MM, Phi4MMConfig, AUDIO_TOKEN_ID, IMAGE_TOKEN_ID};
use crate::nn::kv_cache::KvCache;
use crate::prompt::{
    expand_phi3v, expand_phi4mm, place_media_tags, ChatMessage, ChatTemplate, MediaKind, Placeholder,
    PromptTokens,
};
use crate::vision::{phi3v_hd, phi4mm_hd};
use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A local checkpoint folder or a Hugging Face model id.
    pub model: String,
    /// Hub revision (branch, tag or commit); `main` when unset.
    pub revision: Option<String>,
    /// In-situ quantization of the language model's linear layers while loading (`--isq`);
    /// `None` keeps f32. A GGUF checkpoint from `phive quantize` is pre-quantized already.
    pub isq: Option<crate::quant::IsqType>,
    /// Quantize the vision/audio encoders' projections too (`--isq-encoders`).
    pub isq_encoders: bool,
}

/// A chat request: messages whose media parts refer, in order, to `images` and `audios`.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Decoded images, one per `MessagePart::Image`, in order of appearance.
    pub images: Vec<DynamicImage>,
    /// Decoded audio clips, one per `MessagePart::Audio`, in order of appearance.
    pub audios: Vec<DecodedAudio>,
    /// Sampling, length and stop settings.
    pub params: GenerationParams,
}

/// The network of each supported family, with its preprocessing settings.
enum Family {
    Phi3V { model: Box<Phi3V>, images: phi3v_hd::Phi3VImageProcessorConfig },
    Phi4MM { model: Box<Phi4MM>, images: phi4mm_hd::Phi4MMImageProcessorConfig },
}

/// A model loaded and ready to serve requests. Cheap to share: requests only read it.
pub struct Pipeline {
    source: String,
    architecture: Architecture,
    tokenizer: TokenizerBundle,
    template: ChatTemplate,
    family: Family,
    load_time: Duration,
    weight_bytes: u64,
    load_report: crate::quant::LoadReport,
}

/// A request's media after preprocessing, in the form its model family consumes.
enum PreparedMedia {
    Phi3V(Vec<phi3v_hd::Phi3VImage>),
    Phi4MM {
        images: Vec<phi4mm_hd::Phi4MMImage>,
        /// Log-mel features `[T, 80]` per clip.
        audios: Vec<Tensor>,
        adapter: Adapter,
        projection: AudioProjectionMode,
    },
}

/// The prompt of a request, with its media preprocessed.
pub struct PreparedPrompt {
    /// Token ids with media placeholder runs.
    pub tokens: PromptTokens,
    /// The rendered prompt text (chat template applied, tags in place).
    pub text: String,
    media: PreparedMedia,
    /// The encoded media features and where they go, computed by the first choice's prefill and
    /// reused by the others of an `n > 1` request (the encoders are deterministic).
    encoded_media: OnceLock<Vec<(usize, Tensor)>>,
}

impl PreparedPrompt {
    fn new(tokens: PromptTokens, text: String, media: PreparedMedia) -> Self {
        Self { tokens, text, media, encoded_media: OnceLock::new() }
    }

    /// The encoded media, running `encode` only the first time.
    fn encoded_media(
        &self,
        encode: impl FnOnce() -> Result<Vec<(usize, Tensor)>>,
    ) -> Result<Vec<(usize, Tensor)>> {
        if let Some(media) = self.encoded_media.get() {
            return Ok(media.clone());
        }
        let media = encode()?;
        Ok(self.encoded_media.get_or_init(|| media).clone())
    }
}

impl Pipeline {
    /// Resolves, reads and loads the model.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let checkpoint = Checkpoint::open(&options.model, options.revision.as_deref())?;
        let Checkpoint { source, config_path, config, architecture, weights, tokenizer, preprocessor_config } =
            checkpoint;
        let preprocessor_path = preprocessor_config.ok_or_else(|| {
            Error::checkpoint(
                config_path.with_file_name("preprocessor_config.json"),
                "required file is missing",
            )
        })?;
        let template = ChatTemplate::new(
            &tokenizer.chat_template,
            tokenizer.bos_token.as_deref(),
            tokenizer.eos_token.as_deref(),
        )?;
        let (vb, isq) = crate::quant::LoadContext::open(&weights, options.isq, options.isq_encoders)?;
        let family = match architecture {
            Architecture::Phi3V => {
                let model_config: Phi3VConfig = serde_json::from_value(config)
                    .map_err(|e| Error::checkpoint(&config_path, format!("invalid model config: {e}")))?;
                let images = phi3v_hd::Phi3VImageProcessorConfig::from_file(&preprocessor_path)?;
                Family::Phi3V { model: Box::new(isq.scope(|| Phi3V::new(&model_config, vb))?), images }
            }
            Architecture::Phi4MM => {
                let model_config = Phi4MMConfig::from_json(&config)?;
                let images = phi4mm_hd::Phi4MMImageProcessorConfig::from_file(&preprocessor_path)?;
                let model = isq.scope(|| Phi4MM::new(&model_config, vb))?;
                Family::Phi4MM { model: Box::new(model), images }
            }
        };
        let load_report = isq.finish();
        let weight_bytes =
            weights.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        Ok(Pipeline {
            source,
            architecture,
            tokenizer,
            template,
            family,
            load_time: started.elapsed(),
            weight_bytes,
            load_report,
        })
    }

    /// Where the model came from (`org/name@revision` or a folder).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The model family.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// How long loading took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// What the load quantized, its peak memory and time (see [`crate::quant::LoadReport`]).
    pub fn load_report(&self) -> &crate::quant::LoadReport {
        &self.load_report
    }

    /// Size of the checkpoint's weight files on disk.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Longest sequence (prompt plus completion) the model accepts.
    pub fn context_length(&self) -> usize {
        match &self.family {
            Family::Phi3V { model, .. } => model.config().text.max_position_embeddings,
            Family::Phi4MM { model, .. } => model.config().text.max_position_embeddings,
        }
    }

    /// Whether requests may carry audio (Phi-4-multimodal with an audio encoder).
    pub fn accepts_audio(&self) -> bool {
        matches!(&self.family, Family::Phi4MM { model, .. } if model.audio().is_some())
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer.tokenizer
    }

    /// Places media tags, applies the chat template, preprocesses images and tokenizes.
    pub fn prepare(&self, messages: &[ChatMessage], images: &[DynamicImage]) -> Result<PreparedPrompt> {
        self.prepare_media(messages, images, &[])
    }

    /// [`Self::prepare`] for requests that may also carry audio.
    pub fn prepare_media(
        &self,
        messages: &[ChatMessage],
        images: &[DynamicImage],
        audios: &[DecodedAudio],
    ) -> Result<PreparedPrompt> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest("messages must not be empty".into()));
        }
        for (kind, supplied, word) in
            [(MediaKind::Image, images.len(), "image"), (MediaKind::Audio, audios.len(), "audio")]
        {
            let expected: usize = messages.iter().map(|m| m.count(kind)).sum();
            if expected != supplied {
                return Err(Error::InvalidRequest(format!(
                    "the messages reference {expected} {word} input(s) but {supplied} were supplied"
                )));
            }
        }
        match &self.family {
            Family::Phi3V { images: config, .. } => {
                let rendered = place_media_tags(messages, &[MediaKind::Image], "\n")?;
                let text = self.template.render(&rendered, true)?;
                let images =
                    images.iter().map(|img| phi3v_hd::preprocess(img, config)).collect::<Result<Vec<_>>>()?;
                let counts: Vec<usize> = images.iter().map(|i| i.num_image_tokens).collect();
                let tokens = expand_phi3v(&self.tokenizer.tokenizer, &text, &counts, 0)?;
                Ok(PreparedPrompt::new(tokens, text, PreparedMedia::Phi3V(images)))
            }
            Family::Phi4MM { model, images: config } => {
                let kinds: &[MediaKind] = if self.accepts_audio() {
                    &[MediaKind::Image, MediaKind::Audio]
                } else {
                    &[MediaKind::Image]
                };
                let rendered = place_media_tags(messages, kinds, "")?;
                let text = self.template.render(&rendered, true)?;
                let images = images
                    .iter()
                    .map(|img| phi4mm_hd::preprocess(img, config))
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
                    &self.tokenizer.tokenizer,
                    &text,
                    &[
                        Placeholder { kind: MediaKind::Image, token: IMAGE_TOKEN_ID, counts: &image_counts },
                        Placeholder { kind: MediaKind::Audio, token: AUDIO_TOKEN_ID, counts: &audio_counts },
                    ],
                )?;
                let (adapter, projection) = route(!images.is_empty(), !features.is_empty());
                let media = PreparedMedia::Phi4MM { images, audios: features, adapter, projection };
                Ok(PreparedPrompt::new(tokens, text, media))
            }
        }
    }

    /// Tokenizes a raw prompt (no chat template, no media) for plain text completion.
    pub fn prepare_text(&self, prompt: &str) -> Result<PreparedPrompt> {
        let ids = self
            .tokenizer
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec();
        if ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt must not be empty".into()));
        }
        let media = match &self.family {
            Family::Phi3V { .. } => PreparedMedia::Phi3V(Vec::new()),
            Family::Phi4MM { .. } => {
                let (adapter, projection) = route(false, false);
                PreparedMedia::Phi4MM { images: Vec::new(), audios: Vec::new(), adapter, projection }
            }
        };
        Ok(PreparedPrompt::new(PromptTokens { ids, media: Vec::new() }, prompt.to_string(), media))
    }

    /// Answers a chat request, streaming pieces of text to `on_delta` (return `Break` to cancel).
    pub fn chat(
        &self,
        request: &ChatRequest,
        on_delta: impl FnMut(Delta) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let started = Instant::now();
        let prepared = self.prepare_media(&request.messages, &request.images, &request.audios)?;
        self.generate(&prepared, &request.params, started, on_delta)
    }

    /// Checks that the prompt leaves room for at least one generated token and that the
    /// request's length settings are valid.
    pub fn check_fits(&self, prepared: &PreparedPrompt, params: &GenerationParams) -> Result<()> {
        crate::engine::generate::check_lengths(prepared.tokens.ids.len(), params, self.context_length())
    }

    /// Generates from an already prepared prompt.
    pub fn generate(
        &self,
        prepared: &PreparedPrompt,
        params: &GenerationParams,
        started: Instant,
        on_delta: impl FnMut(Delta) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let mut sequence: Box<dyn SequenceModel + '_> = match (&self.family, &prepared.media) {
            (Family::Phi3V { model, .. }, PreparedMedia::Phi3V(images)) => {
                Box::new(Phi3VSequence { model, cache: model.new_cache(), images, prepared })
            }
            (Family::Phi4MM { model, .. }, PreparedMedia::Phi4MM { images, audios, adapter, projection }) => {
                Box::new(Phi4MMSequence {
                    model,
                    cache: model.new_cache(),
                    images,
                    audios,
                    adapter: *adapter,
                    projection: *projection,
                    prepared,
                })
            }
            _ => return Err(Error::InvalidRequest("the prompt was prepared by a different model".into())),
        };
        generate(
            sequence.as_mut(),
            &self.tokenizer.tokenizer,
            &prepared.tokens,
            params,
            &self.tokenizer.stop_token_ids,
            self.context_length(),
            started,
            on_delta,
        )
    }
}

/// Logits of the last row of `hidden` as a vector.
fn last_row_logits(
    hidden: &Tensor,
    logits: impl FnOnce(&Tensor, &[usize]) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    let last = hidden.dim(1)? - 1;
    Ok(logits(hidden, &[last])?.flatten_all()?.to_vec1::<f32>()?)
}

/// One Phi-3.5-vision sequence: the model, its KV cache, and its images.
struct Phi3VSequence<'a> {
    model: &'a Phi3V,
    cache: KvCache,
    images: &'a [phi3v_hd::Phi3VImage],
    prepared: &'a PreparedPrompt,
}

impl SequenceModel for Phi3VSequence<'_> {
    fn prefill(&mut self, prompt: &PromptTokens) -> Result<Vec<f32>> {
        let media = self.prepared.encoded_media(|| {
            prompt
                .media
                .iter()
                .map(|span| {
                    let image = &self.images[span.index];
                    Ok((span.start, self.model.encode_image(&image.pixel_values, image.grid())?))
                })
                .collect()
        })?;
        let embeds = self.model.embed(&prompt.ids, &media)?;
        let hidden = self.model.forward(&embeds, &mut self.cache)?;
        last_row_logits(&hidden, |h, rows| self.model.logits(h, rows))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let embeds = self.model.embed(&[token], &[])?;
        let hidden = self.model.forward(&embeds, &mut self.cache)?;
        last_row_logits(&hidden, |h, rows| self.model.logits(h, rows))
    }
}

/// One Phi-4-multimodal sequence: every forward call runs with the adapter its media chose.
struct Phi4MMSequence<'a> {
    model: &'a Phi4MM,
    cache: KvCache,
    images: &'a [phi4mm_hd::Phi4MMImage],
    audios: &'a [Tensor],
    adapter: Adapter,
    projection: AudioProjectionMode,
    prepared: &'a PreparedPrompt,
}

impl SequenceModel for Phi4MMSequence<'_> {
    fn prefill(&mut self, prompt: &PromptTokens) -> Result<Vec<f32>> {
        let media = self.prepared.encoded_media(|| {
            prompt
                .media
                .iter()
                .map(|span| {
                    let features = match span.kind {
                        MediaKind::Image => self.model.encode_image(&self.images[span.index])?,
                        MediaKind::Audio => {
                            self.model.encode_audio(&self.audios[span.index], self.projection)?
                        }
                    };
                    Ok((span.start, features))
                })
                .collect()
        })?;
        let embeds = self.model.embed(&prompt.ids, &media)?;
        let hidden = self.model.forward(&embeds, &mut self.cache, self.adapter)?;
        last_row_logits(&hidden, |h, rows| self.model.logits(h, rows))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let embeds = self.model.embed(&[token], &[])?;
        let hidden = self.model.forward(&embeds, &mut self.cache, self.adapter)?;
        last_row_logits(&hidden, |h, rows| self.model.logits(h, rows))
    }
}
