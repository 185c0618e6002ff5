//! Q4_K × Q8_K for many activation rows at once (prefill chunks, batched decode): an
//! outer-product kernel over panels of 16 weight rows, for CPUs with AVX-512 VNNI.
//!
//! The row kernel in [`super::q4k`] dots one weight row with a few activation rows, so every
//! activation byte is loaded again for every weight row. Here the weights of 16 rows are first
//! unpacked into a small panel (per block: 64 vectors, each holding 4 consecutive codes of all
//! 16 rows), then each activation row broadcasts 4 of its bytes at a time against a whole
//! vector: one `vpdpbusd` yields 4 multiply-adds for each of the 16 output columns. The panel is
//! transient (a few kilobytes per block, rebuilt per call and reused by every activation row),
//! so the weights stay in GGML's layout in memory: no repacked copy, no first-call cost.

use std::arch::x86_64::*;

use super::q4k::BLOCK_BYTES;
use super::q8k::BlockQ8K;

/// Weight rows (output columns) per panel: one per 32-bit lane of a 512-bit vector.
pub(super) const COLS: usize = 16;

/// Activation rows that share each load of the panel.
const ROWS: usize = 4;

/// The unpacked weights of [`COLS`] rows over every block of the input dimension.
pub(super) struct Panel {
    /// Per block, 64 vectors: vector `4j…` holds codes `4v..4v+4` of each row, row-major in
    /// the lanes, for the 64 groups of 4 consecutive weights.
    codes: Vec<__m512i>,
    /// Per block and sub-block, the 16 rows' 6-bit scales (i32 lanes).
    scales: Vec<__m512i>,
    /// Per block and sub-block, the 16 rows' `dmin·m` (f32 lanes).
    mins: Vec<__m512>,
    /// Per block, the 16 rows' `d`.
    d: Vec<__m512>,
}

impl Panel {
    /// An empty panel, to be filled by [`Panel::fill`] (allocated once per task).
    pub(super) fn new() -> Panel {
        Panel { codes: Vec::new(), scales: Vec::new(), mins: Vec::new(), d: Vec::new() }
    }

