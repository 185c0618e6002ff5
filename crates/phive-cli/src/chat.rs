//! `phive chat`: a multi-turn conversation in the terminal over the in-process engine, with
//! line editing and history (rustyline), pictures and audio attached by command, and each
//! answer streamed and followed by its figures.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use image::DynamicImage;
use phive::audio::DecodedAudio;
use phive::engine::Engine;
use phive::media::{load_audio, load_image, MediaPolicy};
use phive::prompt::{ChatMessage, MessagePart};
use rustyline::error::ReadlineError;

use crate::answer;
use crate::engine_args::EngineArgs;
use crate::model_args::{LoadArgs, SamplingArgs};

const HELP: &str = "\
Type a message and press Enter. Commands:
  /image PATH|URL   attach a picture to your next message
  /audio PATH|URL   attach an audio clip (wav, mp3, flac, ogg; Phi-4-multimodal)
  /system TEXT      set the system prompt (/system alone removes it)
  /clear            start a new conversation
  /quit             leave (Ctrl-D too)";

/// Options of `phive chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The system prompt to start with (change it in the chat with /system).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// A line the user typed.
#[derive(Debug, PartialEq)]
enum Input {
    Say(String),
    Image(String),
    Audio(String),
    System(Option<String>),
    Clear,
    Help,
    Quit,
}

impl Input {
    /// Reads a line; a command's error names the command and what it takes.
    fn parse(line: &str) -> Result<Input, String> {
        let line = line.trim();
        let Some(command) = line.strip_prefix('/') else { return Ok(Input::Say(line.to_string())) };
        let (name, rest) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
        let rest = rest.trim();
        let needs = |what: &str| format!("/{name} needs {what}");
        match name {
            "image" if rest.is_empty() => Err(needs("a path or URL")),
            "image" => Ok(Input::Image(rest.to_string())),
            "audio" if rest.is_empty() => Err(needs("a path or URL")),
            "audio" => Ok(Input::Audio(rest.to_string())),
            "system" => Ok(Input::System((!rest.is_empty()).then(|| rest.to_string()))),
            "clear" => Ok(Input::Clear),
            "help" | "?" => Ok(Input::Help),
            "quit" | "exit" => Ok(Input::Quit),
            _ => Err(format!("unknown command /{name}; /help lists them")),
        }
    }
}

/// The conversation so far, with the media its messages refer to, in order.
#[derive(Default)]
struct Conversation {
    system: Option<String>,
    messages: Vec<ChatMessage>,
    images: Vec<DynamicImage>,
    audios: Vec<DecodedAudio>,
    /// Media parts attached since the last message, placed before its text.
    pending: Vec<MessagePart>,
}

impl Conversation {
    /// Every message, the system prompt first.
    fn with_system(&self) -> Vec<ChatMessage> {
        let system = self.system.iter().map(|s| ChatMessage::text("system", s));
        system.chain(self.messages.iter().cloned()).collect()
    }

    /// Adds the user's turn: the pending media, then `text`.
    fn push_user(&mut self, text: String) {
        let mut parts = std::mem::take(&mut self.pending);
        parts.push(MessagePart::Text(text));
        self.messages.push(ChatMessage::new("user", parts));
    }

    /// Takes back the last user turn when it got no answer, media included.
    fn pop_user(&mut self) {
        if let Some(turn) = self.messages.pop() {
            let count = |kind: &MessagePart| turn.parts.iter().filter(|p| *p == kind).count();
            self.images.truncate(self.images.len() - count(&MessagePart::Image));
            self.audios.truncate(self.audios.len() - count(&MessagePart::Audio));
        }
    }
}

