//! The projection layer every model goes through.
//!
//! All weight matmuls of the networks happen in [`Linear::forward`], so that quantized weights
//! (ISQ) and per-request LoRA adapters (Phi-4-multimodal) live in this one place without
//! touching the model code.
//!
//! ISQ: model constructors read their weights from a [`LoadVb`], a `VarBuilder` that carries
//! the load's [`LoadContext`] down to [`Linear::load`]. The context decides from the layer's
//! full tensor name whether it is quantized; the weight is then read, quantized and stored as
//! [`LinearWeight::Quantized`] (or [`LinearWeight::Half`]) before the next tensor is read. The
//! context is passed explicitly, not installed per thread, so a load's settings are visible in
//! every signature that depends on them.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::elementwise::Map;
use crate::kernels::{
    quantized_matmul, simd_level, small_block_matmul, BlockFormat, PanelMatrix, QuantizedMatrix, SmallBlock,
};
use crate::nn::activation::Activation;
use crate::quant::{with_cpu_rows, LoadContext};
use crate::Result;

/// How the weight of a [`Linear`] is stored.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A dense f32 `[out, in]` weight, as stored in the checkpoint.
    Dense(Tensor),
    /// A dense f16 or bf16 `[out, in]` weight (ISQ `F16`/`BF16`), multiplied in f32: half the
    /// memory and, for decode, about half the bandwidth of f32 (candle's own bf16 matmul would
    /// widen the whole weight on every call).
    Half(Tensor),
    /// GGML blocks (ISQ `Q4K`, `Q8_0`, ...) of an `[out, in]` weight, multiplied with f32
    /// activations by phive's kernels (Q4K, Q6K, Q8_0 of whole 256-wide rows; Q4_0, Q4_1,
    /// Q5_0, Q5_1 of any width on AVX2) or candle's (the other types).
    Quantized(Arc<QTensor>),
    /// Q8_0 blocks in CPU memory, widened to f32 where they are multiplied (Phi-4's LoRA
    /// adapters under ISQ): the activations keep full precision, so a row's result does not
    /// depend on the rows beside it. candle's Q8_0 matmul, which rounds the activations to
    /// 8 bits, is faster for a large prefill chunk through a large weight; adapters are small.
    WidenedQ8(Arc<QTensor>),
    /// Q4_K, Q6_K, Q8_0 or Q4_0–Q5_1 blocks of whole 256-wide rows permuted into panels of 16
    /// rows at load (where the CPU has the panel kernels): the bytes of
    /// [`LinearWeight::Quantized`], multiplied faster at every row count.
    Panels(Arc<PanelMatrix>),
}

