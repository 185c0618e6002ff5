//! Reading a quantized model saved as GGUF by [`crate::export`] (`phive quantize`), without
//! quantizing again.
//!
//! The file holds every tensor of the source checkpoint under its Hugging Face name: the
//! quantized linears as their GGML type, everything else as F32/F16/BF16 exactly as the source
//! stored it. Metadata `phive.isq` records the ISQ type (and `phive.isq_encoders` whether the
//! encoder projections were included), so a reload applies the same plan: block-quantized
//! tensors are taken as they are, half-precision linears come back bit-identical, and the
//! remaining tensors are converted to f32 as the model asks for them.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::IsqType;
use crate::checkpoint::weights::expect_shape;
use crate::{Error, Result};

/// Metadata key holding the ISQ type name.
pub const ISQ_KEY: &str = "phive.isq";
/// Metadata key: whether encoder projections were quantized.
pub const ISQ_ENCODERS_KEY: &str = "phive.isq_encoders";

/// An open GGUF checkpoint: its directory of tensors, read one at a time on demand.
pub struct GgufStore {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<BufReader<File>>,
}

impl GgufStore {
    /// Reads the header and tensor directory of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::checkpoint(path, format!("cannot open: {e}")))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| Error::checkpoint(path, format!("not a readable GGUF file: {e}")))?;
        Ok(GgufStore { path: path.to_path_buf(), content, file: Mutex::new(reader) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ISQ type recorded by `phive quantize` (`None` for a GGUF without phive metadata).
    pub fn isq(&self) -> Result<Option<IsqType>> {
        match self.content.metadata.get(ISQ_KEY) {
            None => Ok(None),
            Some(v) => {
                let name =
                    v.to_string().map_err(|e| Error::checkpoint(&self.path, format!("{ISQ_KEY}: {e}")))?;
                name.parse::<IsqType>()
                    .map(Some)
                    .map_err(|e| Error::checkpoint(&self.path, format!("{ISQ_KEY}: {e}")))
            }
        }
    }

    /// Whether the encoder projections were quantized.
    pub fn encoders(&self) -> bool {
        self.content.metadata.get(ISQ_ENCODERS_KEY).and_then(|v| v.to_bool().ok()).unwrap_or(false)
    }

    /// The GGML type of tensor `name`.
    pub fn ggml_dtype(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    /// The dtype of every tensor stored in a float type (F32/F16/BF16).
    pub fn float_dtypes(&self) -> HashMap<String, DType> {
        self.content
            .tensor_infos
            .iter()
            .filter_map(|(n, i)| {
                let d = match i.ggml_dtype {
                    GgmlDType::F32 => DType::F32,
                    GgmlDType::F16 => DType::F16,
                    GgmlDType::BF16 => DType::BF16,
                    _ => return None,
                };
                Some((n.clone(), d))
            })
            .collect()
    }

    /// Names of the block-quantized tensors.
    pub fn quantized_names(&self) -> impl Iterator<Item = &String> {
        self.content.tensor_infos.iter().filter(|(_, i)| !is_float(i.ggml_dtype)).map(|(n, _)| n)
    }

    /// Reads tensor `name` as stored.
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(candle_core::Error::CannotFindTensor { path: name.to_string() }.into());
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        self.content
            .tensor(&mut *file, name, &Device::Cpu)
            .map_err(|e| Error::checkpoint(&self.path, format!("{name}: {e}")))
    }

    /// Tensor `name` if it is stored block-quantized; `None` if absent or stored as a float.
    pub fn quantized(&self, name: &str) -> Result<Option<QTensor>> {
        match self.ggml_dtype(name) {
            Some(d) if !is_float(d) => Ok(Some(self.qtensor(name)?)),
            _ => Ok(None),
        }
    }
}

fn is_float(d: GgmlDType) -> bool {
    matches!(d, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

struct GgufBackend(Arc<GgufStore>);

impl GgufBackend {
    fn load(&self, name: &str, dtype: DType) -> candle_core::Result<Tensor> {
        let q = self.0.qtensor(name).map_err(|e| match e {
            Error::Tensor(t) => t,
            other => candle_core::Error::Msg(other.to_string()),
        })?;
        // Float tensors come back exactly (bf16/f16 → f32 is lossless); quantized ones are
        // dequantized (never the case for tensors the models read through a VarBuilder).
        q.dequantize(&Device::Cpu)?.to_dtype(dtype)
    }
}

impl SimpleBackend for GgufBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        expect_shape(self.load(name, dtype)?, s, name)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.content.tensor_infos.contains_key(name)
    }
}

/// A `VarBuilder` over a GGUF store that converts every tensor it is asked for to `dtype`.
pub fn var_builder(store: Arc<GgufStore>, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(GgufBackend(store)), dtype, device.clone())
}
