//! The register-blocked microkernels of [`super::sgemm`]: one tile of f32 sums held in
//! registers across a block of inputs. Per input, the tile loads one row of the weight panel
//! (`NR` features), broadcasts each of its `MR` activation rows' values straight from the rows
//! (no packed copy of them), and issues one FMA per register: 24 FMAs against 10 loads with
//! AVX-512, 12 against 8 with AVX2, so the FMA units stay the limit.

use std::arch::x86_64::*;

use super::sgemm::MR;

/// `c[i][j] = (c[i][j] if accumulate) + Σ_p rows[i][p] · w[p·ldw + j]` for a 6 × 64 tile,
/// `c`'s rows `ldc` apart.
///
/// # Safety
/// The CPU has AVX-512 F; each of `rows` holds `kc` floats, `w` `kc` lines of 64 floats
/// `ldw` apart; `c` addresses 6 rows of 64 writable floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_6x64(
    kc: usize,
    rows: [*const f32; MR],
    (w, ldw): (*const f32, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY (all accesses): the caller's bounds.
    unsafe {
        let mut sums = [[_mm512_setzero_ps(); 4]; MR];
        if accumulate {
            for (i, row) in sums.iter_mut().enumerate() {
                for (j, s) in row.iter_mut().enumerate() {
                    *s = _mm512_loadu_ps(c.add(i * ldc + 16 * j));
                }
            }
        }
        for p in 0..kc {
            let wp = w.add(p * ldw);
            let ws = [
                _mm512_loadu_ps(wp),
                _mm512_loadu_ps(wp.add(16)),
                _mm512_loadu_ps(wp.add(32)),
                _mm512_loadu_ps(wp.add(48)),
            ];
            for (row, x) in sums.iter_mut().zip(rows) {
                let x = _mm512_set1_ps(*x.add(p));
                for (s, w) in row.iter_mut().zip(ws) {
                    *s = _mm512_fmadd_ps(x, w, *s);
                }
            }
        }
        for (i, row) in sums.iter().enumerate() {
            for (j, s) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + 16 * j), *s);
            }
        }
    }
}

/// `c[i][j] = (c[i][j] if accumulate) + Σ_p rows[i][p] · w[p·ldw + j]` for a 6 × 16 tile,
/// `c`'s rows `ldc` apart.
///
/// # Safety
/// The CPU has AVX2 and FMA; each of `rows` holds `kc` floats, `w` `kc` lines of 16 floats
/// `ldw` apart; `c` addresses 6 rows of 16 writable floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_6x16(
    kc: usize,
    rows: [*const f32; MR],
    (w, ldw): (*const f32, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY (all accesses): the caller's bounds.
    unsafe {
        let mut sums = [[_mm256_setzero_ps(); 2]; MR];
        if accumulate {
            for (i, row) in sums.iter_mut().enumerate() {
                row[0] = _mm256_loadu_ps(c.add(i * ldc));
                row[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
            }
        }
        for p in 0..kc {
            let wp = w.add(p * ldw);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for (row, x) in sums.iter_mut().zip(rows) {
                let x = _mm256_broadcast_ss(&*x.add(p));
                row[0] = _mm256_fmadd_ps(x, w0, row[0]);
                row[1] = _mm256_fmadd_ps(x, w1, row[1]);
            }
        }
        for (i, row) in sums.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc), row[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), row[1]);
        }
    }
}

/// Writes the 16 × 16 block `src[j·src_ld + c]` transposed: column `c` of it goes to the 16
/// floats at `dst + c·dst_ld`. Three rounds of in-lane interleaves and lane shuffles, instead
/// of 256 single-float stores that each miss the cache line of the one before.
///
/// # Safety
/// The CPU has AVX-512 F; `src` addresses 16 rows of 16 floats `src_ld` apart, `dst` 16 rows
/// of 16 writable floats `dst_ld` apart.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_16x16(src: *const f32, src_ld: usize, dst: *mut f32, dst_ld: usize) {
    // SAFETY (all accesses): the caller's bounds.
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(src.add(j * src_ld)));
        // Pairs of rows interleaved: t[2q] = (r[2q][e], r[2q+1][e]) for e = 0, 1 of each lane.
        let t: [__m512; 16] = std::array::from_fn(|j| {
            let (a, b) = (r[j & !1], r[j | 1]);
            if j % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // Four rows per lane: u[4q + e] holds rows 4q..4q+4 of each lane's element e.
        let u: [__m512; 16] = std::array::from_fn(|j| {
            let (q, e) = (j / 4, j % 4);
            let (a, b) = (_mm512_castps_pd(t[4 * q + e / 2]), _mm512_castps_pd(t[4 * q + 2 + e / 2]));
            _mm512_castpd_ps(if e % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
        });
        for e in 0..4 {
            let (even_low, odd_low) =
                (_mm512_shuffle_f32x4::<0x88>(u[e], u[4 + e]), _mm512_shuffle_f32x4::<0xdd>(u[e], u[4 + e]));
            let (even_high, odd_high) = (
                _mm512_shuffle_f32x4::<0x88>(u[8 + e], u[12 + e]),
                _mm512_shuffle_f32x4::<0xdd>(u[8 + e], u[12 + e]),
            );
            // Column 4·lane + e: lane `lane` of u[e], u[4 + e], u[8 + e], u[12 + e].
            _mm512_storeu_ps(dst.add(e * dst_ld), _mm512_shuffle_f32x4::<0x88>(even_low, even_high));
            _mm512_storeu_ps(dst.add((8 + e) * dst_ld), _mm512_shuffle_f32x4::<0xdd>(even_low, even_high));
            _mm512_storeu_ps(dst.add((4 + e) * dst_ld), _mm512_shuffle_f32x4::<0x88>(odd_low, odd_high));
            _mm512_storeu_ps(dst.add((12 + e) * dst_ld), _mm512_shuffle_f32x4::<0xdd>(odd_low, odd_high));
        }
    }
}
