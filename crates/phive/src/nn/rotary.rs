//! Rotary position embeddings: plain RoPE and Phi's LongRoPE ("su" / "longrope"), with an
//! optional partial rotary factor (Phi-4 rotates only the first 3/4 of each head).
//!
//! Follows Hugging Face's `Phi3SuScaledRotaryEmbedding` / `Phi3LongRoPEScaledRotaryEmbedding`:
//! * `inv_freq[k] = 1 / (factor[k] · θ^(2k/rot_dim))`, computed in f32;
//! * the table is chosen per forward call: with `L = max(position) + 1` over the positions of
//!   *this* call, the long factors are used when `L > original_max_position_embeddings`, the short
//!   ones otherwise (keys already in the KV cache keep the rotation they were given);
//! * cos and sin are both multiplied by `sqrt(1 + ln(s)/ln(original_max))` with
//!   `s = max_position_embeddings / original_max_position_embeddings` (1 when `s <= 1`);
//! * rotate-half (NeoX) layout: dimension `i` pairs with `i + rot_dim/2`.
//!
//! cos/sin are computed for the positions of each call (not precomputed for 128k positions),
//! which costs `seq · rot_dim/2` sin/cos evaluations per call, shared by all layers.

use candle_core::{Device, Tensor, D};

use crate::Result;

/// `rope_scaling` as written in a Phi checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RopeScalingConfig {
    /// `"longrope"` (or its old name `"su"`); `"default"` means plain RoPE.
    #[serde(rename = "type", alias = "rope_type")]
    pub kind: String,
    /// Per-frequency factors used while the sequence fits the original context.
    #[serde(default)]
    pub short_factor: Vec<f32>,
    /// Per-frequency factors used beyond it.
    #[serde(default)]
    pub long_factor: Vec<f32>,
}

impl RopeScalingConfig {
    /// The LongRoPE tables this config asks for (`None` for plain RoPE); `original` is
    /// `original_max_position_embeddings`, which LongRoPE needs.
    pub fn long_rope(
        scaling: Option<&RopeScalingConfig>,
        original: Option<usize>,
    ) -> std::result::Result<Option<LongRopeScaling>, String> {
        let Some(rs) = scaling.filter(|rs| rs.kind != "default") else { return Ok(None) };
        if rs.kind != "su" && rs.kind != "longrope" {
            return Err(format!(
                "rope_scaling type {:?} is not supported (expected \"longrope\" or \"su\")",
                rs.kind
            ));
        }
        let original = original.ok_or("rope_scaling needs original_max_position_embeddings")?;
        Ok(Some(LongRopeScaling {
            short_factor: rs.short_factor.clone(),
            long_factor: rs.long_factor.clone(),
            original_max_position_embeddings: original,
        }))
    }
}

/// LongRoPE parameters from `rope_scaling` plus `original_max_position_embeddings`.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRopeScaling {
    /// Per-frequency divisors used while `L <= original_max_position_embeddings`.
    pub short_factor: Vec<f32>,
    /// Per-frequency divisors used once `L > original_max_position_embeddings`.
    pub long_factor: Vec<f32>,
    /// The pre-training context length (4096 for Phi-3.5).
    pub original_max_position_embeddings: usize,
}

/// Everything needed to build a [`RotaryEmbedding`].
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryConfig {
    /// Attention head dimension.
    pub head_dim: usize,
    /// Fraction of `head_dim` that is rotated (1.0 for Phi-3.5, 0.75 for Phi-4).
    pub partial_rotary_factor: f64,
    /// `rope_theta`.
    pub theta: f64,
    /// `max_position_embeddings`; with LongRoPE it sets the attention factor.
    pub max_position_embeddings: usize,
    /// `None` for plain RoPE (no `rope_scaling` in the config).
    pub long_rope: Option<LongRopeScaling>,
}

/// Rotary embedding with the inverse frequencies of both LongRoPE tables precomputed.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    head_dim: usize,
    rot_dim: usize,
    short_inv_freq: Vec<f32>,
    /// `Some` only with LongRoPE.
    long_inv_freq: Option<Vec<f32>>,
    original_max: usize,
    attention_factor: f32,
}

