//! `phive chat` driven through a pseudo-terminal on the tiny fixtures: streamed answers equal
//! the golden greedy answers, commands attach media and reset the conversation, the line editor
//! edits and recalls history, and each answer is followed by its figures.

use std::path::PathBuf;
use std::process::Command;

use rexpect::session::{spawn_command, PtySession};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A golden case of `model` (`phi3v`, `phi4mm`).
fn golden(model: &str, name: &str) -> Value {
    let path = fixtures().join(format!("goldens/{model}/generation.json"));
    let goldens: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    goldens["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
}

fn text(case: &Value, key: &str) -> String {
    case[key].as_str().unwrap().to_string()
}

/// `phive chat` on a fixture, at its first prompt.
fn start(fixture: &str) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phive"));
    command.args(["chat", "--max-tokens", "16", "-m"]).arg(fixtures().join(fixture));
    command.env("TERM", "xterm");
    let mut chat = spawn_command(command, Some(120_000)).unwrap();
    chat.exp_string("/quit").unwrap();
    chat.exp_string(">>> ").unwrap();
    chat
}

/// Sends a line, waits for `answer`, and returns the prompt tokens of the figures after it.
fn ask(chat: &mut PtySession, line: &str, answer: &str, media: &str) -> usize {
    chat.send_line(line).unwrap();
    chat.exp_string(answer).unwrap();
    let (_, figures) = chat.exp_regex(&format!(r"prompt tokens: \d+ \({media}\)")).unwrap();
    chat.exp_regex(r"time to first token: [\d.]+s \| prefill: [\d.]+ tok/s \| decode: [\d.]+ tok/s").unwrap();
    chat.exp_string(">>> ").unwrap();
    figures["prompt tokens: ".len()..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn phi3v_conversation_with_images_commands_and_line_editing() {
    let sunset = golden("phi3v", "text");
    let picture = golden("phi3v", "one_image");
    let question = sunset["messages"][0]["content"].as_str().unwrap();
    let mut chat = start("phi3v-tiny");

    let prompt = ask(&mut chat, question, &text(&sunset, "greedy_text"), "0 image, 0 audio");
    assert_eq!(prompt as u64, sunset["num_tokens"].as_u64().unwrap());

    chat.send_line("/audio tests/fixtures/audio/tone_16k.wav").unwrap();
    chat.exp_string("this model does not take audio").unwrap();
    chat.send_line("/image /no/such/picture.png").unwrap();
    chat.exp_string("error: image /no/such/picture.png").unwrap();
    chat.send_line("/frobnicate").unwrap();
    chat.exp_string("unknown command /frobnicate").unwrap();

    // A new conversation: the same question gets the same answer, recalled from the history
    // with the Up arrow (the entries since are /frobnicate, /image, /audio).
    chat.send_line("/clear").unwrap();
    chat.exp_string("(new conversation)").unwrap();
    chat.send("\x1b[A\x1b[A\x1b[A\x1b[A\x1b[A").unwrap();
    chat.flush().unwrap();
    chat.send_line("").unwrap();
    chat.exp_string(&text(&sunset, "greedy_text")).unwrap();
    chat.exp_string(">>> ").unwrap();

    chat.send_line("/clear").unwrap();
    chat.exp_string("(new conversation)").unwrap();
    let image = fixtures().join("images").join(picture["images"][0].as_str().unwrap());
    chat.send_line(&format!("/image {}", image.display())).unwrap();
    chat.exp_string("(image 1000x600 attached to your next message)").unwrap();
    // Typed with a mistake erased by two backspaces.
    chat.send("What is in this picture??!").unwrap();
    chat.send("\x7f\x7f").unwrap();
    chat.flush().unwrap();
    let image_tokens = picture["num_image_tokens"][0].as_u64().unwrap();
    let prompt =
        ask(&mut chat, "", &text(&picture, "greedy_text"), &format!("{image_tokens} image, 0 audio"));
    assert_eq!(prompt as u64, picture["num_tokens"].as_u64().unwrap());

    // The next turn carries the first one, picture included.
    let follow_up = ask(&mut chat, "And the colours?", "", &format!("{image_tokens} image, 0 audio"));
    assert!(follow_up > prompt + 16, "{follow_up} prompt tokens after {prompt}");

    chat.send_line("/system You are a concise assistant.").unwrap();
    chat.exp_string("(system prompt set)").unwrap();
    chat.send_line("/quit").unwrap();
    chat.exp_eof().unwrap();
}

#[test]
fn phi4mm_takes_audio() {
    let clip = golden("phi4mm", "one_audio");
    let mut chat = start("phi4mm-tiny");
    let audio = fixtures().join("audio/tone_16k.wav");
    chat.send_line(&format!("/audio {}", audio.display())).unwrap();
    chat.exp_string("(audio clip attached to your next message)").unwrap();
    let audio_tokens = clip["num_audio_tokens"][0].as_u64().unwrap();
    let question = clip["messages"][0]["content"].as_str().unwrap().replace("<|audio_1|>", "");
    let prompt =
        ask(&mut chat, &question, &text(&clip, "greedy_text"), &format!("0 image, {audio_tokens} audio"));
    assert_eq!(prompt as u64, clip["num_tokens"].as_u64().unwrap());
    // Ctrl-D leaves like /quit.
    chat.send_control('d').unwrap();
    chat.exp_eof().unwrap();
}
