//! Validating user-written media tags, or inserting them where none were written.

use regex::Regex;
use std::sync::OnceLock;

use super::{ChatMessage, MessagePart, RenderedMessage};
use crate::{Error, Result};

/// A kind of media referenced by numbered tags in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `<|image_N|>`
    Image,
    /// `<|audio_N|>`
    Audio,
}

impl MediaKind {
    fn word(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
        }
    }

    /// The tag for the `n`-th (1-based) item of this kind.
    pub fn tag(self, n: usize) -> String {
        format!("<|{}_{n}|>", self.word())
    }

    /// The pattern matching any tag of this kind, capturing its number.
    pub fn pattern(self) -> &'static Regex {
        static IMAGE: OnceLock<Regex> = OnceLock::new();
        static AUDIO: OnceLock<Regex> = OnceLock::new();
        match self {
            MediaKind::Image => IMAGE.get_or_init(|| Regex::new(r"<\|image_(\d+)\|>").expect("valid regex")),
            MediaKind::Audio => AUDIO.get_or_init(|| Regex::new(r"<\|audio_(\d+)\|>").expect("valid regex")),
        }
    }

    pub(crate) fn matches(self, part: &MessagePart) -> bool {
        matches!(
            (self, part),
            (MediaKind::Image, MessagePart::Image) | (MediaKind::Audio, MessagePart::Audio)
        )
    }
}

/// Turns messages into template-ready strings with exactly one tag per media item.
///
/// When the text already carries tags of a kind they must number the items 1..n in order of
/// appearance, one tag per item; otherwise a tag followed by `after_tag` is inserted at the
/// position of each media part (Phi-3.5's examples put a newline after each tag, Phi-4's
/// nothing).
pub fn place_media_tags(
    messages: &[ChatMessage],
    kinds: &[MediaKind],
    after_tag: &str,
) -> Result<Vec<RenderedMessage>> {
    let mut explicit = Vec::new();
    for &kind in kinds {
        let items: usize = messages.iter().map(|m| m.count(kind)).sum();
        let written = validate_written_tags(messages, kind, items)?;
        if written {
            explicit.push(kind);
        }
    }
    let mut counters = vec![0usize; kinds.len()];
    let rendered = messages
        .iter()
        .map(|message| {
            let mut content = String::new();
            let mut previous_was_text = false;
            for part in &message.parts {
                match part {
                    MessagePart::Text(text) => {
                        if previous_was_text {
                            content.push('\n');
                        }
                        content.push_str(text);
                        previous_was_text = true;
                    }
                    media => {
                        previous_was_text = false;
                        let slot = kinds.iter().position(|k| k.matches(media));
                        let Some(slot) = slot else {
                            return Err(Error::InvalidRequest(format!(
                                "this model does not accept {} inputs",
                                describe(media)
                            )));
                        };
                        counters[slot] += 1;
                        if !explicit.contains(&kinds[slot]) {
                            content.push_str(&kinds[slot].tag(counters[slot]));
                            content.push_str(after_tag);
                        }
                    }
                }
            }
            Ok(RenderedMessage { role: message.role.clone(), content, tools: message.tools.clone() })
        })
        .collect::<Result<Vec<_>>>()?;
    // Text parts around a media part are joined, so a tag split across them (`<|ima`, an image,
    // `ge_2|>`) only appears now; it would point at a wrong or missing item. Count again.
    for &kind in kinds {
        let items: usize = messages.iter().map(|m| m.count(kind)).sum();
        let tags: usize = rendered.iter().map(|r| kind.pattern().find_iter(&r.content).count()).sum();
        if tags != items {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {tags} {word} tag(s) once its text parts are joined but the request carries \
                 {items} {word}(s); do not split a tag like {} across content parts",
                kind.tag(1),
                word = kind.word()
            )));
        }
    }
    Ok(rendered)
}

fn describe(part: &MessagePart) -> &'static str {
    match part {
        MessagePart::Text(_) => "text",
        MessagePart::Image => "image",
        MessagePart::Audio => "audio",
    }
}

