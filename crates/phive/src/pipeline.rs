//! A loaded model ready to take requests: checkpoint → tokenizer and chat template → the
//! network ([`LoadedModel`]) → prompt preparation. The engine generates from what this
//! prepares; front ends (CLI, server, SDKs) hold no model logic.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use image::DynamicImage;

use crate::audio::DecodedAudio;
use crate::checkpoint::{Architecture, Checkpoint, TokenizerBundle};
use crate::models::{LoadedModel, PreparedMedia, PreprocessOptions};
use crate::nn::linear::{LinearWeight, LoadVb};
use crate::prompt::{ChatMessage, ChatTemplate, MediaKind, PromptTokens, ToolFormat};
use crate::quant::LoadContext;
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
    /// Where the model runs (`--device`); the CPU by default.
    pub device: crate::DeviceChoice,
    /// Precision of the language model (`--dtype`); f32 on the CPU, bf16 on a GPU by default.
    pub dtype: crate::ModelDType,
    /// Crop limits replacing the checkpoint's `preprocessor_config.json` values (`--num-crops`,
    /// `--dynamic-hd`); requests may still set their own.
    pub preprocess: PreprocessOptions,
}

/// A model loaded and ready to serve requests. Cheap to share: requests only read it.
pub struct Pipeline {
    source: String,
    architecture: Architecture,
    tokenizer: TokenizerBundle,
    template: ChatTemplate,
    /// Read once from the template and tokens; every request with tools asks for it.
    tool_format: ToolFormat,
    model: LoadedModel,
    load_time: Duration,
    weight_bytes: u64,
    load_report: crate::quant::LoadReport,
}

/// The prompt of a request, with its media preprocessed.
pub struct PreparedPrompt {
    /// Token ids with media placeholder runs.
    pub tokens: PromptTokens,
    /// The rendered prompt text (chat template applied, tags in place).
    pub text: String,
    media: PreparedMedia,
    /// Each media span's encoded features, computed the first time a prefill chunk reaches the
    /// span and reused by every other choice (and by recomputation after a preemption): the
    /// encoders are deterministic.
    encoded: Vec<OnceLock<Tensor>>,
}

impl PreparedPrompt {
    fn new(tokens: PromptTokens, text: String, media: PreparedMedia) -> Self {
        let encoded = tokens.media.iter().map(|_| OnceLock::new()).collect();
        Self { tokens, text, media, encoded }
    }

    /// The preprocessed media.
    pub fn media(&self) -> &PreparedMedia {
        &self.media
    }

    /// Features `[len, hidden]` of media span `index`, encoding it with `model` the first time.
    pub fn span_features(&self, model: &LoadedModel, index: usize) -> Result<Tensor> {
        self.span_features_or(index, || model.encode(&self.media, &self.tokens.media[index]))
    }

    /// Features of media span `index`, obtained from `compute` (e.g. a cache, then the
    /// encoder) the first time.
    pub fn span_features_or(&self, index: usize, compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some(features) = self.encoded[index].get() {
            return Ok(features.clone());
        }
        let features = compute()?;
        Ok(self.encoded[index].get_or_init(|| features).clone())
    }
}

impl Pipeline {
    /// Resolves, reads and loads the model.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        Ok(Self::load_with(options, false)?.0)
    }

    /// [`Pipeline::load`], also returning every linear weight the load quantized or converted,
    /// by tensor name: what [`crate::export`] saves.
    pub(crate) fn load_recording(options: &LoadOptions) -> Result<(Self, Vec<(String, LinearWeight)>)> {
        Self::load_with(options, true)
    }

    fn load_with(options: &LoadOptions, record: bool) -> Result<(Self, Vec<(String, LinearWeight)>)> {
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
        let device = options.device.open()?;
        let (vb, ctx) = LoadContext::open(&weights, options.isq, options.isq_encoders, &device)?;
        let ctx = ctx.with_decoder_dtype(options.dtype.resolve(&device));
        let ctx = if record { ctx.recording() } else { ctx };
        let vb = LoadVb::new(vb, &ctx);
        let model = LoadedModel::load(
            architecture,
            config,
            &config_path,
            &preprocessor_path,
            &options.preprocess,
            vb,
        )?;
        let load_report = ctx.finish();
        let weight_bytes =
            weights.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        let tool_format = ToolFormat::detect(&tokenizer.tokenizer, &tokenizer.chat_template);
        let pipeline = Pipeline {
            source,
            architecture,
            tokenizer,
            template,
            tool_format,
            model,
            load_time: started.elapsed(),
            weight_bytes,
            load_report,
        };
        Ok((pipeline, ctx.into_recorded()))
    }

    /// Where the model came from (`org/name@revision` or a folder).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The model family.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// Where the model runs, for the load summary: `cpu`, or the GPU with its memory in use.
    pub fn device_summary(&self) -> String {
        crate::device::describe(self.model.device())
    }

    /// The language model's precision, as users write it (`f32`, `bf16`).
    pub fn dtype_name(&self) -> &'static str {
        self.model.decoder_dtype().as_str()
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
        self.model.context_length()
    }

    /// Whether requests may carry audio (Phi-4-multimodal with an audio encoder).
    pub fn accepts_audio(&self) -> bool {
        self.model.accepts_audio()
    }

    /// The crop limit in use unless a request sets its own: `("num_crops", 4)` (see
    /// [`LoadedModel::crop_limit`]).
    pub fn crop_limit(&self) -> (&'static str, usize) {
        self.model.crop_limit()
    }

    /// The network.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Token ids that end generation (from `generation_config.json`, plus the chat template's
    /// end-of-turn tokens).
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.tokenizer.stop_token_ids
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer.tokenizer
    }

    /// How this model is told about tools and writes its calls.
    pub fn tool_format(&self) -> ToolFormat {
        self.tool_format
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
        self.prepare_media_with(messages, images, audios, &PreprocessOptions::default())
    }

    /// [`Self::prepare_media`] with the request's own crop limit (`num_crops`, `dynamic_hd`).
    pub fn prepare_media_with(
        &self,
        messages: &[ChatMessage],
        images: &[DynamicImage],
        audios: &[DecodedAudio],
        preprocess: &PreprocessOptions,
    ) -> Result<PreparedPrompt> {
        self.prepare_conversation(messages, images, audios, preprocess, true)
    }

    /// [`Self::prepare_media_with`], without the assistant prompt at the end unless
    /// `add_generation_prompt` (to count or inspect a conversation's tokens).
    pub fn prepare_conversation(
        &self,
        messages: &[ChatMessage],
        images: &[DynamicImage],
        audios: &[DecodedAudio],
        preprocess: &PreprocessOptions,
        add_generation_prompt: bool,
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
        let (tokens, text, media) = self.model.prepare(
            messages,
            images,
            audios,
            preprocess,
            &|rendered| self.template.render(rendered, add_generation_prompt),
            &self.tokenizer.tokenizer,
        )?;
        Ok(PreparedPrompt::new(tokens, text, media))
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
        let media = self.model.no_media();
        Ok(PreparedPrompt::new(PromptTokens { ids, media: Vec::new() }, prompt.to_string(), media))
    }
}
