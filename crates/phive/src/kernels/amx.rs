//! Intel AMX tiles: whether this process may use them, and the few instructions the kernels
//! need, as inline assembly (Rust's AMX intrinsics are not stable).
//!
//! AMX adds eight tile registers of up to 16 rows × 64 bytes and one instruction that
//! multiplies two of them into a third: `tdpbsud` adds, to each 32-bit element of a 16 × 16
//! tile, the dot product of 64 signed bytes (a row of A) with 64 unsigned bytes (a column of
//! B, stored as 16 rows of 4-byte groups). That is 16,384 multiply-adds per instruction, about
//! six times what a core does with AVX-512 VNNI. `tdpbf16ps` does the same for pairs of bf16
//! values into f32 sums (AMX-BF16).
//!
//! Linux leaves the tile state off until a process asks for it (`arch_prctl`), so
//! [`usable`] asks once; a thread then loads a tile configuration ([`TileConfig::load`])
//! before its first tile instruction and releases the tiles when it is done.

use std::arch::asm;
use std::sync::OnceLock;

/// Whether the CPU has AMX-TILE and AMX-INT8 and the kernel granted this process the tile
/// state. Asked once per process.
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| cpu_has_amx(AMX_INT8) && tile_state_granted())
}

/// Whether the CPU has AMX-TILE and AMX-BF16 and this process may use the tiles.
pub fn usable_bf16() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| cpu_has_amx(AMX_BF16) && tile_state_granted())
}

/// CPUID leaf 7, EDX: bit 24 is AMX-TILE, bit 25 AMX-INT8, bit 22 AMX-BF16.
const AMX_TILE: u32 = 1 << 24;
const AMX_INT8: u32 = 1 << 25;
const AMX_BF16: u32 = 1 << 22;

/// Whether the CPU has AMX-TILE and the AMX instructions of `feature`.
fn cpu_has_amx(feature: u32) -> bool {
    // Leaf 7 exists on every CPU with AVX-512, the callers' case; older ones return zeros.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & AMX_TILE != 0 && leaf.edx & feature != 0
}

/// [`request_tile_state`], asked once per process.
fn tile_state_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(request_tile_state)
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: permission for every thread of the
/// process to use the tile registers (the kernel then saves them on context switches).
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it fails cleanly where unsupported.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// The 64-byte operand of `ldtilecfg` (palette 1): the shape of each tile register.
#[repr(C, align(64))]
pub(super) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// All eight tiles at their largest: 16 rows of 64 bytes.
    pub(super) const FULL: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: FULL_ROWS,
        rows: FULL_COUNT,
    };

    /// Configures this thread's tiles; until [`release`], they hold state the OS saves.
    ///
    /// # Safety
    /// [`usable`] returned true.
    #[inline]
    pub(super) unsafe fn load(&self) {
        asm!("ldtilecfg [{}]", in(reg) self as *const TileConfig, options(nostack, readonly, preserves_flags));
    }
}

const FULL_ROWS: [u16; 16] = [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0];
const FULL_COUNT: [u8; 16] = [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0];

/// Returns this thread's tiles to their initial (unused) state.
///
/// # Safety
/// [`usable`] returned true.
#[inline]
pub(super) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}

/// `tmm$t = 0`.
macro_rules! tile_zero {
    ($t:literal) => {
        std::arch::asm!(concat!("tilezero tmm", $t), options(nostack, nomem, preserves_flags))
    };
}

/// Loads tile `tmm$t` from 16 rows of 64 bytes at `$ptr`, `$stride` bytes apart.
macro_rules! tile_load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, readonly, preserves_flags)
        )
    };
}

/// Stores tile `tmm$t` as 16 rows of 64 bytes at `$ptr`, `$stride` bytes apart.
macro_rules! tile_store {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, preserves_flags)
        )
    };
}

/// `tmm$c += tmm$a (signed bytes) · tmm$b (unsigned bytes, 4-byte groups)`.
macro_rules! tile_dot_su {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!("tdpbsud tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem, preserves_flags)
        )
    };
}

/// `tmm$c += tmm$a · tmm$b` for bf16 pairs (B stored as 16 rows of pairs), summed in f32.
macro_rules! tile_dot_bf16 {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem, preserves_flags)
        )
    };
}

pub(super) use {tile_dot_bf16, tile_dot_su, tile_load, tile_store, tile_zero};
