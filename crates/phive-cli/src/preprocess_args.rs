//! Image preprocessing options shared by `phive serve`, `phive run` and `phive chat`.

use clap::Args;
use phive::models::PreprocessOptions;
use phive::pipeline::Pipeline;

/// Crop limits replacing the checkpoint's `preprocessor_config.json`. A limit of the other
/// family stops the load with an error rather than a warning: the user asked for a resolution
/// the model would not get, and a warning scrolls by unnoticed in a server's log.
#[derive(Args, Debug, Clone)]
pub struct PreprocessArgs {
    /// Phi-3.5-vision: most 336x336 crops per image, 1..=256 (default: the checkpoint's, 4 on
    /// the Hub; the model card recommends 4 for several images or video frames, 16 for one
    /// image). Requests may set their own `num_crops`.
    #[arg(long, global = true, value_name = "N", env = "PHIVE_NUM_CROPS")]
    num_crops: Option<usize>,
    /// Phi-4-multimodal: most 448x448 crops per image, 1..=1024 (default: the checkpoint's,
    /// 36 on the Hub). Requests may set their own `dynamic_hd`.
    #[arg(long, global = true, value_name = "N", env = "PHIVE_DYNAMIC_HD")]
    dynamic_hd: Option<usize>,
}

impl PreprocessArgs {
    /// The load options these flags describe.
    pub fn options(&self) -> PreprocessOptions {
        PreprocessOptions { num_crops: self.num_crops, dynamic_hd: self.dynamic_hd }
    }
}

/// The load summary's part about images: `num_crops 16`.
pub fn summary(pipeline: &Pipeline) -> String {
    let (name, value) = pipeline.crop_limit();
    format!("{name} {value}")
}
