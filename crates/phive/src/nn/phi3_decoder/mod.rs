//! The Phi-3 decoder stack (Phi-3.5-vision's language model; Phi-4-mini, inside
//! Phi-4-multimodal, has the same layout plus GQA and partial rotary).
//!
//! `embed → N × [x += o_proj(attn(RMSNorm(x))); x += down(silu(gate) ⊙ up)] → RMSNorm → lm_head`,
//! with `q | k | v` fused in `qkv_proj` and `gate | up` fused in `gate_up_proj`, as in Hugging
//! Face's `modeling_phi3(_v).py`.
//!
//! The four projections of every layer are [`LoraLinear`]s: Phi-3.5-vision loads plain
//! `….weight` tensors and has no adapters; Phi-4-multimodal loads the PEFT layout
//! (`….base_layer.weight` plus `lora_A/lora_B.{name}`) and picks the adapter per forward call
//! ([`Phi3Decoder::forward_with_adapter`]), so one loaded model serves text, image and speech
//! requests with the adapter each needs.

use candle_core::{DType, Device, Tensor};

use super::activation::Activation;
use super::kv_cache::{KvCache, KvDtype, KvGeometry, KvPool};
use super::linear::{Linear, LoadVb, WeightFootprint};
use super::lora::{AdapterSegment, LoraLinear, LoraSpec};
use super::norm::RmsNorm;
use super::rotary::{RotaryConfig, RotaryEmbedding};
use super::tensor_attention::{RowSpan, TensorBatch};
use crate::{Error, Result};

/// Geometry of a Phi-3 style decoder, independent of the config.json flavour it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Phi3DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    /// Rotary embedding (its `head_dim` must be `hidden_size / num_attention_heads`).
    pub rope: RotaryConfig,
    /// Keys further back than this many positions are masked (HF convention); `None` = unlimited.
    pub sliding_window: Option<usize>,
    /// Reuse `embed_tokens` as the output projection instead of loading `lm_head.weight`.
    pub tie_word_embeddings: bool,
    /// MLP activation (`silu` for every Phi model).
    pub hidden_act: Activation,
}

impl Phi3DecoderConfig {
    /// `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    fn validate(&self) -> Result<()> {
        let err = |m: String| Err(crate::Error::checkpoint("config.json", m));
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads)
        {
            return err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.rope.head_dim != self.head_dim() {
            return err(format!("rotary head_dim {} != head_dim {}", self.rope.head_dim, self.head_dim()));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 {
            return err("vocab_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }
}

/// One sequence's part of a batched forward pass ([`Phi3Decoder::forward_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchRow<'a> {
    /// New tokens of this sequence in the batch (1 for a decode step, more for a prefill chunk).
    pub len: usize,
    /// Position of the first new token: how many positions the KV cache already holds.
    pub position: usize,
    /// Length of the sequence's prompt, which Hugging Face prefilled in one call; it decides
    /// LongRoPE's factors (see [`RotaryEmbedding::batch_tables`]).
    pub prompt_len: usize,
    /// The sequence's KV blocks, covering positions `0..position + len`.
    pub blocks: &'a [u32],
    /// The LoRA adapter of this sequence (`None`: base weights).
    pub adapter: Option<&'a str>,
}

/// The rows of a packed batch grouped into runs that share an adapter.
fn adapter_segments<'a>(rows: &[BatchRow<'a>]) -> Vec<AdapterSegment<'a>> {
    let mut segments: Vec<AdapterSegment> = Vec::new();
    let mut at = 0;
    for row in rows {
        match segments.last_mut() {
            Some(last) if last.adapter == row.adapter => last.len += row.len,
            _ => segments.push(AdapterSegment { start: at, len: row.len, adapter: row.adapter }),
        }
        at += row.len;
    }
    segments
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    qkv_proj: LoraLinear,
    o_proj: LoraLinear,
    post_attention_layernorm: RmsNorm,
    gate_up_proj: LoraLinear,
    down_proj: LoraLinear,
}

