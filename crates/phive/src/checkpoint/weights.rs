//! The safetensors files of a checkpoint: single-file or sharded (`model.safetensors.index.json`),
//! memory-mapped so loading never copies the whole model into memory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::hub::FileFetcher;
use crate::{Error, Result};

/// Name of the shard index written by `save_pretrained`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// The weight files of a checkpoint, in shard order.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    /// Every safetensors file of the checkpoint.
    pub files: Vec<PathBuf>,
}

impl WeightFiles {
    /// Finds (and, for Hub models, downloads) the weight files: the shards named by the index
    /// when there is one, else the single `model.safetensors`.
    pub fn fetch(fetcher: &mut FileFetcher) -> Result<Self> {
        if let Some(index) = fetcher.get_optional(INDEX_FILE)? {
            let shards = shard_names(&index)?;
            let files = shards
                .iter()
                .map(|name| fetcher.get(name))
                .collect::<Result<Vec<_>>>()?;
            return Ok(WeightFiles { files });
        }
        match fetcher.get_optional(SINGLE_FILE)? {
            Some(file) => Ok(WeightFiles { files: vec![file] }),
            None => Err(Error::ModelNotFound(format!(
                "{} has neither {INDEX_FILE} nor {SINGLE_FILE}; phive loads safetensors checkpoints",
                fetcher.describe()
            ))),
        }
    }

    /// Memory-maps the files into a `VarBuilder` that converts tensors to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        for file in &self.files {
            check_header(file)?;
        }
        // SAFETY: the files are memory-mapped read-only; modifying a checkpoint while it is
        // being loaded is outside what any loader can defend against.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.files, dtype, device) }.map_err(|e| {
            Error::checkpoint(self.files[0].clone(), format!("cannot map weights: {e}"))
        })
    }
}

/// The distinct shard file names listed in an index file's `weight_map`.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| Error::checkpoint(index, format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::checkpoint(index, "missing object key \"weight_map\""))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::checkpoint(
                index,
                format!("weight_map[{tensor:?}] must be a file name string"),
            )
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
    use std::io::Read;
    let bad = |msg: String| Error::checkpoint(file, msg);
    let mut f = std::fs::File::open(file).map_err(|e| bad(format!("cannot open: {e}")))?;
    let len = f
        .metadata()
        .map_err(|e| bad(format!("cannot stat: {e}")))?
        .len();
    let mut size = [0u8; 8];
    f.read_exact(&mut size)
        .map_err(|_| bad("not a safetensors file (shorter than its header)".into()))?;
    let header_len = u64::from_le_bytes(size);
    if header_len.saturating_add(8) > len || header_len > 100 * 1024 * 1024 {
        return Err(bad(format!(
            "not a safetensors file (header length {header_len} exceeds file size {len})"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read header: {e}")))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;
    let mut data_end = 0u64;
    for (name, info) in json.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad(format!("tensor {name} has no data_offsets")))?;
        data_end = data_end.max(end);
    }
    if 8 + header_len + data_end > len {
        return Err(bad(format!(
            "truncated: tensors need {} bytes but the file has {len}",
            8 + header_len + data_end
        )));
    }
    Ok(())
}