/// Checks user-written tags of `kind`; returns whether there were any.
fn validate_written_tags(messages: &[ChatMessage], kind: MediaKind, items: usize) -> Result<bool> {
    let mut numbers = Vec::new();
    for message in messages {
        for part in &message.parts {
            if let MessagePart::Text(text) = part {
                for cap in kind.pattern().captures_iter(text) {
                    numbers.push(cap[1].parse::<usize>().unwrap_or(usize::MAX));
                }
            }
        }
    }
    if numbers.is_empty() {
        return Ok(false);
    }
    let word = kind.word();
    if numbers.len() != items {
        return Err(Error::InvalidRequest(format!(
            "the prompt has {} {} tag(s) like {} but the request carries {items} {word}(s); \
             write one tag per {word} or leave the tags out and phive places them",
            numbers.len(),
            word,
            kind.tag(1)
        )));
    }
    for (i, &n) in numbers.iter().enumerate() {
        if n != i + 1 {
            return Err(Error::InvalidRequest(format!(
                "{word} tags must be numbered 1, 2, ... in order of appearance: found {} where {} was expected",
                if n == usize::MAX { format!("<|{word}_...|>") } else { kind.tag(n) },
                kind.tag(i + 1)
            )));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(parts: Vec<MessagePart>) -> ChatMessage {
        ChatMessage::new("user", parts)
    }

    #[test]
    fn inserts_tags_before_text_in_part_order() {
        let msgs = vec![
            user(vec![MessagePart::Image, MessagePart::Image, MessagePart::Text("Compare.".into())]),
            ChatMessage::text("assistant", "ok"),
            user(vec![
                MessagePart::Text("And".into()),
                MessagePart::Image,
                MessagePart::Text("this?".into()),
            ]),
        ];
        let out = place_media_tags(&msgs, &[MediaKind::Image], "\n").unwrap();
        assert_eq!(out[0].content, "<|image_1|>\n<|image_2|>\nCompare.");
        assert_eq!(out[2].content, "And<|image_3|>\nthis?");
    }

    #[test]
    fn keeps_valid_written_tags() {
        let msgs = vec![user(vec![MessagePart::Text("<|image_1|>\nWhat?".into()), MessagePart::Image])];
        let out = place_media_tags(&msgs, &[MediaKind::Image], "\n").unwrap();
        assert_eq!(out[0].content, "<|image_1|>\nWhat?");
    }

    #[test]
    fn rejects_miscounted_or_misnumbered_tags() {
        let two_tags =
            vec![user(vec![MessagePart::Text("<|image_1|><|image_2|>".into()), MessagePart::Image])];
        let err = place_media_tags(&two_tags, &[MediaKind::Image], "\n").unwrap_err().to_string();
        assert!(err.contains("2 image tag(s)") && err.contains("1 image(s)"), "{err}");

        let out_of_order = vec![user(vec![
            MessagePart::Text("<|image_2|><|image_1|>".into()),
            MessagePart::Image,
            MessagePart::Image,
        ])];
        let err = place_media_tags(&out_of_order, &[MediaKind::Image], "\n").unwrap_err().to_string();
        assert!(err.contains("found <|image_2|> where <|image_1|> was expected"), "{err}");

        let repeated = vec![user(vec![
            MessagePart::Text("<|image_1|><|image_1|>".into()),
            MessagePart::Image,
            MessagePart::Image,
        ])];
        assert!(place_media_tags(&repeated, &[MediaKind::Image], "\n").is_err());
    }

    #[test]
    fn rejects_a_tag_split_across_parts() {
        // Found while writing the media_tags fuzz target: one written tag, one image, but the
        // joined text reads `<|image_1|><|image_2|>`.
        let split = vec![user(vec![
            MessagePart::Text("<|image_1|><|ima".into()),
            MessagePart::Image,
            MessagePart::Text("ge_2|>".into()),
        ])];
        let err = place_media_tags(&split, &[MediaKind::Image], "\n").unwrap_err().to_string();
        assert!(
            err.contains("2 image tag(s) once its text parts are joined") && err.contains("1 image(s)"),
            "{err}"
        );
        let implicit_images = vec![user(vec![
            MessagePart::Text("<|ima".into()),
            MessagePart::Audio,
            MessagePart::Text("ge_1|> <|audio_1|>".into()),
            MessagePart::Image,
        ])];
        let kinds = [MediaKind::Image, MediaKind::Audio];
        assert!(place_media_tags(&implicit_images, &kinds, "\n").is_err());
    }

    #[test]
    fn images_and_audio_are_numbered_separately() {
        let msgs = vec![user(vec![
            MessagePart::Audio,
            MessagePart::Image,
            MessagePart::Audio,
            MessagePart::Text("Describe.".into()),
        ])];
        let out = place_media_tags(&msgs, &[MediaKind::Image, MediaKind::Audio], "\n").unwrap();
        assert_eq!(out[0].content, "<|audio_1|>\n<|image_1|>\n<|audio_2|>\nDescribe.");
        let err = place_media_tags(&msgs, &[MediaKind::Image], "\n").unwrap_err().to_string();
        assert!(err.contains("does not accept audio"), "{err}");
    }

    #[test]
    fn tags_without_images_are_an_error() {
        let msgs = vec![ChatMessage::text("user", "<|image_1|> hi")];
        assert!(place_media_tags(&msgs, &[MediaKind::Image], "\n").is_err());
    }
}
