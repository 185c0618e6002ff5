//! The request side of the SDK: roles, conversations with images and audio, and mistral.rs's
//! `RequestBuilder` with sampling, constraints, tools and crop limits.

use std::collections::HashMap;

use image::DynamicImage;

use super::Model;
use crate::api::{tool_request, Tool, ToolChoice, ToolRequest};
use crate::audio::DecodedAudio;
use crate::engine::{GenerationParams, Grammar, SamplingParams};
use crate::models::PreprocessOptions;
use crate::prompt::{ChatMessage, MessagePart};
use crate::{Error, Result};

/// Who speaks a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextMessageRole {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// Any other role the chat template understands.
    Custom(String),
}

impl TextMessageRole {
    fn as_str(&self) -> &str {
        match self {
            TextMessageRole::System => "system",
            TextMessageRole::User => "user",
            TextMessageRole::Assistant => "assistant",
            TextMessageRole::Custom(role) => role,
        }
    }
}

/// One image or several, for `add_image_message`.
pub struct Images(Vec<DynamicImage>);

impl From<DynamicImage> for Images {
    fn from(image: DynamicImage) -> Self {
        Images(vec![image])
    }
}

impl From<Vec<DynamicImage>> for Images {
    fn from(images: Vec<DynamicImage>) -> Self {
        Images(images)
    }
}

/// A conversation with images. Tags (`<|image_N|>`) are placed automatically before each
/// message's text unless the text already carries them.
#[derive(Debug, Clone, Default)]
pub struct VisionMessages {
    pub(super) messages: Vec<ChatMessage>,
    pub(super) images: Vec<DynamicImage>,
    pub(super) audios: Vec<DecodedAudio>,
}

impl VisionMessages {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a text message.
    pub fn add_message(mut self, role: TextMessageRole, text: impl ToString) -> Self {
        self.messages.push(ChatMessage::text(role.as_str(), text.to_string()));
        self
    }

    /// Adds a message with one or more images placed before its text. `model` is accepted for
    /// compatibility with code written for mistral.rs; tags do not depend on it.
    pub fn add_image_message(
        self,
        role: TextMessageRole,
        text: impl ToString,
        images: impl Into<Images>,
        _model: &Model,
    ) -> Result<Self> {
        Ok(self.with_images(role, text, images.into().0))
    }

    /// Adds a message with one image placed before its text (the older Phi-3-vision helper).
    pub fn add_phiv_image_message(
        self,
        role: TextMessageRole,
        text: impl ToString,
        image: DynamicImage,
    ) -> Self {
        self.with_images(role, text, vec![image])
    }

    /// Adds a message with audio clips (Phi-4-multimodal) placed before its text; decode clips
    /// with [`crate::audio::decode_audio`].
    pub fn add_audio_message(
        mut self,
        role: TextMessageRole,
        text: impl ToString,
        audios: Vec<DecodedAudio>,
    ) -> Self {
        let mut parts = vec![MessagePart::Audio; audios.len()];
        parts.push(MessagePart::Text(text.to_string()));
        self.messages.push(ChatMessage::new(role.as_str(), parts));
        self.audios.extend(audios);
        self
    }

    fn with_images(mut self, role: TextMessageRole, text: impl ToString, images: Vec<DynamicImage>) -> Self {
        let mut parts = vec![MessagePart::Image; images.len()];
        parts.push(MessagePart::Text(text.to_string()));
        self.messages.push(ChatMessage::new(role.as_str(), parts));
        self.images.extend(images);
        self
    }
}

/// A conversation plus sampling settings (mistral.rs's `RequestBuilder`).
#[derive(Debug, Clone, Default)]
pub struct RequestBuilder {
    pub(super) messages: VisionMessages,
    pub(super) params: GenerationParams,
    pub(super) preprocess: PreprocessOptions,
    pub(super) n_choices: usize,
    pub(super) tools: Vec<Tool>,
    pub(super) tool_choice: Option<ToolChoice>,
}

impl From<VisionMessages> for RequestBuilder {
    fn from(messages: VisionMessages) -> Self {
        RequestBuilder { messages, n_choices: 1, ..Default::default() }
    }
}

impl RequestBuilder {
    /// An empty request.
    pub fn new() -> Self {
        VisionMessages::new().into()
    }

    /// Adds a text message.
    pub fn add_message(mut self, role: TextMessageRole, text: impl ToString) -> Self {
        self.messages = self.messages.add_message(role, text);
        self
    }

    /// Adds a message with images placed before its text.
    pub fn add_image_message(
        mut self,
        role: TextMessageRole,
        text: impl ToString,
        images: impl Into<Images>,
    ) -> Self {
        self.messages = self.messages.with_images(role, text, images.into().0);
        self
    }

