//! Log-mel features of the Hub `Phi4MMAudioFeatureExtractor` (`processing_phi4mm.py`:
//! `speechlib_mel`, `_extract_spectrogram`, `_extract_features`).
//!
//! 16 kHz: frames of 400 samples every 160 (`(len - 400) // 160 + 1`, the tail is dropped),
//! per-frame pre-emphasis `y[t] = x[t] - 0.97·x[t-1]` with `x[-1] = x[0]`, scaled by 32768,
//! symmetric Hamming window, 512-point real FFT (in f64, as numpy), magnitude rounded to f32,
//! power, 80 SpeechLib mel filters (0..7690 Hz), `ln(max(·, 1))`.
//! 8 kHz ("fillzero"): window 200, hop 80, 256-point FFT; the 128 lowest bins are kept and 129
//! zero bins appended, so the spectrum looks like a 16 kHz one with an empty upper half and the
//! same 16 kHz mel matrix applies.
//!
//! Other rates are resampled to 16 kHz exactly ([`super::resample()`]) instead of the Hub's
//! integer-decimation path, which mislabels e.g. 22.05 kHz as 16 kHz (see `resample.rs`).

use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

use super::decode::{AudioLimits, DecodedAudio, MIN_SAMPLE_RATE};
use super::resample::resample;
use crate::{Error, Result};

/// Number of mel bins the model expects.
pub const N_MELS: usize = 80;
/// Feature frames per second (hop of 10 ms) at both 8 and 16 kHz.
pub const FRAMES_PER_SECOND: usize = 100;
const N_BINS_16K: usize = 257;

/// The SpeechLib mel matrix `[257, 80]` (f32, row = FFT bin) for 16 kHz, n_fft 512, fmax 7690:
/// mel(f) = 1127·ln(1 + f/700), FFT bins `f2bin(0)+1 .. f2bin(7690)` (exclusive),
/// triangular weights `1 - |center - mel(bin)| / step`.
fn mel_matrix() -> &'static [f32] {
    static MEL: OnceLock<Vec<f32>> = OnceLock::new();
    MEL.get_or_init(|| speechlib_mel(16000.0, 512, N_MELS, 0.0, 7690.0))
}

fn speechlib_mel(sample_rate: f64, n_fft: usize, n_mels: usize, fmin: f64, fmax: f64) -> Vec<f32> {
    let bank_width = n_fft / 2 + 1;
    let mel = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
    let bin2mel = |k: usize| 1127.0 * (1.0 + k as f64 * sample_rate / (n_fft as f64 * 700.0)).ln();
    let f2bin = |f: f64| ((f * n_fft as f64 / sample_rate) + 0.5) as usize;
    let klo = f2bin(fmin) + 1;
    let khi = f2bin(fmax).max(klo);
    let (mlo, mhi) = (mel(fmin), mel(fmax));
    let ms = (mhi - mlo) / (n_mels + 1) as f64;
    // np.linspace(mlo, mhi, n_mels + 2)
    let n = n_mels + 2;
    let step = (mhi - mlo) / (n - 1) as f64;
    let centers: Vec<f64> = (0..n).map(|i| if i == n - 1 { mhi } else { mlo + i as f64 * step }).collect();
    let mut m = vec![0f32; bank_width * n_mels];
    for i in 0..n_mels {
        let (left, center, right) = (centers[i], centers[i + 1], centers[i + 2]);
        for k in klo..khi {
            let mb = bin2mel(k);
            if left < mb && mb < right {
                m[k * n_mels + i] = (1.0 - (center - mb).abs() / ms) as f32;
            }
        }
    }
    m
}

fn fft_plan(n: usize) -> Arc<dyn RealToComplex<f64>> {
    static PLANS: OnceLock<std::sync::Mutex<RealFftPlanner<f64>>> = OnceLock::new();
    let planner = PLANS.get_or_init(|| std::sync::Mutex::new(RealFftPlanner::new()));
    let mut p = planner.lock().unwrap_or_else(|e| e.into_inner());
    p.plan_fft_forward(n)
}

/// Number of feature frames for `len` samples at the given window and hop (0 when shorter
/// than one window).
fn frame_count(len: usize, win: usize, hop: usize) -> usize {
    if len < win {
        0
    } else {
        (len - win) / hop + 1
    }
}

