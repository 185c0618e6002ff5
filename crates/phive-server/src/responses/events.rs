//! The Responses API's streamed events, in OpenAI's order: `response.created`,
//! `response.in_progress`, `response.output_item.added`, `response.content_part.added`, one
//! `response.output_text.delta` per piece of text, `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`, then `response.completed` (or
//! `response.incomplete` when the length limit ended it). Each event is named after its `type`
//! and numbered by `sequence_number`; no `[DONE]` follows.

use axum::body::Bytes;
use phive::api::{ApiError, ErrorKind, Usage};
use phive::engine::{Completion, Delta};
use serde_json::{json, Value};

use super::object::{status, OutputText, ResponseBuilder};
use crate::stream::{data, named, to_json, ChunkFormat};

/// The event stream of one response (one choice).
pub(crate) struct ResponsesFormat {
    builder: ResponseBuilder,
    sequence_number: u64,
}

impl ResponsesFormat {
    pub fn new(builder: ResponseBuilder) -> Self {
        ResponsesFormat { builder, sequence_number: 0 }
    }

    /// An event of `kind` with `fields`, numbered.
    fn event(&mut self, kind: &str, mut fields: Value) -> Bytes {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence_number);
        self.sequence_number += 1;
        named(kind, &to_json(&fields))
    }

    /// An event about the message's only content part.
    fn part_event(&mut self, kind: &str, mut fields: Value) -> Bytes {
        fields["item_id"] = json!(self.builder.message_id);
        fields["output_index"] = json!(0);
        fields["content_index"] = json!(0);
        self.event(kind, fields)
    }
}

impl ChunkFormat for ResponsesFormat {
    fn start(&mut self, _n: usize) -> Vec<Bytes> {
        let response = json!(self.builder.in_progress());
        let item = json!(self.builder.message("in_progress", Vec::new()));
        vec![
            self.event("response.created", json!({"response": response})),
            self.event("response.in_progress", json!({"response": response})),
            self.event("response.output_item.added", json!({"output_index": 0, "item": item})),
            self.part_event("response.content_part.added", json!({"part": OutputText::new(String::new())})),
        ]
    }

    fn delta(&mut self, _choice: usize, delta: &Delta) -> Option<Bytes> {
        if delta.text.is_empty() {
            return None;
        }
        Some(self.part_event("response.output_text.delta", json!({"delta": delta.text, "logprobs": []})))
    }

    fn done(&mut self, _choice: usize, completion: &Completion) -> Vec<Bytes> {
        let part = OutputText::new(completion.text.clone());
        let item = json!(self.builder.message(status(completion), vec![part.clone()]));
        vec![
            self.part_event("response.output_text.done", json!({"text": completion.text, "logprobs": []})),
            self.part_event("response.content_part.done", json!({"part": part})),
            self.event("response.output_item.done", json!({"output_index": 0, "item": item})),
        ]
    }

    fn usage(&mut self, completions: &[Completion], usage: Usage) -> Bytes {
        let Some(completion) = completions.first() else {
            // Unreachable: the stream asks for usage once its one choice is done.
            let error = ApiError::new(ErrorKind::Internal, "the response finished without its message");
            return data(&to_json(&error.body()));
        };
        let response = self.builder.finished(completion, usage);
        let kind = if response.status == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.event(kind, json!({"response": response}))
    }

    fn id(&self) -> &str {
        &self.builder.id
    }

    fn end(&self) -> Option<Bytes> {
        None
    }
}
