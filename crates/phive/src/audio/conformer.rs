//! The Phi-4-multimodal conformer audio encoder (Hub remote-code `ConformerEncoder`, transformers
//! native `Phi4MultimodalAudioModel`), CPU f32.
//!
//! Data flow for one utterance of `T` mel frames:
//! 1. global mean / inverse-std normalisation of the features;
//! 2. NeMo `dw_striding` subsampling: conv 3×3 stride 2 (1 → C) + act, then
//!    `log2(time_reduction) - 1` × (depthwise 3×3 stride 2, pointwise 1×1, act) on the
//!    `[C, T, 80]` "image" (time AND frequency shrink), flatten `[T', C·F']`, linear → D;
//! 3. sequences longer than 500 frames are zero-padded to a multiple of 500 and split into
//!    independent chunks (no attention or convolution across chunks, and the padding frames are
//!    *not* masked: both references do exactly this);
//! 4. T5-style relative position bias (`bias_values[clamp(j - i) + max_distance]`, per head);
//! 5. conformer blocks: `x += ½·FFN(x)`, `x += MHA(LN(x))`, `x += ConvModule(x)`,
//!    `x += ½·FFN(x)`, `x = LN(x)`.
//!
//! The references add the boolean attention mask to the logits as 1.0/0.0 (a constant shift that
//! softmax ignores when, as for a single utterance, every position is valid); it is omitted.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::config::{GluActivation, Phi4AudioConfig};
use crate::nn::activation::Activation;
use crate::nn::linear::{Linear, LoadVb};
use crate::nn::norm::LayerNorm;
use crate::{Error, Result};

/// Frames per attention chunk: longer sequences are unfolded into chunks of this many
/// subsampled frames (hard-coded as `max_seq_len = 500` in both references).
pub const MAX_SEQ_LEN: usize = 500;
/// Subsampled frames computed per block by the front end, to bound its memory on long inputs.
const SUBSAMPLE_BLOCK: usize = 64;
const LN_EPS: f64 = 1e-5;

/// Loads a `[out, in, 1]` (conv1d) or `[out, in, 1, 1]` (conv2d) kernel-1 convolution as a
/// [`Linear`].
fn load_pointwise(vb: &VarBuilder, in_dim: usize, out_dim: usize, conv2d: bool) -> Result<Linear> {
    let w = if conv2d {
        vb.get((out_dim, in_dim, 1, 1), "weight")?
    } else {
        vb.get((out_dim, in_dim, 1), "weight")?
    };
    let b = vb.get(out_dim, "bias")?;
    Linear::from_weights(w.reshape((out_dim, in_dim))?, Some(b))
}

fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// A `[channels, rows, width]` activation plane covering global time rows `t0 .. t0 + rows`.
struct Plane {
    channels: usize,
    t0: usize,
    rows: usize,
    width: usize,
    data: Vec<f32>,
}

/// 3×3, stride 2, padding 1 convolution over (time, frequency); `depthwise` selects groups =
/// channels (input channel c feeds output channel c), otherwise the input has one channel.
/// Computes output rows `out_lo .. out_hi` of a full input of `in_total` rows.
fn conv3x3_s2(
    input: &Plane,
    in_total: usize,
    out_lo: usize,
    out_hi: usize,
    weight: &[f32],
    bias: &[f32],
    depthwise: bool,
) -> Plane {
    let out_c = bias.len();
    let wi = input.width;
    let wo = (wi - 1) / 2 + 1;
    let rows = out_hi - out_lo;
    let mut data = vec![0f32; out_c * rows * wo];
    data.par_chunks_mut(rows * wo).enumerate().for_each(|(c, out)| {
        let ic = if depthwise { c } else { 0 };
        let plane = &input.data[ic * input.rows * wi..(ic + 1) * input.rows * wi];
        let w = &weight[c * 9..c * 9 + 9];
        for r in 0..rows {
            let t = out_lo + r;
            for f in 0..wo {
                let mut acc = bias[c];
                for i in 0..3 {
                    let ti = (2 * t + i) as isize - 1;
                    if ti < 0 || ti as usize >= in_total {
                        continue;
                    }
                    let row = ti as usize - input.t0;
                    for j in 0..3 {
                        let fi = (2 * f + j) as isize - 1;
                        if fi < 0 || fi as usize >= wi {
                            continue;
                        }
                        acc += w[i * 3 + j] * plane[row * wi + fi as usize];
                    }
                }
                out[r * wo + f] = acc;
            }
        }
    });
    Plane { channels: out_c, t0: out_lo, rows, width: wo, data }
}