    fn sampling(mut self, change: impl FnOnce(&mut SamplingParams)) -> Self {
        change(&mut self.params.sampling);
        self
    }

    /// Sampling temperature (0 is greedy).
    pub fn set_sampler_temperature(self, temperature: f64) -> Self {
        self.sampling(|s| s.temperature = Some(temperature))
    }

    /// Keep only the `k` most likely tokens.
    pub fn set_sampler_topk(self, k: usize) -> Self {
        self.sampling(|s| s.top_k = Some(k))
    }

    /// Nucleus sampling mass.
    pub fn set_sampler_topp(self, p: f64) -> Self {
        self.sampling(|s| s.top_p = Some(p))
    }

    /// Min-p filtering.
    pub fn set_sampler_minp(self, p: f64) -> Self {
        self.sampling(|s| s.min_p = Some(p))
    }

    /// OpenAI frequency penalty.
    pub fn set_sampler_frequency_penalty(self, penalty: f32) -> Self {
        self.sampling(|s| s.frequency_penalty = Some(penalty))
    }

    /// OpenAI presence penalty.
    pub fn set_sampler_presence_penalty(self, penalty: f32) -> Self {
        self.sampling(|s| s.presence_penalty = Some(penalty))
    }

    /// Multiplicative repetition penalty.
    pub fn set_sampler_repetition_penalty(self, penalty: f32) -> Self {
        self.sampling(|s| s.repetition_penalty = Some(penalty))
    }

    /// Seed for reproducible sampling.
    pub fn set_sampler_seed(self, seed: u64) -> Self {
        self.sampling(|s| s.seed = Some(seed))
    }

    /// Most tokens to generate.
    pub fn set_sampler_max_len(mut self, max_tokens: usize) -> Self {
        self.params.max_tokens = Some(max_tokens);
        self
    }

    /// Strings that end generation.
    pub fn set_sampler_stop_strings(mut self, stop: Vec<String>) -> Self {
        self.params.stop = stop;
        self
    }

    /// Return log-probabilities of the chosen tokens with `top` alternatives each.
    pub fn return_logprobs(mut self, top: usize) -> Self {
        self.params.logprobs = Some(top);
        self
    }

    /// Number of choices to generate.
    pub fn set_sampler_n_choices(mut self, n: usize) -> Self {
        self.n_choices = n;
        self
    }

    /// Holds the output to a JSON schema, a regular expression or a Lark grammar.
    pub fn set_constraint(mut self, grammar: Grammar) -> Self {
        self.params.grammar = Some(grammar);
        self
    }

    /// Adds `bias` (-100..=100) to the logits of these token ids before sampling.
    pub fn set_sampler_logits_bias(mut self, bias: HashMap<u32, f32>) -> Self {
        self.params.sampling.logit_bias = bias.into_iter().collect();
        self
    }

    /// Functions the model may call (OpenAI's `tools`).
    pub fn set_tools(mut self, tools: Vec<Tool>) -> Self {
        self.tools = tools;
        self
    }

    /// Whether and which tool the model must call (default: the model decides).
    pub fn set_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// The validated tool settings, as the HTTP API would validate them.
    pub(super) fn tool_request(&self) -> Result<Option<ToolRequest>> {
        let choice = match &self.tool_choice {
            None | Some(ToolChoice::Auto) => serde_json::json!("auto"),
            Some(ToolChoice::Required) => serde_json::json!("required"),
            Some(ToolChoice::Named(name)) => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        };
        let tools = (!self.tools.is_empty()).then(|| self.tools.clone());
        tool_request(tools, Some(&choice), None).map_err(|e| Error::InvalidRequest(e.message))
    }
    /// Phi-3.5-vision: most 336×336 crops per image of this request (the HTTP `num_crops`).
    pub fn set_num_crops(mut self, num_crops: usize) -> Self {
        self.preprocess.num_crops = Some(num_crops);
        self
    }

    /// Phi-4-multimodal: most 448×448 crops per image of this request (the HTTP `dynamic_hd`).
    pub fn set_dynamic_hd(mut self, dynamic_hd: usize) -> Self {
        self.preprocess.dynamic_hd = Some(dynamic_hd);
        self
    }
}

/// Anything `send_chat_request` accepts: [`VisionMessages`] or a [`RequestBuilder`].
pub trait RequestLike {
    /// The request as a builder.
    fn into_request(self) -> RequestBuilder;
}

impl RequestLike for VisionMessages {
    fn into_request(self) -> RequestBuilder {
        self.into()
    }
}

impl RequestLike for RequestBuilder {
    fn into_request(self) -> RequestBuilder {
        self
    }
}
