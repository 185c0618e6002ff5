//! The weight files of a checkpoint: safetensors, single-file or sharded
//! (`model.safetensors.index.json`), memory-mapped so loading never copies the whole model into
//! memory, or read tensor by tensor when quantizing in situ; or one `model.gguf` written by
//! `phive quantize`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::hub::FileFetcher;
use crate::{Error, Result};

/// Name of the shard index written by `save_pretrained`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the quantized checkpoint written by `phive quantize`.
pub const GGUF_FILE: &str = "model.gguf";

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Hugging Face safetensors (the published checkpoints).
    Safetensors,
    /// A GGUF file from `phive quantize`: quantized linears plus the full-precision rest.
    Gguf,
}

/// The weight files of a checkpoint, in shard order.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    /// Every weight file of the checkpoint.
    pub files: Vec<PathBuf>,
    /// Their format.
    pub format: WeightFormat,
}

/// Where one safetensors tensor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Index into [`WeightFiles::files`].
    pub file: usize,
    /// Stored dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub start: u64,
    /// Byte length of the data.
    pub len: u64,
}

impl WeightFiles {
    /// Finds (and, for Hub models, downloads) the weight files: the shards named by the index
    /// when there is one, else the single `model.safetensors`.
    pub fn fetch(fetcher: &mut FileFetcher) -> Result<Self> {
        if let Some(index) = fetcher.get_optional(INDEX_FILE)? {
            let shards = shard_names(&index)?;
            let files = shards.iter().map(|name| fetcher.get(name)).collect::<Result<Vec<_>>>()?;
            return Ok(WeightFiles { files, format: WeightFormat::Safetensors });
        }
        if let Some(file) = fetcher.get_optional(SINGLE_FILE)? {
            return Ok(WeightFiles { files: vec![file], format: WeightFormat::Safetensors });
        }
        match fetcher.get_optional(GGUF_FILE)? {
            Some(file) => Ok(WeightFiles { files: vec![file], format: WeightFormat::Gguf }),
            None => Err(Error::ModelNotFound(format!(
                "{} has neither {INDEX_FILE}, {SINGLE_FILE} nor {GGUF_FILE}; phive loads safetensors checkpoints and GGUF files from `phive quantize`",
                fetcher.describe()
            ))),
        }
    }

    /// A `VarBuilder` that converts tensors to `dtype` on `device`: the safetensors memory-mapped,
    /// or a GGUF read tensor by tensor (quantized tensors dequantized).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        if self.format == WeightFormat::Gguf {
            let file = self.files.first().ok_or_else(|| Error::ModelNotFound("no GGUF file".into()))?;
            let store = Arc::new(crate::quant::gguf::GgufStore::open(file)?);
            return Ok(crate::quant::gguf::var_builder(store, dtype, device));
        }
        for file in &self.files {
            check_header(file)?;
        }
        // SAFETY: the files are memory-mapped read-only; modifying a checkpoint while it is
        // being loaded is outside what any loader can defend against.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.files, dtype, device) }
            .map_err(|e| Error::checkpoint(self.files[0].clone(), format!("cannot map weights: {e}")))
    }

    /// Every tensor of the safetensors files, by name (headers only; nothing is read).
    pub fn tensor_index(&self) -> Result<BTreeMap<String, TensorEntry>> {
        if self.format != WeightFormat::Safetensors {
            return Err(Error::checkpoint(
                self.files.first().cloned().unwrap_or_default(),
                "not a safetensors checkpoint",
            ));
        }
        let mut index = BTreeMap::new();
        for (i, file) in self.files.iter().enumerate() {
            for (name, mut entry) in parse_header(file)? {
                entry.file = i;
                index.insert(name, entry);
            }
        }
        Ok(index)
    }

    /// A reader that loads one tensor at a time with plain reads (no memory map).
    pub fn reader(&self) -> Result<SafetensorsReader> {
        let index = self.tensor_index()?;
        let files = self
            .files
            .iter()
            .map(|f| {
                File::open(f).map(Mutex::new).map_err(|e| Error::checkpoint(f, format!("cannot open: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SafetensorsReader { paths: self.files.clone(), files, index })
    }

    /// Like [`WeightFiles::var_builder`], but reading each tensor into memory when asked for it
    /// instead of memory-mapping the files: checkpoint pages then never count in the process's
    /// resident set, which keeps the peak RSS of an in-situ quantizing load near the quantized
    /// size. Also returns every tensor's stored dtype.
    pub fn streaming_var_builder(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, HashMap<String, DType>)> {
        let reader = self.reader()?;
        let dtypes = reader.index.iter().map(|(n, e)| (n.clone(), e.dtype)).collect();
        Ok((VarBuilder::from_backend(Box::new(reader), dtype, device.clone()), dtypes))
    }
}

/// Reads safetensors tensors one at a time (see [`WeightFiles::reader`]).
pub struct SafetensorsReader {
    paths: Vec<PathBuf>,
    files: Vec<Mutex<File>>,
    index: BTreeMap<String, TensorEntry>,
}

impl SafetensorsReader {
    /// The tensor directory.
    pub fn index(&self) -> &BTreeMap<String, TensorEntry> {
        &self.index
    }

    /// Reads tensor `name` in its stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        let path = &self.paths[entry.file];
        let io = |e: std::io::Error| Error::checkpoint(path, format!("cannot read {name}: {e}"));
        let mut file = self.files[entry.file].lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(entry.start)).map_err(io)?;
        let shape = Shape::from(entry.shape.clone());
        let count = shape.elem_count();
        let t = match entry.dtype {
            DType::F32 => {
                Tensor::from_vec(read_floats::<f32>(&mut file, count).map_err(io)?, shape, &Device::Cpu)?
            }
            DType::F16 => Tensor::from_vec(
                read_floats::<half::f16>(&mut file, count).map_err(io)?,
                shape,
                &Device::Cpu,
            )?,
            DType::BF16 => Tensor::from_vec(
                read_floats::<half::bf16>(&mut file, count).map_err(io)?,
                shape,
                &Device::Cpu,
            )?,
            other => {
                let mut bytes = vec![0u8; entry.len as usize];
                file.read_exact(&mut bytes).map_err(io)?;
                Tensor::from_raw_buffer(&bytes, other, shape.dims(), &Device::Cpu)?
            }
        };
        Ok(t)
    }
}

/// Float element types read straight from little-endian bytes.
trait Float: Copy + Default {}
impl Float for f32 {}
impl Float for half::f16 {}
impl Float for half::bf16 {}

fn read_floats<T: Float>(file: &mut File, count: usize) -> std::io::Result<Vec<T>> {
    let mut v = vec![T::default(); count];
    // SAFETY: T is f32, f16 or bf16: plain old data for which every bit pattern is a valid value,
    // so viewing the initialised buffer as bytes and overwriting them is sound. safetensors is
    // little-endian, as is every target phive builds for (x86-64, aarch64).
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), count * std::mem::size_of::<T>())
    };
    file.read_exact(bytes)?;
    Ok(v)
}

