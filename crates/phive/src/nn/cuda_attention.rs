//! Decode attention fused into one CUDA kernel (`paged_decode.cu`) that reads the keys and
//! values in place in the paged pool: no gathered copy of each sequence's cache per layer, no
//! score matrix in memory, one launch per layer for the whole batch.
//!
//! The kernel is compiled by NVRTC the first time a process uses it (0.2 s here; NVRTC opens
//! `libnvrtc-builtins` from the library path then) into PTX for a virtual architecture that the
//! driver compiles for whatever GPU it finds.
//! Its arithmetic is tested on every build by compiling it as C++ with CUDA's built-ins emulated
//! on CPU threads (`tests/cuda_emulation/`).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use half::{bf16, f16};

use crate::Result;

/// The kernel's source, and the widest head it takes (32 lanes × 8 values).
const SOURCE: &str = include_str!("paged_decode.cu");
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Threads per block: `WARPS` (4) warps of 32, as the source says.
const THREADS: u32 = 128;

/// The batch's decode attention `[rows, heads · head_dim]` in `q`'s dtype: `q` `[rows, heads,
/// head_dim]` (f32, bf16 or f16) over the pool rows `keys`, `values` `[slots, kv_heads ·
/// head_dim]` (f32 or f16), where position `j` of row `r` is pool row `slots[r · longest + j]`
/// and row `r` sees positions `spans[2r]..spans[2r + 1]`. All on one CUDA device.
pub fn paged_decode(
    q: &Tensor,
    (keys, values): (&Tensor, &Tensor),
    (slots, spans): (&Tensor, &Tensor),
    kv_heads: usize,
    scale: f32,
) -> Result<Tensor> {
    let (rows, heads, d) = q.dims3()?;
    let longest = slots.dim(0)? / rows.max(1);
    let op = PagedDecode { slots: slots.clone(), spans: spans.clone(), kv_heads, longest, scale };
    let out = q.contiguous()?.apply_op3_no_bwd(&keys.contiguous()?, &values.contiguous()?, &op)?;
    Ok(out.reshape((rows, heads * d))?)
}

struct PagedDecode {
    slots: Tensor,
    spans: Tensor,
    kv_heads: usize,
    longest: usize,
    scale: f32,
}

/// Whether the kernel compiled. If NVRTC is missing or fails, decode attention stays on the
/// gathering path ([`super::tensor_attention`]), slower but the same answers, and the reason is
/// logged once.
pub(crate) fn available() -> bool {
    static WARNED: std::sync::Once = std::sync::Once::new();
    match ptx() {
        Ok(_) => true,
        Err(e) => {
            WARNED
                .call_once(|| tracing::warn!("{e}; decode attention gathers each sequence's cache instead"));
            false
        }
    }
}

/// The PTX of [`SOURCE`], compiled once per process.
fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        let options = CompileOptions { arch: Some("compute_80"), ..Default::default() };
        compile_ptx_with_opts(SOURCE, options).map(|ptx| ptx.to_src()).map_err(|e| e.to_string())
    });
    compiled
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("compiling the CUDA decode attention: {e}")))
}

/// The `CudaStorage` of a contiguous tensor that starts at its storage's beginning.
fn whole(t: &Tensor) -> candle_core::Result<(impl std::ops::Deref<Target = Storage> + '_, usize)> {
    let (storage, layout) = t.storage_and_layout();
    if !layout.is_contiguous() || layout.start_offset() != 0 {
        return Err(candle_core::Error::Msg("CUDA decode attention: an index tensor is a view".into()));
    }
    Ok((storage, layout.shape().elem_count()))
}

