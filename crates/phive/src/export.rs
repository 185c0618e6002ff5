//! The export loads the model through [`crate::pipeline`] exactly as serving would, keeping the
//! converted weights, and writes them with the rest of the source checkpoint, so later loads
//! skip ISQ. The reading side (format, metadata keys) is [`crate::quant::gguf`], below the
//! models, which is why the export is not part of `quant`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::DType;

use crate::checkpoint::weights::{WeightFormat, GGUF_FILE};
use crate::checkpoint::Checkpoint;
use crate::nn::linear::LinearWeight;
use crate::pipeline::{LoadOptions, Pipeline};
use crate::quant::gguf::{ISQ_ENCODERS_KEY, ISQ_KEY};
use crate::quant::{qtensor_from_bytes, IsqType, LoadReport};
use crate::{Error, Result};

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

    let (pipeline, recorded) = Pipeline::load_recording(options)?;
    let load = pipeline.load_report().clone();
    // The recorded weights become the only owners, so they are moved below, not copied.
    drop(pipeline);
    let mut quantized: BTreeMap<String, QTensor> = BTreeMap::new();
    for (name, weight) in recorded {
        let q = match weight {
            LinearWeight::Half(t) => {
                QTensor::quantize(&t, if t.dtype() == DType::F16 { GgmlDType::F16 } else { GgmlDType::BF16 })?
            }
            LinearWeight::Dense(t) => QTensor::quantize(&t, GgmlDType::F32)?,
            blocks => {
                let q = blocks.to_qtensor()?.expect("quantized");
                // The recorded weight is then the tensor's last owner, and it moves, not copies.
                drop(blocks);
                match Arc::try_unwrap(q) {
                    Ok(q) => q,
                    Err(q) => clone_qtensor(&q)?,
                }
            }
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
    qtensor_from_bytes(&q.data()?, q.dtype(), q.shape().clone())
}