/// Loads the model and runs the conversation until /quit or end of input.
pub fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let pipeline = args.load.load()?;
    let takes_audio = pipeline.accepts_audio();
    let engine = Engine::new(pipeline, args.engine.config()?)?;
    eprintln!("{}", crate::engine_args::summary(&engine));
    eprintln!("{HELP}");
    let params = args.sampling.params();
    let policy = MediaPolicy::trusted();
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let mut conversation = Conversation { system: args.system, ..Default::default() };
    loop {
        let line = match editor.readline(">>> ") {
            Ok(line) => line,
            // Ctrl-C drops the line being typed, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading the terminal"),
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        match Input::parse(&line) {
            Err(message) => eprintln!("{message}"),
            Ok(Input::Quit) => break,
            Ok(Input::Help) => eprintln!("{HELP}"),
            Ok(Input::Clear) => {
                conversation = Conversation { system: conversation.system.take(), ..Default::default() };
                eprintln!("(new conversation)");
            }
            Ok(Input::System(system)) => {
                eprintln!(
                    "{}",
                    if system.is_some() { "(system prompt set)" } else { "(system prompt removed)" }
                );
                conversation.system = system;
            }
            Ok(Input::Image(source)) => match load_image(&source, &policy) {
                Ok(image) => {
                    eprintln!("(image {}x{} attached to your next message)", image.width(), image.height());
                    conversation.images.push(image);
                    conversation.pending.push(MessagePart::Image);
                }
                Err(e) => eprintln!("error: image {source}: {e}"),
            },
            Ok(Input::Audio(_)) if !takes_audio => {
                eprintln!("error: this model does not take audio (Phi-4-multimodal does)")
            }
            Ok(Input::Audio(source)) => match load_audio(&source, &policy) {
                Ok(audio) => {
                    eprintln!("(audio clip attached to your next message)");
                    conversation.audios.push(audio);
                    conversation.pending.push(MessagePart::Audio);
                }
                Err(e) => eprintln!("error: audio {source}: {e}"),
            },
            Ok(Input::Say(text)) => {
                conversation.push_user(text);
                match reply(&engine, &conversation, &params) {
                    Ok(text) => conversation.messages.push(ChatMessage::text("assistant", text)),
                    Err(e) => {
                        conversation.pop_user();
                        eprintln!("error: {e:#}\n(the message and its attachments were dropped)");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Streams the answer to the conversation's last message and prints its figures.
fn reply(
    engine: &Engine,
    conversation: &Conversation,
    params: &phive::engine::GenerationParams,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let prepared = engine.pipeline().prepare_media(
        &conversation.with_system(),
        &conversation.images,
        &conversation.audios,
    )?;
    let handle = engine.submit(prepared, params.clone(), 1)?;
    let mut stdout = std::io::stdout().lock();
    let completion = answer::stream(handle, &mut stdout)?;
    println!();
    eprintln!("{}", answer::figures(&completion, started.elapsed()));
    Ok(completion.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_and_commands() {
        assert_eq!(Input::parse("  hello /image  "), Ok(Input::Say("hello /image".into())));
        assert_eq!(Input::parse("/image a b.png"), Ok(Input::Image("a b.png".into())));
        assert_eq!(Input::parse("/audio x.wav"), Ok(Input::Audio("x.wav".into())));
        assert_eq!(Input::parse("/system Be brief."), Ok(Input::System(Some("Be brief.".into()))));
        assert_eq!(Input::parse("/system"), Ok(Input::System(None)));
        assert_eq!(Input::parse("/clear"), Ok(Input::Clear));
        assert_eq!(Input::parse("/exit"), Ok(Input::Quit));
        assert_eq!(Input::parse("/image"), Err("/image needs a path or URL".into()));
        assert!(Input::parse("/nope").unwrap_err().contains("unknown command /nope"));
    }

    #[test]
    fn a_dropped_turn_takes_its_media_back() {
        let mut c = Conversation::default();
        c.images.push(DynamicImage::new_rgb8(2, 2));
        c.pending.push(MessagePart::Image);
        c.push_user("first".into());
        c.messages.push(ChatMessage::text("assistant", "ok"));
        c.images.push(DynamicImage::new_rgb8(3, 3));
        c.pending.push(MessagePart::Image);
        c.push_user("second".into());
        assert!(c.pending.is_empty());
        c.pop_user();
        assert_eq!((c.messages.len(), c.images.len()), (2, 1));
        assert_eq!(c.images[0].width(), 2);
        let roles: Vec<_> = c.with_system().into_iter().map(|m| m.role).collect();
        assert_eq!(roles, ["user", "assistant"]);
    }
}