impl LinearWeight {
    /// GGML blocks in CPU memory, as the kernels multiply them fastest: permuted into panels
    /// where the CPU has the panel kernels and the format has one, else as they are.
    pub fn from_blocks(q: QTensor) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let panels = match BlockFormat::for_weight(q.dtype(), cols) {
            Some(format) => PanelMatrix::pack(QuantizedMatrix { data: &q.data()?, format, rows, cols }),
            None => None,
        };
        Ok(match panels {
            Some(p) => LinearWeight::Panels(Arc::new(p)),
            None => LinearWeight::Quantized(Arc::new(q)),
        })
    }

    /// Bytes the weight occupies.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            LinearWeight::Dense(t) | LinearWeight::Half(t) => t.elem_count() * t.dtype().size_in_bytes(),
            LinearWeight::Quantized(q) | LinearWeight::WidenedQ8(q) => q.storage_size_in_bytes(),
            LinearWeight::Panels(p) => p.size_in_bytes(),
        }
    }

    /// The weight as GGML blocks: itself, or its panels put back in GGML's layout.
    pub fn to_qtensor(&self) -> Result<Option<Arc<QTensor>>> {
        Ok(match self {
            LinearWeight::Dense(_) | LinearWeight::Half(_) => None,
            LinearWeight::Quantized(q) | LinearWeight::WidenedQ8(q) => Some(q.clone()),
            LinearWeight::Panels(p) => {
                let data = Cow::Owned(p.to_ggml());
                let storage = QStorage::from_data(data, &Device::Cpu, p.format().ggml())?;
                Some(Arc::new(QTensor::new(storage, (p.rows(), p.cols()))?))
            }
        })
    }

    /// Whether [`LinearWeight::rows_f32`] can read this weight: GGML blocks in CPU memory.
    pub fn has_cpu_blocks(&self) -> bool {
        match self {
            LinearWeight::Panels(_) => true,
            LinearWeight::Quantized(q) => q.device().is_cpu(),
            LinearWeight::Dense(_) | LinearWeight::Half(_) | LinearWeight::WidenedQ8(_) => false,
        }
    }

    /// Rows `ids` of a weight held as CPU blocks, dequantized to f32 `[ids.len(), in]`: a tied
    /// embedding table read from its quantized `lm_head`, as GGML's `get_rows` does. Errors
    /// for other weights and rows out of range.
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Tensor> {
        let (rows, cols, dtype) = match self {
            LinearWeight::Panels(p) => (p.rows(), p.cols(), p.format().ggml()),
            LinearWeight::Quantized(q) if q.device().is_cpu() => {
                let (rows, cols) = q.shape().dims2()?;
                (rows, cols, q.dtype())
            }
            _ => return Err(candle_core::Error::Msg("rows_f32 reads CPU blocks only".into()).into()),
        };
        // GGML's layout as it is (empty for panels, which put each row back together).
        let ggml = match self {
            LinearWeight::Quantized(q) => q.data()?,
            _ => Cow::Borrowed(&[][..]),
        };
        let row_bytes = ggml.len() / rows;
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &id in ids {
            let id = id as usize;
            if id >= rows {
                return Err(candle_core::Error::Msg(format!("row {id} of a {rows}-row weight")).into());
            }
            let row = match self {
                LinearWeight::Panels(p) => Cow::Owned(p.row_ggml(id)),
                _ => Cow::Borrowed(&ggml[id * row_bytes..(id + 1) * row_bytes]),
            };
            let blocks = qtensor_from_ggml(dtype, &row, vec![1, cols], &Device::Cpu)?;
            out.extend(blocks.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
    }

    /// The weight as a dense f32 `[out, in]` tensor (dequantized if needed), for diagnostics.
    pub fn to_f32(&self) -> Result<Tensor> {
        Ok(match self {
            LinearWeight::Dense(t) | LinearWeight::Half(t) => t.to_dtype(DType::F32)?,
            blocks => blocks.to_qtensor()?.expect("quantized").dequantize(&Device::Cpu)?,
        })
    }
}

/// What a group of linear layers holds: parameters and the bytes of their stored weights.
///
/// A decode step reads every weight of the language model once, whatever the batch size, so
/// `bytes` is the memory traffic per step that bounds decode speed; `params` gives the
/// arithmetic per token (about `2 * params` FLOPs), which bounds prefill speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightFootprint {
    /// Weight elements (`in * out` per layer; biases are left out).
    pub params: u64,
    /// Bytes of the weights as stored (quantized, half or f32).
    pub bytes: u64,
}

impl WeightFootprint {
    /// Adds `linear`'s weight.
    pub fn add(&mut self, linear: &Linear) {
        self.params += (linear.in_dim() * linear.out_dim()) as u64;
        self.bytes += linear.weight().size_in_bytes() as u64;
    }
}

/// The weights a model constructor reads: a `VarBuilder` plus the load's [`LoadContext`], which
/// [`Linear::load`] consults. It derefs to the `VarBuilder`, so norms, embeddings and
/// convolutions read from it as usual; only [`LoadVb::pp`] is its own, to keep the context.
#[derive(Clone)]
pub struct LoadVb<'a> {
    vb: VarBuilder<'a>,
    ctx: Option<&'a LoadContext>,
}

impl<'a> LoadVb<'a> {
    /// `vb` read under `ctx` (ISQ, pre-quantized GGUF tensors, the load report).
    pub fn new(vb: VarBuilder<'a>, ctx: &'a LoadContext) -> Self {
        Self { vb, ctx: Some(ctx) }
    }

    /// `vb` without a context: every linear is read dense, in the `VarBuilder`'s dtype (tests
    /// and tools building a model from plain weights).
    pub fn plain(vb: VarBuilder<'a>) -> Self {
        Self { vb, ctx: None }
    }

