//! Where a model runs and in what precision: the CPU, or an NVIDIA GPU through candle's CUDA
//! backend (builds with the `cuda` feature, made by `scripts/build-cuda.sh`); f32, or half
//! precision for the language model.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

/// The device a user asked for (`--device cpu`, `cuda`, `cuda:1`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// All cores of this machine.
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl DeviceChoice {
    /// Opens the device: a clear error where this build has no CUDA, or the driver finds no
    /// such GPU.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::Device(format!(
                        "{self} was asked for, but this phive was built without CUDA support \
                         (build it with scripts/build-cuda.sh, or use --device cpu)"
                    )));
                }
                Device::new_cuda(ordinal).map_err(|e| {
                    Error::Device(format!(
                        "cannot open {self}: {e} (is an NVIDIA GPU present, with a driver for CUDA 13?)"
                    ))
                })
            }
        }
    }
}

/// The precision of the language model's weights and activations (`--dtype`). The vision and
/// audio encoders stay in f32; their features are converted where they enter the language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelDType {
    /// f32 on the CPU (where half-precision arithmetic is slower), bf16 on a GPU.
    #[default]
    Auto,
    /// 32-bit floats: the reference's numerics.
    F32,
    /// bfloat16: half the memory of f32, the range of f32.
    BF16,
    /// float16: half the memory of f32, a narrower range than bf16.
    F16,
}

impl ModelDType {
    /// The dtype on `device`.
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            ModelDType::Auto if device.is_cpu() => DType::F32,
            ModelDType::Auto | ModelDType::BF16 => DType::BF16,
            ModelDType::F32 => DType::F32,
            ModelDType::F16 => DType::F16,
        }
    }
}

/// Free and total bytes of the GPU's memory; `None` on the CPU (or when the driver does not
/// say).
pub fn gpu_memory(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(gpu) = device {
        let (free, total) = gpu.cuda_stream().context().mem_get_info().ok()?;
        return Some((free as u64, total as u64));
    }
    let _ = device;
    None
}

/// What the load summary says about `device`: `cpu`, or the GPU's ordinal, name and memory
/// in use (everything on it, this process's weights and caches included).
pub fn describe(device: &Device) -> String {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(gpu) = device {
        let stream = gpu.cuda_stream();
        let context = stream.context();
        let name = context.name().unwrap_or_else(|_| "unknown GPU".into());
        return match gpu_memory(device) {
            Some((free, total)) => {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                format!(
                    "cuda:{} ({name}, {:.1} of {:.1} GiB in use)",
                    context.ordinal(),
                    gib(total - free),
                    gib(total)
                )
            }
            None => format!("cuda:{} ({name})", context.ordinal()),
        };
    }
    match device {
        Device::Cpu => "cpu".into(),
        other => format!("{:?}", other.location()),
    }
}

impl FromStr for ModelDType {
    type Err = Error;

    /// `auto`, `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`, any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ModelDType::Auto),
            "f32" | "float32" => Ok(ModelDType::F32),
            "bf16" | "bfloat16" => Ok(ModelDType::BF16),
            "f16" | "float16" => Ok(ModelDType::F16),
            _ => Err(Error::InvalidRequest(format!("unknown dtype {s:?}: expected auto, f32, bf16 or f16"))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::InvalidRequest(format!(
                "unknown device {s:?}: expected cpu, cuda or cuda:N (N = GPU number)"
            ))
        };
        match lower.as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => {
                let ordinal = lower.strip_prefix("cuda:").ok_or_else(bad)?;
                ordinal.parse().map(DeviceChoice::Cuda).map_err(|_| bad())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        for (text, want) in [
            ("cpu", DeviceChoice::Cpu),
            (" CPU ", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("gpu", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), want, "{text}");
        }
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x", "metal"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!("BFloat16".parse::<ModelDType>().unwrap(), ModelDType::BF16);
        assert_eq!("f16".parse::<ModelDType>().unwrap(), ModelDType::F16);
        assert_eq!("float32".parse::<ModelDType>().unwrap(), ModelDType::F32);
        assert_eq!("Auto".parse::<ModelDType>().unwrap(), ModelDType::Auto);
        assert!("fp8"
            .parse::<ModelDType>()
            .unwrap_err()
            .to_string()
            .contains("expected auto, f32, bf16 or f16"));
    }

    #[test]
    fn auto_dtype_is_f32_on_the_cpu() {
        assert_eq!(ModelDType::Auto.resolve(&Device::Cpu), DType::F32);
        assert_eq!(ModelDType::BF16.resolve(&Device::Cpu), DType::BF16);
        assert_eq!(ModelDType::F16.resolve(&Device::Cpu), DType::F16);
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("built without CUDA support") && e.contains("build-cuda.sh"), "{e}");
        }
    }
}
