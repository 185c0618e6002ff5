//! Overrides of the checkpoint's image preprocessing, at load time (`--num-crops`,
//! `--dynamic-hd`) or per request (`num_crops`, `dynamic_hd`): the crop limit of each family,
//! checked against the family the model belongs to so a setting is never silently ignored.

use crate::checkpoint::Architecture;
use crate::vision::phi3v_hd::Phi3VImageProcessorConfig;
use crate::vision::phi4mm_hd::Phi4MMImageProcessorConfig;
use crate::{Error, Result};

/// Crop limits replacing `preprocessor_config.json`'s; `None` keeps the value in effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreprocessOptions {
    /// Phi-3.5-vision: most 336×336 crops per image (its model card: 4 for several images or
    /// video frames, 16 for a single image).
    pub num_crops: Option<usize>,
    /// Phi-4-multimodal: most 448×448 crops per image.
    pub dynamic_hd: Option<usize>,
}

impl PreprocessOptions {
    /// `base` with `num_crops` applied. Errors (their message starts with the field's name, so
    /// [`crate::api::ApiError`] names it) for a value out of range or a `dynamic_hd`.
    pub(crate) fn phi3v(&self, base: &Phi3VImageProcessorConfig) -> Result<Phi3VImageProcessorConfig> {
        other_family("dynamic_hd", self.dynamic_hd, Architecture::Phi3V, "num_crops")?;
        let mut config = base.clone();
        if let Some(num_crops) = self.num_crops {
            config.num_crops = num_crops;
            config.validate().map_err(Error::InvalidRequest)?;
        }
        Ok(config)
    }

    /// `base` with `dynamic_hd` applied; errors as [`Self::phi3v`] does.
    pub(crate) fn phi4mm(&self, base: &Phi4MMImageProcessorConfig) -> Result<Phi4MMImageProcessorConfig> {
        other_family("num_crops", self.num_crops, Architecture::Phi4MM, "dynamic_hd")?;
        let mut config = base.clone();
        if let Some(dynamic_hd) = self.dynamic_hd {
            config.dynamic_hd = dynamic_hd;
            config.validate().map_err(Error::InvalidRequest)?;
        }
        Ok(config)
    }
}

/// Refuses `field`, a setting of another family than `loaded`'s, when it is set.
fn other_family(field: &str, value: Option<usize>, loaded: Architecture, own: &str) -> Result<()> {
    let Some(value) = value else { return Ok(()) };
    let family = match loaded {
        Architecture::Phi3V => Architecture::Phi4MM,
        Architecture::Phi4MM => Architecture::Phi3V,
    };
    Err(Error::InvalidRequest(format!(
        "{field} ({value}) applies to {} only; the loaded model is {}, whose crop limit is {own}",
        family.display_name(),
        loaded.display_name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_its_own_family_and_refuses_the_other() {
        let phi3v = Phi3VImageProcessorConfig { num_crops: 4, ..Default::default() };
        let phi4mm = Phi4MMImageProcessorConfig { dynamic_hd: 36 };
        let none = PreprocessOptions::default();
        assert_eq!(none.phi3v(&phi3v).unwrap().num_crops, 4);
        assert_eq!(none.phi4mm(&phi4mm).unwrap().dynamic_hd, 36);
        let sixteen = PreprocessOptions { num_crops: Some(16), ..none };
        assert_eq!(sixteen.phi3v(&phi3v).unwrap().num_crops, 16);
        let err = sixteen.phi4mm(&phi4mm).unwrap_err().to_string();
        assert!(err.starts_with("num_crops (16) applies to Phi-3.5-vision only"), "{err}");
        let hd = PreprocessOptions { dynamic_hd: Some(4), ..none };
        assert_eq!(hd.phi4mm(&phi4mm).unwrap().dynamic_hd, 4);
        let err = hd.phi3v(&phi3v).unwrap_err().to_string();
        assert!(err.contains("the loaded model is Phi-3.5-vision, whose crop limit is num_crops"), "{err}");
    }

    #[test]
    fn refuses_values_out_of_range() {
        let phi3v = Phi3VImageProcessorConfig::default();
        for bad in [0, crate::vision::phi3v_hd::MAX_NUM_CROPS + 1] {
            let err =
                PreprocessOptions { num_crops: Some(bad), ..Default::default() }.phi3v(&phi3v).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRequest(ref m) if m.starts_with("num_crops must be between 1 and"))
            );
        }
        let phi4mm = Phi4MMImageProcessorConfig::default();
        for bad in [0, crate::vision::phi4mm_hd::MAX_DYNAMIC_HD + 1] {
            let err = PreprocessOptions { dynamic_hd: Some(bad), ..Default::default() }
                .phi4mm(&phi4mm)
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidRequest(ref m) if m.starts_with("dynamic_hd must be between 1 and"))
            );
        }
    }
}