/// cos/sin for the positions of one forward call, shared by every layer.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    rot_dim: usize,
    head_dim: usize,
    long: bool,
}

fn inv_freq(theta: f64, rot_dim: usize, factors: Option<&[f32]>) -> Vec<f32> {
    let base = theta as f32;
    (0..rot_dim / 2)
        .map(|k| {
            // HF: arange(0, dim, 2).float() / dim, then base ** that, in f32.
            let e = (2 * k) as f32 / rot_dim as f32;
            let p = base.powf(e);
            let f = factors.map_or(1.0, |f| f[k]);
            1.0f32 / (f * p)
        })
        .collect()
}

impl RotaryEmbedding {
    /// Validates the configuration and precomputes the inverse frequencies.
    pub fn new(cfg: &RotaryConfig) -> Result<Self> {
        let err = |m: String| crate::Error::checkpoint("config.json", m);
        let rot_dim = (cfg.head_dim as f64 * cfg.partial_rotary_factor) as usize;
        if rot_dim == 0 || !rot_dim.is_multiple_of(2) || rot_dim > cfg.head_dim {
            return Err(err(format!(
                "rotary dimension {rot_dim} (head_dim {} x partial_rotary_factor {}) must be even and in 2..=head_dim",
                cfg.head_dim, cfg.partial_rotary_factor
            )));
        }
        let (short_inv_freq, long_inv_freq, original_max, attention_factor) = match &cfg.long_rope {
            None => (inv_freq(cfg.theta, rot_dim, None), None, usize::MAX, 1.0f32),
            Some(lr) => {
                for (name, f) in [("short_factor", &lr.short_factor), ("long_factor", &lr.long_factor)] {
                    if f.len() != rot_dim / 2 {
                        return Err(err(format!(
                            "rope_scaling.{name} has {} entries, expected rotary_dim/2 = {}",
                            f.len(),
                            rot_dim / 2
                        )));
                    }
                }
                if lr.original_max_position_embeddings == 0 {
                    return Err(err("original_max_position_embeddings must be positive".into()));
                }
                let orig = lr.original_max_position_embeddings as f64;
                let scale = cfg.max_position_embeddings as f64 / orig;
                let factor = if scale <= 1.0 { 1.0 } else { (1.0 + scale.ln() / orig.ln()).sqrt() };
                (
                    inv_freq(cfg.theta, rot_dim, Some(&lr.short_factor)),
                    Some(inv_freq(cfg.theta, rot_dim, Some(&lr.long_factor))),
                    lr.original_max_position_embeddings,
                    factor as f32,
                )
            }
        };
        Ok(Self {
            head_dim: cfg.head_dim,
            rot_dim,
            short_inv_freq,
            long_inv_freq,
            original_max,
            attention_factor,
        })
    }

    /// Number of rotated dimensions per head.
    pub fn rot_dim(&self) -> usize {
        self.rot_dim
    }

    /// The multiplier applied to cos and sin (1 for plain RoPE).
    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// Whether a call covering positions `start..start+len` uses the long factors (HF's rule:
    /// `max(position) + 1 > original_max_position_embeddings`).
    pub fn uses_long(&self, start: usize, len: usize) -> bool {
        self.long_factors_after().is_some_and(|after| start + len > after)
    }

    /// `original_max_position_embeddings` when there are long factors (LongRoPE), else `None`.
    pub fn long_factors_after(&self) -> Option<usize> {
        self.long_inv_freq.as_ref().map(|_| self.original_max)
    }

    /// cos/sin tables `[len, rot_dim/2]` for positions `start..start+len` of one call.
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> Result<RopeTables> {
        let long = self.uses_long(start, len);
        self.build((start..start + len).map(|p| (p, long)), device)
    }