/// Log-mel features `[frames, 80]` (row-major) of 16 kHz (`eight_k = false`) or 8 kHz
/// fill-zero (`eight_k = true`) mono samples, exactly as the Hub extractor. Errors when the
/// audio is shorter than one analysis window (25 ms).
pub fn log_mel_raw(samples: &[f32], eight_k: bool) -> Result<(Vec<f32>, usize)> {
    let (n_fft, win, hop) = if eight_k { (256, 200, 80) } else { (512, 400, 160) };
    let frames = frame_count(samples.len(), win, hop);
    if frames == 0 {
        return Err(Error::Media(format!(
            "audio is too short: {} samples at {} Hz, at least {win} (25 ms) are needed",
            samples.len(),
            if eight_k { 8000 } else { 16000 }
        )));
    }
    // np.hamming(win): symmetric
    let window: Vec<f64> = (0..win)
        .map(|n| 0.54 - 0.46 * (2.0 * std::f64::consts::PI * n as f64 / (win - 1) as f64).cos())
        .collect();
    let plan = fft_plan(n_fft);
    // bins that carry signal in the 257-bin 16 kHz layout
    let used_bins = if eight_k { n_fft / 2 } else { n_fft / 2 + 1 };
    let mel = mel_matrix();
    let mut out = vec![0f32; frames * N_MELS];
    out.par_chunks_mut(N_MELS).enumerate().for_each_init(
        || (plan.make_input_vec(), plan.make_output_vec(), plan.make_scratch_vec(), vec![0f32; N_BINS_16K]),
        |(input, spec, scratch, power), (f, row)| {
            let x = &samples[f * hop..f * hop + win];
            // pre-emphasis in f32 like numpy: (x - 0.97·prev)·32768, prev[0] = x[0]
            for t in 0..win {
                let prev = if t == 0 { x[0] } else { x[t - 1] };
                let y = (x[t] - 0.97f32 * prev) * 32768f32;
                input[t] = window[t] * y as f64;
            }
            for v in input[win..].iter_mut() {
                *v = 0.0;
            }
            // A length mismatch is impossible here (buffers come from the same plan).
            let _ = plan.process_with_scratch(input, spec, scratch);
            for (k, p) in power.iter_mut().enumerate() {
                *p = if k < used_bins {
                    // complex64 then np.abs in f32, then squared in f32
                    let re = spec[k].re as f32;
                    let im = spec[k].im as f32;
                    let a = re.hypot(im);
                    a * a
                } else {
                    0.0
                };
            }
            for (i, o) in row.iter_mut().enumerate() {
                let mut acc = 0f64;
                for (k, &p) in power.iter().enumerate() {
                    let w = mel[k * N_MELS + i];
                    if w != 0.0 {
                        acc += p as f64 * w as f64;
                    }
                }
                let e = (acc as f32).max(1.0);
                *o = e.ln();
            }
        },
    );
    Ok((out, frames))
}

/// The samples and rate the feature extractor runs on: 16 kHz and 8 kHz as they are; any
/// other rate resampled exactly to 16 kHz (including 8–16 kHz: that keeps all of the signal's
/// bandwidth, where the Hub would decimate it to 8 kHz). Below 8 kHz and above the default
/// [`AudioLimits::max_sample_rate`] (192 kHz) is an error.
pub fn prepare_samples(audio: &DecodedAudio) -> Result<(std::borrow::Cow<'_, [f32]>, u32)> {
    match audio.sample_rate {
        16000 | 8000 => Ok((std::borrow::Cow::Borrowed(&audio.samples[..]), audio.sample_rate)),
        r if r < MIN_SAMPLE_RATE => Err(Error::Media(format!(
            "audio sample rate {r} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz"
        ))),
        // Bounds the resampling filter (its length grows with the rate's reduced denominator).
        r if r > AudioLimits::default().max_sample_rate => Err(Error::Media(format!(
            "audio sample rate {r} Hz is above the maximum of {} Hz",
            AudioLimits::default().max_sample_rate
        ))),
        r => Ok((std::borrow::Cow::Owned(resample(&audio.samples, r, 16000)), 16000)),
    }
}

/// Log-mel features `[T, 80]` (f32, CPU) of decoded audio, as the Hub extractor computes them
/// for 16 kHz and 8 kHz input; other rates are first resampled to 16 kHz (see
/// [`prepare_samples`]). `T = (len - 400) // 160 + 1` at 16 kHz (`(len - 200) // 80 + 1` at
/// 8 kHz), about 100 frames per second.
pub fn log_mel_features(audio: &DecodedAudio) -> Result<Tensor> {
    let (samples, rate) = prepare_samples(audio)?;
    let (data, frames) = log_mel_raw(&samples, rate == 8000)?;
    Ok(Tensor::from_vec(data, (frames, N_MELS), &Device::Cpu)?)
}

/// Number of audio placeholder tokens for `frames` feature frames, the Hub
/// `_compute_audio_embed_size`: `ceil(ceil(frames·feat_stride / compression_rate) /
/// downsample_rate)` (`audio_compression_rate`, `audio_feat_stride`, `audio_downsample_rate` of
/// `preprocessor_config.json`: 8, 1, 1 for Phi-4-multimodal). Zero rates are treated as 1.
pub fn num_audio_tokens(
    frames: usize,
    compression_rate: usize,
    feat_stride: usize,
    downsample_rate: usize,
) -> usize {
    let n = (frames * feat_stride).div_ceil(compression_rate.max(1));
    n.div_ceil(downsample_rate.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_matrix_shape_and_support() {
        let m = mel_matrix();
        assert_eq!(m.len(), 257 * 80);
        // bin 0 and bins >= 246 (f2bin(7690) = 246, exclusive) are empty
        for i in 0..80 {
            assert_eq!(m[i], 0.0);
            for k in 246..257 {
                assert_eq!(m[k * 80 + i], 0.0);
            }
        }
        assert!(m.iter().all(|&w| (0.0..=1.0).contains(&w)));
    }

    #[test]
    fn token_formula() {
        assert_eq!(num_audio_tokens(198, 8, 1, 1), 25);
        assert_eq!(num_audio_tokens(248, 8, 1, 1), 31);
        assert_eq!(num_audio_tokens(136, 8, 1, 1), 17);
        assert_eq!(num_audio_tokens(8, 8, 1, 1), 1);
        assert_eq!(num_audio_tokens(9, 8, 1, 2), 1);
    }

    #[test]
    fn too_short_is_an_error() {
        assert!(log_mel_raw(&[0.0; 399], false).is_err());
        assert_eq!(log_mel_raw(&[0.0; 400], false).unwrap().1, 1);
        assert_eq!(log_mel_raw(&[0.0; 200], true).unwrap().1, 1);
    }
}
