//! Resampling kernels that reproduce the Python references' arithmetic exactly.
//!
//! The Phi image processors resize twice, with two different libraries:
//!
//! * `torchvision.transforms.functional.resize` on a PIL image, which is Pillow's
//!   `Image.resize` ([`resize_pil`], [`resize_bilinear_pil`]): a separable, antialiased
//!   convolution (the filter support widens with the downscale factor) evaluated in 8-bit fixed
//!   point, horizontal pass first, with an intermediate 8-bit image between the passes.
//! * `torch.nn.functional.interpolate(mode="bicubic")` on a float tensor
//!   ([`interpolate_bicubic`]): PyTorch's CPU kernel, no antialiasing, cubic coefficient
//!   `A = -0.75`, `align_corners=False`, taps clamped to the border, all in `f32`.
//!
//! Generic image crates implement neither exactly (different rounding, no antialiasing, other
//! cubic coefficients), and the vision towers see the difference, so both are ported here
//! operation by operation, including the order of the floating-point operations.

use image::RgbImage;
use rayon::prelude::*;

/// Pillow's resampling filters (`PIL.Image.Resampling`), except `NEAREST`, which Pillow runs
/// through a different code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Resampling.BOX`: area average.
    Box,
    /// `Resampling.BILINEAR`, the torchvision default for PIL images.
    Bilinear,
    /// `Resampling.HAMMING`.
    Hamming,
    /// `Resampling.BICUBIC` (Pillow's cubic uses `a = -0.5`, unlike PyTorch's `-0.75`).
    Bicubic,
    /// `Resampling.LANCZOS` (3 lobes).
    Lanczos,
}

impl PilFilter {
    /// The filter's support radius at scale 1, as in Pillow's `struct filter`.
    fn support(self) -> f64 {
        match self {
            PilFilter::Box => 0.5,
            PilFilter::Bilinear | PilFilter::Hamming => 1.0,
            PilFilter::Bicubic => 2.0,
            PilFilter::Lanczos => 3.0,
        }
    }

