//! The model assemblies: one file per architecture, built from the shared layers in `nn`,
//! `vision` and (later) `audio`.

pub mod phi3v;