fn map_err(e: Error) -> candle_core::Error {
    match e {
        Error::Tensor(t) => t,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

/// `t` if it has the shape a layer asked `name` for; candle's shape error naming both otherwise.
pub(crate) fn expect_shape(t: Tensor, expected: Shape, name: &str) -> candle_core::Result<Tensor> {
    if t.shape() != &expected {
        return Err(candle_core::Error::UnexpectedShape {
            msg: format!("shape mismatch for {name}"),
            expected,
            got: t.shape().clone(),
        });
    }
    Ok(t)
}

impl SimpleBackend for SafetensorsReader {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.read(name).map_err(map_err)?;
        expect_shape(t, s, name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name).map_err(map_err)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// The distinct shard file names listed in an index file's `weight_map`.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).map_err(|e| Error::checkpoint(index, format!("cannot read: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::checkpoint(index, "missing object key \"weight_map\""))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::checkpoint(index, format!("weight_map[{tensor:?}] must be a file name string"))
        })?;
        if file.contains("..") || file.starts_with('/') {
            return Err(Error::checkpoint(
                index,
                format!("weight_map[{tensor:?}] names an unsafe path {file:?}"),
            ));
        }
        names.insert(file.to_string());
    }
    if names.is_empty() {
        return Err(Error::checkpoint(index, "weight_map is empty"));
    }
    Ok(names.into_iter().collect())
}

/// Reads the safetensors header so a truncated or non-safetensors file fails with its name.
fn check_header(file: &Path) -> Result<()> {
    parse_header(file).map(|_| ())
}

fn safetensors_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Parses and validates a safetensors header: every tensor's dtype, shape and data range
/// (`file` index 0; the caller sets it).
fn parse_header(file: &Path) -> Result<Vec<(String, TensorEntry)>> {
    let bad = |msg: String| Error::checkpoint(file, msg);
    let mut f = std::fs::File::open(file).map_err(|e| bad(format!("cannot open: {e}")))?;
    let len = f.metadata().map_err(|e| bad(format!("cannot stat: {e}")))?.len();
    let mut size = [0u8; 8];
    f.read_exact(&mut size).map_err(|_| bad("not a safetensors file (shorter than its header)".into()))?;
    let header_len = u64::from_le_bytes(size);
    if header_len.saturating_add(8) > len || header_len > 100 * 1024 * 1024 {
        return Err(bad(format!(
            "not a safetensors file (header length {header_len} exceeds file size {len})"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("cannot read header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;
    let mut data_end = 0u64;
    let mut entries = Vec::new();
    for (name, info) in json.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let offset = |i: usize| offsets.and_then(|o| o.get(i)).and_then(|v| v.as_u64());
        let (Some(begin), Some(end)) = (offset(0), offset(1)) else {
            return Err(bad(format!("tensor {name} has no data_offsets")));
        };
        if begin > end {
            return Err(bad(format!("tensor {name} has data_offsets [{begin}, {end}]")));
        }
        data_end = data_end.max(end);
        let dtype_name = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let shape: Option<Vec<usize>> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect());
        // Tensors of dtypes candle cannot represent are listed as U8 bytes: they only fail if read.
        let dtype = safetensors_dtype(dtype_name).unwrap_or(DType::U8);
        let shape = shape.unwrap_or_default();
        let expected = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        if safetensors_dtype(dtype_name).is_some() && expected != end - begin {
            return Err(bad(format!(
                "tensor {name}: {dtype_name} {shape:?} needs {expected} bytes but data_offsets span {}",
                end - begin
            )));
        }
        entries.push((
            name.clone(),
            TensorEntry { file: 0, dtype, shape, start: 8 + header_len + begin, len: end - begin },
        ));
    }
    if 8 + header_len + data_end > len {
        return Err(bad(format!(
            "truncated: tensors need {} bytes but the file has {len}",
            8 + header_len + data_end
        )));
    }
    Ok(entries)
}