/// Input rows needed by a 3×3 stride-2 conv to produce output rows `lo .. hi`.
fn input_rows(lo: usize, hi: usize, in_total: usize) -> (usize, usize) {
    ((2 * lo).saturating_sub(1), (2 * hi).min(in_total))
}

struct DwStage {
    dw_weight: Vec<f32>,
    dw_bias: Vec<f32>,
    pw: Linear,
}

/// NeMo `dw_striding` subsampling (`encoder.embed`).
struct NemoSubsampling {
    channels: usize,
    conv0_weight: Vec<f32>,
    conv0_bias: Vec<f32>,
    stages: Vec<DwStage>,
    act: Activation,
    out: Linear,
}

impl NemoSubsampling {
    fn load(vb: &LoadVb, cfg: &Phi4AudioConfig) -> Result<Self> {
        let c = cfg.nemo_conv_channels;
        let conv = vb.pp("conv");
        let conv0_weight = vec_f32(&conv.pp("0").get((c, 1, 3, 3), "weight")?)?;
        let conv0_bias = vec_f32(&conv.pp("0").get(c, "bias")?)?;
        let n_stages = cfg.time_reduction.trailing_zeros() as usize - 1;
        let mut stages = Vec::with_capacity(n_stages);
        for s in 0..n_stages {
            let dw = conv.pp((2 + 3 * s).to_string());
            let pw = conv.pp((3 + 3 * s).to_string());
            stages.push(DwStage {
                dw_weight: vec_f32(&dw.get((c, 1, 3, 3), "weight")?)?,
                dw_bias: vec_f32(&dw.get(c, "bias")?)?,
                pw: load_pointwise(&pw, c, c, true)?,
            });
        }
        let out = Linear::load(&vb.pp("out"), c * cfg.nemo_final_size(), cfg.hidden_size, true)?;
        Ok(Self { channels: c, conv0_weight, conv0_bias, stages, act: cfg.nemo_activation, out })
    }

    fn activate(&self, p: Plane) -> Result<Plane> {
        let data = match self.act {
            Activation::Relu => p.data.into_iter().map(|v| v.max(0.0)).collect(),
            act => {
                let t = Tensor::from_vec(p.data, p.channels * p.rows * p.width, &Device::Cpu)?;
                act.forward(&t)?.to_vec1::<f32>()?
            }
        };
        Ok(Plane { data, ..p })
    }

    /// `[T, F]` normalised features → `[ceil(T / 2^k), D]`.
    fn forward(&self, feats: &[f32], frames: usize, width: usize) -> Result<Tensor> {
        self.forward_blocks(feats, frames, width, SUBSAMPLE_BLOCK)
    }

