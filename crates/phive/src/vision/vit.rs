//! What the CLIP (Phi-3.5-vision) and SigLIP (Phi-4-multimodal) towers share: patch unfolding
//! for the patch-embedding convolution, and the pre-norm encoder layer with Hugging Face's
//! tensor names (`layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc{1,2}`).

use std::marker::PhantomData;

use candle_core::Tensor;
use serde::Deserialize;

use crate::nn::activation::Activation;
use crate::nn::encoder_attention::encoder_attention;
use crate::nn::linear::{mlp_forward, Linear, LoadVb};
use crate::nn::norm::LayerNorm;
use crate::{Error, Result};

/// The geometry of a ViT tower, with the keys Hugging Face's CLIP and SigLIP vision configs share.
/// Keys a checkpoint leaves out come from `T`, the tower the model was trained with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, bound = "T: TowerDefaults")]
pub struct VitConfig<T> {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Which tower's defaults apply (a marker; public so `..Default::default()` works).
    #[serde(skip)]
    pub tower: PhantomData<T>,
}

/// A named tower whose geometry fills the keys a checkpoint's `vision_config` omits.
pub trait TowerDefaults: Sized {
    fn defaults() -> VitConfig<Self>;
}

impl<T: TowerDefaults> Default for VitConfig<T> {
    fn default() -> Self {
        T::defaults()
    }
}

impl<T> VitConfig<T> {
    /// A 3-channel tower's geometry, in `CLIPVisionConfig`'s key order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        hidden_size: usize,
        intermediate_size: usize,
        num_attention_heads: usize,
        num_hidden_layers: usize,
        image_size: usize,
        patch_size: usize,
        hidden_act: &str,
        layer_norm_eps: f64,
    ) -> Self {
        Self {
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_hidden_layers,
            image_size,
            patch_size,
            num_channels: 3,
            hidden_act: hidden_act.into(),
            layer_norm_eps,
            tower: PhantomData,
        }
    }

    /// Patches along one side of the image (24 for CLIP 336/14, 32 for SigLIP 448/14).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Patch tokens per image, a CLS token not counted.
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }

    /// Rejects geometries the tower cannot be built with, naming the key.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::checkpoint("config.json", format!("vision_config: {m}")));
        if self.patch_size == 0 || self.image_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Activation::from_name(&self.hidden_act).map(|_| ()).or_else(err)
    }
}

/// Resolves a Hugging Face `hidden_states` index for a tower with `num_layers` encoder layers
/// (the list has `num_layers + 1` entries, the embeddings first) to the number of encoder layers
/// that must run: 0 = embeddings output, `num_layers` = last layer's output.
pub fn hidden_state_index(layer_idx: isize, num_layers: usize) -> Result<usize> {
    let n = num_layers as isize + 1;
    let idx = if layer_idx < 0 { n + layer_idx } else { layer_idx };
    if idx < 0 || idx >= n {
        return Err(Error::checkpoint(
            "config.json",
            format!(
                "img_processor.layer_idx {layer_idx} is out of range for a {num_layers}-layer vision tower"
            ),
        ));
    }
    Ok(idx as usize)
}

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
    vb: &LoadVb,
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
        let c = x.dim(2)?;
        // Each temporary is dropped as soon as it is used, so a batch of crops holds few
        // activation-sized tensors at once.
        let o = {
            let h = self.layer_norm1.forward(x)?;
            let q = self.q_proj.forward(&h)?;
            let mut k = self.k_proj.forward(&h)?;
            let mut v = self.v_proj.forward(&h)?;
            drop(h);
            if let Some(idx) = keys {
                k = k.index_select(idx, 1)?;
                v = v.index_select(idx, 1)?;
            }
            encoder_attention(&q, &k, &v, heads, ((c / heads) as f64).powf(-0.5))?
        };
        let x = (x + self.out_proj.forward(&o)?)?;
        drop(o);
        let h = mlp_forward(&self.layer_norm2.forward(&x)?, &self.fc1, act, &self.fc2)?;
        Ok((x + h)?)
    }
}
