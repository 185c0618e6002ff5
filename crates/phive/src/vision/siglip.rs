//! The SigLIP vision tower of Phi-4-multimodal (SigLIP-so400m-patch14-448 with NaViT-style
//! position ids), as transformers' `Phi4MultimodalVisionModel` computes it.
//!
//! * Embeddings: a patch convolution with bias (computed as one matmul over unfolded patches)
//!   plus learned position embeddings, no CLS token and no pre-norm. For a crop whose patch
//!   mask has `nb_h` valid rows and `nb_w` valid columns, the 32×32 position grid is stretched
//!   over the valid area: row `i` gets bucket `bucketize(i / nb_h, [1/32, 2/32, ..])`
//!   (`right=True`, f32 arithmetic as in PyTorch), likewise for columns; padded patches keep
//!   position id 0.
//! * Encoder layers: `x += out_proj(MHA(LN1(x)))`, `x += fc2(gelu_tanh(fc1(LN2(x))))`,
//!   bidirectional, with padded patches masked as keys only (they still act as queries).
//! * Features: Hugging Face `hidden_states[layer_idx]` (index 0 = embeddings, `k` = output of
//!   encoder layer `k`; Phi-4 uses `-2`), **without** `post_layernorm` (mistral.rs takes the last
//!   layer and applies the post-norm, which is not what the checkpoint was trained with). Only the
//!   layers up to the selected one are loaded and run; `post_layernorm` and the pooling `head`
//!   are never loaded.

use candle_core::Tensor;

use crate::nn::activation::Activation;
use crate::nn::linear::{Linear, LoadVb};
use crate::vision::vit::{
    hidden_state_index, load_encoder_layers, unfold_patches, EncoderLayer, TowerDefaults, VitConfig,
};
use crate::{Error, Result};

/// SigLIP vision geometry, with Hugging Face's `SiglipVisionConfig` keys.
pub type SiglipVisionConfig = VitConfig<SiglipSo400m448>;

/// SigLIP-so400m-patch14-448, the tower inside Phi-4-multimodal: it fills the keys a checkpoint
/// leaves out (the Hub config does not spell the tower out; phive reads an optional top-level
/// `vision_config` for other geometries).
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipSo400m448;

impl TowerDefaults for SiglipSo400m448 {
    fn defaults() -> SiglipVisionConfig {
        VitConfig::new(1152, 4304, 16, 27, 448, 14, "gelu_pytorch_tanh", 1e-6)
    }
}

/// NaViT position ids of one crop from its `g×g` patch mask (row-major, nonzero = valid),
/// reproducing `Phi4MultimodalVisionEmbeddings.forward` in f32: fractional coordinates
/// `i · (1/nb)` clamped to `1 - 1e-6`, bucketised with `right=True` against
/// `arange(1/g, 1, 1/g)`. Padded patches get id 0. `None` when the mask has no valid patch.
pub fn navit_position_ids(mask: &[u8], g: usize) -> Option<Vec<u32>> {
    assert_eq!(mask.len(), g * g, "mask must be g*g");
    let nb_h = (0..g).filter(|&r| mask[r * g] != 0).count();
    let nb_w = (0..g).filter(|&c| mask[c] != 0).count();
    if nb_h == 0 || nb_w == 0 {
        return None;
    }
    // torch.arange(1/g, 1.0, 1/g) in float32: length ceil((end - start) / step) and values
    // start + i·step, both computed in double.
    let step = 1.0 / g as f64;
    let len = ((1.0 - step) / step).ceil().max(0.0) as usize;
    let boundaries: Vec<f32> = (0..len).map(|i| (step + i as f64 * step) as f32).collect();
    let clamp = (1.0 - 1e-6f64) as f32;
    let buckets = |nb: usize| -> Vec<u32> {
        let s = 1.0f32 / nb as f32;
        (0..g)
            .map(|i| {
                let x = (i as f32 * s).min(clamp);
                // bucketize(right=True): number of boundaries <= x.
                boundaries.iter().take_while(|&&b| b <= x).count() as u32
            })
            .collect()
    };
    let (bh, bw) = (buckets(nb_h), buckets(nb_w));
    Some((0..g * g).map(|p| if mask[p] != 0 { bh[p / g] * g as u32 + bw[p % g] } else { 0 }).collect())
}

