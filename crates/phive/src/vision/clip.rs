//! The CLIP vision tower, as Hugging Face's `CLIPVisionModel`, used by Phi-3.5-vision.
//!
//! Embeddings: a bias-free patch convolution (stride = patch size, computed here as one matmul
//! over unfolded patches), `[CLS; patches]` plus learned position embeddings, then
//! `pre_layrnorm`. Encoder layers: `x += out_proj(MHA(LN1(x)))`, `x += fc2(act(fc1(LN2(x))))`,
//! no mask. Features are selected the HF way: `hidden_states[0]` is the embeddings output and
//! `hidden_states[k]` is the output of encoder layer `k`; a negative index counts from the end,
//! so the default `-2` is the output of the penultimate layer (not the last one, as mistral.rs
//! does). Only the layers up to the selected one are loaded and run.

use candle_core::Tensor;

use crate::nn::activation::Activation;
use crate::nn::linear::{Linear, LoadVb};
use crate::nn::norm::LayerNorm;
use crate::vision::vit::{
    hidden_state_index, load_encoder_layers, unfold_patches, EncoderLayer, TowerDefaults, VitConfig,
};
use crate::Result;

/// CLIP vision geometry, with Hugging Face's `CLIPVisionConfig` keys.
pub type ClipVisionConfig = VitConfig<ClipL336>;

/// CLIP ViT-L/14-336, the tower the Phi-3.5-vision checkpoints were trained with: it fills the
/// keys a checkpoint leaves out (the Hub config has no `vision_config` at all).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipL336;

impl TowerDefaults for ClipL336 {
    fn defaults() -> ClipVisionConfig {
        VitConfig::new(1024, 4096, 16, 24, 336, 14, "quick_gelu", 1e-5)
    }
}

/// A CLIP vision tower truncated at the selected hidden state.
#[derive(Debug, Clone)]
pub struct ClipVisionTower {
    cfg: ClipVisionConfig,
    act: Activation,
    class_embedding: Tensor,
    patch_embedding: Linear,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

impl ClipVisionTower {
    /// Loads the tower from `vb` rooted at `vision_model` (names `embeddings.*`,
    /// `pre_layrnorm.*`, `encoder.layers.{j}.*`). `layer_idx` is the HF `hidden_states` index
    /// the caller will read; later layers and `post_layernorm` are not loaded.
    pub fn new(cfg: &ClipVisionConfig, vb: &LoadVb, layer_idx: isize) -> Result<Self> {
        cfg.validate()?;
        let act =
            Activation::from_name(&cfg.hidden_act).map_err(|m| crate::Error::checkpoint("config.json", m))?;
        let run = hidden_state_index(layer_idx, cfg.num_hidden_layers)?;
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let ve = vb.pp("embeddings");
        let class_embedding = ve.get(c, "class_embedding")?;
        let conv = ve.pp("patch_embedding").get((c, cfg.num_channels, p, p), "weight")?;
        let patch_embedding = Linear::from_weights(conv.reshape((c, cfg.num_channels * p * p))?, None)?;
        let position_embedding = ve.pp("position_embedding").get((cfg.num_patches() + 1, c), "weight")?;
        let pre_layrnorm = LayerNorm::load(&vb.pp("pre_layrnorm"), c, cfg.layer_norm_eps)?;
        let layers = load_encoder_layers(vb, run, c, cfg.intermediate_size, cfg.layer_norm_eps)?;
        Ok(Self {
            cfg: cfg.clone(),
            act,
            class_embedding,
            patch_embedding,
            position_embedding,
            pre_layrnorm,
            layers,
        })
    }

    /// The tower geometry.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// Number of encoder layers that run (the selected hidden-state index).
    pub fn num_layers_run(&self) -> usize {
        self.layers.len()
    }

    /// `hidden_states[0]`: patch + class + position embeddings after `pre_layrnorm`,
    /// `[n, 1 + patches, hidden]` for pixels `[n, channels, image_size, image_size]`.
    pub fn embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (n, ch, hgt, wid) = pixel_values.dims4()?;
        let (s, p, c) = (self.cfg.image_size, self.cfg.patch_size, self.cfg.hidden_size);
        if ch != self.cfg.num_channels || hgt != s || wid != s {
            return Err(crate::Error::InvalidRequest(format!(
                "CLIP expects pixel values [n, {}, {s}, {s}], got {:?}",
                self.cfg.num_channels,
                pixel_values.shape()
            )));
        }
        let patch_embeds = self.patch_embedding.forward(&unfold_patches(pixel_values, p)?)?;
        let cls = self.class_embedding.reshape((1, 1, c))?.broadcast_as((n, 1, c))?;
        let x = Tensor::cat(&[&cls, &patch_embeds], 1)?.broadcast_add(&self.position_embedding)?;
        self.pre_layrnorm.forward(&x)
    }