    /// The weights under the sub-module `name`, with the same context.
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self { vb: self.vb.pp(name), ctx: self.ctx }
    }

    /// The dtype the tensor `name` (under this prefix) is stored in, where the load knows it.
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.ctx?.stored_dtype(&format!("{}.{name}", self.vb.prefix()))
    }

    /// Tensor `name` in the checkpoint's half precision where it is stored so and this model
    /// computes in f32 (its values then widen to f32 exactly: the same numbers in half the
    /// memory), else in the model's dtype.
    pub fn get_compact<S: Into<candle_core::Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        Ok(match self.stored_dtype(name) {
            Some(stored @ (DType::BF16 | DType::F16)) if self.vb.dtype() == DType::F32 => {
                self.vb.get_with_hints_dtype(shape, name, Default::default(), stored)?
            }
            _ => self.vb.get(shape, name)?,
        })
    }

    /// The same weights, read in the language model's precision (the context's decoder dtype;
    /// unchanged without a context).
    pub fn for_decoder(&self) -> Self {
        let dtype = self.ctx.map_or(self.vb.dtype(), LoadContext::decoder_dtype);
        Self { vb: self.vb.clone().set_dtype(dtype), ctx: self.ctx }
    }
}

impl<'a> Deref for LoadVb<'a> {
    type Target = VarBuilder<'a>;

    fn deref(&self) -> &VarBuilder<'a> {
        &self.vb
    }
}