impl CustomOp3 for PagedDecode {
    fn name(&self) -> &'static str {
        "paged-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(candle_core::Error::Msg(
            "the fused decode attention runs on CUDA; the CPU has its own kernels".into(),
        ))
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        keys: &CudaStorage,
        k_layout: &Layout,
        values: &CudaStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, heads, d) = q_layout.shape().dims3()?;
        let width = self.kv_heads * d;
        let views = [q_layout, k_layout, v_layout];
        if views.iter().any(|l| !l.is_contiguous() || l.start_offset() != 0)
            || k_layout.shape() != v_layout.shape()
            || k_layout.shape().dims().last() != Some(&width)
            || d > MAX_HEAD_DIM
            || self.kv_heads == 0
            || !heads.is_multiple_of(self.kv_heads)
        {
            return Err(candle_core::Error::Msg(format!(
                "CUDA decode attention: q {:?}, keys {:?} for {} kv heads",
                q_layout.shape(),
                k_layout.shape(),
                self.kv_heads
            )));
        }
        let (slots, slot_count) = whole(&self.slots)?;
        let (spans, span_count) = whole(&self.spans)?;
        let (Storage::Cuda(slots), Storage::Cuda(spans)) = (&*slots, &*spans) else {
            return Err(candle_core::Error::Msg("CUDA decode attention: indices off the device".into()));
        };
        if slot_count != rows * self.longest || span_count != 2 * rows {
            return Err(candle_core::Error::Msg("CUDA decode attention: index sizes".into()));
        }
        let (slots, spans) = (slots.as_cuda_slice::<u32>()?, spans.as_cuda_slice::<u32>()?);
        let device = q.device().clone();
        let name = format!("paged_decode_{}_{}", type_name(q.dtype())?, type_name(keys.dtype())?);
        let func = device.get_or_load_custom_func(&name, "phive_paged_decode", ptx()?)?;
        let config = LaunchConfig {
            grid_dim: (heads as u32, rows as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let ints = [heads, self.kv_heads, d, self.longest].map(|n| n as i32);
        let n = rows * heads * d;
        macro_rules! launch {
            ($q:ty, $kv:ty) => {{
                let out = device.alloc_zeros::<$q>(n)?;
                let mut builder = func.builder();
                builder.arg(q.as_cuda_slice::<$q>()?);
                builder.arg(keys.as_cuda_slice::<$kv>()?);
                builder.arg(values.as_cuda_slice::<$kv>()?);
                builder.arg(slots);
                builder.arg(spans);
                builder.arg(&out);
                for i in &ints {
                    builder.arg(i);
                }
                builder.arg(&self.scale);
                // SAFETY: the arguments match the kernel's parameters in order and type; the
                // sizes were checked above, and the slots point inside the pool (the batch
                // builder takes them from the pool's block tables).
                unsafe { builder.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let out = match (q.dtype(), keys.dtype()) {
            (DType::F32, DType::F32) => launch!(f32, f32),
            (DType::F32, DType::F16) => launch!(f32, f16),
            (DType::BF16, DType::F32) => launch!(bf16, f32),
            (DType::BF16, DType::F16) => launch!(bf16, f16),
            (DType::F16, DType::F32) => launch!(f16, f32),
            (DType::F16, DType::F16) => launch!(f16, f16),
            (q, k) => {
                return Err(candle_core::Error::Msg(format!(
                    "CUDA decode attention: {q:?} queries, {k:?} cache"
                )))
            }
        };
        Ok((out, Shape::from((rows, heads, d))))
    }
}

/// The kernel-name part of a dtype.
fn type_name(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => return Err(candle_core::Error::Msg(format!("CUDA decode attention: {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    /// The kernel compiles for the GPU (NVRTC needs no GPU, only its library, which the CUDA
    /// build's toolkit has): the test runs in CUDA builds.
    #[test]
    fn the_kernel_compiles_to_ptx_with_every_entry_point() {
        let ptx = super::ptx().expect("NVRTC compiles the kernel");
        for q in ["f32", "bf16", "f16"] {
            for kv in ["f32", "f16"] {
                assert!(ptx.contains(&format!(".entry paged_decode_{q}_{kv}(")), "{q} × {kv}");
            }
        }
    }
}
