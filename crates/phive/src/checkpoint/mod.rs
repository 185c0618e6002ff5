//! Checkpoints: resolving a model id, reading its JSON files, and detecting its architecture.

pub mod hub;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use hub::{FileFetcher, ModelLocation};
pub use tokenizer::TokenizerBundle;
pub use weights::WeightFiles;

use crate::{Error, Result};

/// The model families phive implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `microsoft/Phi-3.5-vision-instruct` (`Phi3VForCausalLM`).
    Phi3V,
    /// `microsoft/Phi-4-multimodal-instruct` (`Phi4MMForCausalLM`, the Hub's remote-code layout).
    Phi4MM,
}

impl Architecture {
    /// The `architectures` names this family is published under.
    const NAMES: &'static [(&'static str, Architecture)] =
        &[("Phi3VForCausalLM", Architecture::Phi3V), ("Phi4MMForCausalLM", Architecture::Phi4MM)];

    /// A short human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Phi3V => "phi3v",
            Architecture::Phi4MM => "phi4mm",
        }
    }

    /// The model family's name for people.
    pub fn display_name(self) -> &'static str {
        match self {
            Architecture::Phi3V => "Phi-3.5-vision",
            Architecture::Phi4MM => "Phi-4-multimodal",
        }
    }

    /// Detects the architecture from `config.json` (`architectures`, else `model_type`).
    pub fn detect(config: &Value, path: &Path) -> Result<Self> {
        let declared = config
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str);
        let found = match declared {
            Some(name) => name.to_string(),
            None => match config.get("model_type").and_then(Value::as_str) {
                Some("phi3_v") => return Ok(Architecture::Phi3V),
                Some("phi4mm") => return Ok(Architecture::Phi4MM),
                Some(other) => other.to_string(),
                None => {
                    return Err(Error::checkpoint(
                        path,
                        "neither \"architectures\" nor \"model_type\" is set",
                    ))
                }
            },
        };
        Self::NAMES.iter().find(|(n, _)| *n == found).map(|(_, a)| *a).ok_or_else(|| {
            Error::UnsupportedArchitecture {
                found,
                path: path.to_path_buf(),
                supported: Self::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            }
        })
    }
}

/// The files of a checkpoint, resolved to local paths and parsed where cheap.
pub struct Checkpoint {
    /// Where the checkpoint came from (a folder or `org/name@revision`).
    pub source: String,
    /// Path of `config.json`.
    pub config_path: PathBuf,
    /// Parsed `config.json`.
    pub config: Value,
    /// The detected model family.
    pub architecture: Architecture,
    /// The safetensors files.
    pub weights: WeightFiles,
    /// Tokenizer, chat template and stop tokens.
    pub tokenizer: TokenizerBundle,
    /// `preprocessor_config.json`, when the checkpoint has one.
    pub preprocessor_config: Option<PathBuf>,
}

impl Checkpoint {
    /// Resolves `model` (a local folder or a Hub id at `revision`) and reads its files.
    pub fn open(model: &str, revision: Option<&str>) -> Result<Self> {
        Self::open_with(FileFetcher::new(ModelLocation::parse(model, revision)?))
    }

    /// Reads a checkpoint through `fetcher`.
    pub fn open_with(mut fetcher: FileFetcher) -> Result<Self> {
        let config_path = fetcher.get("config.json")?;
        let config = read_json(&config_path)?;
        let architecture = Architecture::detect(&config, &config_path)?;
        let tokenizer = TokenizerBundle::fetch(&mut fetcher)?;
        let preprocessor_config = fetcher.get_optional("preprocessor_config.json")?;
        let weights = WeightFiles::fetch(&mut fetcher)?;
        Ok(Checkpoint {
            source: fetcher.describe(),
            config_path,
            config,
            architecture,
            weights,
            tokenizer,
            preprocessor_config,
        })
    }
}

/// Reads and parses a JSON file, naming the file in every error.
pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::checkpoint(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("invalid JSON: {e}")))
}
