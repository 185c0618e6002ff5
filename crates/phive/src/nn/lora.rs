//! LoRA adapters kept beside their base projection, selected per forward call.
//!
//! Phi-4-multimodal ships one base language model and two LoRA adapters (`vision`, `speech`);
//! the Hub remote code switches between them per request (text: none; any image: vision;
//! audio only: speech). Merging an adapter into the weights (what mistral.rs does) fixes one
//! choice for every request, so here the adapters stay unmerged:
//! `y = base(x) + (α/r) · B(A x)` for the active adapter, nothing extra for none. That also
//! lets the base [`Linear`] be quantized while the A/B matrices keep more precision (Q8_0 under
//! ISQ, widened to f32 where multiplied), and lets requests with different adapters share the
//! base weights.
//!
//! Checkpoint layout (PEFT names): `{module}.base_layer.weight`, `{module}.lora_A.{name}.weight`
//! `[r, in]`, `{module}.lora_B.{name}.weight` `[out, r]`. An adapter applies to the modules whose
//! full name matches its `layer` regex (unanchored search, as the Hub code and PEFT use it).

use candle_core::Tensor;

use super::linear::{Linear, LoadVb};
use crate::{Error, Result};

/// One adapter as described in a config (`vision_lora` / `speech_lora` of Phi-4-multimodal).
#[derive(Debug, Clone)]
pub struct LoraSpec {
    /// Adapter name as it appears in tensor names (`lora_A.{name}.weight`).
    pub name: String,
    /// Regex over full module names (e.g. `model.layers.3.self_attn.qkv_proj`); the adapter
    /// exists exactly on the modules it matches.
    pub layer: regex::Regex,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Rank `r`.
    pub r: usize,
}

impl LoraSpec {
    /// Builds a spec, compiling `layer`; errors name the config key.
    pub fn new(name: &str, layer: &str, alpha: f64, r: usize) -> Result<Self> {
        let layer = regex::Regex::new(layer).map_err(|e| {
            Error::checkpoint("config.json", format!("{name}_lora.layer is not a valid regex: {e}"))
        })?;
        if r == 0 || !alpha.is_finite() {
            return Err(Error::checkpoint(
                "config.json",
                format!("{name}_lora needs r > 0 and a finite lora_alpha, got r {r}, alpha {alpha}"),
            ));
        }
        Ok(Self { name: name.to_string(), layer, alpha, r })
    }

    /// `α / r`, the factor applied to `B(A x)`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Whether the module with this full name carries the adapter.
    pub fn applies_to(&self, module: &str) -> bool {
        self.layer.is_match(module)
    }
}

/// The low-rank pair of one adapter on one module.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    a: Linear,
    b: Linear,
    scale: f64,
}

impl LoraAdapter {
    /// Wraps `A` `[r, in]` and `B` `[out, r]` with the scale `α/r`.
    pub fn from_weights(a: Tensor, b: Tensor, scale: f64) -> Result<Self> {
        Self::from_linears(Linear::from_weights(a, None)?, Linear::from_weights(b, None)?, scale)
    }

    fn from_linears(a: Linear, b: Linear, scale: f64) -> Result<Self> {
        if a.out_dim() != b.in_dim() {
            return Err(candle_core::Error::Msg(format!(
                "lora_A has rank {} but lora_B expects {}",
                a.out_dim(),
                b.in_dim()
            ))
            .into());
        }
        Ok(Self { a, b, scale })
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.a.out_dim()
    }

    /// `scale · B(A x)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok((self.b.forward(&self.a.forward(x)?)? * self.scale)?)
    }
}

/// Consecutive rows of a packed batch that run under one adapter (`None`: base weights only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterSegment<'a> {
    /// First row.
    pub start: usize,
    /// Number of rows.
    pub len: usize,
    /// The adapter of these rows.
    pub adapter: Option<&'a str>,
}

/// A [`Linear`] plus named, unmerged LoRA adapters.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    adapters: Vec<(String, LoraAdapter)>,
}

impl LoraLinear {
    /// A projection without adapters.
    pub fn plain(base: Linear) -> Self {
        Self { base, adapters: Vec::new() }
    }

    /// Loads a bias-free projection under `vb` (the full module name is `vb.prefix()`):
    /// `base_layer.weight` when `peft_layout` (falling back to `weight`), else `weight`; then,
    /// for every spec whose regex matches the module name, its `lora_A` / `lora_B` pair. A
    /// matching adapter with missing tensors is an error naming the tensor.
    pub fn load(
        vb: &LoadVb,
        in_dim: usize,
        out_dim: usize,
        peft_layout: bool,
        specs: &[LoraSpec],
    ) -> Result<Self> {
        let base = if peft_layout && vb.contains_tensor("base_layer.weight") {
            Linear::load(&vb.pp("base_layer"), in_dim, out_dim, false)?
        } else {
            Linear::load(vb, in_dim, out_dim, false)?
        };
        let module = vb.prefix();
        let mut adapters = Vec::new();
        for spec in specs.iter().filter(|s| s.applies_to(&module)) {
            // Q8_0 under an ISQ load (`TensorRole::LoraAdapter`), else kept in the checkpoint's
            // half precision for an f32 model; multiplied in f32 either way. Phi-4's two
            // adapters are 0.9 G parameters.
            let a = Linear::load(&vb.pp("lora_A").pp(&spec.name), in_dim, spec.r, false)?.with_widened_q8();
            let b = Linear::load(&vb.pp("lora_B").pp(&spec.name), spec.r, out_dim, false)?.with_widened_q8();
            adapters.push((spec.name.clone(), LoraAdapter::from_linears(a, b, spec.scale())?));
        }
        Ok(Self { base, adapters })
    }

