//! Image preprocessing and image towers.

pub mod clip;
pub mod phi3v_hd;
pub mod phi4mm_hd;
pub mod resize;
pub mod siglip;
pub mod vit;