    /// The filter kernel, in `f64` like Pillow's `*_filter` functions.
    fn eval(self, x: f64) -> f64 {
        match self {
            PilFilter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            PilFilter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            PilFilter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes `0.54f + 0.46f * cos(x)`: single-precision literals promoted
                    // to double.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            PilFilter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            PilFilter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Pillow's `PRECISION_BITS`: 32 bits minus 8 for the pixel value minus 2 for overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one output sample along one axis: the first input index and the fixed-point
/// weights of the consecutive inputs from there.
struct Taps {
    /// `ksize` weights per output sample (unused trailing weights are zero).
    ksize: usize,
    /// `(first input index, number of inputs)` per output sample.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `ksize` per output sample.
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the full box
/// `[0, in_size)`.
fn precompute_taps(in_size: usize, out_size: usize, filter: PilFilter) -> Taps {
    // `(double)(in1 - in0) / outSize` with `in0 = 0.0f`, `in1 = (float)in_size`.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negatives are clamped to 0 right after, so a
        // saturating float-to-int cast plus the clamp is the same.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &kx) in row.iter_mut().zip(&k[..n]) {
            let kx = if ww != 0.0 { kx / ww } else { kx };
            let fixed = kx * f64::from(1u32 << PRECISION_BITS);
            *dst = if kx < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin, n));
    }
    Taps { ksize, bounds, weights }
}

/// Pillow's `clip8`: drop the fraction bits and clamp to `0..=255`.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from (`1 << (PRECISION_BITS - 1)`).
const ROUND_HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Pillow's `ImagingResampleHorizontal_8bpc` on interleaved RGB rows.
fn resample_horizontal(src: &[u8], in_w: usize, rows: usize, out_w: usize, taps: &Taps) -> Vec<u8> {
    let mut out = vec![0u8; out_w * rows * 3];
    if out_w == 0 {
        return out;
    }
    out.par_chunks_mut(out_w * 3).enumerate().for_each(|(y, dst)| {
        let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = taps.bounds[xx];
            let k = &taps.weights[xx * taps.ksize..xx * taps.ksize + n];
            let (mut s0, mut s1, mut s2) = (ROUND_HALF, ROUND_HALF, ROUND_HALF);
            for (x, &w) in k.iter().enumerate() {
                let p = &line[(xmin + x) * 3..(xmin + x) * 3 + 3];
                let w = i64::from(w);
                s0 += i64::from(p[0]) * w;
                s1 += i64::from(p[1]) * w;
                s2 += i64::from(p[2]) * w;
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    });
    out
}

/// Pillow's `ImagingResampleVertical_8bpc` on interleaved RGB rows.
fn resample_vertical(src: &[u8], width: usize, out_h: usize, taps: &Taps) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; stride * out_h];
    if stride == 0 {
        return out;
    }
    out.par_chunks_mut(stride).enumerate().for_each(|(yy, dst)| {
        let (ymin, n) = taps.bounds[yy];
        let k = &taps.weights[yy * taps.ksize..yy * taps.ksize + n];
        // Integer sums are exact, so accumulating row by row gives Pillow's result.
        let mut acc = vec![ROUND_HALF; stride];
        for (y, &w) in k.iter().enumerate() {
            let w = i64::from(w);
            let line = &src[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i64::from(p) * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    });
    out
}

/// Resizes an RGB image exactly as Pillow's `Image.resize((width, height), filter)` does
/// (without `box` or `reducing_gap`, which is how torchvision calls it).
///
/// A pass is skipped when its axis keeps its size, as in Pillow. A zero target dimension gives
/// an empty image (Pillow refuses it; callers must check sizes before calling).
pub fn resize_pil(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if (in_w, in_h) == (out_w, out_h) {
        return img.clone();
    }
    let mut buf: Vec<u8>;
    let mut cur: &[u8] = img.as_raw();
    let mut cur_w = in_w;
    if out_w != in_w {
        let taps = precompute_taps(in_w, out_w, filter);
        buf = resample_horizontal(cur, in_w, in_h, out_w, &taps);
        cur = &buf;
        cur_w = out_w;
        if out_h == in_h {
            return RgbImage::from_raw(width, height, buf).expect("buffer size matches");
        }
    }
    let taps = precompute_taps(in_h, out_h, filter);
    buf = resample_vertical(cur, cur_w, out_h, &taps);
    RgbImage::from_raw(width, height, buf).expect("buffer size matches")
}

/// `Image.resize((width, height), Image.BILINEAR)`: what
/// `torchvision.transforms.functional.resize` does to a PIL image with its default
/// interpolation. Antialiased: when shrinking, the triangle filter is widened by the shrink
/// factor, so every input pixel contributes.
pub fn resize_bilinear_pil(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_pil(img, width, height, PilFilter::Bilinear)
}

/// PyTorch's cubic convolution coefficient for `mode="bicubic"`.
const TORCH_CUBIC_A: f32 = -0.75;

/// `cubic_convolution1` in PyTorch's `UpSample.h` (`|x| <= 1`).
#[inline]
fn cubic_convolution1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// `cubic_convolution2` in PyTorch's `UpSample.h` (`1 < |x| < 2`).
#[inline]
fn cubic_convolution2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// `get_cubic_upsample_coefficients`: the four tap weights for fractional offset `t`.
/// PyTorch adds the `double` literal `1.0` and narrows the sum back to `float` when passing it
/// on, so the additions are done in `f64` here too.
fn cubic_coefficients(t: f32) -> [f32; 4] {
    let a = TORCH_CUBIC_A;
    let x1 = t;
    let x2 = (1.0f64 - f64::from(t)) as f32;
    [
        cubic_convolution2((f64::from(x1) + 1.0) as f32, a),
        cubic_convolution1(x1, a),
        cubic_convolution1(x2, a),
        cubic_convolution2((f64::from(x2) + 1.0) as f32, a),
    ]
}

/// Input indices (clamped to the border) and weights of the four taps of every output sample
/// along one axis: `HelperInterpCubic::compute_indices_weights` with `align_corners=False` and
/// no explicit scale factor.
fn cubic_taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    // `area_pixel_compute_scale`: `(float)input_size / output_size`, in f32.
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as i64 - 1;
    (0..out_size)
        .map(|i| {
            // `area_pixel_compute_source_index` (cubic: negative indices are kept).
            let real = scale * (i as f32 + 0.5) - 0.5;
            // `guard_index_and_lambda`.
            let index = (real.floor() as i64).min(last);
            let lambda = (real - index as f32).clamp(0.0, 1.0);
            let weights = cubic_coefficients(lambda);
            let mut idx = [0usize; 4];
            for (j, slot) in idx.iter_mut().enumerate() {
                *slot = (index + j as i64 - 1).clamp(0, last) as usize;
            }
            (idx, weights)
        })
        .collect()
}

/// `torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bicubic")` (no antialias,
/// `align_corners=False`) on a contiguous `[channels, in_h, in_w]` `f32` tensor, reproducing
/// PyTorch's CPU kernel (`upsample_generic_Nd_kernel_impl` with `HelperInterpCubic`): weights
/// computed in `f32`, each output = `sum_j wy_j * (sum_k wx_k * src[y_j][x_k])`, accumulated
/// in that order. Returns `[channels, out_h, out_w]`.
///
/// # Panics
/// If `src.len() != channels * in_h * in_w`, or an input dimension is zero while the output is
/// not empty (both are caller bugs, not data errors).
pub fn interpolate_bicubic(
    src: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), channels * in_h * in_w, "interpolate_bicubic: input length mismatch");
    let mut out = vec![0f32; channels * out_h * out_w];
    if out.is_empty() {
        return out;
    }
    assert!(in_h > 0 && in_w > 0, "interpolate_bicubic: empty input");
    let ty = cubic_taps(in_h, out_h);
    let tx = cubic_taps(in_w, out_w);
    let plane = in_h * in_w;
    out.par_chunks_mut(out_w).enumerate().for_each(|(row, dst)| {
        let (c, oy) = (row / out_h, row % out_h);
        let src = &src[c * plane..(c + 1) * plane];
        let (iy, wy) = &ty[oy];
        let lines: [&[f32]; 4] = std::array::from_fn(|j| &src[iy[j] * in_w..(iy[j] + 1) * in_w]);
        for (d, (ix, wx)) in dst.iter_mut().zip(&tx) {
            let mut acc = 0f32;
            for j in 0..4 {
                let line = lines[j];
                let mut t = line[ix[0]] * wx[0];
                for k in 1..4 {
                    t += line[ix[k]] * wx[k];
                }
                if j == 0 {
                    acc = t * wy[0];
                } else {
                    acc += t * wy[j];
                }
            }
            *d = acc;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(2).saturating_sub(1).max(1)).min(255) as u8,
                (y * 255 / h.max(2).saturating_sub(1).max(1)).min(255) as u8,
                ((x * 7 + y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn pil_bilinear_same_size_is_identity() {
        let img = gradient(17, 9);
        assert_eq!(resize_bilinear_pil(&img, 17, 9), img);
    }

    #[test]
    fn pil_bilinear_constant_image_stays_constant() {
        // Normalised fixed-point weights sum to 1 << 22 (up to rounding), so a flat image must
        // come out flat whatever the scale; a missing normalisation would darken it.
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 17, 255]));
        for (w, h) in [(5, 3), (100, 71), (37, 5), (2, 23), (1, 1)] {
            let out = resize_bilinear_pil(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 17, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn pil_bilinear_downscale_is_antialiased() {
        // A 1-pixel checkerboard halved: plain bilinear (2 taps at the half-pixel centre) would
        // give 127/128 too, so use a factor of 4, where non-antialiased sampling hits only
        // two of four columns and antialiasing averages all of them to ~127.
        let img = RgbImage::from_fn(64, 64, |x, y| {
            let v = if (x + y) % 2 == 0 { 255 } else { 0 };
            image::Rgb([v, v, v])
        });
        let out = resize_bilinear_pil(&img, 16, 16);
        for p in out.pixels() {
            assert!((120..=135).contains(&p.0[0]), "{:?}", p.0);
        }
    }

    #[test]
    fn pil_bilinear_known_values() {
        // Pillow 13: Image.frombytes("RGB", (4, 1), bytes([0,0,0, 100,100,100, 200,200,200,
        // 255,255,255])).resize((2, 1), Image.BILINEAR) -> [(71,71,71), (209,209,209)]
        // (antialiased: 3 taps each, e.g. (0*.75 + 100*.75 + 200*.25) / 1.75 = 71.4);
        // ... .resize((7, 1), Image.BILINEAR) -> 0, 36, 93, 150, 204, 235, 255 (first channel).
        let img = RgbImage::from_fn(4, 1, |x, _| {
            let v = [0u8, 100, 200, 255][x as usize];
            image::Rgb([v, v, v])
        });
        let down: Vec<u8> = resize_bilinear_pil(&img, 2, 1).pixels().map(|p| p.0[0]).collect();
        assert_eq!(down, vec![71, 209]);
        let up: Vec<u8> = resize_bilinear_pil(&img, 7, 1).pixels().map(|p| p.0[0]).collect();
        assert_eq!(up, vec![0, 36, 93, 150, 204, 235, 255]);
    }

    #[test]
    fn bicubic_same_size_is_identity() {
        let src: Vec<f32> = (0..2 * 5 * 7).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(interpolate_bicubic(&src, 2, 5, 7, 5, 7), src);
    }

    #[test]
    fn bicubic_constant_stays_constant() {
        let src = vec![0.25f32; 3 * 40 * 30];
        let out = interpolate_bicubic(&src, 3, 40, 30, 7, 11);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn bicubic_known_values() {
        // torch.nn.functional.interpolate(torch.arange(4.).view(1, 1, 1, 4) ** 2,
        //     size=(1, 2), mode="bicubic") -> [0.21875, 6.78125] (torch 2.15): a 2x downscale
        // samples x = 0.5 and 2.5 with weights [-0.09375, 0.59375, 0.59375, -0.09375]
        // (A = -0.75), clamping the tap at x = 4 to the border, with no antialiasing.
        let src = [0.0f32, 1.0, 4.0, 9.0];
        let out = interpolate_bicubic(&src, 1, 1, 4, 1, 2);
        assert_eq!(out, vec![0.21875, 6.78125]);
    }

    #[test]
    fn cubic_coefficients_sum_to_one() {
        for t in [0.0f32, 0.1, 0.25, 0.5, 0.9, 1.0] {
            let c = cubic_coefficients(t);
            assert!((c.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(cubic_coefficients(0.0), [0.0, 1.0, 0.0, 0.0]);
    }
}
