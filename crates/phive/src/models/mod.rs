//! The model assemblies: one file per architecture, built from the shared layers in `nn`,
//! `vision` and `audio`.

pub mod phi3v;
pub mod phi4mm;
pub mod text_config;
