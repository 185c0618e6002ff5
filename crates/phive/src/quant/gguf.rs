//! Saving a quantized model as GGUF (`phive quantize`) and loading it back without quantizing.
//!
//! The file holds every tensor of the source checkpoint under its Hugging Face name: the
//! quantized linears as their GGML type, everything else as F32/F16/BF16 exactly as the source
//! stored it. Metadata `phive.isq` records the ISQ type (and `phive.isq_encoders` whether the
//! encoder projections were included), so a reload applies the same plan: block-quantized
//! tensors are taken as they are, half-precision linears come back bit-identical, and the
//! remaining tensors are converted to f32 as the model asks for them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::context::record;
use super::{IsqType, LoadReport};
use crate::checkpoint::weights::{expect_shape, WeightFormat, GGUF_FILE};
use crate::checkpoint::Checkpoint;
use crate::nn::linear::LinearWeight;
use crate::pipeline::{LoadOptions, Pipeline};
use crate::{Error, Result};

/// Metadata key holding the ISQ type name.
pub const ISQ_KEY: &str = "phive.isq";
/// Metadata key: whether encoder projections were quantized.
pub const ISQ_ENCODERS_KEY: &str = "phive.isq_encoders";

/// The files `phive quantize` copies beside the GGUF so the folder is a complete checkpoint.
pub const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
];

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

/// What `phive quantize` wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// The GGUF file.
    pub gguf: PathBuf,
    /// Its size.
    pub gguf_bytes: u64,
    /// Tensors written, and how many of them are quantized or half-precision linears.
    pub tensors: usize,
    /// Linear weights written in their ISQ type.
    pub quantized: usize,
    /// The side files copied.
    pub copied: Vec<String>,
    /// The in-situ load that produced the weights.
    pub load: LoadReport,
}

/// Quantizes the checkpoint `options.model` with `options.isq` (required) exactly as an in-situ
/// load would, and writes `output_dir/model.gguf` plus the config, tokenizer and processor files,
/// so that `-m output_dir` later loads without quantizing.
///
/// Memory: the quantized model is built once (as for serving), then the non-quantized tensors
/// are read in their stored precision and written with candle's GGUF writer, which needs them
/// all at once: peak ≈ loaded model + the full-precision remainder (embeddings, encoders).
pub fn quantize_checkpoint(options: &LoadOptions, output_dir: &Path) -> Result<QuantizeReport> {
    let Some(isq) = options.isq else {
        return Err(Error::InvalidRequest(format!(
            "quantize needs an ISQ type (one of {})",
            IsqType::valid_names()
        )));
    };
    let checkpoint = Checkpoint::open(&options.model, options.revision.as_deref())?;
    if checkpoint.weights.format == WeightFormat::Gguf {
        return Err(Error::InvalidRequest(format!(
            "{} is already a quantized GGUF checkpoint; quantize the original safetensors checkpoint",
            checkpoint.source
        )));
    }
    let source_dir = checkpoint.config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    if let (Ok(a), Ok(b)) = (source_dir.canonicalize(), output_dir.canonicalize()) {
        if a == b {
            return Err(Error::InvalidRequest(
                "the output folder must differ from the checkpoint folder (it would hold both formats)"
                    .into(),
            ));
        }
    }
    std::fs::create_dir_all(output_dir)
        .map_err(|e| Error::checkpoint(output_dir, format!("cannot create the output folder: {e}")))?;

    let (pipeline, recorded) = record(|| Pipeline::load(options));
    let load = pipeline?.load_report().clone();
    let mut quantized: BTreeMap<String, QTensor> = BTreeMap::new();
    for (name, weight) in recorded {
        let q = match weight {
            LinearWeight::Quantized(q) => match Arc::try_unwrap(q) {
                Ok(q) => q,
                Err(q) => clone_qtensor(&q)?,
            },
            LinearWeight::Half(t) => {
                QTensor::quantize(&t, if t.dtype() == DType::F16 { GgmlDType::F16 } else { GgmlDType::BF16 })?
            }
            LinearWeight::Dense(t) => QTensor::quantize(&t, GgmlDType::F32)?,
        };
        quantized.insert(name, q);
    }
    let n_quantized = quantized.len();

    let reader = checkpoint.weights.reader()?;
    let mut tensors: BTreeMap<String, QTensor> = BTreeMap::new();
    for (name, entry) in reader.index() {
        if let Some(q) = quantized.remove(name) {
            tensors.insert(name.clone(), q);
            continue;
        }
        let t = reader.read(name)?;
        let (t, ggml) = match entry.dtype {
            DType::F16 => (t, GgmlDType::F16),
            DType::BF16 => (t, GgmlDType::BF16),
            _ => (t.to_dtype(DType::F32)?, GgmlDType::F32),
        };
        tensors.insert(name.clone(), QTensor::quantize(&t, ggml)?);
    }
    // Quantized weights with no tensor of their own in the source (a tied lm_head).
    tensors.extend(quantized);

    let isq_value = Value::String(isq.name().to_string());
    let encoders_value = Value::Bool(options.isq_encoders);
    let arch_value = Value::String("phive".into());
    let name_value = Value::String(checkpoint.source.clone());
    let metadata: Vec<(&str, &Value)> = vec![
        ("general.architecture", &arch_value),
        ("general.name", &name_value),
        (ISQ_KEY, &isq_value),
        (ISQ_ENCODERS_KEY, &encoders_value),
    ];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let target = output_dir.join(GGUF_FILE);
    let partial = output_dir.join(format!("{GGUF_FILE}.partial"));
    {
        let file =
            File::create(&partial).map_err(|e| Error::checkpoint(&partial, format!("cannot create: {e}")))?;
        let mut w = BufWriter::new(file);
        gguf_file::write(&mut w, &metadata, &refs)
            .map_err(|e| Error::checkpoint(&partial, format!("cannot write: {e}")))?;
        use std::io::Write;
        w.flush().map_err(|e| Error::checkpoint(&partial, format!("cannot write: {e}")))?;
    }
    std::fs::rename(&partial, &target)
        .map_err(|e| Error::checkpoint(&target, format!("cannot rename: {e}")))?;

    let mut copied = Vec::new();
    for name in SIDE_FILES {
        let src = source_dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, output_dir.join(name)).map_err(|e| {
                Error::checkpoint(&src, format!("cannot copy to {}: {e}", output_dir.display()))
            })?;
            copied.push(name.to_string());
        }
    }
    let gguf_bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeReport { gguf: target, gguf_bytes, tensors: refs.len(), quantized: n_quantized, copied, load })
}

fn clone_qtensor(q: &QTensor) -> Result<QTensor> {
    // Only reached if a weight were still shared; the pipeline is dropped before this runs.
    super::qtensor_from_bytes(&q.data()?, q.dtype(), q.shape().clone())
}