    /// Unpacks rows `first..first + 16` of `w` (row stride `row_bytes`, `blocks` blocks each).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI and F16C; `w` holds at least `first + 16` rows.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn fill(&mut self, w: &[u8], first: usize, row_bytes: usize, blocks: usize) {
        debug_assert!(w.len() >= (first + COLS) * row_bytes);
        // Sized once per shape (a task's panel is reused); every element is overwritten below.
        self.codes.resize(64 * blocks, _mm512_setzero_si512());
        self.scales.resize(8 * blocks, _mm512_setzero_si512());
        self.mins.resize(8 * blocks, _mm512_setzero_ps());
        self.d.resize(blocks, _mm512_setzero_ps());
        let nibble = _mm512_set1_epi8(0x0F);
        let byte = _mm512_set1_epi32(0xFF);
        let row = |c: usize| w.as_ptr().add((first + c) * row_bytes);
        let base = row(0);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(row_bytes as i32));
        for b in 0..blocks {
            let at = b * BLOCK_BYTES;
            // The first 16 bytes of each row's block (d, dmin, the scale bytes) as four words
            // over the 16 rows: `header[k]` lane c is word k of row c.
            let mut header = [_mm512_setzero_si512(); 4];
            for (k, h) in header.iter_mut().enumerate() {
                *h = _mm512_i32gather_epi32::<1>(offsets, base.add(at + 4 * k).cast());
            }
            let dd = header[0];
            self.d[b] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
            let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
            // The twelve scale bytes, unpacked as in `q4k`, sixteen rows at a time.
            let (w0, w1, w2) = (header[1], header[2], header[3]);
            let low6 = _mm512_set1_epi32(0x3f3f_3f3f);
            let low4 = _mm512_set1_epi32(0x0f0f_0f0f);
            let top2 = _mm512_set1_epi32(0x0303_0303);
            let sc_lo = _mm512_and_si512(w0, low6);
            let sc_hi = _mm512_or_si512(
                _mm512_and_si512(w2, low4),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), top2)),
            );
            let mn_lo = _mm512_and_si512(w1, low6);
            let mn_hi = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi32::<4>(w2), low4),
                _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), top2)),
            );
            for (half, (sc, mn)) in [(sc_lo, mn_lo), (sc_hi, mn_hi)].into_iter().enumerate() {
                for (i, shift) in [0i32, 8, 16, 24].into_iter().enumerate() {
                    let j = 8 * b + 4 * half + i;
                    let count = _mm_cvtsi32_si128(shift);
                    self.scales[j] = _mm512_and_si512(_mm512_srl_epi32(sc, count), byte);
                    let m = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srl_epi32(mn, count), byte));
                    self.mins[j] = _mm512_mul_ps(m, dmin);
                }
            }
            // Codes: word `8i + g` of a row's 128 code bytes holds weights `4g..4g+4` of
            // sub-block 2i (low nibbles) and of sub-block 2i+1 (high nibbles). Transposing the
            // 16 rows × 32 words puts each word of all 16 rows in one vector.
            let start = 64 * b;
            for half in 0..2 {
                let mut rows = [_mm512_setzero_si512(); COLS];
                for (c, r) in rows.iter_mut().enumerate() {
                    *r = _mm512_loadu_si512(row(c).add(at + 16 + 64 * half).cast());
                }
                let words = transpose16(rows);
                for (k, v) in words.iter().enumerate() {
                    let (i, g) = (2 * half + k / 8, k % 8);
                    self.codes[start + 16 * i + g] = _mm512_and_si512(*v, nibble);
                    self.codes[start + 16 * i + 8 + g] = _mm512_and_si512(_mm512_srli_epi32::<4>(*v), nibble);
                }
            }
        }
    }

    /// `out[r][c] = acts[r] · row c` for up to [`ROWS`] activation rows at a time.
    ///
    /// # Safety
    /// As [`Panel::fill`]; every activation row has the panel's number of blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot(&self, acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
        for (tile, dst) in acts.chunks(ROWS).zip(out.chunks_mut(ROWS)) {
            match tile.len() {
                1 => self.dot_rows::<1>(tile, dst),
                2 => self.dot_rows::<2>(tile, dst),
                3 => self.dot_rows::<3>(tile, dst),
                _ => self.dot_rows::<ROWS>(tile, dst),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    unsafe fn dot_rows<const R: usize>(&self, acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..self.d.len() {
            let codes = &self.codes[64 * b..64 * b + 64];
            let mut sumi = [_mm512_setzero_si512(); R];
            let qs: [*const i8; R] = std::array::from_fn(|r| acts[r].get_unchecked(b).qs.as_ptr());
            for j in 0..8 {
                // Two accumulators per row (even and odd groups): `vpdpbusd` has a latency of
                // several cycles, and one chain per row would leave the multipliers idle.
                let mut even = [_mm512_setzero_si512(); R];
                let mut odd = [_mm512_setzero_si512(); R];
                for g in (0..8).step_by(2) {
                    let (c0, c1) = (codes[8 * j + g], codes[8 * j + g + 1]);
                    for r in 0..R {
                        let q = qs[r].add(32 * j + 4 * g).cast::<i32>();
                        let a0 = _mm512_set1_epi32(std::ptr::read_unaligned(q));
                        let a1 = _mm512_set1_epi32(std::ptr::read_unaligned(q.add(1)));
                        even[r] = _mm512_dpbusd_epi32(even[r], c0, a0);
                        odd[r] = _mm512_dpbusd_epi32(odd[r], c1, a1);
                    }
                }
                let scale = self.scales[8 * b + j];
                for r in 0..R {
                    let s = _mm512_add_epi32(even[r], odd[r]);
                    sumi[r] = _mm512_add_epi32(sumi[r], _mm512_mullo_epi32(s, scale));
                }
            }
            let d = self.d[b];
            for r in 0..R {
                let a = acts[r].get_unchecked(b);
                acc[r] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(sumi[r]),
                    _mm512_mul_ps(d, _mm512_set1_ps(a.d)),
                    acc[r],
                );
                for j in 0..8 {
                    let m = self.mins[8 * b + j];
                    acc[r] = _mm512_fnmadd_ps(m, _mm512_set1_ps(a.dsums[2 * j]), acc[r]);
                    acc[r] = _mm512_fnmadd_ps(m, _mm512_set1_ps(a.dsums[2 * j + 1]), acc[r]);
                }
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }
}

/// Transposes a 16 × 16 matrix of 32-bit words held as 16 row vectors.
///
/// Three rounds of shuffles: words, then pairs of words within each 128-bit lane, then the
/// lanes themselves.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + q], 128-bit lane L: column 4L + q of rows 4i..4i+4.
    let mut b = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let low_lanes =
            (_mm512_shuffle_i32x4::<0x44>(b[q], b[4 + q]), _mm512_shuffle_i32x4::<0x44>(b[8 + q], b[12 + q]));
        let high_lanes =
            (_mm512_shuffle_i32x4::<0xEE>(b[q], b[4 + q]), _mm512_shuffle_i32x4::<0xEE>(b[8 + q], b[12 + q]));
        out[q] = _mm512_shuffle_i32x4::<0x88>(low_lanes.0, low_lanes.1);
        out[4 + q] = _mm512_shuffle_i32x4::<0xDD>(low_lanes.0, low_lanes.1);
        out[8 + q] = _mm512_shuffle_i32x4::<0x88>(high_lanes.0, high_lanes.1);
        out[12 + q] = _mm512_shuffle_i32x4::<0xDD>(high_lanes.0, high_lanes.1);
    }
    out
}