    /// cos/sin tables for the rows of a batch, concatenated in row order. A row is
    /// `(position, len, prompt_len)`: its positions `position..position + len`, each rotated as
    /// Hugging Face's generation rotated it: prompt positions as part of one prefill call of
    /// `prompt_len` positions, later positions as single decode steps. So position `p` takes the
    /// long factors when `max(prompt_len, p + 1) > original_max_position_embeddings`, however
    /// the engine chunks or recomputes the sequence.
    pub fn batch_tables(&self, rows: &[(usize, usize, usize)], device: &Device) -> Result<RopeTables> {
        let positions = rows.iter().flat_map(|&(position, len, prompt_len)| {
            (position..position + len).map(move |p| (p, self.uses_long(0, prompt_len.max(p + 1))))
        });
        self.build(positions, device)
    }

    /// Tables for `(position, long factors?)` pairs; they count as long if any position is.
    fn build(&self, positions: impl Iterator<Item = (usize, bool)>, device: &Device) -> Result<RopeTables> {
        let half = self.short_inv_freq.len();
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        let mut any_long = false;
        for (p, long) in positions {
            any_long |= long;
            let inv = match (&self.long_inv_freq, long) {
                (Some(l), true) => l,
                _ => &self.short_inv_freq,
            };
            let p = p as f32;
            for &f in inv {
                let a = p * f;
                cos.push(a.cos() * self.attention_factor);
                sin.push(a.sin() * self.attention_factor);
            }
        }
        let len = cos.len() / half.max(1);
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
            rot_dim: self.rot_dim,
            head_dim: self.head_dim,
            long: any_long,
        })
    }
}

impl RopeTables {
    /// Whether these tables were built from the long factors (for a batch: any row's).
    pub fn is_long(&self) -> bool {
        self.long
    }