    /// [`Self::forward`] computing `block` output frames at a time (each block reads the input
    /// rows its receptive field needs, so the result does not depend on `block`).
    fn forward_blocks(&self, feats: &[f32], frames: usize, width: usize, block: usize) -> Result<Tensor> {
        // Row counts after each stride-2 stage: totals[0] = T, totals[k] = ceil(totals[k-1] / 2).
        let n_convs = 1 + self.stages.len();
        let mut totals = vec![frames];
        for k in 0..n_convs {
            totals.push(totals[k].div_ceil(2));
        }
        let t_out = totals[n_convs];
        let mut outs = Vec::with_capacity(t_out.div_ceil(block));
        let mut lo = 0;
        while lo < t_out {
            let hi = (lo + block).min(t_out);
            // Rows needed at every level, from the output back to the features.
            let mut ranges = vec![(0, 0); n_convs + 1];
            ranges[n_convs] = (lo, hi);
            for k in (0..n_convs).rev() {
                let (l, h) = ranges[k + 1];
                ranges[k] = input_rows(l, h, totals[k]);
            }
            let (f_lo, f_hi) = ranges[0];
            let mut plane = Plane {
                channels: 1,
                t0: f_lo,
                rows: f_hi - f_lo,
                width,
                data: feats[f_lo * width..f_hi * width].to_vec(),
            };
            let (l1, h1) = ranges[1];
            plane = conv3x3_s2(&plane, totals[0], l1, h1, &self.conv0_weight, &self.conv0_bias, false);
            plane = self.activate(plane)?;
            for (s, stage) in self.stages.iter().enumerate() {
                let (l, h) = ranges[s + 2];
                let dw = conv3x3_s2(&plane, totals[s + 1], l, h, &stage.dw_weight, &stage.dw_bias, true);
                // pointwise 1×1: [C, rows·F] → W·x + b
                let (c, rows, w) = (dw.channels, dw.rows, dw.width);
                let x = Tensor::from_vec(dw.data, (c, rows * w), &self.out.device())?;
                let y = stage.pw.forward(&x.t()?)?.t()?.contiguous()?;
                plane = self.activate(Plane {
                    channels: c,
                    t0: dw.t0,
                    rows,
                    width: w,
                    data: y.flatten_all()?.to_vec1::<f32>()?,
                })?;
            }
            // [C, rows, F'] → [rows, C·F'] → linear
            let x =
                Tensor::from_vec(plane.data, (self.channels, plane.rows, plane.width), &self.out.device())?
                    .permute((1, 0, 2))?
                    .contiguous()?
                    .reshape((plane.rows, self.channels * plane.width))?;
            outs.push(self.out.forward(&x)?);
            lo = hi;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }
}

/// `LN → Linear(D → 2I) → a·act(g) → Linear(I → D)` (`feed_forward_{in,out}`).
struct FeedForward {
    norm: LayerNorm,
    up: Linear,
    down: Linear,
    act: Activation,
    inner: usize,
}

impl FeedForward {
    fn load(vb: &LoadVb, cfg: &Phi4AudioConfig) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            norm: LayerNorm::load(&vb.pp("layer_norm"), d, LN_EPS)?,
            up: Linear::load(&vb.pp("net.0.linear"), d, 2 * i, true)?,
            down: Linear::load(&vb.pp("net.2"), i, d, true)?,
            act: cfg.activation,
            inner: i,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.up.forward(&self.norm.forward(x)?)?;
        let a = h.narrow(D::Minus1, 0, self.inner)?;
        let g = h.narrow(D::Minus1, self.inner, self.inner)?;
        let h = (a * self.act.forward(&g.contiguous()?)?)?;
        self.down.forward(&h)
    }
}

/// Multi-head self-attention with biased projections and an additive per-head bias.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: &LoadVb, cfg: &Phi4AudioConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q: Linear::load(&vb.pp("linear_q"), d, d, true)?,
            k: Linear::load(&vb.pp("linear_k"), d, d, true)?,
            v: Linear::load(&vb.pp("linear_v"), d, d, true)?,
            o: Linear::load(&vb.pp("linear_out"), d, d, true)?,
            heads: cfg.num_heads,
            head_dim: d / cfg.num_heads,
        })
    }

    /// `x`: `[B, L, D]`; `bias`: `[1, H, L, L]`.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = p.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.o.forward(&o)
    }
}

/// Conformer convolution module: LN → GLU pointwise → depthwise conv (causal) → pointwise →
/// act → pointwise.
struct ConvModule {
    norm: LayerNorm,
    glu: Linear,
    b1: Option<Tensor>,
    b2: Option<Tensor>,
    glu_act: GluActivation,
    dw_taps: Vec<Tensor>,
    dw_bias: Tensor,
    pw: Linear,
    act: Activation,
    ext_pw: Linear,
    kernel: usize,
    causal: bool,
    dim: usize,
}

