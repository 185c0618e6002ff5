//! Fetching a chat request's media under a policy and preparing its prompt: the step every
//! front end runs between validating a request and submitting it to the engine.

use super::{history_calls_text, ApiError, ChatInput};
use crate::fault::{inject, Fault};
use crate::media::{load_audio_held, load_image_held, MediaPolicy};
use crate::pipeline::{Pipeline, PreparedPrompt};
use crate::prompt::{MessagePart, ToolFormat};

impl ChatInput {
    /// Writes the history's tool calls and the offered tools into the conversation, and sets
    /// the tool-call syntax and grammar in `params`, in the loaded model's tool format.
    pub fn apply_tools(&mut self, format: ToolFormat) -> Result<(), ApiError> {
        for (index, calls) in std::mem::take(&mut self.history_calls) {
            let parts = &mut self.messages[index].parts;
            if parts.iter().all(|p| *p == MessagePart::Text(String::new())) {
                parts.clear();
            }
            parts.push(MessagePart::Text(history_calls_text(&calls, format)));
        }
        match self.tools.take() {
            Some(tools) => tools.apply(format, &mut self.messages, &mut self.params),
            None => Ok(()),
        }
    }

    /// Applies the tools ([`Self::apply_tools`]), fetches and decodes every image and audio
    /// reference (blocking; run it off async executors) and prepares the prompt. Errors name
    /// the failing item ("image 2: ..."). The decoded media count against `policy.budget`
    /// until the prompt is prepared.
    pub fn prepare(&mut self, pipeline: &Pipeline, policy: &MediaPolicy) -> Result<PreparedPrompt, ApiError> {
        self.prepare_conversation(pipeline, policy, true)
    }

    /// [`Self::prepare`], ending with the assistant prompt only when `add_generation_prompt`.
    pub fn prepare_conversation(
        &mut self,
        pipeline: &Pipeline,
        policy: &MediaPolicy,
        add_generation_prompt: bool,
    ) -> Result<PreparedPrompt, ApiError> {
        self.apply_tools(pipeline.tool_format())?;
        // Before fetching anything: a crop limit of the other family or out of range.
        pipeline.model().check_preprocess(&self.preprocess)?;
        if !self.audios.is_empty() && !pipeline.accepts_audio() {
            // Refuse before fetching anything, naming the first audio part.
            let position = self.messages.iter().enumerate().find_map(|(i, m)| {
                m.parts
                    .iter()
                    .position(|p| *p == MessagePart::Audio)
                    .map(|j| format!("messages[{i}].content[{j}]"))
            });
            let model = pipeline.architecture().display_name();
            return Err(ApiError::invalid(
                position,
                format!("this model ({model}) does not accept audio input"),
            )
            .with_code("unsupported_modality"));
        }
        let numbered = |what: &str, i: usize, e: crate::Error| {
            let mut error = ApiError::from(e);
            error.message = format!("{what} {}: {}", i + 1, error.message);
            error
        };
        let images = self
            .images
            .iter()
            .enumerate()
            .map(|(i, reference)| load_image_held(reference, policy).map_err(|e| numbered("image", i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let audios = self
            .audios
            .iter()
            .enumerate()
            .map(|(i, reference)| load_audio_held(reference, policy).map_err(|e| numbered("audio", i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let (images, _held): (Vec<_>, Vec<_>) = images.into_iter().unzip();
        let (audios, _held_audio): (Vec<_>, Vec<_>) = audios.into_iter().unzip();
        let prepared = pipeline.prepare_conversation(
            &self.messages,
            &images,
            &audios,
            &self.preprocess,
            add_generation_prompt,
        )?;
        inject(Fault::Prepare, &prepared.text);
        Ok(prepared)
    }
}
