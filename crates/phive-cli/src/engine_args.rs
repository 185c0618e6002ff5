//! Engine options shared by `phive serve` and `phive run`.

use clap::Args;
use phive::engine::{Engine, EngineConfig, KvCacheDtype};

/// How the batching engine is sized.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Sequences the engine batches at once (each choice of a request is one); more wait.
    #[arg(long, global = true, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024), env = "PHIVE_MAX_NUM_SEQS")]
    max_num_seqs: u32,
    /// Tokens fed to the model per step: one per decoding sequence plus prefill chunks. This
    /// bounds the stall every stream (and every new request) sees while a long prompt prefills
    /// beside them.
    #[arg(long, global = true, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..), env = "PHIVE_MAX_BATCHED_TOKENS")]
    max_batched_tokens: u32,
    /// Most tokens per step of a prompt prefilling while nothing else runs: longer chunks
    /// multiply faster, and such a step is abandoned (and redone later) when a request arrives,
    /// so it stalls nobody. A value up to --max-batched-tokens turns solo chunks off.
    #[arg(long, global = true, value_name = "TOKENS", default_value_t = EngineConfig::default().solo_prefill_chunk as u32, env = "PHIVE_SOLO_PREFILL_CHUNK")]
    solo_prefill_chunk: u32,
    /// Requests waiting to start; beyond this, requests are refused (HTTP 503).
    #[arg(long, global = true, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..), env = "PHIVE_MAX_QUEUE")]
    max_queue: u32,
    /// KV cache memory in GiB (e.g. 4 or 0.5). Default: 40% of the memory available after
    /// loading, at most what --max-num-seqs full-context sequences can use.
    #[arg(long, global = true, value_name = "GIB", env = "PHIVE_KV_CACHE_MEM")]
    kv_cache_mem: Option<f64>,
    /// Encoded images and audio kept across requests, in GiB, so a new question about the same
    /// picture skips the vision tower; 0 turns the cache off.
    #[arg(long, global = true, value_name = "GIB", default_value_t = 0.5, env = "PHIVE_MEDIA_CACHE_MEM")]
    media_cache_mem: f64,
    /// Do not keep the KV of finished prompts for reuse. By default, a request whose prompt
    /// starts like an earlier one (a chat's next turn, a shared system prompt) computes only
    /// what follows the part seen before; the answers are the same either way.
    #[arg(long, global = true, env = "PHIVE_NO_PREFIX_CACHE")]
    no_prefix_cache: bool,
    /// How the KV cache stores keys and values: f32 keeps them exactly; f16 holds twice the
    /// tokens in the same memory and decodes faster over long contexts (each cached key and
    /// value keeps 11 significant bits, so answers can differ slightly from f32's). auto: f32
    /// for an exact f32 model, f16 with --isq, a GGUF checkpoint or --dtype bf16|f16, whose
    /// weights round far more than the cache does.
    #[arg(long, global = true, value_name = "auto|f32|f16", default_value_t = KvCacheDtype::Auto, value_parser = parse_kv_dtype, env = "PHIVE_KV_CACHE_DTYPE")]
    kv_cache_dtype: KvCacheDtype,
    /// With --device cuda: the share of the GPU's memory phive may fill, between 0 and 1; the
    /// KV cache gets what the weights leave of it (unless --kv-cache-mem sets its size).
    #[arg(long, global = true, value_name = "FRACTION", default_value_t = EngineConfig::default().gpu_memory_utilization, env = "PHIVE_GPU_MEMORY_UTILIZATION")]
    gpu_memory_utilization: f64,
}

fn parse_kv_dtype(s: &str) -> Result<KvCacheDtype, String> {
    s.parse().map_err(|e: phive::Error| e.to_string())
}

impl EngineArgs {
    /// The engine configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<EngineConfig> {
        let kv_cache_bytes = match self.kv_cache_mem {
            Some(gib) if !(gib.is_finite() && gib > 0.0) => {
                anyhow::bail!("--kv-cache-mem must be a positive number of GiB, got {gib}")
            }
            Some(gib) => Some((gib * (1u64 << 30) as f64) as u64),
            None => None,
        };
        if !(self.media_cache_mem.is_finite() && self.media_cache_mem >= 0.0) {
            anyhow::bail!("--media-cache-mem must be a number of GiB >= 0, got {}", self.media_cache_mem);
        }
        let share = self.gpu_memory_utilization;
        if !(share > 0.0 && share <= 1.0) {
            anyhow::bail!("--gpu-memory-utilization must be a fraction in (0, 1], got {share}");
        }
        Ok(EngineConfig {
            gpu_memory_utilization: share,
            media_cache_bytes: (self.media_cache_mem * (1u64 << 30) as f64) as u64,
            max_num_seqs: self.max_num_seqs as usize,
            max_batched_tokens: self.max_batched_tokens as usize,
            solo_prefill_chunk: self.solo_prefill_chunk as usize,
            max_queue: self.max_queue as usize,
            kv_cache_bytes,
            prefix_cache: !self.no_prefix_cache,
            kv_cache_dtype: self.kv_cache_dtype,
        })
    }
}

/// One line describing the engine's KV memory, for the load summary.
pub fn summary(engine: &Engine) -> String {
    let stats = engine.stats();
    let blocks = stats.kv_blocks_free + stats.kv_blocks_used;
    let bytes = stats.kv_block_bytes * blocks;
    format!(
        "kv cache: {:.2} GiB of {}, {} tokens in {blocks} blocks of {}, prefix cache {}",
        bytes as f64 / (1u64 << 30) as f64,
        engine.kv_cache_dtype(),
        engine.kv_capacity_tokens(),
        stats.kv_block_size,
        if engine.config().prefix_cache { "on" } else { "off" }
    )
}
