//! From chat messages to token ids: media tags, the chat template, and placeholder runs.
//!
//! Phi models reference media in the text with `<|image_N|>` / `<|audio_N|>` tags. A user may
//! write them (then they are validated) or leave them out (then phive inserts them where the
//! media parts sit in each message, as in Hugging Face's examples: `<|image_1|>\n` before the
//! text that follows the image).

mod expand;
mod tags;
mod template;
mod tools;

pub use expand::{expand_phi3v, expand_phi4mm, MediaSpan, Placeholder, PromptTokens};
pub use tags::{place_media_tags, MediaKind};
pub use template::ChatTemplate;
pub use tools::{python_json, ToolFormat};

/// One part of a message, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum MessagePart {
    /// Plain text, possibly containing explicit media tags.
    Text(String),
    /// An image; images are numbered by their order across the whole conversation.
    Image,
    /// An audio clip; numbered like images, separately from them.
    Audio,
}

/// A chat message: a role (`system`, `user`, `assistant`) and its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// The speaker.
    pub role: String,
    /// Text and media parts in order.
    pub parts: Vec<MessagePart>,
    /// Tool definitions as the chat template expects them on this message (Phi-4's template
    /// reads a system message's `tools`, a JSON string).
    pub tools: Option<String>,
}

impl ChatMessage {
    /// A message of `parts`.
    pub fn new(role: impl Into<String>, parts: Vec<MessagePart>) -> Self {
        ChatMessage { role: role.into(), parts, tools: None }
    }

    /// A text-only message.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(role, vec![MessagePart::Text(text.into())])
    }

    /// Number of parts of the given kind.
    pub fn count(&self, kind: MediaKind) -> usize {
        self.parts.iter().filter(|p| kind.matches(p)).count()
    }
}

/// A message whose content is a single string, as chat templates expect.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RenderedMessage {
    /// The speaker.
    pub role: String,
    /// The content with media tags in place.
    pub content: String,
    /// Tool definitions (absent from the template's view when `None`, so `'tools' in message`
    /// is false as in Hugging Face).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<String>,
}