/// A SigLIP vision tower truncated at the selected hidden state.
#[derive(Debug, Clone)]
pub struct SiglipVisionTower {
    cfg: SiglipVisionConfig,
    act: Activation,
    patch_embedding: Linear,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
}

impl SiglipVisionTower {
    /// Loads the tower from `vb` rooted at the vision model (names `embeddings.*`,
    /// `encoder.layers.{j}.*`; in the Phi-4-multimodal checkpoint that is
    /// `model.embed_tokens_extend.image_embed.img_processor`). `layer_idx` is the HF
    /// `hidden_states` index the features are read from.
    pub fn new(cfg: &SiglipVisionConfig, vb: &LoadVb, layer_idx: isize) -> Result<Self> {
        cfg.validate()?;
        let act = Activation::from_name(&cfg.hidden_act).map_err(|m| Error::checkpoint("config.json", m))?;
        let run = hidden_state_index(layer_idx, cfg.num_hidden_layers)?;
        let (c, p, ch) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let ve = vb.pp("embeddings");
        let vp = ve.pp("patch_embedding");
        let conv = vp.get((c, ch, p, p), "weight")?;
        let patch_embedding = Linear::from_weights(conv.reshape((c, ch * p * p))?, Some(vp.get(c, "bias")?))?;
        let position_embedding = ve.pp("position_embedding").get((cfg.num_patches(), c), "weight")?;
        let layers = load_encoder_layers(vb, run, c, cfg.intermediate_size, cfg.layer_norm_eps)?;
        Ok(Self { cfg: cfg.clone(), act, patch_embedding, position_embedding, layers })
    }

    /// The tower geometry.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// Number of encoder layers that run (the selected hidden-state index).
    pub fn num_layers_run(&self) -> usize {
        self.layers.len()
    }

    fn check_inputs(&self, pixel_values: &Tensor, patch_mask: &Tensor) -> Result<(usize, Vec<u8>)> {
        let (n, ch, h, w) = pixel_values.dims4()?;
        let (s, g) = (self.cfg.image_size, self.cfg.patches_per_side());
        if ch != self.cfg.num_channels || h != s || w != s {
            return Err(Error::InvalidRequest(format!(
                "SigLIP expects pixel values [n, {}, {s}, {s}], got {:?}",
                self.cfg.num_channels,
                pixel_values.shape()
            )));
        }
        if patch_mask.dims() != [n, g, g] {
            return Err(Error::InvalidRequest(format!(
                "SigLIP expects a patch mask [{n}, {g}, {g}], got {:?}",
                patch_mask.shape()
            )));
        }
        let mask: Vec<u8> = patch_mask.to_dtype(candle_core::DType::U8)?.flatten_all()?.to_vec1()?;
        Ok((n, mask))
    }

    /// `hidden_states[0]`: patch + position embeddings, `[n, g², hidden]` for pixels
    /// `[n, channels, S, S]` and a patch mask `[n, g, g]` (any dtype, nonzero = valid).
    pub fn embeddings(&self, pixel_values: &Tensor, patch_mask: &Tensor) -> Result<Tensor> {
        let (n, mask) = self.check_inputs(pixel_values, patch_mask)?;
        self.embed(pixel_values, n, &mask)
    }

    fn embed(&self, pixel_values: &Tensor, n: usize, mask: &[u8]) -> Result<Tensor> {
        let (p, g) = (self.cfg.patch_size, self.cfg.patches_per_side());
        let patch_embeds = self.patch_embedding.forward(&unfold_patches(pixel_values, p)?)?;
        let mut ids = Vec::with_capacity(n * g * g);
        for (k, m) in mask.chunks_exact(g * g).enumerate() {
            let crop_ids = navit_position_ids(m, g).ok_or_else(|| {
                Error::InvalidRequest(format!("crop {k} of the image has an all-zero patch mask"))
            })?;
            ids.extend(crop_ids);
        }
        let ids = Tensor::from_vec(ids, n * g * g, pixel_values.device())?;
        let pos = self.position_embedding.index_select(&ids, 0)?.reshape((n, g * g, self.cfg.hidden_size))?;
        Ok((patch_embeds + pos)?)
    }

