//! Vectorised maps over f32 activations: `exp`, a softmax over one row, the GELU variants of
//! the vision towers, and the decoders' gated SiLU.
//!
//! Each has an AVX2+FMA body and a scalar body built from the same IEEE operations in the same
//! order (fused multiply-adds included, sums kept in eight lanes), so both give identical bits
//! and results do not depend on the CPU. `exp` is Cephes' polynomial (about 1 ulp), as SIMD math
//! libraries and PyTorch's vectorised CPU kernels use, instead of the C library's scalar `expf`:
//! a CLIP forward pass takes the exponential of some 900 million numbers.

use super::simd::{simd_level, SimdLevel};

/// Inputs are clamped to ±88: `eˣ` saturates at e⁸⁸ above, and is 0 below about -87.7 (where the
/// power of two would be subnormal).
const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -88.0;
/// ln 2 split in two, so `x - n·ln2` keeps its low bits.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' minimax polynomial for `(eʳ - 1 - r) / r²` on |r| ≤ ln2/2, highest degree first.
const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
/// `quick_gelu`'s sigmoid slope (CLIP).
const QUICK_GELU_SLOPE: f32 = 1.702;
/// √(2/π) and the cubic coefficient of the tanh-approximated GELU.
const GELU_TANH_SCALE: f32 = 0.797_884_6;
const GELU_TANH_CUBIC: f32 = 0.044_715;

/// `eˣ` (see [`EXP_HI`]).
#[inline(always)]
fn exp1(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = POLY[1..].iter().fold(POLY[0], |p, &c| p.mul_add(r, c));
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `x·σ(1.702x)`, as `x * sigmoid(x * 1.702)`.
#[inline(always)]
fn quick_gelu1(x: f32) -> f32 {
    x * (1.0 / (exp1(-(x * QUICK_GELU_SLOPE)) + 1.0))
}

/// `0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715x²)))`, with `tanh(u) = 1 - 2/(e²ᵘ + 1)`.
#[inline(always)]
fn gelu_tanh1(x: f32) -> f32 {
    let u = GELU_TANH_SCALE * x * GELU_TANH_CUBIC.mul_add(x * x, 1.0);
    let tanh = 1.0 - 2.0 / (exp1(u + u) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// `up·silu(gate)`, with `silu(g) = g / (1 + e⁻ᵍ)` as PyTorch's CPU kernel computes it.
#[inline(always)]
fn silu_mul1(gate: f32, up: f32) -> f32 {
    up * (gate / (exp1(-gate) + 1.0))
}

/// The maps a slice can be put through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// `eˣ`.
    Exp,
    /// CLIP's `quick_gelu`.
    QuickGelu,
    /// The tanh-approximated GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Map {
    fn scalar(self, x: f32) -> f32 {
        match self {
            Map::Exp => exp1(x),
            Map::QuickGelu => quick_gelu1(x),
            Map::GeluTanh => gelu_tanh1(x),
        }
    }
}

/// `dst[i] = map(src[i])` (equal lengths).
pub fn map(kind: Map, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "map: source and destination lengths differ");
    dst.copy_from_slice(src);
    map_in_place(kind, dst);
}

/// `xs[i] = map(xs[i])`.
pub fn map_in_place(kind: Map, xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd_level`).
        return unsafe { x86::map_in_place(kind, xs) };
    }
    for x in xs.iter_mut() {
        *x = kind.scalar(*x);
    }
}

/// `dst[i] = up[i]·silu(gate[i])` (equal lengths): the Phi decoders' MLP activation, in one
/// pass over the fused `gate | up` projection's halves.
pub fn silu_mul(gate: &[f32], up: &[f32], dst: &mut [f32]) {
    assert!(gate.len() == dst.len() && up.len() == dst.len(), "silu_mul: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd_level`).
        return unsafe { x86::silu_mul(gate, up, dst) };
    }
    for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
        *d = silu_mul1(g, u);
    }
}

