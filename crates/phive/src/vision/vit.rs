//! What the CLIP (Phi-3.5-vision) and SigLIP (Phi-4-multimodal) towers share: patch unfolding
//! for the patch-embedding convolution, and the pre-norm encoder layer with Hugging Face's
//! tensor names (`layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc{1,2}`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::nn::activation::Activation;
use crate::nn::attention::{attention, AttnMask};
use crate::nn::linear::Linear;
use crate::nn::norm::LayerNorm;
use crate::Result;

/// Non-overlapping `patch × patch` patches of square pixels `[n, ch, S, S]` as rows ordered
/// (channel, y, x), the convolution weight's order: `[n, (S/patch)², ch·patch²]`, so the
/// patch embedding is one matmul.
pub(crate) fn unfold_patches(pixel_values: &Tensor, patch: usize) -> Result<Tensor> {
    let (n, ch, side, _) = pixel_values.dims4()?;
    let g = side / patch;
    Ok(pixel_values
        .reshape((n, ch, g, patch, g, patch))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((n, g * g, ch * patch * patch))?)
}

/// One bidirectional encoder layer: `x += out_proj(MHA(LN1(x)))`, `x += fc2(act(fc1(LN2(x))))`.
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    pub(super) layer_norm1: LayerNorm,
    pub(super) q_proj: Linear,
    pub(super) k_proj: Linear,
    pub(super) v_proj: Linear,
    pub(super) out_proj: Linear,
    pub(super) layer_norm2: LayerNorm,
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
}

/// Layers `encoder.layers.{0..count}` under `vb`, of width `hidden` and MLP width `intermediate`.
pub(crate) fn load_encoder_layers(
    vb: &VarBuilder,
    count: usize,
    hidden: usize,
    intermediate: usize,
    eps: f64,
) -> Result<Vec<EncoderLayer>> {
    let (c, i) = (hidden, intermediate);
    (0..count)
        .map(|j| {
            let vl = vb.pp(format!("encoder.layers.{j}"));
            let va = vl.pp("self_attn");
            Ok(EncoderLayer {
                layer_norm1: LayerNorm::load(&vl.pp("layer_norm1"), c, eps)?,
                q_proj: Linear::load(&va.pp("q_proj"), c, c, true)?,
                k_proj: Linear::load(&va.pp("k_proj"), c, c, true)?,
                v_proj: Linear::load(&va.pp("v_proj"), c, c, true)?,
                out_proj: Linear::load(&va.pp("out_proj"), c, c, true)?,
                layer_norm2: LayerNorm::load(&vl.pp("layer_norm2"), c, eps)?,
                fc1: Linear::load(&vl.pp("mlp.fc1"), c, i, true)?,
                fc2: Linear::load(&vl.pp("mlp.fc2"), i, c, true)?,
            })
        })
        .collect()
}

impl EncoderLayer {
    /// The layer over `x` `[n, t, hidden]` with `heads` attention heads. `keys`, when given,
    /// are the only positions attended to (SigLIP drops padded patches as keys; they still
    /// act as queries).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        heads: usize,
        act: &Activation,
        keys: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, t, c) = x.dims3()?;
        let hd = c / heads;
        let h = self.layer_norm1.forward(x)?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((n, t, heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.q_proj.forward(&h)?)?;
        let mut k = split(self.k_proj.forward(&h)?)?;
        let mut v = split(self.v_proj.forward(&h)?)?;
        if let Some(idx) = keys {
            k = k.index_select(idx, 2)?;
            v = v.index_select(idx, 2)?;
        }
        let o = attention(&q, &k, &v, (hd as f64).powf(-0.5), AttnMask::None)?;
        let o = o.transpose(1, 2)?.reshape((n, t, c))?;
        let x = (x + self.out_proj.forward(&o)?)?;
        let h = self.layer_norm2.forward(&x)?;
        let h = self.fc2.forward(&act.forward(&self.fc1.forward(&h)?)?)?;
        Ok((x + h)?)
    }
}