    /// `hidden_states[k]` for the `k` this tower was built for, `[n, 1 + patches, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut x = self.embeddings(pixel_values)?;
        for layer in &self.layers {
            x = layer.forward(&x, self.cfg.num_attention_heads, &self.act, None)?;
        }
        Ok(x)
    }

    /// Selected features without the CLS token (`type_feature = "patch"`), `[n, patches, hidden]`.
    pub fn patch_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = self.forward(pixel_values)?;
        let t = x.dim(1)?;
        Ok(x.narrow(1, 1, t - 1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_abs_diff, random_tensor, random_vb};

    fn tiny(layers: usize) -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 16,
            intermediate_size: 24,
            num_attention_heads: 2,
            num_hidden_layers: layers,
            image_size: 28,
            patch_size: 7,
            ..Default::default()
        }
    }

    #[test]
    fn hidden_state_indexing_is_hf() {
        // hidden_states = [embeddings, l1, ..., l24]: -2 is the output of layer 23.
        assert_eq!(hidden_state_index(-2, 24).unwrap(), 23);
        assert_eq!(hidden_state_index(-1, 24).unwrap(), 24);
        assert_eq!(hidden_state_index(0, 24).unwrap(), 0);
        assert_eq!(hidden_state_index(-25, 24).unwrap(), 0);
        assert!(hidden_state_index(25, 24).is_err());
        assert!(hidden_state_index(-26, 24).is_err());
    }

    #[test]
    fn penultimate_layer_is_selected() {
        let vb = random_vb(0.3);
        let pixels = random_tensor("pixels", &(2, 3, 28, 28).into(), 1.0).unwrap();
        let t = ClipVisionTower::new(&tiny(3), &vb, -2).unwrap();
        assert_eq!(t.num_layers_run(), 2);
        let sel = t.forward(&pixels).unwrap();
        assert_eq!(sel.dims(), &[2, 17, 16]);
        // The same weights as a 2-layer tower read at its last layer: identical.
        let two = ClipVisionTower::new(&tiny(2), &vb, -1).unwrap();
        assert!(max_abs_diff(&sel, &two.forward(&pixels).unwrap()) == 0.0);
        // ... and different from the last layer of the 3-layer tower (mistral.rs' choice).
        let last = ClipVisionTower::new(&tiny(3), &vb, -1).unwrap();
        assert!(max_abs_diff(&sel, &last.forward(&pixels).unwrap()) > 1e-3);
        // Index 0 is the embeddings output (after pre_layrnorm).
        let emb = ClipVisionTower::new(&tiny(3), &vb, 0).unwrap();
        assert!(max_abs_diff(&emb.forward(&pixels).unwrap(), &t.embeddings(&pixels).unwrap()) == 0.0);
        assert_eq!(t.patch_features(&pixels).unwrap().dims(), &[2, 16, 16]);
    }

    #[test]
    fn patch_embedding_equals_conv() {
        let vb = random_vb(0.3);
        let cfg = tiny(1);
        let t = ClipVisionTower::new(&cfg, &vb, 0).unwrap();
        let pixels = random_tensor("pixels", &(1, 3, 28, 28).into(), 1.0).unwrap();
        let w = vb.pp("embeddings.patch_embedding").get((16, 3, 7, 7), "weight").unwrap();
        let conv = pixels.conv2d(&w, 0, 7, 1, 1).unwrap().flatten_from(2).unwrap().transpose(1, 2).unwrap();
        let patches = pixels
            .reshape((1, 3, 4, 7, 4, 7))
            .unwrap()
            .permute((0, 2, 4, 1, 3, 5))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((1, 16, 147))
            .unwrap();
        let ours = t.patch_embedding.forward(&patches).unwrap();
        assert!(max_abs_diff(&ours, &conv) < 1e-4);
    }
}