impl ConvModule {
    fn load(vb: &VarBuilder, cfg: &Phi4AudioConfig) -> Result<Self> {
        let (d, k) = (cfg.hidden_size, cfg.kernel_size);
        let glu_vb = vb.pp("glu");
        let (b1, b2) = if cfg.bias_in_glu {
            (Some(glu_vb.get((1, d, 1), "b1")?.reshape(d)?), Some(glu_vb.get((1, d, 1), "b2")?.reshape(d)?))
        } else {
            (None, None)
        };
        let dw_vb = vb.pp("dw_sep_conv_1d.dw_conv");
        let dw_w = dw_vb.get((d, 1, k), "weight")?.reshape((d, k))?;
        let dw_taps = (0..k).map(|j| Ok(dw_w.narrow(1, j, 1)?.reshape(d)?)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: LayerNorm::load(&vb.pp("layer_norm"), d, LN_EPS)?,
            glu: load_pointwise(&glu_vb.pp("ext_pw_conv_1d"), d, 2 * d, false)?,
            b1,
            b2,
            glu_act: cfg.conv_glu_type,
            dw_taps,
            dw_bias: dw_vb.get(d, "bias")?,
            pw: load_pointwise(&vb.pp("dw_sep_conv_1d.pw_conv"), d, d, false)?,
            act: cfg.conv_activation,
            ext_pw: load_pointwise(&vb.pp("ext_pw_conv_1d"), d, d, false)?,
            kernel: k,
            causal: cfg.causal,
            dim: d,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let h = self.glu.forward(&self.norm.forward(x)?)?;
        let mut first = h.narrow(D::Minus1, 0, self.dim)?;
        let mut second = h.narrow(D::Minus1, self.dim, self.dim)?;
        if let (Some(b1), Some(b2)) = (&self.b1, &self.b2) {
            first = first.broadcast_add(b1)?;
            second = second.broadcast_add(b2)?;
        }
        let gate = match self.glu_act {
            GluActivation::Sigmoid => candle_nn::ops::sigmoid(&second)?,
            GluActivation::Act(a) => a.forward(&second.contiguous()?)?,
        };
        let h = (first * gate)?;
        // Depthwise conv over time; causal = k-1 zeros on the left (the references pad k-1 on
        // both sides and drop the last k-1 outputs, which is the same).
        let (left, right) =
            if self.causal { (self.kernel - 1, 0) } else { ((self.kernel - 1) / 2, (self.kernel - 1) / 2) };
        let mut parts = Vec::with_capacity(3);
        if left > 0 {
            parts.push(Tensor::zeros((b, left, d), h.dtype(), h.device())?);
        }
        parts.push(h);
        if right > 0 {
            parts.push(Tensor::zeros((b, right, d), DType::F32, x.device())?);
        }
        let padded = Tensor::cat(&parts, 1)?;
        let mut acc = self.dw_bias.reshape((1, 1, d))?.broadcast_as((b, l, d))?.contiguous()?;
        for (j, w) in self.dw_taps.iter().enumerate() {
            acc = (acc + padded.narrow(1, j, l)?.broadcast_mul(w)?)?;
        }
        let h = self.act.forward(&self.pw.forward(&acc)?)?;
        self.ext_pw.forward(&h)
    }
}

struct ConformerBlock {
    ff_in: FeedForward,
    attn: Attention,
    conv: ConvModule,
    ff_out: FeedForward,
    norm_att: LayerNorm,
    norm: LayerNorm,
}

impl ConformerBlock {
    fn load(vb: &LoadVb, cfg: &Phi4AudioConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            ff_in: FeedForward::load(&vb.pp("feed_forward_in"), cfg)?,
            attn: Attention::load(&vb.pp("self_attn"), cfg)?,
            conv: ConvModule::load(&vb.pp("conv"), cfg)?,
            ff_out: FeedForward::load(&vb.pp("feed_forward_out"), cfg)?,
            norm_att: LayerNorm::load(&vb.pp("layer_norm_att"), d, LN_EPS)?,
            norm: LayerNorm::load(&vb.pp("layer_norm"), d, LN_EPS)?,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = (x + (self.ff_in.forward(x)? * 0.5)?)?;
        let x = (&x + self.attn.forward(&self.norm_att.forward(&x)?, bias)?)?;
        let x = (&x + self.conv.forward(&x)?)?;
        let x = (&x + (self.ff_out.forward(&x)? * 0.5)?)?;
        self.norm.forward(&x)
    }
}

/// The conformer encoder (`…audio_embed.encoder`): `[T, 80]` log-mel → `[ceil(T/8), D]`.
pub struct ConformerEncoder {
    cfg: Phi4AudioConfig,
    global_mean: Vec<f32>,
    global_invstd: Vec<f32>,
    embed: NemoSubsampling,
    bias_table: Tensor,
    blocks: Vec<ConformerBlock>,
}

impl ConformerEncoder {
    /// Loads the encoder from `vb` rooted at `…audio_embed.encoder` (weights converted to f32).
    pub fn load(vb: &LoadVb, cfg: &Phi4AudioConfig) -> Result<Self> {
        cfg.validate()?;
        let norm = vb.pp("encoder_embedding");
        let blocks = (0..cfg.num_blocks)
            .map(|i| ConformerBlock::load(&vb.pp(format!("encoders.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            global_mean: vec_f32(&norm.get(cfg.input_size, "global_mean")?)?,
            global_invstd: vec_f32(&norm.get(cfg.input_size, "global_invstd")?)?,
            embed: NemoSubsampling::load(&vb.pp("embed"), cfg)?,
            bias_table: vb
                .pp("relative_attention_bias_layer.bias_values")
                .get((cfg.num_bias_buckets(), cfg.num_heads), "weight")?
                .to_dtype(DType::F32)?,
            blocks,
            cfg: cfg.clone(),
        })
    }

    /// The configuration the encoder was loaded with.
    pub fn config(&self) -> &Phi4AudioConfig {
        &self.cfg
    }

    /// Output frames for `frames` input frames: `ceil(frames / time_reduction)`.
    pub fn output_len(&self, frames: usize) -> usize {
        frames.div_ceil(self.cfg.time_reduction)
    }

    /// `[1, H, L, L]` T5 relative position bias for a sequence (or chunk) of `l` frames.
    fn relative_bias(&self, l: usize) -> Result<Tensor> {
        let max_d = self.cfg.bias_max_distance as i64;
        let half = (self.cfg.num_bias_buckets() / 2) as i64;
        let mut idx = Vec::with_capacity(l * l);
        for i in 0..l as i64 {
            for j in 0..l as i64 {
                let rel = (j - i).clamp(-max_d, max_d - 1);
                let b = if self.cfg.bias_symmetric { rel.abs() } else { rel + half };
                idx.push(b as u32);
            }
        }
        let idx = Tensor::from_vec(idx, l * l, self.bias_table.device())?;
        let h = self.cfg.num_heads;
        Ok(self
            .bias_table
            .index_select(&idx, 0)?
            .reshape((l, l, h))?
            .permute((2, 0, 1))?
            .contiguous()?
            .unsqueeze(0)?)
    }

    /// Encodes `[T, input_size]` log-mel features of one utterance into `[ceil(T/8), D]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let (frames, width) = features.dims2().map_err(|_| {
            Error::Media(format!(
                "audio features must be a [frames, {}] matrix, got shape {:?}",
                self.cfg.input_size,
                features.dims()
            ))
        })?;
        if width != self.cfg.input_size {
            return Err(Error::Media(format!(
                "audio features have {width} mel bins, the encoder expects {}",
                self.cfg.input_size
            )));
        }
        if frames == 0 {
            return Err(Error::Media("audio features have no frames".into()));
        }
        let mut feats =
            features.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        if feats.iter().any(|v| !v.is_finite()) {
            return Err(Error::Media("audio features contain NaN or infinity".into()));
        }
        for row in feats.chunks_exact_mut(width) {
            for ((v, m), s) in row.iter_mut().zip(&self.global_mean).zip(&self.global_invstd) {
                *v = (*v - m) * s;
            }
        }
        let x = self.embed.forward(&feats, frames, width)?; // [T', D]
        let seq_len = x.dim(0)?;
        let d = self.cfg.hidden_size;
        let chunk = if seq_len > MAX_SEQ_LEN { MAX_SEQ_LEN } else { seq_len };
        let n_chunks = seq_len.div_ceil(chunk);
        let pad = n_chunks * chunk - seq_len;
        let x = if pad > 0 {
            Tensor::cat(&[x.clone(), Tensor::zeros((pad, d), DType::F32, x.device())?], 0)?
        } else {
            x
        };
        let bias = self.relative_bias(chunk)?;
        // Chunks are independent through the whole stack (they are batch entries in the
        // references), so they run one at a time to bound memory.
        let mut outs = Vec::with_capacity(n_chunks);
        for c in 0..n_chunks {
            let mut h = x.narrow(0, c * chunk, chunk)?.unsqueeze(0)?;
            for block in &self.blocks {
                h = block.forward(&h, &bias)?;
            }
            outs.push(h.squeeze(0)?);
        }
        let out = Tensor::cat(&outs, 0)?;
        Ok(out.narrow(0, 0, seq_len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_abs_diff, random_vb};

    fn small_cfg() -> Phi4AudioConfig {
        Phi4AudioConfig {
            hidden_size: 16,
            num_heads: 2,
            intermediate_size: 24,
            num_blocks: 1,
            nemo_conv_channels: 8,
            bias_max_distance: 20,
            lm_hidden_size: 16,
            ..Default::default()
        }
    }

    /// Block-wise subsampling equals one-shot subsampling, whatever the block size and length.
    #[test]
    fn subsampling_blocks_are_exact() {
        let cfg = small_cfg();
        let sub = NemoSubsampling::load(&random_vb(0.2).pp("embed"), &cfg).unwrap();
        for frames in [1usize, 7, 8, 9, 100, 203] {
            let feats: Vec<f32> = (0..frames * 80).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let whole = sub.forward_blocks(&feats, frames, 80, usize::MAX).unwrap();
            assert_eq!(whole.dims2().unwrap(), (frames.div_ceil(8), 16));
            for block in [1, 2, 5] {
                let b = sub.forward_blocks(&feats, frames, 80, block).unwrap();
                // Only gemm blocking (summation order) may differ.
                assert!(max_abs_diff(&whole, &b) < 1e-5, "frames {frames} block {block}");
            }
        }
    }

    /// The T5 bias is clamped at ±max_distance and indexed from the middle of the table.
    #[test]
    fn relative_bias_indexing() {
        let cfg = small_cfg();
        let enc = ConformerEncoder::load(&random_vb(0.2).pp("encoder"), &cfg).unwrap();
        let l = 30;
        let bias = enc.relative_bias(l).unwrap().squeeze(0).unwrap();
        let table = enc.bias_table.to_vec2::<f32>().unwrap();
        let b = bias.to_vec3::<f32>().unwrap();
        for (h, plane) in b.iter().enumerate() {
            for (i, row) in plane.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let rel = (j as i64 - i as i64).clamp(-20, 19);
                    assert_eq!(v, table[(rel + 20) as usize][h]);
                }
            }
        }
    }

    /// Encoder cost at the released width (1024, 24 blocks, 1024 conv channels) with random
    /// weights: `cargo test --release -p phive audio::conformer -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_real_width() {
        let cfg = Phi4AudioConfig::default();
        let start = std::time::Instant::now();
        let enc = ConformerEncoder::load(&random_vb(0.02).pp("encoder"), &cfg).unwrap();
        eprintln!("load {:.2} s", start.elapsed().as_secs_f64());
        for secs in [10usize, 60] {
            let frames = secs * 100;
            let feats = Tensor::ones((frames, 80), DType::F32, &Device::Cpu).unwrap();
            let start = std::time::Instant::now();
            let out = enc.forward(&feats).unwrap();
            eprintln!("{secs} s of audio: {:?} in {:.2} s", out.dims(), start.elapsed().as_secs_f64());
        }
    }
}
