//! Phi-3.5-vision (`Phi3VForCausalLM`): the CLIP tower with the HD feature assembly and
//! projection of the Hub's `image_embedding_phi3_v.py`, feeding the Phi-3 decoder of
//! `modeling_phi3_v.py`.
//!
//! Image path, per image with an HD grid of `rows × cols` crops (global crop first):
//! CLIP `hidden_states[layer_idx]` without CLS → 2×2 patch merge (24×24×C → 12×12×4C) →
//! `sub_GN` appended after every row → `[sub grid ; glb_GN ; global]` → `img_projection`.
//! The projected rows overwrite the embeddings at the image placeholder positions.

use candle_core::Tensor;
use serde::Deserialize;

use crate::models::text_config::{config_error, Phi3TextConfig};
use crate::nn::activation::Activation;
use crate::nn::kv_cache::KvCache;
use crate::nn::linear::{Linear, LoadVb};
use crate::nn::phi3_decoder::Phi3Decoder;
use crate::vision::clip::{ClipVisionConfig, ClipVisionTower};
use crate::{Error, Result};

/// `embd_layer`: how image features are assembled and projected.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EmbdLayerConfig {
    /// `"sub_glb"` (Phi-3.5) or `"glb_sub"`.
    #[serde(default = "default_hd_order")]
    pub hd_transform_order: String,
    /// `"mlp"` (Linear, GELU, Linear; Phi-3.5) or `"linear"`.
    #[serde(default = "default_projection")]
    pub projection_cls: String,
    /// Must be true: only the HD path is implemented.
    #[serde(default)]
    pub use_hd_transform: bool,
    /// Must be true (HF requires it to equal `use_hd_transform`).
    #[serde(default)]
    pub with_learnable_separator: bool,
}

fn default_hd_order() -> String {
    "glb_sub".into()
}
fn default_projection() -> String {
    "linear".into()
}

/// `img_processor`: which tower and which of its hidden states feed the projection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImgProcessorConfig {
    /// Must be `"clip_vision_model"`.
    #[serde(default = "default_processor_name")]
    pub name: String,
    /// Width of the tower's features (must equal the tower's hidden size).
    pub image_dim_out: usize,
    /// Hugging Face `hidden_states` index (default −2: the penultimate layer's output).
    #[serde(default = "default_layer_idx")]
    pub layer_idx: isize,
    /// Must be `"patch"` (drop CLS).
    #[serde(default = "default_type_feature")]
    pub type_feature: String,
}

fn default_processor_name() -> String {
    "clip_vision_model".into()
}
fn default_layer_idx() -> isize {
    -2
}
fn default_type_feature() -> String {
    "patch".into()
}

/// The fields of Phi-3.5-vision's `config.json` that phive reads (unknown keys are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Phi3VConfig {
    /// The language model's keys.
    #[serde(flatten)]
    pub text: Phi3TextConfig,
    pub embd_layer: EmbdLayerConfig,
    pub img_processor: ImgProcessorConfig,
    /// Tower geometry (phive extension, HF `CLIPVisionConfig` keys); CLIP ViT-L/14-336 if absent.
    #[serde(default)]
    pub vision_config: Option<ClipVisionConfig>,
}

impl Phi3VConfig {
    /// Parses a `config.json` value (use [`Phi3VConfig::validate`] to check support).
    pub fn from_json(value: &serde_json::Value) -> serde_json::Result<Self> {
        Self::deserialize(value)
    }

    /// The CLIP geometry: `vision_config` or the real ViT-L/14-336.
    pub fn vision_config(&self) -> ClipVisionConfig {
        self.vision_config.clone().unwrap_or_default()
    }

    /// Tokens one image with an HD grid of `rows × cols` crops turns into:
    /// `(rows·cols + 1)·m² + (rows + 1)·m + 1` with `m` = merged patches per side (12).
    pub fn num_image_tokens(&self, rows: usize, cols: usize) -> usize {
        let m = self.vision_config().patches_per_side() / 2;
        (rows * cols + 1) * m * m + (rows + 1) * m + 1
    }