    /// Rotates `x` `[1, tokens, heads, head_dim]` whose tokens are the table's rows (the packed
    /// layout of a batch); only the first `rot_dim` dimensions of each head are rotated.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        // The tables are f32; a half-precision model rotates in its own dtype, as HF does.
        let (cos, sin) = (self.cos.to_dtype(x.dtype())?, self.sin.to_dtype(x.dtype())?);
        if self.rot_dim == self.head_dim {
            return Ok(candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?);
        }
        let rot = x.narrow(D::Minus1, 0, self.rot_dim)?.contiguous()?;
        let pass = x.narrow(D::Minus1, self.rot_dim, self.head_dim - self.rot_dim)?;
        let rot = candle_nn::rotary_emb::rope_thd(&rot, &cos, &sin)?;
        Ok(Tensor::cat(&[&rot, &pass], D::Minus1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_cfg(partial: f64) -> RotaryConfig {
        let half = (16.0 * partial) as usize / 2;
        RotaryConfig {
            head_dim: 16,
            partial_rotary_factor: partial,
            theta: 10000.0,
            max_position_embeddings: 131072,
            long_rope: Some(LongRopeScaling {
                short_factor: (0..half).map(|k| 1.0 + 0.05 * k as f32).collect(),
                long_factor: (0..half).map(|k| 1.0 + k as f32).collect(),
                original_max_position_embeddings: 4096,
            }),
        }
    }

    #[test]
    fn attention_factor_and_table_switch() {
        let r = RotaryEmbedding::new(&long_cfg(1.0)).unwrap();
        // sqrt(1 + ln 32 / ln 4096) for Phi-3.5's 131072 / 4096.
        assert!((r.attention_factor() - 1.190_239).abs() < 1e-6, "{}", r.attention_factor());
        // L = max(position) + 1 of this call.
        assert!(!r.uses_long(0, 4096));
        assert!(r.uses_long(0, 4097));
        assert!(!r.uses_long(4095, 1));
        assert!(r.uses_long(4096, 1));
        assert!(!r.tables(4000, 96, &Device::Cpu).unwrap().is_long());
        assert!(r.tables(4000, 97, &Device::Cpu).unwrap().is_long());
        // No scaling: plain RoPE, factor 1, never long.
        let plain = RotaryEmbedding::new(&RotaryConfig { long_rope: None, ..long_cfg(1.0) }).unwrap();
        assert_eq!(plain.attention_factor(), 1.0);
        assert!(!plain.uses_long(0, 1 << 20));
        // s <= 1 gives factor 1.
        let small =
            RotaryEmbedding::new(&RotaryConfig { max_position_embeddings: 4096, ..long_cfg(1.0) }).unwrap();
        assert_eq!(small.attention_factor(), 1.0);
    }

    #[test]
    fn batch_tables_rotate_each_position_as_hf_generation_did() {
        let r = RotaryEmbedding::new(&long_cfg(1.0)).unwrap();
        let cpu = &Device::Cpu;
        // A chunk of a 4000-token prompt (short, as its single prefill call), two decode steps
        // around position 4096 (L = 4096 short, then 4097 long), and a chunk of a 5000-token
        // prompt (long throughout, as its prefill call was).
        let t = r.batch_tables(&[(3990, 10, 4000), (4095, 2, 4000), (10, 3, 5000)], cpu).unwrap();
        let want = [
            r.tables(0, 4000, cpu).unwrap().cos.narrow(0, 3990, 10).unwrap(),
            r.tables(4095, 1, cpu).unwrap().cos,
            r.tables(4096, 1, cpu).unwrap().cos,
            r.tables(0, 5000, cpu).unwrap().cos.narrow(0, 10, 3).unwrap(),
        ];
        let want = Tensor::cat(&want, 0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(t.cos.to_vec2::<f32>().unwrap(), want);
        assert!(t.is_long());
    }

    #[test]
    fn tables_match_formula() {
        let cfg = long_cfg(1.0);
        let r = RotaryEmbedding::new(&cfg).unwrap();
        let lr = cfg.long_rope.as_ref().unwrap();
        for (start, len, factors) in [(0usize, 5usize, &lr.short_factor), (5000, 3, &lr.long_factor)] {
            let t = r.tables(start, len, &Device::Cpu).unwrap();
            let cos = t.cos.to_vec2::<f32>().unwrap();
            let sin = t.sin.to_vec2::<f32>().unwrap();
            for (i, p) in (start..start + len).enumerate() {
                for k in 0..8 {
                    let inv = 1.0 / (factors[k] as f64 * 10000f64.powf(2.0 * k as f64 / 16.0));
                    let a = p as f64 * inv;
                    let f = r.attention_factor() as f64;
                    assert!((cos[i][k] as f64 - a.cos() * f).abs() < 2e-4 * (1.0 + p as f64 / 1000.0));
                    assert!((sin[i][k] as f64 - a.sin() * f).abs() < 2e-4 * (1.0 + p as f64 / 1000.0));
                }
            }
        }
    }

    /// HF: `q * cat(cos, cos) + rotate_half(q) * cat(sin, sin)` on the first rot_dim dims.
    fn reference_apply(x: &[f32], cos: &[f32], sin: &[f32], rot: usize) -> Vec<f32> {
        let half = rot / 2;
        let mut y = x.to_vec();
        for i in 0..half {
            y[i] = x[i] * cos[i] - x[i + half] * sin[i];
            y[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
        }
        y
    }

    #[test]
    fn apply_is_rotate_half_with_partial_rotary() {
        for partial in [1.0, 0.75, 0.5] {
            let r = RotaryEmbedding::new(&long_cfg(partial)).unwrap();
            let (h, s, d) = (3, 4, 16);
            let data: Vec<f32> = (0..h * s * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let x = Tensor::from_vec(data.clone(), (1, s, h, d), &Device::Cpu).unwrap();
            let t = r.tables(10, s, &Device::Cpu).unwrap();
            let y = t.apply(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let cos = t.cos.to_vec2::<f32>().unwrap();
            let sin = t.sin.to_vec2::<f32>().unwrap();
            for hh in 0..h {
                for i in 0..s {
                    let o = (i * h + hh) * d;
                    let want = reference_apply(&data[o..o + d], &cos[i], &sin[i], r.rot_dim());
                    for (a, b) in y[o..o + d].iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "partial {partial}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_wrong_factor_length() {
        let mut cfg = long_cfg(1.0);
        cfg.long_rope.as_mut().unwrap().long_factor.pop();
        let e = RotaryEmbedding::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("long_factor"), "{e}");
    }
}