    /// `hidden_states[layer_idx]` for the index this tower was built for, `[n, g², hidden]`.
    /// Crops that share a patch mask run through the layers together, so each layer's weights
    /// are widened and laid out once for all of them, not once per crop.
    pub fn forward(&self, pixel_values: &Tensor, patch_mask: &Tensor) -> Result<Tensor> {
        let (n, mask) = self.check_inputs(pixel_values, patch_mask)?;
        let x = self.embed(pixel_values, n, &mask)?;
        let gg = self.cfg.num_patches();
        let crops: Vec<&[u8]> = mask.chunks_exact(gg).collect();
        let mut outs: Vec<Option<Tensor>> = vec![None; n];
        for (first, m) in crops.iter().enumerate() {
            if outs[first].is_some() {
                continue;
            }
            let group: Vec<u32> = (first..n).filter(|&j| crops[j] == *m).map(|j| j as u32).collect();
            // Masked keys get weight exactly 0 in the reference's softmax: dropping them is
            // the same computation.
            let keys = if m.iter().all(|&v| v != 0) {
                None
            } else {
                let idx: Vec<u32> = (0..gg as u32).filter(|&i| m[i as usize] != 0).collect();
                let len = idx.len();
                Some(Tensor::from_vec(idx, len, x.device())?)
            };
            let ids = Tensor::from_vec(group.clone(), group.len(), x.device())?;
            let mut h = x.index_select(&ids, 0)?;
            for layer in &self.layers {
                h = layer.forward(&h, self.cfg.num_attention_heads, &self.act, keys.as_ref())?;
            }
            for (at, &j) in group.iter().enumerate() {
                outs[j as usize] = Some(h.narrow(0, at, 1)?);
            }
        }
        let outs: Vec<Tensor> = outs.into_iter().flatten().collect();
        Ok(Tensor::cat(&outs, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_abs_diff, random_tensor, random_vb};
    use candle_core::{DType, Device};

    fn tiny(layers: usize) -> SiglipVisionConfig {
        SiglipVisionConfig {
            hidden_size: 16,
            intermediate_size: 24,
            num_attention_heads: 2,
            num_hidden_layers: layers,
            image_size: 56,
            patch_size: 7,
            ..Default::default()
        }
    }

    #[test]
    fn navit_ids_full_and_stretched() {
        let g = 32;
        let full = navit_position_ids(&vec![1u8; g * g], g).unwrap();
        assert!(full.iter().enumerate().all(|(i, &p)| p as usize == i));
        // 24 valid rows, 28 valid columns (the pattern of a crop with bottom/right padding).
        let mut m = vec![0u8; g * g];
        for r in 0..24 {
            for c in 0..28 {
                m[r * g + c] = 1;
            }
        }
        let ids = navit_position_ids(&m, g).unwrap();
        // torch: bucketize(clamp(arange(32) * (1/24), max=1-1e-6), arange(1/32, 1, 1/32), right=True)
        let rows: Vec<u32> = (0..24).map(|r| ids[r * g] / 32).collect();
        let want_rows: Vec<u32> =
            (0..24).map(|i| ((i as f32 * (1.0f32 / 24.0)) * 32.0).floor() as u32).collect();
        assert_eq!(rows, want_rows);
        assert_eq!(ids[23 * g + 27], 30 * 32 + 30);
        assert_eq!(ids[24 * g], 0);
        assert_eq!(ids[28], 0);
        assert!(navit_position_ids(&[0u8; 4], 2).is_none());
    }

    #[test]
    fn layer_selection_and_key_mask() {
        let vb = random_vb(0.3);
        let pixels = random_tensor("pixels", &(2, 3, 56, 56).into(), 1.0).unwrap();
        let ones = Tensor::ones((2, 8, 8), DType::U8, &Device::Cpu).unwrap();
        let t = SiglipVisionTower::new(&tiny(3), &vb, -2).unwrap();
        assert_eq!(t.num_layers_run(), 2);
        let sel = t.forward(&pixels, &ones).unwrap();
        assert_eq!(sel.dims(), &[2, 64, 16]);
        let two = SiglipVisionTower::new(&tiny(2), &vb, -1).unwrap();
        assert_eq!(max_abs_diff(&sel, &two.forward(&pixels, &ones).unwrap()), 0.0);
        let emb = SiglipVisionTower::new(&tiny(3), &vb, 0).unwrap();
        assert_eq!(
            max_abs_diff(&emb.forward(&pixels, &ones).unwrap(), &t.embeddings(&pixels, &ones).unwrap()),
            0.0
        );
        // A padded crop: masked keys change the valid outputs; crop 0 is unaffected by crop 1.
        let mut m = vec![1u8; 128];
        for r in 0..8 {
            for c in 6..8 {
                m[64 + r * 8 + c] = 0;
            }
        }
        let mask = Tensor::from_vec(m, (2, 8, 8), &Device::Cpu).unwrap();
        let masked = t.forward(&pixels, &mask).unwrap();
        assert_eq!(max_abs_diff(&masked.get(0).unwrap(), &sel.get(0).unwrap()), 0.0);
        assert!(max_abs_diff(&masked.get(1).unwrap(), &sel.get(1).unwrap()) > 1e-3);
        // Equal to an explicit additive -inf key mask over all 64 keys.
        let x = t.embeddings(&pixels.narrow(0, 1, 1).unwrap(), &mask.narrow(0, 1, 1).unwrap()).unwrap();
        let mut h = x;
        for l in &t.layers {
            h = naive_layer(&t, l, &h, &mask.get(1).unwrap());
        }
        assert!(max_abs_diff(&h, &masked.narrow(0, 1, 1).unwrap()) < 1e-5);
    }

    /// Crops that share a mask run together and come back in their own order, each as it
    /// would run alone.
    #[test]
    fn crops_grouped_by_mask_keep_their_order() {
        let vb = random_vb(0.3);
        let t = SiglipVisionTower::new(&tiny(2), &vb, -1).unwrap();
        let pixels = random_tensor("pixels", &(3, 3, 56, 56).into(), 1.0).unwrap();
        let mut m = vec![1u8; 3 * 64];
        for crop in [0, 2] {
            for r in 5..8 {
                for c in 0..8 {
                    m[crop * 64 + r * 8 + c] = 0;
                }
            }
        }
        let mask = Tensor::from_vec(m, (3, 8, 8), &Device::Cpu).unwrap();
        let all = t.forward(&pixels, &mask).unwrap();
        for crop in 0..3 {
            let alone =
                t.forward(&pixels.narrow(0, crop, 1).unwrap(), &mask.narrow(0, crop, 1).unwrap()).unwrap();
            let diff = max_abs_diff(&all.narrow(0, crop, 1).unwrap(), &alone);
            assert!(diff < 1e-6, "crop {crop}: {diff}");
        }
    }

    fn naive_layer(t: &SiglipVisionTower, l: &EncoderLayer, x: &Tensor, mask: &Tensor) -> Tensor {
        let (n, s, c) = x.dims3().unwrap();
        let (nh, hd) = (2, c / 2);
        let h = l.layer_norm1.forward(x).unwrap();
        let split =
            |y: Tensor| y.reshape((n, s, nh, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = split(l.q_proj.forward(&h).unwrap());
        let k = split(l.k_proj.forward(&h).unwrap());
        let v = split(l.v_proj.forward(&h).unwrap());
        let add: Vec<f32> = mask
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
            .iter()
            .map(|&m| if m != 0 { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let add = Tensor::from_vec(add, (1, 1, 1, s), &Device::Cpu).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * (hd as f64).powf(-0.5)).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&add).unwrap()).unwrap();
        let o = p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((n, s, c)).unwrap();
        let x = (x + l.out_proj.forward(&o).unwrap()).unwrap();
        let h = l.layer_norm2.forward(&x).unwrap();
        let h = l.fc2.forward(&t.act.forward(&l.fc1.forward(&h).unwrap()).unwrap()).unwrap();
        (x + h).unwrap()
    }
}
