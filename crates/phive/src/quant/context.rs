//! The load context that [`Linear::load`](crate::nn::linear::Linear::load) consults.
//!
//! Model constructors (`Phi3V::new`, the decoder, the towers) only call `Linear::load(vb, ...)`;
//! they know nothing about quantization. [`LoadContext::open`] returns the weights and the
//! context, which travel together into the constructor as a [`LoadVb`]; `Linear::load` asks the
//! context with the layer's full tensor name (`vb.prefix()`), and the context decides from the
//! name (its [`TensorRole`]) and the input width whether to quantize, to which type, and takes
//! pre-quantized tensors from a GGUF checkpoint. The full-precision weight is read in its stored
//! dtype, quantized, and dropped before the next tensor is read.
//!
//! [`LoadVb`]: crate::nn::linear::LoadVb

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::gguf::GgufStore;
use super::{memory_stats, quantize, reset_peak_rss, IsqType, MemoryStats};
use crate::checkpoint::weights::{WeightFiles, WeightFormat};
use crate::nn::linear::LinearWeight;
use crate::{Error, Result};

/// What a tensor is, judged from its checkpoint name; decides whether ISQ touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// A projection of a language-model layer: `model.layers.N.self_attn.{qkv_proj,o_proj}` or
    /// `model.layers.N.mlp.{gate_up_proj,down_proj}`, or the `base_layer` of a Phi-4 LoRA layer.
    LmLinear,
    /// The output projection `lm_head` (quantized at [`IsqType::promoted`]).
    LmHead,
    /// A projection inside the vision or audio encoder (`model.vision_embed_tokens.*`,
    /// `model.embed_tokens_extend.*`): quantized only with `--isq-encoders`.
    EncoderLinear,
    /// A LoRA adapter's `lora_A` or `lora_B` matrix (Phi-4-multimodal): stored as Q8_0 under an
    /// ISQ to a block type (0.9 G parameters in two adapters; rounding them to 8 bits moves an
    /// adapter's output far less than the base weights' own quantization does).
    LoraAdapter,
    /// Anything else (embeddings, norms): always full precision.
    Other,
}

impl TensorRole {
    /// Classifies a linear layer by its prefix (the name without `.weight`).
    pub fn of(prefix: &str) -> TensorRole {
        if prefix.contains("lora_A") || prefix.contains("lora_B") {
            return TensorRole::LoraAdapter;
        }
        if prefix == "lm_head" {
            return TensorRole::LmHead;
        }
        let base = prefix.strip_suffix(".base_layer").unwrap_or(prefix);
        if base.starts_with("model.layers.")
            && [".self_attn.qkv_proj", ".self_attn.o_proj", ".mlp.gate_up_proj", ".mlp.down_proj"]
                .iter()
                .any(|s| base.ends_with(s))
        {
            return TensorRole::LmLinear;
        }
        if prefix.starts_with("model.vision_embed_tokens.")
            || prefix.starts_with("model.embed_tokens_extend.")
        {
            return TensorRole::EncoderLinear;
        }
        TensorRole::Other
    }
}

/// The settings and bookkeeping of one model load. See the module docs.
pub struct LoadContext {
    isq: Option<IsqType>,
    encoders: bool,
    /// Stored dtype of each full-precision tensor of the source, so weights are read without an
    /// f32 copy when they are about to be quantized anyway.
    stored: HashMap<String, DType>,
    gguf: Option<Arc<GgufStore>>,
    /// Where the model runs: quantized weights (made or read on the CPU) are moved there.
    device: Device,
    /// Precision of the language model's unquantized weights (the encoders stay f32).
    decoder_dtype: DType,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    progress: ProgressBar,
    tensors: usize,
    bytes: u64,
    source_bytes: u64,
    fallbacks: usize,
    by_type: BTreeMap<&'static str, usize>,
    /// Every linear weight converted so far, by tensor name, when the load is for the GGUF
    /// export ([`LoadContext::recording`]).
    recorded: Option<Vec<(String, LinearWeight)>>,
}

impl State {
    fn new(progress: ProgressBar) -> Self {
        State {
            progress,
            tensors: 0,
            bytes: 0,
            source_bytes: 0,
            fallbacks: 0,
            by_type: BTreeMap::new(),
            recorded: None,
        }
    }
}

