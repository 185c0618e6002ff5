//! The raw bytes behind vocabulary entries, for clients that join tokens' bytes (logprobs) and
//! for the token trie that constrained decoding matches grammars against.

/// The raw bytes of vocabulary entry `id`: a SentencePiece byte-fallback piece (`<0xEF>`) is
/// its byte and `▁` a space; a byte-level BPE piece (GPT-2's byte-to-character table, used by
/// Phi-4's o200k vocabulary) maps back character by character.
pub fn raw_bytes(tokenizer: &tokenizers::Tokenizer, id: u32) -> Option<Vec<u8>> {
    let piece = tokenizer.id_to_token(id)?;
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')) {
        return u8::from_str_radix(hex, 16).ok().map(|b| vec![b]);
    }
    if matches!(tokenizer.get_decoder(), Some(tokenizers::DecoderWrapper::ByteLevel(_))) {
        return piece.chars().map(byte_level_byte).collect();
    }
    Some(piece.replace('\u{2581}', " ").into_bytes())
}

/// The byte behind a character of GPT-2's byte-level alphabet: printable Latin-1 bytes stand
/// for themselves, the other 68 bytes for U+0100.. in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let code = c as u32;
    if code < 256 {
        return printable(code).then_some(code as u8);
    }
    (0u32..256).filter(|&b| !printable(b)).nth((code - 256) as usize).map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every printable byte maps to itself and the rest to U+0100.. in order (GPT-2's table).
    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        let mut seen = [false; 256];
        for c in (33u32..=126).chain(161..=172).chain(174..=255).chain(256..256 + 68) {
            let b = byte_level_byte(char::from_u32(c).unwrap()).unwrap();
            assert!(!seen[b as usize], "byte {b} twice");
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_level_byte('\u{0100}'), Some(0));
        assert_eq!(byte_level_byte('\u{0120}'), Some(b' '));
    }
}