/// The loaded decoder: embeddings, layers, final norm and output projection.
#[derive(Debug, Clone)]
pub struct Phi3Decoder {
    cfg: Phi3DecoderConfig,
    /// Where token embeddings come from.
    embed_tokens: Embeddings,
    device: Device,
    /// The dtype of the weights and activations.
    dtype: DType,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    /// Names of the loaded adapters (each present on at least one projection).
    adapters: Vec<String>,
}

/// The token embedding table.
#[derive(Debug, Clone)]
enum Embeddings {
    /// The table, in the model's dtype or, where the checkpoint stores it in half precision and
    /// the model computes in f32, in that half precision: looked-up rows widen exactly, and the
    /// table takes half the memory.
    Table(Tensor),
    /// Tied to an `lm_head` quantized on the CPU: rows are dequantized from its blocks (as
    /// GGML's `get_rows` reads a quantized `token_embd`), so the table is not kept twice:
    /// Phi-4's 200,064 rows would take 1.2 GB in bf16 beside its 0.5 GB Q6_K `lm_head`.
    LmHead,
}

impl Phi3Decoder {
    /// Loads `model.embed_tokens`, `model.layers.{i}.*`, `model.norm` and `lm_head` from `vb`
    /// (rooted at the checkpoint root), without adapters.
    pub fn new(cfg: &Phi3DecoderConfig, vb: &LoadVb) -> Result<Self> {
        Self::new_with_adapters(cfg, vb, &[])
    }

