//! Container/codec decoding of user audio (wav, flac, mp3, ogg/vorbis) to mono f32 samples.
//!
//! The reference (`soundfile.read` in the Hub processor) yields floats in [-1, 1): integer PCM is
//! scaled by `1 / 2^(bits-1)` (16-bit: `/32768`), which is also symphonia's integer → f32
//! conversion. Multi-channel audio is mixed down to the mean of its channels, as the Hub
//! feature extractor does (`wav.mean(1)`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatReader;

use super::container;
use crate::{Error, Result};

/// Lowest sample rate accepted. The Hub extractor refuses anything below 8 kHz: the model was
/// trained on 8 kHz (zero-filled spectrum) and 16 kHz input only.
pub const MIN_SAMPLE_RATE: u32 = 8_000;

/// Decoded mono audio.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Mono samples, nominally in [-1, 1] (mean of the channels for multi-channel input).
    pub samples: Vec<f32>,
    /// Samples per second of `samples`.
    pub sample_rate: u32,
}

impl DecodedAudio {
    /// Duration in seconds.
    pub fn duration_seconds(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Limits applied while decoding untrusted audio, so that one request cannot exhaust memory or
/// compute. The defaults suit a server: 30 minutes is about 22 500 audio tokens for
/// Phi-4-multimodal (12.5 tokens per second), already a large share of its 128k context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioLimits {
    /// Longest accepted duration, in seconds.
    pub max_seconds: f64,
    /// Highest accepted sample rate, in Hz. Rates above this are almost certainly bogus headers,
    /// and they would make the 16 kHz resampling filter needlessly long.
    pub max_sample_rate: u32,
}

impl Default for AudioLimits {
    fn default() -> Self {
        Self { max_seconds: 30.0 * 60.0, max_sample_rate: 192_000 }
    }
}

/// Decodes `bytes` (wav with 8/16/24/32-bit integer or 32/64-bit float PCM, flac, mp3,
/// ogg/vorbis) to mono f32 with the default [`AudioLimits`].
///
/// The container is recognised from the bytes it starts with (after an ID3v2 tag); `format_hint`
/// (a file extension such as `"mp3"` or a MIME type such as `"audio/mpeg"`) only lets an MP3
/// stream begin with bytes before its first frame. Every failure is an [`Error::Media`] with a
/// message saying what was wrong.
pub fn decode_audio(bytes: &[u8], format_hint: Option<&str>) -> Result<DecodedAudio> {
    decode_audio_with_limits(bytes, format_hint, &AudioLimits::default())
}

/// [`decode_audio`] with explicit limits.
pub fn decode_audio_with_limits(
    bytes: &[u8],
    format_hint: Option<&str>,
    limits: &AudioLimits,
) -> Result<DecodedAudio> {
    if bytes.is_empty() {
        return Err(Error::Media("audio input is empty (0 bytes)".into()));
    }
    // The container checks cover every panic and runaway allocation the fuzzers and a reading of
    // symphonia's code found; a panic left in its decoders still only fails this clip.
    catch_unwind(AssertUnwindSafe(|| {
        let format = container::open(bytes, format_hint, limits)?;
        decode_checked(format, limits)
    }))
    .unwrap_or_else(|_| {
        Err(Error::Media("cannot decode audio: the decoder failed on this malformed input".into()))
    })
}

/// Decodes the audio track of a container that passed its checks.
fn decode_checked(mut format: Box<dyn FormatReader>, limits: &AudioLimits) -> Result<DecodedAudio> {
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| Error::Media("cannot decode audio: the file has no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    // The header's frame count is not trusted for the length limit (streamed WAVs claim
    // 0xFFFFFFFF bytes); the limit is enforced on the decoded samples below.
    if let Some(rate) = params.sample_rate {
        check_rate(rate, limits)?;
    }
    let mut decoder =
        symphonia::default::get_codecs().make(&params, &DecoderOptions::default()).map_err(|e| match e {
            SymphoniaError::Unsupported(what) => Error::Media(format!("unsupported audio codec: {what}")),
            other => Error::Media(format!("cannot decode audio: {other}")),
        })?;

    let mut mono: Vec<f32> = Vec::new();
    let mut rate: Option<u32> = None;
    let mut channels = 0usize;
    let mut buf: Option<SampleBuffer<f32>> = None;
    let mut decoded_packets = 0usize;
    let mut first_error: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            // A chained stream (new logical bitstream) or a reader that cannot go on: keep what
            // was decoded so far.
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                if decoded_packets == 0 {
                    return Err(Error::Media(format!("cannot decode audio: {e}")));
                }
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // One damaged packet (common at the start of mp3 streams) is skipped, as decoders
            // such as ffmpeg do; if nothing decodes at all the first error is reported below.
            Err(SymphoniaError::DecodeError(e)) => {
                first_error.get_or_insert_with(|| e.to_string());
                continue;
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::Media(format!("cannot decode audio: {e}"))),
        };
        decoded_packets += 1;
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if n_ch == 0 {
            return Err(Error::Media("cannot decode audio: the stream has no channels".into()));
        }
        match rate {
            None => {
                check_rate(spec.rate, limits)?;
                rate = Some(spec.rate);
                channels = n_ch;
            }
            Some(r) if r != spec.rate || channels != n_ch => {
                return Err(Error::Media(format!(
                    "unsupported audio: the stream changes format mid-way ({r} Hz, {channels} \
                     channels -> {} Hz, {n_ch} channels)",
                    spec.rate
                )));
            }
            Some(_) => {}
        }
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let sb = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * n_ch => b,
            _ => buf.insert(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec)),
        };
        sb.copy_interleaved_ref(decoded);
        let inter = &sb.samples()[..frames * n_ch];
        if n_ch == 1 {
            mono.extend_from_slice(inter);
        } else {
            // f32 sum then divide, as numpy's float32 `mean(1)`
            let n = n_ch as f32;
            mono.extend(inter.chunks_exact(n_ch).map(|c| c.iter().sum::<f32>() / n));
        }
        check_duration(mono.len() as u64, spec.rate, limits)?;
    }

    let Some(sample_rate) = rate else {
        return Err(match first_error {
            Some(e) => Error::Media(format!("cannot decode audio: {e}")),
            None => Error::Media("audio contains no samples".into()),
        });
    };
    if mono.is_empty() {
        return Err(Error::Media("audio contains no samples".into()));
    }
    if let Some(i) = mono.iter().position(|v| !v.is_finite()) {
        return Err(Error::Media(format!(
            "audio contains a non-finite sample (NaN or infinity) at index {i}"
        )));
    }
    Ok(DecodedAudio { samples: mono, sample_rate })
}

