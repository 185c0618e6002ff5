//! The register-blocked microkernels of [`super::sgemm`]: one tile of f32 sums held in
//! registers across a block of inputs. Per input, the tile loads one row of the weight panel
//! (`NR` features), broadcasts each of its `MR` activation rows' values, and issues one FMA per
//! register: 24 FMAs against 14 loads with AVX-512, 12 against 8 with AVX2, so the FMA units
//! stay the limit.

use std::arch::x86_64::*;

/// `c[i][j] += Σ_p a[p·6 + i] · w[p·64 + j]` for a 6 × 64 tile, `c`'s rows `ldc` apart.
///
/// # Safety
/// The CPU has AVX-512 F; `a` holds `kc · 6` and `w` `kc · 64` floats; `c` addresses 6 rows
/// of 64 writable floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_6x64(kc: usize, a: *const f32, w: *const f32, c: *mut f32, ldc: usize) {
    const MR: usize = 6;
    // SAFETY (all accesses): the caller's bounds.
    unsafe {
        let mut sums = [[_mm512_setzero_ps(); 4]; MR];
        for (i, row) in sums.iter_mut().enumerate() {
            for (j, s) in row.iter_mut().enumerate() {
                *s = _mm512_loadu_ps(c.add(i * ldc + 16 * j));
            }
        }
        for p in 0..kc {
            let wp = w.add(p * 64);
            let ws = [
                _mm512_loadu_ps(wp),
                _mm512_loadu_ps(wp.add(16)),
                _mm512_loadu_ps(wp.add(32)),
                _mm512_loadu_ps(wp.add(48)),
            ];
            let ap = a.add(p * MR);
            for (i, row) in sums.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(i));
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

/// `c[i][j] += Σ_p a[p·6 + i] · w[p·16 + j]` for a 6 × 16 tile, `c`'s rows `ldc` apart.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `kc · 6` and `w` `kc · 16` floats; `c` addresses 6 rows
/// of 16 writable floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_6x16(kc: usize, a: *const f32, w: *const f32, c: *mut f32, ldc: usize) {
    const MR: usize = 6;
    // SAFETY (all accesses): the caller's bounds.
    unsafe {
        let mut sums = [[_mm256_setzero_ps(); 2]; MR];
        for (i, row) in sums.iter_mut().enumerate() {
            row[0] = _mm256_loadu_ps(c.add(i * ldc));
            row[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
        }
        for p in 0..kc {
            let w0 = _mm256_loadu_ps(w.add(p * 16));
            let w1 = _mm256_loadu_ps(w.add(p * 16 + 8));
            let ap = a.add(p * MR);
            for (i, row) in sums.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*ap.add(i));
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
