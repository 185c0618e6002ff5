//! The engine's settings, and how many KV blocks they give the pool.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::nn::kv_cache::{KvDtype, KvGeometry};
use crate::{Error, Result};

/// Limits of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences running at once (each choice of a request is one).
    pub max_num_seqs: usize,
    /// Tokens fed to the model per step: decode tokens plus prefill chunks. Smaller keeps
    /// streams smooth while long prompts prefill; larger prefills faster.
    pub max_batched_tokens: usize,
    /// Most tokens per step of a prompt prefilling alone (nothing decoding or waiting): such a
    /// step is abandoned when a request arrives, so it can be long without stalling anyone.
    /// At most `max_batched_tokens` turns these solo chunks off.
    pub solo_prefill_chunk: usize,
    /// Requests waiting to start; beyond this `submit` fails with `Error::QueueFull`.
    pub max_queue: usize,
    /// Bytes of KV memory; `None`: 40% of the memory available at start, at most what
    /// `max_num_seqs` full-context sequences need.
    pub kv_cache_bytes: Option<u64>,
    /// Bytes of encoded images and audio kept across requests (0 turns the cache off).
    pub media_cache_bytes: u64,
    /// Keep full KV blocks after their sequence ends, for requests that start the same way.
    pub prefix_cache: bool,
    /// How the KV cache stores keys and values: f32 (exact) or f16 (twice the tokens in the
    /// same memory, and faster decoding over long contexts); by default f32 only where the
    /// model itself computes exactly (see [`KvCacheDtype::Auto`]).
    pub kv_cache_dtype: KvCacheDtype,
    /// On a GPU, the share of its memory phive may fill (weights, then the KV cache in what is
    /// left) when `kv_cache_bytes` is not set; between 0 and 1.
    pub gpu_memory_utilization: f64,
}

/// The KV cache's number type as configured: chosen from the model, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    /// f32 where the language model computes as the reference does (f32 activations over
    /// unquantized f32 weights), so that its answers stay the reference's; f16 where the
    /// weights are quantized or half precision. There the weights' own rounding is orders of
    /// magnitude above the cache's, and f16 holds twice the tokens and halves what a
    /// long-context decode step reads (llama.cpp's and mistral.rs's CPU default is f16 too;
    /// vLLM's is the model's half-precision dtype).
    #[default]
    Auto,
    /// Always this type.
    Fixed(KvDtype),
}

impl KvCacheDtype {
    /// The type for a model that computes exactly in f32 (`exact`) or not.
    pub fn resolve(self, exact: bool) -> KvDtype {
        match self {
            KvCacheDtype::Auto if exact => KvDtype::F32,
            KvCacheDtype::Auto => KvDtype::F16,
            KvCacheDtype::Fixed(dtype) => dtype,
        }
    }
}

impl FromStr for KvCacheDtype {
    type Err = Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(KvCacheDtype::Auto);
        }
        s.parse()
            .map(KvCacheDtype::Fixed)
            .map_err(|_| Error::InvalidRequest(format!("unknown KV cache dtype {s:?}: use auto, f32 or f16")))
    }
}

impl fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvCacheDtype::Auto => f.write_str("auto"),
            KvCacheDtype::Fixed(dtype) => dtype.fmt(f),
        }
    }
}

/// Default solo chunk: where the int8 kernels reach most of their speed (the AMX tiles need 32
/// rows and gain up to 256), while an abandoned chunk wastes little.
pub const DEFAULT_SOLO_PREFILL_CHUNK: usize = 256;

/// Default media cache: 512 MiB holds the features of about 50 full-resolution Phi-3.5 images.
pub const DEFAULT_MEDIA_CACHE_BYTES: u64 = 512 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 32,
            max_batched_tokens: 32,
            solo_prefill_chunk: DEFAULT_SOLO_PREFILL_CHUNK,
            max_queue: 64,
            kv_cache_bytes: None,
            media_cache_bytes: DEFAULT_MEDIA_CACHE_BYTES,
            prefix_cache: true,
            kv_cache_dtype: KvCacheDtype::Auto,
            gpu_memory_utilization: 0.9,
        }
    }
}

/// Blocks in the KV pool: the configured bytes, or by default 40% of the host memory available
/// at start, or on a GPU what is left of `gpu_memory_utilization` of its memory after the
/// weights (vLLM's convention); never more than `max_num_seqs` full-context sequences need. An
/// error where the GPU's share leaves no room for a single block.
pub(super) fn pool_blocks(
    config: &EngineConfig,
    geometry: KvGeometry,
    context: usize,
    device: &Device,
) -> Result<usize> {
    let per_block = geometry.bytes_per_block() as u64;
    let full = (geometry.blocks_for(context) * config.max_num_seqs.max(1)) as u64;
    let available = match (config.kv_cache_bytes, crate::device::gpu_memory(device)) {
        (Some(bytes), _) => bytes,
        (None, Some((free, total))) => {
            let share = config.gpu_memory_utilization.clamp(0.0, 1.0);
            let left = ((total as f64 * share) as u64).saturating_sub(total.saturating_sub(free));
            if left < per_block {
                return Err(Error::Device(format!(
                    "{:.1} of the GPU's {:.1} GiB are in use after loading, more than \
                     --gpu-memory-utilization {share} leaves for a KV cache; raise it or set --kv-cache-mem",
                    (total - free) as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                )));
            }
            left.min(full * per_block)
        }
        (None, None) => {
            (crate::quant::available_memory_bytes().unwrap_or(4 << 30) / 5 * 2).min(full * per_block)
        }
    };
    Ok(((available / per_block.max(1)) as usize).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_dtype_names_round_trip_and_resolve() {
        for name in ["auto", "f32", "f16"] {
            assert_eq!(name.parse::<KvCacheDtype>().unwrap().to_string(), name);
        }
        assert_eq!("AUTO".parse::<KvCacheDtype>().unwrap(), KvCacheDtype::Auto);
        let err = "bf16".parse::<KvCacheDtype>().unwrap_err().to_string();
        assert!(err.contains("use auto, f32 or f16"), "{err}");
        assert_eq!(KvCacheDtype::Auto.resolve(true), KvDtype::F32);
        assert_eq!(KvCacheDtype::Auto.resolve(false), KvDtype::F16);
        assert_eq!(KvCacheDtype::Fixed(KvDtype::F32).resolve(false), KvDtype::F32);
        assert_eq!(KvCacheDtype::Fixed(KvDtype::F16).resolve(true), KvDtype::F16);
    }
}
