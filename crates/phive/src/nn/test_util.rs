//! Deterministic random weights for unit tests: a `VarBuilder` backend that returns, for any
//! requested name and shape, normal values seeded from the name, read without quantization.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};

use super::linear::LoadVb;

pub(crate) struct RandomBackend {
    pub std: f32,
    /// Names that should be reported missing.
    pub missing: Vec<String>,
}

fn seed(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

pub(crate) fn random_tensor(name: &str, shape: &Shape, std: f32) -> candle_core::Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed(name));
    let n = shape.elem_count();
    // Norm weights near 1 keep activations in a realistic range.
    let is_norm_weight = (name.contains("norm") || name.contains("layrnorm")) && name.ends_with("weight");
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let u: f32 = rng.random_range(-1.0..1.0);
            if is_norm_weight {
                1.0 + 0.1 * u
            } else {
                u * std * 1.732
            }
        })
        .collect();
    Tensor::from_vec(data, shape.clone(), &Device::Cpu)
}

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if self.missing.iter().any(|m| m == name) {
            return Err(candle_core::Error::CannotFindTensor { path: name.to_string() });
        }
        random_tensor(name, &s, self.std)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.to_string() })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        !self.missing.iter().any(|m| m == name)
    }
}

pub(crate) fn random_vb(std: f32) -> LoadVb<'static> {
    random_vb_missing(std, &[])
}

pub(crate) fn random_vb_missing(std: f32, missing: &[&str]) -> LoadVb<'static> {
    let missing = missing.iter().map(|s| s.to_string()).collect();
    LoadVb::plain(VarBuilder::from_backend(Box::new(RandomBackend { std, missing }), DType::F32, Device::Cpu))
}

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
