//! Normalisation layers: RMSNorm (Phi decoders) and LayerNorm (CLIP, SigLIP).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::Result;

/// `x / sqrt(mean(x²) + eps) · w`, as Hugging Face's `Phi3RMSNorm` (statistics in f32).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `weight` (`[dim]`) under `vb`.
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, eps: eps as f32 })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?)
    }
}

/// `(x - mean) / sqrt(var + eps) · w + b` over the last dimension.
///
/// candle's fused CPU layer norm computes the variance as `E[x²] - mean²` in f32, which loses
/// digits when activations have a large mean (CLIP's residual stream does); this one uses two
/// passes with f64 accumulators so it tracks PyTorch's Welford-based kernel.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (`[dim]`) under `vb`.
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            return Ok(x.apply_op3_no_bwd(&self.weight, &self.bias, &TwoPassLayerNorm { eps: self.eps })?);
        }
        // Other devices: the same math from tensor ops.
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

struct TwoPassLayerNorm {
    eps: f64,
}

impl CustomOp3 for TwoPassLayerNorm {
    fn name(&self) -> &'static str {
        "phive-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) = (s1, s2, s3) else {
            candle_core::bail!("phive layer norm: f32 only");
        };
        let x = contiguous(x, l1)?;
        let w = contiguous(w, l2)?;
        let b = contiguous(b, l3)?;
        let dim = *l1.dims().last().unwrap_or(&1);
        if w.len() != dim || b.len() != dim {
            candle_core::bail!("phive layer norm: weight has {} elements, input last dim is {dim}", w.len());
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(o, row)| {
            let n = row.len() as f64;
            let mean = lane_sum(row, |v| v) / n;
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
                *o = (((v as f64 - mean) * inv) as f32) * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `Σ f(v)` over a row in f64, in eight interleaved partial sums so the compiler can keep
/// them in vector lanes (one running sum is a chain of dependent scalar adds: 1.2% of
/// SigLIP's time).
fn lane_sum(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v as f64);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    lanes.iter().sum::<f64>() + tail
}

fn contiguous<'a>(s: &'a [f32], l: &Layout) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(&s[a..z]),
        None => candle_core::bail!("phive layer norm: non-contiguous operand"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_is_exact_with_large_mean() {
        let vals: Vec<f32> = (0..64).map(|i| 1000.0 + (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_vec(vals.clone(), (1, 64), &Device::Cpu).unwrap();
        let w = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu).unwrap();
        let ln = LayerNorm { weight: w, bias: b, eps: 1e-5 };
        let y = ln.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / 64.0;
        let var = vals.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 64.0;
        for (v, y) in vals.iter().zip(&y) {
            let want = (*v as f64 - mean) / (var + 1e-5).sqrt();
            assert!((want - *y as f64).abs() < 1e-3, "{want} vs {y}");
        }
    }
}
