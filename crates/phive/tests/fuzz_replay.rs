//! Replays the committed cargo-fuzz corpora (`fuzz/corpus/<target>/`) through the same target
//! bodies as the fuzz targets ([`phive::fuzzing`]), so CI on stable Rust checks that every
//! input the fuzzer kept (seeds, coverage finds, fixed crashes) still runs without a panic.

use std::path::Path;

/// A fuzz target's body: runs one input, returns whether phive accepted it.
type Body = fn(&[u8]) -> bool;

/// Each fuzz target's corpus directory and body.
const TARGETS: [(&str, Body); 5] = [
    ("chat_request", phive::fuzzing::chat_request),
    ("image_decode", phive::fuzzing::image_decode),
    ("audio_decode", phive::fuzzing::audio_decode),
    ("data_url", phive::fuzzing::data_url),
    ("media_tags", phive::fuzzing::media_tags),
];

#[test]
fn every_corpus_input_runs_through_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, body) in TARGETS {
        let dir = corpus.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        let mut accepted = 0;
        for file in &files {
            let data = std::fs::read(file).unwrap();
            match std::panic::catch_unwind(|| body(&data)) {
                Ok(ok) => accepted += usize::from(ok),
                Err(_) => panic!("{target} panicked on {}", file.display()),
            }
        }
        eprintln!("{target}: {accepted} of {} inputs accepted", files.len());
        // The seeds are valid inputs: a corpus nothing accepts no longer tests the success path.
        assert!(accepted > 0, "{target}: none of {} inputs accepted", files.len());
    }
}
