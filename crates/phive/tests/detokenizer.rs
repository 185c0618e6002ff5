//! Incremental detokenization with the fixture's real Llama-2-based Phi-3.5 tokenizer.

use std::path::Path;

use phive::engine::IncrementalDetokenizer;

fn tokenizer() -> tokenizers::Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/phi3v-tiny/tokenizer.json");
    tokenizers::Tokenizer::from_file(path).unwrap()
}

#[test]
fn streamed_pieces_are_whole_characters_and_add_up() {
    let tok = tokenizer();
    // Emoji and rare CJK characters fall back to byte tokens in the Llama vocabulary, so a
    // single character spans several tokens.
    let text = "Hello wörld 🦀🎉 これは テスト 𝔘𝔫𝔦 — done.";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    assert!(ids.len() > text.chars().count() / 2);
    let mut detok = IncrementalDetokenizer::new();
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(piece) = detok.push(&tok, id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "broken character in {piece:?}");
            pieces.push(piece);
        }
    }
    if let Some(rest) = detok.flush(&tok).unwrap() {
        pieces.push(rest);
    }
    assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap());
    // Byte-fallback characters really were split across tokens and held back.
    assert!(pieces.len() < ids.len(), "{} pieces for {} tokens", pieces.len(), ids.len());
}

#[test]
fn leading_spaces_survive_token_boundaries() {
    let tok = tokenizer();
    let ids = tok.encode("one two  three", false).unwrap().get_ids().to_vec();
    let mut detok = IncrementalDetokenizer::new();
    let streamed: String = ids.iter().filter_map(|&id| detok.push(&tok, id).unwrap()).collect();
    assert_eq!(streamed, tok.decode(&ids, true).unwrap());
}
