//! A loaded model ready to answer chat requests: checkpoint → preprocessing → prompt →
//! model → generation. Front ends (CLI, server, SDKs) talk to this and hold no model logic.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::DynamicImage;

use crate::checkpoint::{Architecture, Checkpoint, TokenizerBundle};
use crate::engine::{generate, Completion, Delta, GenerationParams, SequenceModel};
use crate::models::phi3v::{Phi3V, Phi3VConfig};
use crate::nn::kv_cache::KvCache;
use crate::prompt::{expand_phi3v, place_media_tags, ChatMessage, ChatTemplate, MediaKind, PromptTokens};
use crate::vision::phi3v_hd::{preprocess, Phi3VImage, Phi3VImageProcessorConfig};
use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A local checkpoint folder or a Hugging Face model id.
    pub model: String,
    /// Hub revision (branch, tag or commit); `main` when unset.
    pub revision: Option<String>,
}

/// A chat request: messages whose image parts refer, in order, to `images`.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Decoded images, one per `MessagePart::Image`, in order of appearance.
    pub images: Vec<DynamicImage>,
    /// Sampling, length and stop settings.
    pub params: GenerationParams,
}

/// A model loaded and ready to serve requests. Cheap to share: requests only read it.
pub struct Pipeline {
    source: String,
    architecture: Architecture,
    tokenizer: TokenizerBundle,
    template: ChatTemplate,
    model: Phi3V,
    image_config: Phi3VImageProcessorConfig,
    load_time: Duration,
    weight_bytes: u64,
}

/// The prompt of a request, with its images preprocessed.
pub struct PreparedPrompt {
    /// Token ids with image placeholder runs.
    pub tokens: PromptTokens,
    /// The rendered prompt text (chat template applied, tags in place).
    pub text: String,
    /// Preprocessed images, in order.
    pub images: Vec<Phi3VImage>,
}

impl Pipeline {
    /// Resolves, reads and loads the model.
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let checkpoint = Checkpoint::open(&options.model, options.revision.as_deref())?;
        let Checkpoint { source, config_path, config, architecture, weights, tokenizer, preprocessor_config } =
            checkpoint;
        let model_config: Phi3VConfig = serde_json::from_value(config)
            .map_err(|e| Error::checkpoint(&config_path, format!("invalid model config: {e}")))?;
        let preprocessor_path = preprocessor_config
            .ok_or_else(|| Error::checkpoint(config_path.with_file_name("preprocessor_config.json"), "required file is missing"))?;
        let image_config = Phi3VImageProcessorConfig::from_file(&preprocessor_path)?;
        let template =
            ChatTemplate::new(&tokenizer.chat_template, tokenizer.bos_token.as_deref(), tokenizer.eos_token.as_deref())?;
        let vb = weights.var_builder(DType::F32, &Device::Cpu)?;
        let model = Phi3V::new(&model_config, vb)?;
        let weight_bytes = weights.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        Ok(Pipeline {
            source,
            architecture,
            tokenizer,
            template,
            model,
            image_config,
            load_time: started.elapsed(),
            weight_bytes,
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

    /// Size of the checkpoint's weight files on disk.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Longest sequence (prompt plus completion) the model accepts.
    pub fn context_length(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer.tokenizer
    }

    /// Places media tags, applies the chat template, preprocesses images and tokenizes.
    pub fn prepare(&self, messages: &[ChatMessage], images: &[DynamicImage]) -> Result<PreparedPrompt> {
        let expected: usize = messages.iter().map(|m| m.count(MediaKind::Image)).sum();
        if expected != images.len() {
            return Err(Error::InvalidRequest(format!(
                "the messages reference {expected} image(s) but {} were supplied",
                images.len()
            )));
        }
        if messages.is_empty() {
            return Err(Error::InvalidRequest("messages must not be empty".into()));
        }
        let rendered = place_media_tags(messages, &[MediaKind::Image], "\n")?;
        let text = self.template.render(&rendered, true)?;
        let images = images.iter().map(|img| preprocess(img, &self.image_config)).collect::<Result<Vec<_>>>()?;
        let counts: Vec<usize> = images.iter().map(|i| i.num_image_tokens).collect();
        let tokens = expand_phi3v(&self.tokenizer.tokenizer, &text, &counts, 0)?;
        Ok(PreparedPrompt { tokens, text, images })
    }

    /// Answers a chat request, streaming pieces of text to `on_delta` (return `Break` to cancel).
    pub fn chat(&self, request: &ChatRequest, on_delta: impl FnMut(Delta) -> ControlFlow<()>) -> Result<Completion> {
        let started = Instant::now();
        let prepared = self.prepare(&request.messages, &request.images)?;
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
        let mut sequence = Phi3VSequence { model: &self.model, cache: self.model.new_cache(), images: &prepared.images };
        generate(
            &mut sequence,
            &self.tokenizer.tokenizer,
            &prepared.tokens,
            params,
            &self.tokenizer.stop_token_ids,
            self.context_length(),
            started,
            on_delta,
        )
    }

    /// Loads an image file (a convenience for front ends and examples).
    pub fn open_image(path: &Path) -> Result<DynamicImage> {
        crate::media::load_image(&path.to_string_lossy(), &crate::media::MediaPolicy::trusted())
    }
}

/// One Phi-3.5-vision sequence: the model, its KV cache, and its images.
struct Phi3VSequence<'a> {
    model: &'a Phi3V,
    cache: KvCache,
    images: &'a [Phi3VImage],
}

impl Phi3VSequence<'_> {
    fn last_logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let last = hidden.dim(1)? - 1;
        Ok(self.model.logits(hidden, &[last])?.flatten_all()?.to_vec1::<f32>()?)
    }
}

impl SequenceModel for Phi3VSequence<'_> {
    fn prefill(&mut self, prompt: &PromptTokens) -> Result<Vec<f32>> {
        let media = prompt
            .media
            .iter()
            .map(|span| {
                let image = &self.images[span.index];
                Ok((span.start, self.model.encode_image(&image.pixel_values, image.grid())?))
            })
            .collect::<Result<Vec<_>>>()?;
        let embeds = self.model.embed(&prompt.ids, &media)?;
        let hidden = self.model.forward(&embeds, &mut self.cache)?;
        self.last_logits(&hidden)
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let embeds = self.model.embed(&[token], &[])?;
        let hidden = self.model.forward(&embeds, &mut self.cache)?;
        self.last_logits(&hidden)
    }
}