/// Softmax of `scale · row` in place: `exp((x - max)·scale) / Σ` for a `scale` > 0, the sum
/// taken in eight lanes.
pub fn softmax_in_place(row: &mut [f32], scale: f32) {
    if row.is_empty() {
        return;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    #[cfg(target_arch = "x86_64")]
    let lanes = if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd_level`).
        unsafe { x86::exp_shifted(row, max, scale) }
    } else {
        exp_shifted(row, max, scale)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = exp_shifted(row, max, scale);
    let sum =
        ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `row[i] = exp((row[i] - max)·scale)`; returns the sums of the eight lanes `i % 8`.
fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> [f32; 8] {
    let mut lanes = [0f32; 8];
    for (i, x) in row.iter_mut().enumerate() {
        *x = exp1((*x - max) * scale);
        lanes[i % 8] += *x;
    }
    lanes
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        // min/max return their second operand when one is NaN: a NaN stays NaN, as with `clamp`.
        let x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), _mm256_min_ps(_mm256_set1_ps(EXP_HI), x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(POLY[0]);
        for &c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn apply8(kind: Map, x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        match kind {
            Map::Exp => exp8(x),
            Map::QuickGelu => {
                let z = _mm256_mul_ps(x, _mm256_set1_ps(QUICK_GELU_SLOPE));
                let e = exp8(_mm256_xor_ps(z, _mm256_set1_ps(-0.0)));
                _mm256_mul_ps(x, _mm256_div_ps(one, _mm256_add_ps(e, one)))
            }
            Map::GeluTanh => {
                let cubic = _mm256_fmadd_ps(_mm256_set1_ps(GELU_TANH_CUBIC), _mm256_mul_ps(x, x), one);
                let u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_TANH_SCALE), x), cubic);
                let e = exp8(_mm256_add_ps(u, u));
                let tanh = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)));
                _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), _mm256_add_ps(one, tanh))
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn map_in_place(kind: Map, xs: &mut [f32]) {
        let whole = xs.len() / 8 * 8;
        for chunk in xs[..whole].chunks_exact_mut(8) {
            // SAFETY: the chunk holds 8 floats.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), apply8(kind, _mm256_loadu_ps(chunk.as_ptr()))) };
        }
        for x in &mut xs[whole..] {
            *x = kind.scalar(*x);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn silu_mul(gate: &[f32], up: &[f32], dst: &mut [f32]) {
        let whole = dst.len() / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        let chunks = gate[..whole].chunks_exact(8).zip(up[..whole].chunks_exact(8));
        for ((g, u), d) in chunks.zip(dst[..whole].chunks_exact_mut(8)) {
            // SAFETY: each chunk holds 8 floats.
            unsafe {
                let g = _mm256_loadu_ps(g.as_ptr());
                let e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0)));
                let silu = _mm256_div_ps(g, _mm256_add_ps(e, one));
                _mm256_storeu_ps(d.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(u.as_ptr()), silu));
            }
        }
        for ((d, &g), &u) in dst[whole..].iter_mut().zip(&gate[whole..]).zip(&up[whole..]) {
            *d = silu_mul1(g, u);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> [f32; 8] {
        let whole = row.len() / 8 * 8;
        let (shift, factor) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut acc = _mm256_setzero_ps();
        for c in row[..whole].chunks_exact_mut(8) {
            // SAFETY: the chunk holds 8 floats.
            unsafe {
                let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), shift), factor));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (i, x) in row[whole..].iter_mut().enumerate() {
            *x = exp1((*x - max) * scale);
            lanes[i] += *x;
        }
        lanes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.0517).collect();
        v.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            -87.5,
            89.0,
            -90.0,
            -200.0,
            1000.0,
            f32::MIN_POSITIVE,
        ]);
        v
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_where_normal() {
        for x in samples() {
            let (got, want) = (exp1(x), x.exp());
            if want.is_normal() && x <= EXP_HI {
                let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 2, "exp({x}) = {got}, libm {want} ({ulps} ulp)");
            } else if x < -100.0 {
                assert_eq!(got, 0.0, "exp({x})");
            }
        }
        let mut nan = [0f32; 9];
        map(Map::Exp, &[f32::NAN; 9], &mut nan);
        assert!(nan.iter().all(|x| x.is_nan()) && exp1(f32::NAN).is_nan());
    }

    #[test]
    fn gelus_match_their_definitions() {
        for x in samples().into_iter().filter(|x| x.abs() < 60.0) {
            let d = x as f64;
            let quick = d / (1.0 + (-1.702 * d).exp());
            let tanh =
                0.5 * d * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (d + 0.044715 * d * d * d)).tanh());
            assert!((quick_gelu1(x) as f64 - quick).abs() <= 1e-6 * (1.0 + quick.abs()), "quick_gelu({x})");
            assert!((gelu_tanh1(x) as f64 - tanh).abs() <= 1e-6 * (1.0 + tanh.abs()), "gelu_tanh({x})");
            let silu = 0.75 * d / (1.0 + (-d).exp());
            assert!((silu_mul1(x, 0.75) as f64 - silu).abs() <= 1e-6 * (1.0 + silu.abs()), "silu({x})");
        }
    }

    /// Whatever the CPU, a map gives the scalar body's bits, tails included.
    #[test]
    fn simd_bodies_equal_the_scalar_ones() {
        let src = samples();
        for kind in [Map::Exp, Map::QuickGelu, Map::GeluTanh] {
            for len in [0, 1, 7, 8, 9, 63, src.len()] {
                let mut dst = vec![0f32; len];
                map(kind, &src[..len], &mut dst);
                for (d, &s) in dst.iter().zip(&src[..len]) {
                    assert_eq!(d.to_bits(), kind.scalar(s).to_bits(), "{kind:?}({s})");
                }
            }
        }
        let up: Vec<f32> = src.iter().rev().map(|x| x * 0.1).collect();
        for len in [0, 1, 7, 8, 9, 63, src.len()] {
            let mut dst = vec![0f32; len];
            silu_mul(&src[..len], &up[..len], &mut dst);
            for ((d, &g), &u) in dst.iter().zip(&src).zip(&up) {
                assert_eq!(d.to_bits(), silu_mul1(g, u).to_bits(), "{u}·silu({g})");
            }
        }
        for len in [1, 5, 8, 13, 577] {
            let row: Vec<f32> = src[..len].iter().map(|x| x * 0.3).collect();
            let mut simd = row.clone();
            softmax_in_place(&mut simd, 0.7);
            let mut scalar = row.clone();
            let max = scalar.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let l = exp_shifted(&mut scalar, max, 0.7);
            let inv = 1.0 / (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
            scalar.iter_mut().for_each(|x| *x *= inv);
            assert_eq!(simd, scalar, "softmax of {len}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_matches_f64() {
        let mut row: Vec<f32> = (0..577).map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0).collect();
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let want: Vec<f64> = row.iter().map(|&x| ((x as f64 - max) * 0.5).exp()).collect();
        let total: f64 = want.iter().sum();
        softmax_in_place(&mut row, 0.5);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w / total).abs() < 1e-7, "{g} vs {}", w / total);
        }
        assert!((row.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-5);
    }
}
