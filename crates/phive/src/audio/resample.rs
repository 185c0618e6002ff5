//! Rational polyphase resampling, numerically the algorithm of `scipy.signal.resample_poly`
//! with its default `window=("kaiser", 5.0)` and zero padding.
//!
//! Why not the Hub's resampling: the Hub extractor calls `resample_poly(wav, 1, fs // 16000)`
//! and then *treats the result as 16 kHz*, which for 44.1 kHz input is really 22.05 kHz (every
//! frequency comes out scaled by 16000/22050, a pitch shift). phive resamples by the exact
//! rational factor `16000 / fs` instead, with the same filter design scipy uses, so the result is
//! what `resample_poly(wav, 16000/g, fs/g)` gives (to f64 rounding).

/// Greatest common divisor.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Modified Bessel function of the first kind, order 0 (power series; exact to f64 rounding
/// for the small arguments a Kaiser window uses).
fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut k = 1.0;
    while term > sum * 1e-17 {
        term *= q / (k * k);
        sum += term;
        k += 1.0;
    }
    sum
}

/// `sin(πx)/(πx)` (numpy's normalised sinc).
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The low-pass FIR scipy designs for `resample_poly(x, up, down)`:
/// `firwin(2·half_len + 1, 1/max(up, down), window=("kaiser", 5.0))·up` with
/// `half_len = 10·max(up, down)` (the sum of the taps is normalised to 1 before scaling by up).
fn design_filter(up: usize, down: usize) -> (Vec<f64>, usize) {
    let max_rate = up.max(down);
    let f_c = 1.0 / max_rate as f64;
    let half_len = 10 * max_rate;
    let n = 2 * half_len + 1;
    let beta = 5.0;
    let i0_beta = bessel_i0(beta);
    let alpha = half_len as f64;
    let mut h: Vec<f64> = (0..n)
        .map(|k| {
            let m = k as f64 - alpha;
            let r = m / alpha;
            let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            f_c * sinc(f_c * m) * w
        })
        .collect();
    let s: f64 = h.iter().sum();
    let scale = up as f64 / s;
    for v in &mut h {
        *v *= scale;
    }
    (h, half_len)
}

/// Resamples `x` by `up/down` (reduced by their gcd) like `scipy.signal.resample_poly(x, up,
/// down)`: output length `ceil(len·up/down)`, zero padding at both ends, filter delay
/// compensated. Computed in f64.
pub fn resample_poly(x: &[f32], up: usize, down: usize) -> Vec<f32> {
    let g = gcd(up as u64, down as u64).max(1) as usize;
    let (up, down) = (up / g, down / g);
    if up == 0 || down == 0 {
        return Vec::new();
    }
    if up == 1 && down == 1 {
        return x.to_vec();
    }
    let (h, half_len) = design_filter(up, down);
    let taps = h.len();
    let n_in = x.len();
    let n_out = (n_in * up).div_ceil(down);
    // scipy prepends `n_pre_pad` zeros to the filter and drops the first `n_pre_remove` outputs
    // of upfirdn, which centres the filter on each output sample.
    let n_pre_pad = down - half_len % down;
    let n_pre_remove = (half_len + n_pre_pad) / down;
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let compute = |n: usize| -> f32 {
        // upfirdn output index (n + n_pre_remove) reads the upsampled input at
        // `c - k` for filter tap k (after the pre-pad shift): only multiples of `up` are nonzero.
        let c = ((n + n_pre_remove) * down) as i64 - n_pre_pad as i64;
        // input j contributes with tap c - j·up, which must lie in [0, taps)
        let j_hi = c.div_euclid(up as i64).min(n_in as i64 - 1);
        let j_lo = (c - taps as i64 + 1).max(0);
        let j_lo = (j_lo + up as i64 - 1) / up as i64;
        let mut acc = 0.0f64;
        let mut j = j_lo;
        while j <= j_hi {
            let k = (c - j * up as i64) as usize;
            acc += h[k] * xf[j as usize];
            j += 1;
        }
        acc as f32
    };
    use rayon::prelude::*;
    (0..n_out).into_par_iter().map(compute).collect()
}

/// Resamples `x` from `from_rate` to `to_rate` Hz with [`resample_poly`] (exact rational
/// factor). Returns a copy when the rates are equal.
pub fn resample(x: &[f32], from_rate: u32, to_rate: u32) -> Vec<f32> {
    if from_rate == to_rate {
        return x.to_vec();
    }
    resample_poly(x, to_rate as usize, from_rate as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bessel_matches_known_values() {
        // scipy.special.i0(5.0), i0(1.0)
        assert!((bessel_i0(5.0) - 27.239871823604442).abs() < 1e-12);
        assert!((bessel_i0(1.0) - 1.2660658777520082).abs() < 1e-14);
    }

    #[test]
    fn output_length_and_identity() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.01).sin()).collect();
        assert_eq!(resample_poly(&x, 160, 441).len(), (1000 * 160_usize).div_ceil(441));
        assert_eq!(resample(&x, 16000, 16000), x);
        assert_eq!(resample_poly(&x, 2, 1).len(), 2000);
    }

    /// A 1 kHz sine at 44.1 kHz must still be 1 kHz after resampling to 16 kHz (the Hub path
    /// would turn it into ~726 Hz).
    #[test]
    fn keeps_pitch() {
        let fs = 44100.0;
        let x: Vec<f32> =
            (0..44100).map(|i| (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / fs).sin() as f32).collect();
        let y = resample(&x, 44100, 16000);
        assert_eq!(y.len(), 16000);
        // Compare the middle against the ideal 16 kHz sine (edges have the filter transient).
        let mut max_err = 0.0f64;
        for (i, &v) in y.iter().enumerate().take(15000).skip(1000) {
            let want = (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16000.0).sin();
            max_err = max_err.max((v as f64 - want).abs());
        }
        assert!(max_err < 2e-3, "max err {max_err}");
    }
}