/// `y = x Wᵀ + b` over the last dimension of `x`, any number of leading dimensions.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    /// A layer over `weight` `[out, in]` for a model computing in `compute`: kept as
    /// [`LinearWeight::Half`] (multiplied in f32) where it came in another dtype from
    /// [`LoadVb::get_compact`], dense otherwise.
    pub fn from_stored(weight: Tensor, bias: Option<Tensor>, compute: DType) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let weight =
            if weight.dtype() == compute { LinearWeight::Dense(weight) } else { LinearWeight::Half(weight) };
        Self::from_parts(weight, bias, in_dim, out_dim)
    }

    /// Wraps an existing `[out, in]` weight and optional `[out]` bias.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Self::from_parts(LinearWeight::Dense(weight), bias, in_dim, out_dim)
    }

    /// Loads `weight` (`[out, in]`) and, when `bias` is true, `bias` (`[out]`) under `vb`.
    /// A missing tensor or a wrong shape is an error naming the tensor.
    ///
    /// Under a [`LoadContext`] (an ISQ load), the weight may instead come back quantized or as
    /// half precision, as the context decides from `vb.prefix()`; the bias stays f32.
    pub fn load(vb: &LoadVb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        if let Some(ctx) = vb.ctx {
            if let Some(weight) = ctx.linear_weight(vb, &vb.prefix(), in_dim, out_dim)? {
                let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
                return Self::from_parts(weight, bias, in_dim, out_dim);
            }
        }
        // Under an in-situ quantizing load, a layer left unquantized (the encoders', without
        // --isq-encoders) keeps the checkpoint's half precision and multiplies in f32.
        let weight = vb.get_compact((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Self::from_stored(weight, bias, vb.dtype())
    }

    /// Like [`Linear::from_weights`] for a weight that is not loaded through `Linear::load` but
    /// plays the role of the layer at `vb` (e.g. `lm_head` tied to the embeddings): under an ISQ
    /// load it is quantized as that layer's weight would be (and taken pre-quantized from a GGUF).
    /// `weight` may be kept in half precision for an f32 model ([`LoadVb::get_compact`]): it is
    /// quantized from that, or multiplied in f32 ([`Linear::from_stored`]).
    pub fn from_weights_at(vb: &LoadVb, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if let Some(ctx) = vb.ctx {
            if let Some(w) = ctx.convert_linear(&vb.prefix(), &weight)? {
                let (out_dim, in_dim) = weight.dims2()?;
                return Self::from_parts(w, bias, in_dim, out_dim);
            }
        }
        Self::from_stored(weight, bias, vb.dtype())
    }

    /// Wraps an already converted weight (quantized, half or dense) of `[out_dim, in_dim]`.
    pub fn from_parts(
        weight: LinearWeight,
        bias: Option<Tensor>,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let dims: Vec<usize> = match &weight {
            LinearWeight::Dense(t) | LinearWeight::Half(t) => t.dims().to_vec(),
            LinearWeight::Quantized(q) | LinearWeight::WidenedQ8(q) => q.shape().dims().to_vec(),
            LinearWeight::Panels(p) => vec![p.rows(), p.cols()],
        };
        if dims != [out_dim, in_dim] {
            return Err(candle_core::Error::Msg(format!(
                "linear weight has shape {dims:?}, expected [{out_dim}, {in_dim}]"
            ))
            .into());
        }
        if let Some(b) = &bias {
            let n = b.dims1()?;
            if n != out_dim {
                return Err(candle_core::Error::Msg(format!(
                    "linear bias has {n} elements but the weight has {out_dim} rows"
                ))
                .into());
            }
        }
        Ok(Self { weight, bias, in_dim, out_dim })
    }

    /// The same layer, its Q8_0 blocks (if it has them, in CPU memory) widened to f32 where
    /// multiplied: [`LinearWeight::WidenedQ8`].
    pub fn with_widened_q8(self) -> Self {
        match self.weight {
            LinearWeight::Quantized(q) if q.dtype() == GgmlDType::Q8_0 && q.device().is_cpu() => {
                Self { weight: LinearWeight::WidenedQ8(q), ..self }
            }
            _ => self,
        }
    }

    /// Where the weight lives.
    pub fn device(&self) -> Device {
        match &self.weight {
            LinearWeight::Dense(t) | LinearWeight::Half(t) => t.device().clone(),
            LinearWeight::Quantized(q) => q.device(),
            LinearWeight::WidenedQ8(_) | LinearWeight::Panels(_) => Device::Cpu,
        }
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The stored weight.
    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// Applies the layer to `x` [..., in] and returns [..., out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mapped(x, None)
    }

    /// `act(self.forward(x))`: for half weights on the CPU the activation runs inside the
    /// product, on each finished tile (no second pass over an output of tens of MB).
    pub fn forward_then(&self, x: &Tensor, act: &Activation) -> Result<Tensor> {
        match act.vectorised() {
            Some(map) if matches!(self.weight, LinearWeight::Half(_)) && x.device().is_cpu() => {
                self.forward_mapped(x, Some(map))
            }
            _ => act.forward(&self.forward(x)?),
        }
    }

    /// The layer, then `map`, which only the half path's product applies: callers pass one
    /// for half weights only.
    fn forward_mapped(&self, x: &Tensor, map: Option<Map>) -> Result<Tensor> {
        debug_assert!(map.is_none() || matches!(self.weight, LinearWeight::Half(_)));
        let (x2, lead) = self.as_rows(x)?;
        let lead = &lead[..];
        // Dense weights multiply in their own dtype, half and quantized ones in f32; the output
        // has the input's dtype either way (no-op conversions when they agree).
        let y = match &self.weight {
            LinearWeight::Dense(w) => x2.to_dtype(w.dtype())?.matmul(&w.t()?)?,
            // The half path adds the bias itself, in place.
            LinearWeight::Half(w) => {
                return Ok(crate::quant::matmul_half(&x2.to_dtype(DType::F32)?, w, self.bias.as_ref(), map)?
                    .to_dtype(x.dtype())?
                    .reshape(out_dims(lead, self.out_dim))?);
            }
            LinearWeight::Quantized(q) => quantized_forward(&x2.to_dtype(DType::F32)?.contiguous()?, q)?,
            LinearWeight::WidenedQ8(q) => {
                crate::quant::matmul_q8_0(&x2.to_dtype(DType::F32)?, &q.data()?, self.out_dim, self.in_dim)?
            }
            LinearWeight::Panels(p) => panel_forward(&x2.to_dtype(DType::F32)?.contiguous()?, p)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        Ok(y.to_dtype(x.dtype())?.reshape(out_dims(lead, self.out_dim))?)
    }

    /// `x` [..., in] as `[rows, in]` (the leading dims flattened: one 2-D product, no broadcast
    /// copies), and the leading dims.
    fn as_rows(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let dims = x.dims();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(candle_core::Error::Msg("linear input must have rank >= 1".into()).into());
        };
        if last != self.in_dim {
            return Err(candle_core::Error::Msg(format!(
                "linear expects {} input features, got shape {:?}",
                self.in_dim, dims
            ))
            .into());
        }
        let rows: usize = lead.iter().product();
        Ok((x.contiguous()?.reshape((rows, last))?, lead.to_vec()))
    }
}

/// A transformer MLP, `fc2(act(fc1(x)))`. With half weights on the CPU and many rows (a vision
/// tower's), each block of rows goes through both products and the activation in one pass:
/// the hidden activations are never written out as a tensor.
pub fn mlp_forward(x: &Tensor, fc1: &Linear, act: &Activation, fc2: &Linear) -> Result<Tensor> {
    if let (LinearWeight::Half(w1), LinearWeight::Half(w2), Some(map)) =
        (&fc1.weight, &fc2.weight, act.vectorised())
    {
        let (x2, lead) = fc1.as_rows(x)?;
        let first = (w1, fc1.bias.as_ref());
        let second = (w2, fc2.bias.as_ref());
        if let Some(y) = crate::quant::mlp_half(&x2.to_dtype(DType::F32)?, first, map, second)? {
            return Ok(y.to_dtype(x.dtype())?.reshape(out_dims(&lead, fc2.out_dim))?);
        }
    }
    fc2.forward(&fc1.forward_then(x, act)?)
}

/// The output shape of a linear layer: the input's leading dimensions, then `out`.
fn out_dims(lead: &[usize], out: usize) -> Vec<usize> {
    let mut dims = lead.to_vec();
    dims.push(out);
    dims
}

/// `x` `[rows, in]` (f32, contiguous) times a quantized weight: phive's own kernels for the
/// formats they cover (no repacked copy, no slow first call; Q4_0 to Q5_1 on any width of
/// whole blocks), candle's for the others and on a GPU (asked before the blocks are read: a
/// GPU weight's `data` copies it to the host).
fn quantized_forward(x: &Tensor, q: &QTensor) -> Result<Tensor> {
    let (out_dim, cols) = q.shape().dims2()?;
    if !(q.device().is_cpu() && x.device().is_cpu()) {
        return Ok(x.apply_op1_no_bwd(q)?);
    }
    let y = if let Some(format) = BlockFormat::for_weight(q.dtype(), cols) {
        let data = q.data()?;
        with_cpu_rows(x, |xs| {
            quantized_matmul(xs, QuantizedMatrix { data: &data, format, rows: out_dim, cols })
        })?
    } else if let Some(format) = SmallBlock::for_weight(q.dtype(), cols) {
        let data = q.data()?;
        with_cpu_rows(x, |xs| small_block_matmul(simd_level(), xs, &data, format, out_dim, cols))?
    } else {
        return Ok(x.apply_op1_no_bwd(q)?);
    };
    let y = y.ok_or_else(|| candle_core::Error::Msg("activations checked to be on the CPU".into()))?;
    Ok(Tensor::from_vec(y, (x.dim(0)?, out_dim), x.device())?)
}

/// `x` `[rows, in]` (f32, contiguous, on the CPU like every panel weight) times `p`.
fn panel_forward(x: &Tensor, p: &PanelMatrix) -> Result<Tensor> {
    let y = with_cpu_rows(x, |xs| p.matmul(xs))?
        .ok_or_else(|| candle_core::Error::Msg("a panel weight multiplies CPU activations only".into()))?;
    Ok(Tensor::from_vec(y, (x.dim(0)?, p.rows()), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::max_abs_diff;
    use crate::quant::{quantize, IsqType};
    use candle_core::Device;

    /// Quantized and half weights multiply like their dequantized f32 values, for decode-sized
    /// and prefill-sized inputs (candle switches kernels on the row count).
    #[test]
    fn stored_weights_multiply_like_their_f32_values() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 512), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 96, &dev).unwrap();
        for ty in [
            IsqType::Q4K,
            IsqType::Q6K,
            IsqType::Q8_0,
            IsqType::Q4_0,
            IsqType::Q4_1,
            IsqType::Q5_0,
            IsqType::Q5_1,
            IsqType::Q5K,
            IsqType::BF16,
            IsqType::F16,
        ] {
            let weight = match ty {
                IsqType::BF16 => LinearWeight::Half(w.to_dtype(DType::BF16).unwrap()),
                IsqType::F16 => LinearWeight::Half(w.to_dtype(DType::F16).unwrap()),
                t => LinearWeight::Quantized(Arc::new(quantize(&w, t.ggml()).unwrap())),
            };
            let mut weights = vec![(ty.to_string(), weight)];
            // Q4K, Q6K and Q8_0 in panels, where this CPU has the panel kernels.
            if !matches!(ty, IsqType::BF16 | IsqType::F16) {
                let blocks = LinearWeight::from_blocks(quantize(&w, ty.ggml()).unwrap()).unwrap();
                if matches!(blocks, LinearWeight::Panels(_)) {
                    weights.push((format!("{ty} panels"), blocks));
                }
            }
            if ty == IsqType::Q8_0 {
                let q = Arc::new(quantize(&w, ty.ggml()).unwrap());
                weights.push(("Q8_0 widened".to_string(), LinearWeight::WidenedQ8(q)));
            }
            for (ty, weight) in weights {
                let dense = weight.to_f32().unwrap();
                if weight.has_cpu_blocks() {
                    // Rows read one by one (a tied embedding) are the rows of the whole.
                    let ids = [95u32, 0, 17, 16, 95];
                    let got = weight.rows_f32(&ids).unwrap();
                    let want = dense.index_select(&Tensor::new(&ids[..], &dev).unwrap(), 0).unwrap();
                    assert_eq!(max_abs_diff(&got, &want), 0.0, "{ty} rows");
                    assert!(weight.rows_f32(&[96]).is_err());
                }
                let lin = Linear::from_parts(weight, Some(b.clone()), 512, 96).unwrap();
                for m in [1, 4, 17, 64] {
                    let x = Tensor::randn(0f32, 1.0, (1, m, 512), &dev).unwrap();
                    let want = x.broadcast_matmul(&dense.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
                    let got = lin.forward(&x).unwrap();
                    let err = (got - &want)
                        .unwrap()
                        .sqr()
                        .unwrap()
                        .mean_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        .sqrt();
                    let scale = want.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
                    // Only the activations' rounding (to Q8_0/Q8_K blocks) separates the two.
                    assert!(err / scale < 0.02, "{ty} m={m}: relative error {}", err / scale);
                }
            }
        }
    }

    /// phive's kernels take whole blocks of 256 inputs; a Q8_0 weight whose rows hold an odd
    /// number of 32-weight blocks stays in GGML's layout and goes through candle's kernel.
    #[test]
    fn q8_0_rows_narrower_than_whole_256_blocks_still_multiply() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (40, 288), &dev).unwrap();
        let weight = LinearWeight::from_blocks(quantize(&w, IsqType::Q8_0.ggml()).unwrap()).unwrap();
        assert!(matches!(weight, LinearWeight::Quantized(_)));
        let dense = weight.to_f32().unwrap();
        let lin = Linear::from_parts(weight, None, 288, 40).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 288), &dev).unwrap();
        let want = x.matmul(&dense.t().unwrap()).unwrap();
        let err = max_abs_diff(&lin.forward(&x).unwrap(), &want);
        assert!(err < 0.02, "max error {err}");
    }

    /// The output has the input's dtype whatever the weight's: a bf16 model through a quantized
    /// layer, f32 encoder features through a bf16 layer.
    #[test]
    fn output_has_the_input_dtype() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (32, 256), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 32, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 256), &dev).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let dense_bf16 =
            Linear::from_weights(w.to_dtype(DType::BF16).unwrap(), Some(b.to_dtype(DType::BF16).unwrap()))
                .unwrap();
        let quantized = Linear::from_parts(
            LinearWeight::Quantized(Arc::new(quantize(&w, IsqType::Q8_0.ggml()).unwrap())),
            Some(b),
            256,
            32,
        )
        .unwrap();
        for (name, lin) in [("bf16 weight", &dense_bf16), ("Q8_0 weight", &quantized)] {
            for dtype in [DType::F32, DType::BF16] {
                let got = lin.forward(&x.to_dtype(dtype).unwrap()).unwrap();
                assert_eq!(got.dtype(), dtype, "{name}");
                let err =
                    (got.to_dtype(DType::F32).unwrap() - &want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(err.to_scalar::<f32>().unwrap() < 0.1, "{name} with {dtype:?} input: {err}");
            }
        }
    }
}
