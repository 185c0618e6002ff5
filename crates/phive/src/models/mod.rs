//! The model assemblies: one file per architecture, built from the shared layers in `nn`,
//! `vision` and `audio`, and [`LoadedModel`], the one place the family is matched.

pub mod loaded;
pub mod phi3v;
pub mod phi4mm;
pub mod preprocess;
pub mod text_config;

pub use loaded::{LoadedModel, MediaKey, PreparedMedia};
pub use preprocess::PreprocessOptions;