    /// Rejects configurations phive does not implement, with a message naming the key.
    pub fn validate(&self) -> Result<()> {
        let e = &self.embd_layer;
        if !e.use_hd_transform || !e.with_learnable_separator {
            return Err(config_error(
                "embd_layer.use_hd_transform and with_learnable_separator must be true (only the HD image path is implemented)",
            ));
        }
        if e.hd_transform_order != "sub_glb" && e.hd_transform_order != "glb_sub" {
            return Err(config_error(format!(
                "embd_layer.hd_transform_order {:?} is not supported (expected \"sub_glb\" or \"glb_sub\")",
                e.hd_transform_order
            )));
        }
        if e.projection_cls != "mlp" && e.projection_cls != "linear" {
            return Err(config_error(format!(
                "embd_layer.projection_cls {:?} is not supported (expected \"mlp\" or \"linear\")",
                e.projection_cls
            )));
        }
        let p = &self.img_processor;
        if p.name != "clip_vision_model" {
            return Err(config_error(format!(
                "img_processor.name {:?} is not supported (expected \"clip_vision_model\")",
                p.name
            )));
        }
        if p.type_feature != "patch" {
            return Err(config_error(format!(
                "img_processor.type_feature {:?} is not supported with the HD transform (expected \"patch\")",
                p.type_feature
            )));
        }
        let v = self.vision_config();
        if p.image_dim_out != v.hidden_size {
            return Err(config_error(format!(
                "img_processor.image_dim_out {} differs from the vision tower's hidden_size {}",
                p.image_dim_out, v.hidden_size
            )));
        }
        if v.patch_size == 0
            || !v.image_size.is_multiple_of(v.patch_size)
            || !v.patches_per_side().is_multiple_of(2)
        {
            return Err(config_error(format!(
                "vision image_size {} / patch_size {} must give an even number of patches per side for the 2x2 merge",
                v.image_size, v.patch_size
            )));
        }
        self.text.decoder_config()?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Projection {
    Mlp(Linear, Linear),
    Linear(Linear),
}

/// Phi-3.5-vision: image embedding plus language model.
#[derive(Debug, Clone)]
pub struct Phi3V {
    cfg: Phi3VConfig,
    decoder: Phi3Decoder,
    tower: ClipVisionTower,
    glb_gn: Tensor,
    sub_gn: Tensor,
    projection: Projection,
    sub_first: bool,
}

impl Phi3V {
    /// Validates `config` and loads all weights from `vb` rooted at the checkpoint root
    /// (`model.embed_tokens.weight`, `model.vision_embed_tokens.*`, `lm_head.weight`, ...).
    pub fn new(config: &Phi3VConfig, vb: LoadVb) -> Result<Self> {
        config.validate()?;
        let decoder = Phi3Decoder::new(&config.text.decoder_config()?, &vb)?;
        let vv = vb.pp("model.vision_embed_tokens");
        let vcfg = config.vision_config();
        let tower = ClipVisionTower::new(
            &vcfg,
            &vv.pp("img_processor.vision_model"),
            config.img_processor.layer_idx,
        )?;
        let c4 = 4 * vcfg.hidden_size;
        let glb_gn = vv.get((1, 1, c4), "glb_GN")?.flatten_all()?;
        let sub_gn = vv.get((1, 1, 1, c4), "sub_GN")?.flatten_all()?;
        let h = config.text.hidden_size;
        let vp = vv.pp("img_projection");
        let projection = if config.embd_layer.projection_cls == "mlp" {
            Projection::Mlp(Linear::load(&vp.pp("0"), c4, h, true)?, Linear::load(&vp.pp("2"), h, h, true)?)
        } else {
            Projection::Linear(Linear::load(&vp, c4, h, true)?)
        };
        Ok(Self {
            cfg: config.clone(),
            decoder,
            tower,
            glb_gn,
            sub_gn,
            projection,
            sub_first: config.embd_layer.hd_transform_order == "sub_glb",
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Phi3VConfig {
        &self.cfg
    }

    /// The language model (for diagnostics and tests).
    pub fn decoder(&self) -> &Phi3Decoder {
        &self.decoder
    }

    /// An empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        self.decoder.new_cache()
    }

    /// Selected CLIP patch features `[crops, patches, C]` (HF `hidden_states[layer_idx][:, 1:]`).
    pub fn clip_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.tower.patch_features(pixel_values)
    }

    /// Projected features for one preprocessed image: `pixel_values` `[1 + rows·cols, 3, S, S]`
    /// (global crop first, only the real crops) and its HD `grid` `(rows, cols)` →
    /// `[num_image_tokens, hidden]`.
    pub fn encode_image(&self, pixel_values: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (rows, cols) = grid;
        let n = pixel_values.dim(0)?;
        if rows == 0 || cols == 0 || n != 1 + rows * cols {
            return Err(Error::InvalidRequest(format!(
                "image has {n} crops but its HD grid {rows}x{cols} needs {}",
                1 + rows * cols
            )));
        }
        // Preprocessing makes the crops on the CPU; the tower runs where the model is.
        let feats = self.clip_features(&pixel_values.to_device(self.decoder.device())?)?;
        let all = self.hd_tokens(&feats, rows, cols)?;
        let expected = self.cfg.num_image_tokens(rows, cols);
        if all.dim(0)? != expected {
            return Err(candle_core::Error::Msg(format!(
                "image produced {} tokens, expected {expected}",
                all.dim(0)?
            ))
            .into());
        }
        match &self.projection {
            Projection::Mlp(a, b) => b.forward(&Activation::GeluErf.forward(&a.forward(&all)?)?),
            Projection::Linear(a) => a.forward(&all),
        }
    }

    /// HD assembly before the projection: CLIP patch features `[1 + rows·cols, g·g, C]` (global
    /// first) → `[tokens, 4C]` in `hd_transform_order`.
    fn hd_tokens(&self, feats: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        let (n, p, c) = feats.dims3()?;
        let g = self.tower.config().patches_per_side();
        if p != g * g || n != 1 + rows * cols {
            return Err(candle_core::Error::Msg(format!(
                "HD transform expects [{}, {}, C] features, got {:?}",
                1 + rows * cols,
                g * g,
                feats.shape()
            ))
            .into());
        }
        let m = g / 2;
        // 2x2 merge: [n, m, 2, m, 2, C] -> [n, m, m, (2, 2, C)], the 4C vector ordered
        // (r0,c0), (r0,c1), (r1,c0), (r1,c1).
        let merged = feats
            .reshape((n, m, 2, m, 2, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((n, m, m, 4 * c))?;
        let global = self.add_newline(&merged.get(0)?)?;
        // Sub-crops tiled row-major into one (rows·m) x (cols·m) grid.
        let sub = merged
            .narrow(0, 1, rows * cols)?
            .reshape((rows, cols, m, m, 4 * c))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((rows * m, cols * m, 4 * c))?;
        let sub = self.add_newline(&sub)?;
        let glb = self.glb_gn.reshape((1, 4 * c))?;
        Ok(if self.sub_first {
            Tensor::cat(&[&sub, &glb, &global], 0)?
        } else {
            Tensor::cat(&[&global, &glb, &sub], 0)?
        })
    }

    /// `[R, W, D]` → `[R·(W+1), D]` with `sub_GN` after every row.
    fn add_newline(&self, x: &Tensor) -> Result<Tensor> {
        let (r, w, d) = x.dims3()?;
        let nl = self.sub_gn.reshape((1, 1, d))?.broadcast_as((r, 1, d))?;
        Ok(Tensor::cat(&[x, &nl], 1)?.reshape((r * (w + 1), d))?)
    }

    /// Input embeddings `[1, seq, hidden]`: `token_ids` embedded, then each `(start, features)`
    /// span (`features` `[n, hidden]`, e.g. from [`Phi3V::encode_image`]) written over positions
    /// `start..start + n`. Ids under a span are ignored (placeholders); all others must be in
    /// the vocabulary. Spans must not overlap.
    pub fn embed(&self, token_ids: &[u32], media: &[(usize, Tensor)]) -> Result<Tensor> {
        self.decoder.embed_with_media(token_ids, media)
    }

    /// Runs the decoder over `embeds` `[1, seq, hidden]` at positions `cache.len()..`, appends
    /// to the cache and returns the final-normed hidden states `[1, seq, hidden]`.
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.decoder.forward(embeds, cache)
    }

    /// Logits `[rows.len(), vocab]` for the given rows of `hidden` `[1, seq, hidden]`.
    pub fn logits(&self, hidden: &Tensor, rows: &[usize]) -> Result<Tensor> {
        self.decoder.logits(hidden, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{random_tensor, random_vb};
    use candle_core::Device;

    fn tiny_json() -> serde_json::Value {
        serde_json::json!({
            "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
            "num_attention_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 128, "original_max_position_embeddings": 32,
            "rope_scaling": {"type": "su", "short_factor": [1.0, 1.0, 1.0, 1.0], "long_factor": [2.0, 2.0, 2.0, 2.0]},
            "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                           "use_hd_transform": true, "with_learnable_separator": true},
            "img_processor": {"image_dim_out": 8, "name": "clip_vision_model", "num_img_tokens": 144},
            "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
                              "num_hidden_layers": 2, "image_size": 28, "patch_size": 7},
            "some_unknown_key": [1, 2, 3]
        })
    }

    fn tiny() -> Phi3V {
        let cfg = Phi3VConfig::from_json(&tiny_json()).unwrap();
        Phi3V::new(&cfg, random_vb(0.3)).unwrap()
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg = Phi3VConfig::from_json(&tiny_json()).unwrap();
        assert_eq!(cfg.text.num_kv_heads(), 2);
        assert_eq!(cfg.img_processor.layer_idx, -2);
        assert_eq!(cfg.img_processor.type_feature, "patch");
        assert!(!cfg.text.tie_word_embeddings);
        // Real geometry: 24x24 patches -> (r·c + 1)·144 + (r + 1)·12 + 1.
        let mut real = cfg.clone();
        real.vision_config = None;
        assert_eq!(real.num_image_tokens(2, 2), 5 * 144 + 3 * 12 + 1);
        for (key, value, needle) in [
            ("hd_transform_order", serde_json::json!("other"), "hd_transform_order"),
            ("projection_cls", serde_json::json!("conv"), "projection_cls"),
            ("use_hd_transform", serde_json::json!(false), "use_hd_transform"),
        ] {
            let mut j = tiny_json();
            j["embd_layer"][key] = value;
            let e = Phi3VConfig::from_json(&j).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut j = tiny_json();
        j["rope_scaling"]["type"] = serde_json::json!("yarn");
        assert!(Phi3VConfig::from_json(&j).unwrap().validate().unwrap_err().to_string().contains("yarn"));
    }

    #[test]
    fn hd_layout_matches_hf() {
        let m = tiny();
        let c = 8;
        // Features whose value encodes (crop, patch row, patch col, channel).
        let (rows, cols) = (1, 2);
        let n = 1 + rows * cols;
        let data: Vec<f32> = (0..n * 16 * c)
            .map(|i| ((i / (16 * c)) * 1000 + (i / c % 16) * 10) as f32 + (i % c) as f32 * 0.01)
            .collect();
        let feats = Tensor::from_vec(data, (n, 16, c), &Device::Cpu).unwrap();
        let t = m.hd_tokens(&feats, rows, cols).unwrap();
        // sub: 2 rows x (2·2 + 1); glb_GN; global: 2 x 3.
        assert_eq!(t.dims(), &[2 * 5 + 1 + 2 * 3, 4 * c]);
        let v = t.to_vec2::<f32>().unwrap();
        let sub_gn = m.sub_gn.to_vec1::<f32>().unwrap();
        let glb_gn = m.glb_gn.to_vec1::<f32>().unwrap();
        let patch = |crop: usize, r: usize, col: usize| (crop * 1000 + (r * 4 + col) * 10) as f32;
        // Sub grid row 0: crop 1 (merged cols 0, 1), crop 2 (cols 0, 1), newline.
        assert_eq!(v[0][0], patch(1, 0, 0));
        assert_eq!(v[0][c], patch(1, 0, 1)); // (r0, c1)
        assert_eq!(v[0][2 * c], patch(1, 1, 0)); // (r1, c0)
        assert_eq!(v[0][3 * c], patch(1, 1, 1)); // (r1, c1)
        assert_eq!(v[1][0], patch(1, 0, 2));
        assert_eq!(v[2][0], patch(2, 0, 0));
        assert_eq!(v[3][0], patch(2, 0, 2));
        assert_eq!(v[4], sub_gn);
        assert_eq!(v[5][0], patch(1, 2, 0));
        assert_eq!(v[9], sub_gn);
        assert_eq!(v[10], glb_gn);
        assert_eq!(v[11][0], patch(0, 0, 0));
        assert_eq!(v[12][3 * c + 1], patch(0, 1, 3) + 0.01);
        assert_eq!(v[13], sub_gn);
        assert_eq!(v[16], sub_gn);
    }

    #[test]
    fn encode_embed_forward_shapes() {
        let m = tiny();
        let pixels = random_tensor("pixels", &(7, 3, 28, 28).into(), 1.0).unwrap();
        let f = m.encode_image(&pixels, (2, 3)).unwrap();
        assert_eq!(f.dims(), &[m.config().num_image_tokens(2, 3), 16]);
        assert!(m.encode_image(&pixels, (2, 2)).is_err());
        let n = f.dim(0).unwrap();
        let mut ids = vec![1u32, 2, 3];
        ids.extend(std::iter::repeat_n(0, n));
        ids.extend([4, 5]);
        let e = m.embed(&ids, &[(3, f.clone())]).unwrap();
        assert_eq!(e.dims(), &[1, n + 5, 16]);
        let span = e.squeeze(0).unwrap().narrow(0, 3, n).unwrap();
        assert_eq!(crate::nn::test_util::max_abs_diff(&span, &f), 0.0);
        let mut cache = m.new_cache();
        let h = m.forward(&e, &mut cache).unwrap();
        assert_eq!(m.logits(&h, &[n + 4]).unwrap().dims(), &[1, 40]);
        assert!(m.embed(&ids, &[(3, f.clone()), (4, f.clone())]).is_err());
        assert!(m.embed(&ids, &[(10, f)]).is_err());
    }
}
