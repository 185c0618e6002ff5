//! Which container a clip is, and the checks it gets before symphonia reads it.
//!
//! symphonia's probe scans past bytes it does not know for any format's marker, so a FLAC
//! stream behind four junk bytes would escape a check that looks at byte 0 (the `audio_decode`
//! fuzz target found exactly that). phive therefore picks the reader itself, from the marker the
//! clip starts with (after an ID3v2 tag, which is dropped), runs that container's checks on the
//! same bytes the reader will see, and opens the reader directly.

use std::io::Cursor;

use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::default::formats::{FlacReader, MpaReader, OggReader, WavReader};

use super::decode::{check_rate, AudioLimits};
use super::ogg_headers::check_ogg_headers;
use crate::{Error, Result};

/// The containers phive decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Wav,
    Flac,
    Ogg,
    /// MPEG audio (MP3): a frame sync word, as symphonia's MP3 reader registers them.
    Mpeg,
}

impl Container {
    /// The container whose marker `bytes` starts with.
    fn at_start(bytes: &[u8]) -> Option<Self> {
        const MPEG_SYNC: [[u8; 2]; 6] =
            [[0xff, 0xfa], [0xff, 0xfb], [0xff, 0xf2], [0xff, 0xf3], [0xff, 0xe2], [0xff, 0xe3]];
        match bytes {
            [b'R', b'I', b'F', b'F', ..] => Some(Container::Wav),
            [b'f', b'L', b'a', b'C', ..] => Some(Container::Flac),
            [b'O', b'g', b'g', b'S', ..] => Some(Container::Ogg),
            [a, b, ..] if MPEG_SYNC.contains(&[*a, *b]) => Some(Container::Mpeg),
            _ => None,
        }
    }
}

/// The format reader for `bytes`, after its container's checks.
pub(super) fn open(
    bytes: &[u8],
    format_hint: Option<&str>,
    limits: &AudioLimits,
) -> Result<Box<dyn FormatReader>> {
    let body = without_id3v2(bytes)?;
    let declared_mpeg = format_hint.is_some_and(|h| {
        let h = h.trim().trim_start_matches('.').to_ascii_lowercase();
        matches!(h.as_str(), "mp3" | "audio/mpeg" | "audio/mp3")
    });
    let container = match Container::at_start(body) {
        Some(c) => c,
        // symphonia's MP3 reader finds the first frame itself and reads nothing but frames.
        None if declared_mpeg => Container::Mpeg,
        None => {
            return Err(Error::Media(
                "unsupported or unrecognised audio format (supported: wav, flac, mp3, ogg/vorbis)".into(),
            ))
        }
    };
    let body = match container {
        Container::Wav => {
            // symphonia 0.5 panics on a `fmt ` chunk with a sample rate of 0 (`TimeBase::new(1, 0)`)
            // instead of failing, so the declared rates get the rate check first.
            for rate in wav_declared_rates(body) {
                check_rate(rate, limits)?;
            }
            body.to_vec()
        }
        Container::Flac => flac_without_metadata(body)?,
        Container::Ogg => {
            check_ogg_headers(body)?;
            body.to_vec()
        }
        Container::Mpeg => body.to_vec(),
    };
    let source = MediaSourceStream::new(Box::new(Cursor::new(body)), MediaSourceStreamOptions::default());
    let options = FormatOptions {
        // Trim encoder delay and padding (mp3 LAME/Xing info, ogg granule positions) so lossy
        // files have the length of the original signal.
        enable_gapless: true,
        ..Default::default()
    };
    let reader: Box<dyn FormatReader> = match container {
        Container::Wav => Box::new(WavReader::try_new(source, &options).map_err(open_error)?),
        Container::Flac => Box::new(FlacReader::try_new(source, &options).map_err(open_error)?),
        Container::Ogg => Box::new(OggReader::try_new(source, &options).map_err(open_error)?),
        Container::Mpeg => Box::new(MpaReader::try_new(source, &options).map_err(open_error)?),
    };
    Ok(reader)
}

/// `bytes` after a leading ID3v2 tag (MP3 files, sometimes FLAC ones, start with one); the tag's
/// metadata is never needed.
fn without_id3v2(bytes: &[u8]) -> Result<&[u8]> {
    let Some(header) = bytes.get(..10).filter(|h| h.starts_with(b"ID3")) else { return Ok(bytes) };
    // A syncsafe size (7 bits per byte) of the tag after its header, plus a footer if flagged.
    let size = header[6..10].iter().fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7f));
    let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
    bytes
        .get(10 + size + footer..)
        .ok_or_else(|| Error::Media("cannot decode audio: the ID3 tag runs past the end of the file".into()))
}

fn open_error(e: SymphoniaError) -> Error {
    match e {
        SymphoniaError::Unsupported(what) => Error::Media(format!("unsupported audio format: {what}")),
        SymphoniaError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Media("cannot decode audio: the file is truncated".into())
        }
        other => Error::Media(format!("cannot decode audio: {other}")),
    }
}

