//! Which instruction set the kernels use, read once from the CPU at run time.
//!
//! phive runs on CPUs that differ from machine to machine (AVX2-only Zen 3, AVX-512 VNNI Zen 5,
//! Xeons with AMX), so one build carries every variant and picks here, never at compile time.
//! `PHIVE_SIMD=scalar|avx2|avx512vnni|amx` caps the level (for comparing variants on one
//! machine); it never raises it above what the CPU has.

use std::fmt;
use std::sync::OnceLock;

/// A kernel variant, from the plainest to the widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable Rust, any CPU.
    Scalar,
    /// AVX2 + FMA + F16C: 256-bit integer multiply-adds (`maddubs`).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI: 512-bit int8 dot products (`vpdpbusd`).
    Avx512Vnni,
    /// AVX-512 VNNI plus AMX-INT8 tiles, which multiply prefill's many activation rows
    /// (the VNNI kernels still serve the rest).
    Amx,
}

impl SimdLevel {
    /// The name `PHIVE_SIMD` and benchmark reports use.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512Vnni => "avx512vnni",
            SimdLevel::Amx => "amx",
        }
    }

    /// Every level this CPU can run (for tests that compare variants).
    pub fn available() -> Vec<SimdLevel> {
        let top = detected();
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni, SimdLevel::Amx]
            .into_iter()
            .filter(|l| *l <= top)
            .collect()
    }
}

impl fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The level the kernels use: the best this CPU has, capped by `PHIVE_SIMD`.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let top = detected();
        match std::env::var("PHIVE_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") => top.min(SimdLevel::Avx2),
            Some("avx512vnni") => top.min(SimdLevel::Avx512Vnni),
            _ => top,
        }
    })
}

/// The best level the CPU supports.
pub(super) fn detected() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let vnni = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        if avx2 && vnni && super::amx::usable() {
            return SimdLevel::Amx;
        }
        if avx2 && vnni {
            return SimdLevel::Avx512Vnni;
        }
        if avx2 {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}