/// What a load did, for the load summary (`phive run` prints it).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The ISQ type in effect (from `--isq`, or recorded in a GGUF checkpoint).
    pub isq: Option<IsqType>,
    /// Whether encoder projections were quantized too.
    pub encoders: bool,
    /// The weights came pre-quantized from a GGUF file.
    pub prequantized: bool,
    /// Linear weights stored quantized or as half precision.
    pub quantized_tensors: usize,
    /// Their bytes as stored.
    pub quantized_bytes: u64,
    /// What those weights would take in f32.
    pub f32_bytes: u64,
    /// Tensors whose width forced a fallback type.
    pub fallbacks: usize,
    /// Count per storage type (`Q4K` → 128, `Q6K` → 1).
    pub by_type: Vec<(String, usize)>,
    /// Wall time of the load (from opening the weights to the constructed model).
    pub elapsed: Duration,
    /// Memory after the load; `peak_rss` is the peak during it where the kernel allows resetting it.
    pub memory: MemoryStats,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MB: f64 = 1e6;
        match self.isq {
            None => write!(f, "no ISQ")?,
            Some(t) => {
                let types: Vec<String> = self.by_type.iter().map(|(t, n)| format!("{t} x{n}")).collect();
                write!(
                    f,
                    "ISQ {t}{}{}: {} tensors, {:.1} MB quantized (f32 {:.1} MB; {}; {} fallbacks)",
                    if self.prequantized { " (pre-quantized GGUF)" } else { "" },
                    if self.encoders { " incl. encoders" } else { "" },
                    self.quantized_tensors,
                    self.quantized_bytes as f64 / MB,
                    self.f32_bytes as f64 / MB,
                    if types.is_empty() { "none".to_string() } else { types.join(", ") },
                    self.fallbacks
                )?;
            }
        }
        write!(
            f,
            "; load {:.2}s, peak RSS {:.1} MB, RSS after load {:.1} MB",
            self.elapsed.as_secs_f64(),
            self.memory.peak_rss as f64 / MB,
            self.memory.rss as f64 / MB
        )
    }
}

