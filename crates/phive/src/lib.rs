//! phive: an inference engine for the Phi vision-language models
//! (`microsoft/Phi-3.5-vision-instruct`, `microsoft/Phi-4-multimodal-instruct`).
//!
//! Data flows one way through the modules below (see `docs/architecture.md`):
//! `checkpoint` loads files, `media` turns sources into decoded images, `vision` preprocesses
//! them exactly as the Hugging Face reference does, `prompt` renders the chat template and places
//! the media tokens, `models` runs the networks, and `engine` samples, stops and detokenizes.

pub mod api;
pub mod audio;
pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod engine;
pub mod error;
/// Saving a quantized checkpoint as GGUF (`phive quantize`); above `pipeline`, which it loads with.
pub mod export;
pub mod fault;
pub mod fuzzing;
pub mod kernels;
pub mod media;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod prompt;
pub mod quant;
pub mod sdk;
pub mod vision;

pub use api::{FunctionDefinition, Tool, ToolChoice};
pub use device::{DeviceChoice, ModelDType};
pub use engine::Grammar;
pub use error::{Error, Result};
pub use nn::kv_cache::KvDtype;
pub use quant::IsqType;
pub use sdk::{
    ChatStream, Images, Model, RequestBuilder, RequestLike, Response, TextMessageRole, VisionArchitecture,
    VisionMessages, VisionModelBuilder,
};
