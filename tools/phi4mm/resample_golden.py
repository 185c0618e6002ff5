#!/usr/bin/env python3
"""Golden for phive's 16 kHz resampling of non-8k/16k audio (crates/phive/src/audio/resample.rs).

phive does NOT reproduce the Hub extractor's `resample_poly(wav, 1, fs // 16000)` (which treats
44.1 kHz / 2 = 22.05 kHz as 16 kHz); it resamples by the exact rational factor 16000/fs with
scipy's `resample_poly` filter design (Kaiser beta 5, half length 10 * max(up, down)). This
records what scipy gives for that, computed in float64:

  chirp_44k_stereo.resampled_16k  f32 [16000]  resample_poly(mono, 160, 441), mono = mean of the
                                               channels of tests/fixtures/audio/chirp_44k_stereo.wav
                                               (int16 / 32768, float32, as reference.py reads it)
  chirp_44k_stereo.features_16k   f32 [T, 80]  the Hub 16 kHz log-mel features of that signal
                                               (reference.py hub_audio_features, float32 input)
  synth_11025.input               f32 [5513]   a deterministic 0.5 s tone mix at 11025 Hz
  synth_11025.resampled_16k       f32 [8000]   resample_poly(input, 640, 441) (upsampling path)

Run: tools/.venv-phi4mm/bin/python tools/phi4mm/resample_golden.py
Writes tests/fixtures/goldens/phi4mm/audio/chirp_44k_resampled.safetensors.
"""
from __future__ import annotations

import sys
from math import gcd
from pathlib import Path

import numpy as np
import scipy.signal
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import AUDIO, REPO, hub_audio_features, read_wav  # noqa: E402


def to16k(x: np.ndarray, fs: int) -> np.ndarray:
    g = gcd(16000, fs)
    return scipy.signal.resample_poly(x.astype(np.float64), 16000 // g, fs // g)


def main():
    out = REPO / "tests" / "fixtures" / "goldens" / "phi4mm" / "audio" / "chirp_44k_resampled.safetensors"
    x, fs = read_wav(AUDIO / "chirp_44k_stereo.wav")
    assert fs == 44100 and x.ndim == 2
    mono = x.mean(1)  # float32, as the Hub extractor
    y = to16k(mono, fs).astype(np.float32)
    assert len(y) == 16000
    feats, n_tok, _ = hub_audio_features(y, 16000)

    fs2 = 11025
    t = np.arange(int(0.5 * fs2)) / fs2
    s = (0.4 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 2500 * t + 0.3)
         + 0.2 * np.sin(2 * np.pi * 5000 * t + 1.1)).astype(np.float32)
    s2 = to16k(s, fs2).astype(np.float32)

    tensors = {
        "chirp_44k_stereo.resampled_16k": y,
        "chirp_44k_stereo.features_16k": feats.astype(np.float32),
        "synth_11025.input": s,
        "synth_11025.resampled_16k": s2,
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out),
              metadata={"generator": "tools/phi4mm/resample_golden.py", "scipy": scipy.__version__,
                        "chirp_num_audio_tokens": str(n_tok), "chirp_frames": str(feats.shape[0])})
    # float32 scipy (what the Hub path computes on float32 input) vs float64: the size of the
    # rounding alone, for the record.
    g = gcd(16000, fs)
    y32 = scipy.signal.resample_poly(mono, 16000 // g, fs // g)
    print(f"wrote {out}: chirp {len(y)} samples, {feats.shape[0]} frames, {n_tok} tokens; "
          f"float32-vs-float64 scipy max diff {np.abs(y32 - y).max():.3g}")


if __name__ == "__main__":
    main()