    /// The base projection.
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// Names of the adapters this module carries.
    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.adapters.iter().map(|(n, _)| n.as_str())
    }

    /// `base(x)`, plus `scale · B(A x)` of `adapter` when given and present on this module
    /// (a module outside an adapter's regex is unchanged by it, as in PEFT).
    pub fn forward(&self, x: &Tensor, adapter: Option<&str>) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        match adapter.and_then(|name| self.adapter(name)) {
            Some(ad) => Ok((y + ad.forward(x)?)?),
            None => Ok(y),
        }
    }

    /// `base(x)` for all rows of `x` `[rows, in]` in one matmul (one read of the base weights
    /// for the whole batch), plus each segment's adapter on that segment's rows.
    pub fn forward_segments(&self, x: &Tensor, segments: &[AdapterSegment]) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let active: Vec<(&AdapterSegment, &LoraAdapter)> = segments
            .iter()
            .filter_map(|s| Some((s, self.adapter(s.adapter?)?)))
            .filter(|(s, _)| s.len > 0)
            .collect();
        if active.is_empty() {
            return Ok(y);
        }
        let rows = y.dim(0)?;
        let mut pieces = Vec::with_capacity(2 * active.len() + 1);
        let mut at = 0;
        for (segment, adapter) in active {
            if segment.start > at {
                pieces.push(y.narrow(0, at, segment.start - at)?);
            }
            let part = x.narrow(0, segment.start, segment.len)?;
            pieces.push((y.narrow(0, segment.start, segment.len)? + adapter.forward(&part)?)?);
            at = segment.start + segment.len;
        }
        if at < rows {
            pieces.push(y.narrow(0, at, rows - at)?);
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }

    fn adapter(&self, name: &str) -> Option<&LoraAdapter> {
        self.adapters.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{max_abs_diff, random_tensor, random_vb};

    #[test]
    fn unmerged_equals_merged_weight() {
        let vb = random_vb(0.3).pp("model.layers.0.mlp.down_proj");
        let spec = LoraSpec::new("vision", r"layers.*mlp\.(gate_up|down)_proj", 16.0, 4).unwrap();
        let other = LoraSpec::new("speech", r"self_attn", 8.0, 2).unwrap();
        let l = LoraLinear::load(&vb, 6, 5, true, &[spec.clone(), other]).unwrap();
        assert_eq!(l.adapter_names().collect::<Vec<_>>(), vec!["vision"]);
        let x = random_tensor("x", &(2, 3, 6).into(), 1.0).unwrap();
        let w = vb.pp("base_layer").get((5, 6), "weight").unwrap();
        let a = vb.pp("lora_A.vision").get((4, 6), "weight").unwrap();
        let b = vb.pp("lora_B.vision").get((5, 4), "weight").unwrap();
        let merged = (w.clone() + (b.matmul(&a).unwrap() * 4.0).unwrap()).unwrap();
        let want = Linear::from_weights(merged, None).unwrap().forward(&x).unwrap();
        assert!(max_abs_diff(&l.forward(&x, Some("vision")).unwrap(), &want) < 1e-5);
        let base = Linear::from_weights(w, None).unwrap().forward(&x).unwrap();
        assert_eq!(max_abs_diff(&l.forward(&x, None).unwrap(), &base), 0.0);
        // An adapter this module does not carry leaves it unchanged.
        assert_eq!(max_abs_diff(&l.forward(&x, Some("speech")).unwrap(), &base), 0.0);
        // Segments of a packed batch: each row equals the call with its own adapter.
        let x2 = x.reshape((6, 6)).unwrap();
        let segs = [
            AdapterSegment { start: 0, len: 2, adapter: Some("vision") },
            AdapterSegment { start: 2, len: 1, adapter: None },
            AdapterSegment { start: 3, len: 3, adapter: Some("vision") },
        ];
        let packed = l.forward_segments(&x2, &segs).unwrap();
        for s in segs {
            let want = l.forward(&x2.narrow(0, s.start, s.len).unwrap(), s.adapter).unwrap();
            assert!(max_abs_diff(&packed.narrow(0, s.start, s.len).unwrap(), &want) < 1e-6);
        }
        assert!(LoraSpec::new("vision", "(", 1.0, 1).is_err());
        assert_eq!(spec.scale(), 4.0);
    }
}