/// The sample rates of a WAV file's `fmt ` chunks, walking the chunks as symphonia does
/// (2-byte aligned, up to the `data` chunk); empty for anything but RIFF/WAVE.
pub(super) fn wav_declared_rates(bytes: &[u8]) -> Vec<u32> {
    let mut rates = Vec::new();
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return rates;
    }
    let mut pos = 12usize;
    while let Some(header) = bytes.get(pos..pos.saturating_add(8)) {
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = le32(&header[4..]) as usize;
        match &header[..4] {
            b"data" => break,
            b"fmt " => match bytes.get(pos + 12..pos + 16) {
                Some(rate) => rates.push(le32(rate)),
                None => break,
            },
            _ => {}
        }
        pos = pos.saturating_add(8).saturating_add(len).saturating_add(len & 1);
    }
    rates
}

/// `bytes`, or for a FLAC stream the same stream with STREAMINFO as its only metadata block.
/// symphonia 0.5 allocates the lengths written inside PICTURE and VORBIS_COMMENT blocks before
/// reading them (found by the `audio_decode` fuzz target: 258 bytes asked for 2.7 GB), and
/// decoding needs none of them.
pub(super) fn flac_without_metadata(bytes: &[u8]) -> Result<Vec<u8>> {
    if !bytes.starts_with(b"fLaC") {
        return Ok(bytes.to_vec());
    }
    let corrupt = |what: &str| Error::Media(format!("cannot decode audio: FLAC stream {what}"));
    let mut pos = 4usize;
    let mut streaminfo = None;
    loop {
        let header = bytes.get(pos..pos + 4).ok_or_else(|| corrupt("with truncated metadata"))?;
        let end = pos + 4 + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        if header[0] & 0x7f == 0 && streaminfo.is_none() {
            streaminfo = Some(bytes.get(pos + 1..end).ok_or_else(|| corrupt("with a truncated STREAMINFO"))?);
        }
        pos = end;
        if header[0] & 0x80 != 0 {
            break;
        }
    }
    let streaminfo = streaminfo.ok_or_else(|| corrupt("without STREAMINFO"))?;
    let frames = bytes.get(pos..).unwrap_or_default();
    let mut out = Vec::with_capacity(5 + streaminfo.len() + frames.len());
    out.extend_from_slice(b"fLaC");
    out.push(0x80); // STREAMINFO, the last metadata block
    out.extend_from_slice(streaminfo);
    out.extend_from_slice(frames);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::decode_audio;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../../tests/fixtures/audio/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The error of decoding `bytes` (a media error's text is its message).
    fn message(bytes: &[u8]) -> String {
        match decode_audio(bytes, None).unwrap_err() {
            e @ Error::Media(_) => e.to_string(),
            other => panic!("expected a media error, got {other:?}"),
        }
    }

    #[test]
    fn every_fixture_starts_with_its_marker() {
        for (name, want) in [
            ("tone_16k.wav", Container::Wav),
            ("tone_16k.flac", Container::Flac),
            ("tone_16k.ogg", Container::Ogg),
            ("tone_16k.mp3", Container::Mpeg),
        ] {
            assert_eq!(Container::at_start(without_id3v2(&fixture(name)).unwrap()), Some(want), "{name}");
        }
    }

    /// Found by the `audio_decode` fuzz target: four junk bytes before a FLAC stream whose
    /// PICTURE block declares 4 GB. symphonia's probe skipped the junk and read the block; now
    /// the clip is not recognised at all.
    #[test]
    fn a_container_behind_junk_is_not_recognised() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/audio_decode/crash-flac-behind-junk.bin");
        let e = message(&std::fs::read(path).unwrap());
        assert!(e.contains("unrecognised audio format"), "{e}");
        let mut junk_wav = b"junk".to_vec();
        junk_wav.extend(fixture("tone_16k.wav"));
        assert!(message(&junk_wav).contains("unrecognised"));
        // Declared MP3 may begin before its first frame: the MP3 reader looks for it.
        let mut junk_mp3 = vec![0u8; 7];
        junk_mp3.extend(fixture("tone_16k.mp3"));
        let plain = decode_audio(&fixture("tone_16k.mp3"), None).unwrap();
        assert_eq!(decode_audio(&junk_mp3, Some("audio/mpeg")).unwrap(), plain);
        assert!(decode_audio(&junk_mp3, None).is_err());
    }

    #[test]
    fn an_id3v2_tag_is_dropped_before_the_marker() {
        let flac = fixture("tone_16k.flac");
        // A 20-byte tag (syncsafe size) before the FLAC stream.
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x14".to_vec();
        tagged.extend([0u8; 20]);
        tagged.extend(&flac);
        assert_eq!(without_id3v2(&tagged).unwrap(), &flac[..]);
        assert_eq!(decode_audio(&tagged, None).unwrap(), decode_audio(&flac, None).unwrap());
        let e = message(b"ID3\x04\x00\x00\x00\x00\x7f\x7f");
        assert!(e.contains("ID3 tag runs past the end"), "{e}");
    }
}