    /// Like [`Phi3Decoder::new`], plus the LoRA adapters in `adapters` on the projections their
    /// regex matches. The projection layout is detected from layer 0: PEFT
    /// (`qkv_proj.base_layer.weight`, no `qkv_proj.weight`) or plain. An adapter that matches no
    /// projection is a config error.
    pub fn new_with_adapters(cfg: &Phi3DecoderConfig, vb: &LoadVb, adapters: &[LoraSpec]) -> Result<Self> {
        cfg.validate()?;
        let vb = &vb.for_decoder();
        let probe = "model.layers.0.self_attn.qkv_proj";
        let peft = vb.contains_tensor(&format!("{probe}.base_layer.weight"))
            && !vb.contains_tensor(&format!("{probe}.weight"));
        let lora = |v: &LoadVb, i: usize, o: usize| LoraLinear::load(v, i, o, peft, adapters);
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let qkv_out = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd;
        let vm = vb.pp("model");
        let dtype = vb.dtype();
        let table = vm.pp("embed_tokens").get_compact((cfg.vocab_size, h), "weight")?;
        let device = table.device().clone();
        // A tied head is made first, so the table can go before the layers load.
        let tied_head = if cfg.tie_word_embeddings {
            // Quantized straight from the table (no f32 copy of 200,064 rows for Phi-4).
            Some(Linear::from_weights_at(&vb.pp("lm_head"), table.clone(), None)?)
        } else {
            None
        };
        let embed_tokens = match &tied_head {
            Some(head) if head.weight().has_cpu_blocks() => {
                drop(table);
                Embeddings::LmHead
            }
            _ => Embeddings::Table(table),
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let vl = vm.pp(format!("layers.{i}"));
            let va = vl.pp("self_attn");
            let vmlp = vl.pp("mlp");
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::load(&vl.pp("input_layernorm"), h, cfg.rms_norm_eps)?,
                qkv_proj: lora(&va.pp("qkv_proj"), h, qkv_out)?,
                o_proj: lora(&va.pp("o_proj"), cfg.num_attention_heads * hd, h)?,
                post_attention_layernorm: RmsNorm::load(
                    &vl.pp("post_attention_layernorm"),
                    h,
                    cfg.rms_norm_eps,
                )?,
                gate_up_proj: lora(&vmlp.pp("gate_up_proj"), h, 2 * cfg.intermediate_size)?,
                down_proj: lora(&vmlp.pp("down_proj"), cfg.intermediate_size, h)?,
            });
        }
        let norm = RmsNorm::load(&vm.pp("norm"), h, cfg.rms_norm_eps)?;
        let lm_head = match tied_head {
            Some(head) => head,
            None => Linear::load(&vb.pp("lm_head"), h, cfg.vocab_size, false)?,
        };
        let rotary = RotaryEmbedding::new(&cfg.rope)?;
        for spec in adapters {
            let used = layers.iter().any(|l| {
                [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj]
                    .iter()
                    .any(|p| p.adapter_names().any(|n| n == spec.name))
            });
            if !used {
                return Err(crate::Error::checkpoint(
                    "config.json",
                    format!(
                        "{}_lora.layer {:?} matches none of the decoder projections",
                        spec.name,
                        spec.layer.as_str()
                    ),
                ));
            }
        }
        let adapters = adapters.iter().map(|s| s.name.clone()).collect();
        Ok(Self { cfg: cfg.clone(), embed_tokens, device, dtype, layers, norm, lm_head, rotary, adapters })
    }

    /// Names of the LoRA adapters loaded with [`Phi3Decoder::new_with_adapters`].
    pub fn adapter_names(&self) -> &[String] {
        &self.adapters
    }

    /// The configuration this decoder was built from.
    pub fn config(&self) -> &Phi3DecoderConfig {
        &self.cfg
    }

    /// The projections a token goes through (every layer's four, and `lm_head`): what one
    /// decode step reads. LoRA adapters and the embedding lookup (one row) are left out.
    pub fn lm_footprint(&self) -> WeightFootprint {
        let mut total = WeightFootprint::default();
        for layer in &self.layers {
            for proj in [&layer.qkv_proj, &layer.o_proj, &layer.gate_up_proj, &layer.down_proj] {
                total.add(proj.base());
            }
        }
        total.add(&self.lm_head);
        total
    }

    /// The rotary embedding (exposed for tests and diagnostics).
    pub fn rotary(&self) -> &RotaryEmbedding {
        &self.rotary
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The precision of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// An empty single-sequence KV cache for this decoder.
    pub fn new_cache(&self) -> KvCache {
        KvCache::for_device(self.kv_geometry(KvGeometry::DEFAULT_BLOCK_SIZE), &self.device)
    }

    /// Input embeddings `[1, seq, hidden]`: the token embeddings, with each `(start, features)`
    /// span (features `[n, hidden]`) written over positions `start..start + n`. Ids under a span
    /// are placeholders and ignored; spans must not overlap.
    pub fn embed_with_media(&self, token_ids: &[u32], media: &[(usize, Tensor)]) -> Result<Tensor> {
        let seq = token_ids.len();
        let h = self.cfg.hidden_size;
        let mut spans: Vec<(usize, usize, &Tensor)> = Vec::with_capacity(media.len());
        for (start, f) in media {
            let n = match f.dims() {
                [n, d] if *d == h => *n,
                [1, n, d] if *d == h => *n,
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "media features must be [n, {h}], got {other:?}"
                    )))
                }
            };
            if start + n > seq {
                return Err(Error::InvalidRequest(format!(
                    "media span {start}..{} exceeds the {seq} prompt tokens",
                    start + n
                )));
            }
            spans.push((*start, n, f));
        }
        spans.sort_by_key(|s| s.0);
        if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(Error::InvalidRequest("media spans overlap".into()));
        }
        let mut ids = token_ids.to_vec();
        for &(s, n, _) in &spans {
            ids[s..s + n].iter_mut().for_each(|id| *id = 0);
        }
        let text = self.embed_tokens(&ids)?;
        if spans.is_empty() {
            return Ok(text.unsqueeze(0)?);
        }
        let mut parts = Vec::with_capacity(2 * spans.len() + 1);
        let mut pos = 0;
        for &(s, n, f) in &spans {
            if s > pos {
                parts.push(text.narrow(0, pos, s - pos)?);
            }
            parts.push(f.reshape((n, h))?.to_dtype(text.dtype())?);
            pos = s + n;
        }
        if pos < seq {
            parts.push(text.narrow(0, pos, seq - pos)?);
        }
        Ok(Tensor::cat(&parts, 0)?.unsqueeze(0)?)
    }

    /// Embedding rows `[ids.len(), hidden]`. Ids must be `< vocab_size`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(crate::Error::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        let rows = match &self.embed_tokens {
            Embeddings::Table(table) => {
                table.index_select(&Tensor::from_slice(ids, ids.len(), &self.device)?, 0)?
            }
            Embeddings::LmHead => self.lm_head.weight().rows_f32(ids)?,
        };
        Ok(rows.to_dtype(self.dtype)?)
    }

    /// Runs all layers over `embeds` `[1, seq, hidden]` at positions `cache.len()..`, appends the
    /// new keys/values to `cache` and returns the final-normed hidden states `[1, seq, hidden]`.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_with_adapter(embeds, cache, None)
    }

    /// [`Phi3Decoder::forward`] with the LoRA adapter `adapter` active on every projection that
    /// carries it (`None`: base weights only). The KV cache holds keys computed under whatever
    /// adapter each call used, so a sequence should keep one adapter throughout (as the
    /// reference does). One call is one Hugging Face forward call (LongRoPE's switch looks at
    /// its last position). An unknown adapter name is an error.
    pub fn forward_with_adapter(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        adapter: Option<&str>,
    ) -> Result<Tensor> {
        let (b, s, _) = embeds.dims3()?;
        if b != 1 {
            return Err(candle_core::Error::Msg(format!(
                "decoder expects embeddings [1, seq, hidden], got {:?}",
                embeds.shape()
            ))
            .into());
        }
        let position = cache.len();
        let (blocks, pool) = cache.reserve(s)?;
        let row = BatchRow { len: s, position, prompt_len: position + s, blocks, adapter };
        let hidden = self.forward_batch(&embeds.squeeze(0)?, &[row], pool)?;
        cache.advance(s);
        Ok(hidden.unsqueeze(0)?)
    }

    /// The shape of this decoder's KV memory with blocks of `block_size` positions, in f32
    /// (choose another type with [`KvGeometry::with_dtype`]).
    pub fn kv_geometry(&self, block_size: usize) -> KvGeometry {
        KvGeometry {
            num_layers: self.layers.len(),
            kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim(),
            block_size,
            dtype: KvDtype::F32,
        }
    }

    /// One forward pass over a batch of sequences packed along the token axis: `embeds`
    /// `[Σ rows.len, hidden]` holds each row's new tokens in row order. Every weight is read
    /// once for the whole batch; attention runs per row over its own KV blocks in `kv` (decode
    /// rows together in the paged kernel, prefill chunks over their gathered keys), after the
    /// row's new keys and values are written there. Returns the final-normed hidden states
    /// `[Σ rows.len, hidden]`.
    pub fn forward_batch(&self, embeds: &Tensor, rows: &[BatchRow], kv: &mut KvPool) -> Result<Tensor> {
        let never = || false;
        let hidden = self.forward_batch_unless(embeds, rows, kv, &never)?;
        Ok(hidden.expect("a pass that is never stopped finishes"))
    }

    /// [`Phi3Decoder::forward_batch`] that gives up when `stop()` holds before a layer's
    /// attention or either MLP projection, returning `None`: a long step can then yield to a
    /// request that just arrived within the largest of these three parts of a layer. The keys and values it wrote for the new positions of the layers it ran
    /// are garbage nobody reads; running the rows again overwrites them.
    pub fn forward_batch_unless(
        &self,
        embeds: &Tensor,
        rows: &[BatchRow],
        kv: &mut KvPool,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>> {
        self.check_batch(embeds, rows, kv)?;
        let segments = adapter_segments(rows);
        let spans: Vec<(usize, usize, usize)> =
            rows.iter().map(|r| (r.position, r.len, r.prompt_len)).collect();
        let tables = self.rotary.batch_tables(&spans, embeds.device())?;
        let on_device = match kv.tensors() {
            Some(tensors) => {
                let spans: Vec<RowSpan> = rows
                    .iter()
                    .map(|r| RowSpan { blocks: r.blocks, position: r.position, len: r.len })
                    .collect();
                Some(TensorBatch::new(
                    kv.geometry(),
                    &spans,
                    self.cfg.sliding_window,
                    tensors.device(),
                    self.dtype,
                )?)
            }
            None => None,
        };
        let mut x = embeds.contiguous()?;
        for (i, layer) in self.layers.iter().enumerate() {
            if stop() {
                return Ok(None);
            }
            let normed = layer.input_layernorm.forward(&x)?;
            let a = if let (Some(batch), Some(tensors)) = (&on_device, kv.tensors()) {
                self.attn_on_device(layer, &normed, &tables, (batch, tensors), &segments, i)?
            } else {
                self.attn(layer, &normed, &tables, rows, &segments, kv, i)?
            };
            x = (x + a)?;
            let Some(m) = self.mlp(layer, &layer.post_attention_layernorm.forward(&x)?, &segments, stop)?
            else {
                return Ok(None);
            };
            x = (x + m)?;
        }
        Ok(Some(self.norm.forward(&x)?))
    }

    fn check_batch(&self, embeds: &Tensor, rows: &[BatchRow], kv: &KvPool) -> Result<()> {
        let (t, h) = embeds.dims2()?;
        let total: usize = rows.iter().map(|r| r.len).sum();
        if h != self.cfg.hidden_size || t == 0 || t != total || rows.iter().any(|r| r.len == 0) {
            return Err(candle_core::Error::Msg(format!(
                "decoder expects embeddings [tokens>0, {}] for rows of {total} tokens, got {:?}",
                self.cfg.hidden_size,
                embeds.shape()
            ))
            .into());
        }
        let want = self.kv_geometry(kv.geometry().block_size).with_dtype(kv.geometry().dtype);
        if kv.geometry() != want {
            return Err(candle_core::Error::Msg(format!(
                "kv pool {:?} does not fit the decoder ({want:?})",
                kv.geometry()
            ))
            .into());
        }
        for row in rows {
            kv.check_table(row.blocks, row.position + row.len)?;
        }
        for name in rows.iter().filter_map(|r| r.adapter) {
            if !self.adapters.iter().any(|a| a == name) {
                return Err(crate::Error::InvalidRequest(format!(
                    "LoRA adapter {name:?} is not loaded (available: {:?})",
                    self.adapters
                )));
            }
        }
        Ok(())
    }

    /// The MLP, or `None` when `stop()` holds before either of its projections.
    fn mlp(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        segments: &[AdapterSegment],
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Tensor>> {
        if stop() {
            return Ok(None);
        }
        let gu = layer.gate_up_proj.forward_segments(x, segments)?;
        let y = self.cfg.hidden_act.gated(&gu)?;
        if stop() {
            return Ok(None);
        }
        Ok(Some(layer.down_proj.forward_segments(&y, segments)?))
    }

    /// Logits `[rows.len(), vocab]` for the given rows of `hidden` (`[1, seq, hidden]` from
    /// [`Phi3Decoder::forward`], or the packed `[tokens, hidden]` of a batch).
    pub fn logits(&self, hidden: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let packed = match hidden.dims() {
            [1, _, h] if *h == self.cfg.hidden_size => hidden.squeeze(0)?,
            [_, h] if *h == self.cfg.hidden_size => hidden.clone(),
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "logits expect [1, seq, {0}] or [tokens, {0}], got {1:?}",
                    self.cfg.hidden_size,
                    hidden.shape()
                ))
                .into())
            }
        };
        let s = packed.dim(0)?;
        if let Some(&r) = rows.iter().find(|&&r| r >= s) {
            return Err(
                candle_core::Error::Msg(format!("logits row {r} out of range for {s} positions")).into()
            );
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), hidden.device())?;
        let sel = packed.index_select(&idx, 0)?;
        // Sampling and logprobs read f32 whatever the model's dtype.
        Ok(self.lm_head.forward(&sel)?.to_dtype(DType::F32)?)
    }
}

mod attention;
#[cfg(test)]
mod tests;