pub(super) fn check_rate(rate: u32, limits: &AudioLimits) -> Result<()> {
    if rate < MIN_SAMPLE_RATE {
        return Err(Error::Media(format!(
            "audio sample rate {rate} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz"
        )));
    }
    if rate > limits.max_sample_rate {
        return Err(Error::Media(format!(
            "audio sample rate {rate} Hz is above the maximum of {} Hz",
            limits.max_sample_rate
        )));
    }
    Ok(())
}

fn check_duration(frames: u64, rate: u32, limits: &AudioLimits) -> Result<()> {
    let secs = frames as f64 / rate.max(1) as f64;
    if secs > limits.max_seconds {
        return Err(Error::Media(format!(
            "audio is too long: more than {secs:.1} s (limit {:.1} s)",
            limits.max_seconds
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::container::{flac_without_metadata, wav_declared_rates};

    /// A minimal RIFF/WAVE file around raw sample bytes.
    fn wav(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let block = channels * bits / 8;
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&format_tag.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate * block as u32).to_le_bytes());
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn media(e: Error) -> String {
        match e {
            Error::Media(m) => m,
            other => panic!("expected a media error, got {other:?}"),
        }
    }

    #[test]
    fn pcm16_scaled_like_soundfile() {
        let vals: [i16; 4] = [0, 16384, -32768, 32767];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = decode_audio(&wav(1, 1, 16000, 16, &data), Some("wav")).unwrap();
        assert_eq!(a.sample_rate, 16000);
        let want: Vec<f32> = vals.iter().map(|&v| v as f32 / 32768.0).collect();
        assert_eq!(a.samples, want);
    }

    #[test]
    fn pcm24_and_float_and_stereo() {
        // 24-bit: 2^22 -> 0.5
        let data: Vec<u8> =
            [1i32 << 22, -(1 << 23)].iter().flat_map(|v| v.to_le_bytes()[..3].to_vec()).collect();
        let a = decode_audio(&wav(1, 1, 8000, 24, &data), None).unwrap();
        assert_eq!(a.samples, vec![0.5, -1.0]);
        // 32-bit float stereo -> mean of the channels
        let data: Vec<u8> = [0.25f32, 0.75, -0.5, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = decode_audio(&wav(3, 2, 22050, 32, &data), None).unwrap();
        assert_eq!(a.sample_rate, 22050);
        assert_eq!(a.samples, vec![0.5, -0.25]);
        // 32-bit int: 2^30 -> 0.5
        let data: Vec<u8> = (1i32 << 30).to_le_bytes().to_vec();
        let a = decode_audio(&wav(1, 1, 16000, 32, &data), None).unwrap();
        assert_eq!(a.samples, vec![0.5]);
    }

    /// Streamed WAVs carry 0xFFFFFFFF sizes; they must decode (not be rejected as "too long").
    #[test]
    fn streamed_wav_sizes() {
        let vals: Vec<i16> = (0..3200).map(|i| ((i * 97) % 2000 - 1000) as i16).collect();
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut w = wav(1, 1, 16000, 16, &data);
        w[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        w[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let a = decode_audio(&w, Some("wav")).unwrap();
        assert_eq!(a.samples.len(), vals.len());
    }

    /// Found by the `audio_decode` fuzz target: symphonia panicked on a `fmt ` rate of 0.
    #[test]
    fn zero_sample_rate_is_an_error_not_a_panic() {
        let e = media(decode_audio(&wav(1, 1, 0, 16, &[0; 8]), None).unwrap_err());
        assert!(e.contains("sample rate 0 Hz is below the minimum"), "{e}");
        // A second `fmt ` chunk after a valid one, behind an odd-sized chunk (padded to 2 bytes).
        let mut w = wav(1, 1, 16000, 16, &[0; 8]);
        let data = w.split_off(36);
        w.extend_from_slice(b"junk\x01\0\0\0x\0");
        w.extend_from_slice(&wav(1, 1, 0, 16, &[])[12..36]);
        w.extend_from_slice(&data);
        let riff_len = (w.len() - 8) as u32;
        w[4..8].copy_from_slice(&riff_len.to_le_bytes());
        assert_eq!(wav_declared_rates(&w), vec![16000, 0]);
        assert!(media(decode_audio(&w, None).unwrap_err()).contains("below the minimum"));
        // Chunks after `data` are not walked; a file cut inside `fmt ` yields what it has.
        assert_eq!(wav_declared_rates(&wav(1, 1, 8000, 16, &[0; 4])), vec![8000]);
        assert_eq!(wav_declared_rates(&wav(1, 1, 8000, 16, &[])[..26]), Vec::<u32>::new());
    }

    /// Found by the `audio_decode` fuzz target: a PICTURE block whose MIME type length says
    /// 2.7 GB made symphonia allocate that much before reading.
    #[test]
    fn flac_metadata_other_than_streaminfo_is_dropped() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/audio/speechlike_8k.flac");
        let flac = std::fs::read(fixture).unwrap();
        let plain = decode_audio(&flac, None).unwrap();
        // The fixture's STREAMINFO, then a last PICTURE block with a 0xA5A5A5A5-byte MIME type.
        let info_end = 4 + 4 + 34;
        let mut hostile = flac[..info_end].to_vec();
        hostile[4] &= 0x7f; // STREAMINFO is no longer the last block
        hostile.extend_from_slice(&[0x86, 0, 0, 8, 0, 0, 0, 3, 0xa5, 0xa5, 0xa5, 0xa5]);
        let stripped = flac_without_metadata(&flac).unwrap();
        hostile.extend_from_slice(&stripped[info_end..]);
        assert_eq!(stripped[4], 0x80, "STREAMINFO becomes the only, last block");
        assert_eq!(decode_audio(&hostile, None).unwrap(), plain);
        let e = media(decode_audio(&hostile[..info_end + 2], None).unwrap_err());
        assert!(e.contains("truncated metadata"), "{e}");
        let e = media(decode_audio(b"fLaC\x84\0\0\0", None).unwrap_err());
        assert!(e.contains("without STREAMINFO"), "{e}");
    }

    /// An Ogg/Vorbis stream whose comment header declares a 2.7 GB comment: refused by the
    /// header check before symphonia would allocate it.
    #[test]
    fn hostile_ogg_comment_is_refused_before_decoding() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/audio_decode/ogg-comment-length.ogg");
        let e = media(decode_audio(&std::fs::read(path).unwrap(), None).unwrap_err());
        assert!(e.contains("malformed Ogg header: a comment of 2779096485 bytes"), "{e}");
    }

    #[test]
    fn rejects_low_rate_long_and_nan() {
        let data = vec![0u8; 400];
        let e = media(decode_audio(&wav(1, 1, 4000, 16, &data), None).unwrap_err());
        assert!(e.contains("below the minimum"), "{e}");
        let limits = AudioLimits { max_seconds: 0.01, ..Default::default() };
        let data = vec![0u8; 16000 * 2];
        let e = media(decode_audio_with_limits(&wav(1, 1, 16000, 16, &data), None, &limits).unwrap_err());
        assert!(e.contains("too long"), "{e}");
        let data: Vec<u8> = [0.0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = media(decode_audio(&wav(3, 1, 16000, 32, &data), None).unwrap_err());
        assert!(e.contains("non-finite"), "{e}");
    }
}