impl LoadContext {
    /// Opens `weights` for loading with `isq` (`encoders`: also quantize the vision/audio
    /// projections) and returns the `VarBuilder` the model constructor reads from, plus the
    /// context to pass along with it (as a [`LoadVb`](crate::nn::linear::LoadVb)).
    ///
    /// * GGUF checkpoints (written by `phive quantize`) carry their ISQ type; `isq` must be
    ///   unset or equal to it, since requantizing quantized weights would compound the error.
    /// * With ISQ, safetensors are read tensor by tensor with plain reads instead of a memory
    ///   map, so that checkpoint pages never count in the process's RSS and the peak stays near
    ///   the quantized size plus one full-precision tensor.
    /// * Without ISQ the memory-mapped path is used unchanged.
    pub fn open(
        weights: &WeightFiles,
        isq: Option<IsqType>,
        encoders: bool,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, Self)> {
        reset_peak_rss();
        let started = Instant::now();
        let (vb, isq, encoders, stored, gguf) = match weights.format {
            WeightFormat::Gguf => {
                let path =
                    weights.files.first().ok_or_else(|| Error::ModelNotFound("no GGUF file".into()))?;
                let store = Arc::new(GgufStore::open(path)?);
                let saved = store.isq()?;
                if let (Some(wanted), Some(saved)) = (isq, saved) {
                    if wanted != saved {
                        return Err(Error::InvalidRequest(format!(
                            "{} is already quantized with ISQ {saved}; drop --isq {wanted} or quantize the original checkpoint",
                            path.display()
                        )));
                    }
                }
                let stored = store.float_dtypes();
                let encoders = store.encoders();
                (
                    super::gguf::var_builder(store.clone(), DType::F32, device),
                    saved,
                    encoders,
                    stored,
                    Some(store),
                )
            }
            WeightFormat::Safetensors if isq.is_some() => {
                let (vb, stored) = weights.streaming_var_builder(DType::F32, device)?;
                (vb, isq, encoders, stored, None)
            }
            WeightFormat::Safetensors => {
                (weights.var_builder(DType::F32, device)?, None, false, HashMap::new(), None)
            }
        };
        let planned = match isq {
            None => 0,
            Some(isq) => {
                let mut names: Vec<&String> = stored.keys().collect();
                if let Some(store) = &gguf {
                    names.extend(store.quantized_names());
                }
                names.sort();
                names.dedup();
                names
                    .iter()
                    .filter_map(|n| n.strip_suffix(".weight"))
                    .filter(|p| match TensorRole::of(p) {
                        TensorRole::LmLinear | TensorRole::LmHead => true,
                        TensorRole::EncoderLinear => encoders,
                        TensorRole::LoraAdapter => !isq.is_dense(),
                        TensorRole::Other => false,
                    })
                    .count()
            }
        };
        let progress = if planned > 0 && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(planned as u64), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors, {elapsed}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            let verb = if gguf.is_some() { "loading" } else { "quantizing" };
            bar.set_message(format!("{verb} {}", isq.map(|t| t.name()).unwrap_or("")));
            bar
        } else {
            ProgressBar::hidden()
        };
        let ctx = LoadContext {
            isq,
            encoders,
            stored,
            gguf,
            device: device.clone(),
            decoder_dtype: DType::F32,
            started,
            state: Mutex::new(State::new(progress)),
        };
        Ok((vb, ctx))
    }

    /// A context for tests and tools: quantize with `isq`, no source metadata (weights are
    /// read as f32 from whatever `VarBuilder` the caller uses).
    pub fn new(isq: Option<IsqType>, encoders: bool) -> Self {
        LoadContext {
            isq,
            encoders,
            stored: HashMap::new(),
            gguf: None,
            device: Device::Cpu,
            decoder_dtype: DType::F32,
            started: Instant::now(),
            state: Mutex::new(State::new(ProgressBar::hidden())),
        }
    }

    /// Loads the language model's unquantized weights (embeddings, norms, dense linears) as
    /// `dtype`; f32 by default.
    pub fn with_decoder_dtype(mut self, dtype: DType) -> Self {
        self.decoder_dtype = dtype;
        self
    }

    /// Precision of the language model's unquantized weights.
    pub fn decoder_dtype(&self) -> DType {
        self.decoder_dtype
    }

    /// The dtype tensor `name` is stored in, where the load knows it (in-situ quantizing and
    /// GGUF loads read the checkpoint's headers).
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.stored.get(name).copied()
    }

    /// The ISQ type in effect.
    pub fn isq(&self) -> Option<IsqType> {
        self.isq
    }

    /// Finishes the progress bar and summarises the load.
    pub fn finish(&self) -> LoadReport {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.progress.finish_and_clear();
        LoadReport {
            isq: self.isq,
            encoders: self.encoders,
            prequantized: self.gguf.is_some(),
            quantized_tensors: state.tensors,
            quantized_bytes: state.bytes,
            f32_bytes: state.source_bytes,
            fallbacks: state.fallbacks,
            by_type: state.by_type.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            elapsed: self.started.elapsed(),
            memory: memory_stats(),
        }
    }

    /// Also keeps every linear weight the load quantizes or converts, so that the GGUF export
    /// can write exactly what an in-situ load produces ([`LoadContext::into_recorded`]).
    pub(crate) fn recording(mut self) -> Self {
        self.state.get_mut().unwrap_or_else(|e| e.into_inner()).recorded = Some(Vec::new());
        self
    }

    /// The weights kept since [`LoadContext::recording`], by tensor name (empty otherwise).
    pub(crate) fn into_recorded(self) -> Vec<(String, LinearWeight)> {
        self.state.into_inner().unwrap_or_else(|e| e.into_inner()).recorded.unwrap_or_default()
    }

    /// The storage type for the linear layer `prefix` with `in_dim` input features: `None` keeps
    /// it f32. Logs the fallback when the width does not fit the block size.
    pub fn plan(&self, prefix: &str, in_dim: usize) -> Option<IsqType> {
        let isq = self.isq?;
        let wanted = match TensorRole::of(prefix) {
            TensorRole::LmLinear => isq,
            TensorRole::LmHead => isq.promoted(),
            TensorRole::EncoderLinear if self.encoders => isq,
            // Kept as stored under a dense ISQ (F16, BF16), or where the width does not fit.
            TensorRole::LoraAdapter
                if !isq.is_dense() && in_dim.is_multiple_of(IsqType::Q8_0.block_size()) =>
            {
                return Some(IsqType::Q8_0)
            }
            _ => return None,
        };
        let fit = wanted.fit(in_dim);
        if fit != wanted {
            tracing::info!(
                "{prefix}.weight: {in_dim} input features are not a multiple of {wanted}'s block size {}; storing it as {fit}",
                wanted.block_size()
            );
            self.lock().fallbacks += 1;
        }
        Some(fit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The weight of the linear layer at `vb` (`prefix` = its full name), or `None` when it stays
    /// dense f32 and the caller should load it as usual.
    pub(crate) fn linear_weight(
        &self,
        vb: &VarBuilder,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Option<LinearWeight>> {
        let name = format!("{prefix}.weight");
        if let Some(store) = &self.gguf {
            if let Some(q) = store.quantized(&name)? {
                if q.shape().dims() != [out_dim, in_dim] {
                    return Err(Error::checkpoint(
                        store.path(),
                        format!("{name} has shape {:?}, expected [{out_dim}, {in_dim}]", q.shape().dims()),
                    ));
                }
                let weight = self.on_device(q)?;
                self.note(&name, &weight, in_dim * out_dim);
                return Ok(Some(weight));
            }
        }
        let Some(target) = self.plan(prefix, in_dim) else {
            return Ok(None);
        };
        let dtype = match self.stored.get(&name) {
            Some(&d @ (DType::BF16 | DType::F16 | DType::F32)) => d,
            _ => DType::F32,
        };
        let w = vb.get_with_hints_dtype((out_dim, in_dim), "weight", Default::default(), dtype)?;
        let weight = self.convert(&w, target)?;
        drop(w);
        self.note(&name, &weight, in_dim * out_dim);
        Ok(Some(weight))
    }

    /// [`LinearWeight`] for an already loaded `[out, in]` weight named `prefix` (a tied
    /// `lm_head`), or `None` to keep it dense.
    pub(crate) fn convert_linear(&self, prefix: &str, w: &Tensor) -> Result<Option<LinearWeight>> {
        let (out_dim, in_dim) = w.dims2()?;
        let name = format!("{prefix}.weight");
        if let Some(store) = &self.gguf {
            if let Some(q) = store.quantized(&name)? {
                if q.shape().dims() == [out_dim, in_dim] {
                    let weight = self.on_device(q)?;
                    self.note(&name, &weight, in_dim * out_dim);
                    return Ok(Some(weight));
                }
            }
        }
        let Some(target) = self.plan(prefix, in_dim) else {
            return Ok(None);
        };
        let weight = self.convert(w, target)?;
        self.note(&name, &weight, in_dim * out_dim);
        Ok(Some(weight))
    }

    /// Stores `w` as `target`: dense half, or GGML blocks quantized on all cores.
    fn convert(&self, w: &Tensor, target: IsqType) -> Result<LinearWeight> {
        Ok(match target {
            IsqType::F16 => LinearWeight::Half(w.to_dtype(DType::F16)?),
            IsqType::BF16 => LinearWeight::Half(w.to_dtype(DType::BF16)?),
            t => self.on_device(quantize(w, t.ggml())?)?,
        })
    }

    /// A quantized weight on the model's device (its blocks are made or read on the CPU).
    /// On the CPU, see [`LinearWeight::from_blocks`].
    fn on_device(&self, q: QTensor) -> Result<LinearWeight> {
        if self.device.is_cpu() {
            return LinearWeight::from_blocks(q);
        }
        let storage = QStorage::from_data(q.data()?, &self.device, q.dtype())?;
        Ok(LinearWeight::Quantized(Arc::new(QTensor::new(storage, q.shape().clone())?)))
    }

    fn note(&self, name: &str, weight: &LinearWeight, elems: usize) {
        let (ty, bytes) = match weight {
            LinearWeight::Dense(t) => (None, t.elem_count() * t.dtype().size_in_bytes()),
            LinearWeight::Half(t) => (
                Some(if t.dtype() == DType::F16 { IsqType::F16 } else { IsqType::BF16 }),
                t.elem_count() * t.dtype().size_in_bytes(),
            ),
            LinearWeight::Quantized(q) | LinearWeight::WidenedQ8(q) => {
                (IsqType::from_ggml(q.dtype()), q.storage_size_in_bytes())
            }
            LinearWeight::Panels(p) => (IsqType::from_ggml(p.format().ggml()), p.size_in_bytes()),
        };
        let mut s = self.lock();
        s.tensors += 1;
        s.bytes += bytes as u64;
        s.source_bytes += 4 * elems as u64;
        *s.by_type.entry(ty.map_or("F32", |t| t.name())).or_default() += 1;
        s.progress.inc(1);
        if let Some(recorded) = &mut s.recorded {
            recorded.push((name.to_string(), weight.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_names() {
        use TensorRole::*;
        for (name, role) in [
            ("model.layers.0.self_attn.qkv_proj", LmLinear),
            ("model.layers.31.mlp.down_proj", LmLinear),
            ("model.layers.3.mlp.gate_up_proj.base_layer", LmLinear),
            ("model.layers.3.mlp.gate_up_proj.lora_A.vision", LoraAdapter),
            ("lm_head", LmHead),
            ("model.vision_embed_tokens.img_projection.0", EncoderLinear),
            ("model.embed_tokens_extend.audio_embed.encoder.encoders.0.self_attn.linear_q", EncoderLinear),
            ("model.embed_tokens", Other),
        ] {
            assert_eq!(TensorRole::of(name), role, "{name}");
        }
    }
}
