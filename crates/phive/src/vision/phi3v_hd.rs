//! Phi-3.5-vision image preprocessing: the "HD transform" of the Hub's remote code
//! `image_processing_phi3_v.py` (`Phi3VImageProcessor`), reproduced pixel for pixel.
//!
//! Per image, independently:
//! 1. convert to RGB as PIL's `Image.convert("RGB")` does (alpha is dropped, not composited);
//! 2. if the image is portrait, transpose it (a true transpose, not a rotation);
//! 3. pick the largest `scale` with `scale * ceil(scale / ratio) <= num_crops`, resize to
//!    `scale * 336` wide with Pillow's antialiased bilinear filter (what torchvision does to a
//!    PIL image), keeping the aspect ratio (the height is truncated);
//! 4. pad the height with white to a multiple of 336, centred (`padding_336`), transpose back;
//! 5. `ToTensor` + `Normalize` to an `f32` `[3, H, W]` "HD" tensor;
//! 6. global view: PyTorch bicubic interpolation of the HD tensor to 336x336;
//! 7. crops: the HD tensor cut into 336x336 tiles, row-major, after the global view.
//!
//! The HF processor then zero-pads every image to `num_crops + 1` crops; the model ignores those
//! padding crops, so they are not materialised here ([`Phi3VImage::num_crops_padded`] says how
//! many there would be).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::Deserialize;

use crate::vision::resize::{interpolate_bicubic, resize_bilinear_pil};
use crate::{Error, Result};

/// Side of one crop (and of the global view) in pixels: the CLIP ViT-L/14-336 input size.
pub const CROP_SIZE: usize = 336;
/// Side of one CLIP patch in pixels.
pub const PATCH_SIZE: usize = 14;
/// Patches along one side of a crop (24).
pub const PATCHES_PER_SIDE: usize = CROP_SIZE / PATCH_SIZE;
/// Tokens along one side of a crop after the 2x2 patch merge of the image projection (12).
pub const MERGED_PER_SIDE: usize = PATCHES_PER_SIDE / 2;
/// Tokens per crop after the 2x2 merge (144).
pub const TOKENS_PER_CROP: usize = MERGED_PER_SIDE * MERGED_PER_SIDE;

/// Upper bound accepted for `num_crops`. The reference has none, but the HD canvas grows with
/// it; the Hub ships 4 and recommends 16 for single images, so this only rejects nonsense.
pub const MAX_NUM_CROPS: usize = 256;

/// OpenAI CLIP normalisation mean (transformers' `OPENAI_CLIP_MEAN`), the processor's default.
/// Written as the Python float (an `f64`) narrowed to `f32`, the same double rounding torch
/// applies when it builds the `float32` mean tensor.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.48145466_f64 as f32, 0.4578275_f64 as f32, 0.40821073_f64 as f32];
/// OpenAI CLIP normalisation std (transformers' `OPENAI_CLIP_STD`), the processor's default.
pub const OPENAI_CLIP_STD: [f32; 3] = [0.26862954_f64 as f32, 0.26130258_f64 as f32, 0.27577711_f64 as f32];

/// `preprocessor_config.json` of Phi-3.5-vision.
///
/// Missing keys take the defaults of the HF class (`num_crops = 1`, CLIP mean/std,
/// `do_convert_rgb = true`; the Hub checkpoint sets `num_crops = 4`); unknown keys
/// (`image_processor_type`, `num_img_tokens`, `auto_map`, ...) are ignored. `image_mean` and
/// `image_std` may be a list of three numbers or a single number for all channels, as in HF.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Phi3VImageProcessorConfig {
    /// Maximum number of 336x336 sub-crops per image (`hd_num` of the HD transform).
    #[serde(default = "default_num_crops")]
    pub num_crops: usize,
    /// Per-channel mean subtracted after scaling pixels to `[0, 1]`.
    #[serde(default = "default_mean", deserialize_with = "de_channels_mean")]
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default = "default_std", deserialize_with = "de_channels_std")]
    pub image_std: [f32; 3],
    /// Kept for fidelity with the config file. It changes nothing for decoded images: the
    /// reference converts every PIL image to RGB again right after this optional step.
    #[serde(default = "default_true")]
    pub do_convert_rgb: bool,
}

fn default_num_crops() -> usize {
    1
}
fn default_mean() -> [f32; 3] {
    OPENAI_CLIP_MEAN
}
fn default_std() -> [f32; 3] {
    OPENAI_CLIP_STD
}
fn default_true() -> bool {
    true
}

/// `float | [float, float, float] | null`, as HF accepts for `image_mean` / `image_std`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Channels {
    One(f32),
    Three([f32; 3]),
}

fn de_channels<'de, D: serde::Deserializer<'de>>(
    d: D,
    default: [f32; 3],
) -> std::result::Result<[f32; 3], D::Error> {
    Ok(match Option::<Channels>::deserialize(d)? {
        None => default,
        Some(Channels::One(v)) => [v; 3],
        Some(Channels::Three(v)) => v,
    })
}
fn de_channels_mean<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[f32; 3], D::Error> {
    de_channels(d, OPENAI_CLIP_MEAN)
}
fn de_channels_std<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[f32; 3], D::Error> {
    de_channels(d, OPENAI_CLIP_STD)
}

impl Default for Phi3VImageProcessorConfig {
    /// The HF class defaults (note: `num_crops = 1`, not the Hub checkpoint's 4).
    fn default() -> Self {
        Self { num_crops: 1, image_mean: OPENAI_CLIP_MEAN, image_std: OPENAI_CLIP_STD, do_convert_rgb: true }
    }
}

impl Phi3VImageProcessorConfig {
    /// Reads and validates `preprocessor_config.json`. Errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::checkpoint(path, format!("cannot read: {e}")))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(path, format!("invalid Phi-3.5-vision preprocessor config: {e}"))
        })?;
        config.validate().map_err(|m| Error::checkpoint(path, m))?;
        Ok(config)
    }

    /// Checks values the transform cannot work with (the reference would crash or divide by
    /// zero on them).
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.num_crops == 0 || self.num_crops > MAX_NUM_CROPS {
            return Err(format!("num_crops must be between 1 and {MAX_NUM_CROPS}, got {}", self.num_crops));
        }
        if self.image_std.iter().any(|s| *s == 0.0 || !s.is_finite())
            || self.image_mean.iter().any(|m| !m.is_finite())
        {
            return Err(format!(
                "image_mean must be finite and image_std finite and non-zero, got {:?} / {:?}",
                self.image_mean, self.image_std
            ));
        }
        Ok(())
    }

    /// Total crops per image in the HF processor's padded output: the global view plus
    /// `num_crops` sub-crop slots.
    pub fn max_crops(&self) -> usize {
        self.num_crops + 1
    }
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct Phi3VImage {
    /// `f32` on the CPU, `[1 + rows * cols, 3, 336, 336]`: the global view first, then the
    /// sub-crops in row-major order. Not padded to `num_crops + 1`.
    pub pixel_values: Tensor,
    /// `(height, width)` of the HD canvas in pixels, both multiples of 336 (the reference's
    /// `image_sizes` entry).
    pub hd_size: (usize, usize),
    /// Number of `<|image|>` placeholder tokens this image expands to in the prompt.
    pub num_image_tokens: usize,
    /// Crops the HF processor would emit for this image after zero-padding
    /// (`num_crops + 1`); the `num_crops_padded - 1 - rows * cols` padding crops are not
    /// materialised.
    pub num_crops_padded: usize,
}

impl Phi3VImage {
    /// `(rows, cols)` of the sub-crop grid.
    pub fn grid(&self) -> (usize, usize) {
        (self.hd_size.0 / CROP_SIZE, self.hd_size.1 / CROP_SIZE)
    }

    /// Number of crops in `pixel_values` (global view included).
    pub fn num_crops(&self) -> usize {
        let (rows, cols) = self.grid();
        1 + rows * cols
    }
}

/// Token count of an image whose HD canvas is `rows x cols` crops: each crop gives 12x12 merged
/// tokens, each of the `rows * 12` sub-image token rows ends with a newline token, the global
/// view gives 12x(12 + 1), and one separator sits between sub-images and global view.
pub fn num_image_tokens_for_grid(rows: usize, cols: usize) -> usize {
    (rows * cols + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * MERGED_PER_SIDE
}

/// Geometry of the HD transform, in the landscape orientation the reference works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HdGeometry {
    /// The image was portrait and is processed transposed.
    transposed: bool,
    /// Resize target `(width, height)` in the working (landscape) orientation.
    resized: (usize, usize),
    /// Height after `padding_336` in the working orientation.
    padded_h: usize,
    /// White rows above the resized image (the rest goes below).
    top: usize,
}

impl HdGeometry {
    /// `(height, width)` of the final HD canvas in the original orientation.
    fn hd_size(&self) -> (usize, usize) {
        if self.transposed {
            (self.resized.0, self.padded_h)
        } else {
            (self.padded_h, self.resized.0)
        }
    }
}

/// The reference's `scale` search and resize target, reproducing its float64 arithmetic.
/// Returns `(width, height)` of the resize in the landscape orientation, `height` possibly 0.
fn resize_target(width: u32, height: u32, num_crops: usize) -> (bool, usize, usize) {
    let transposed = width < height;
    let (w, h) = if transposed { (height, width) } else { (width, height) };
    let ratio = f64::from(w) / f64::from(h);
    let mut scale = 1usize;
    // `while scale * np.ceil(scale / ratio) <= hd_num: scale += 1`; ceil(..) >= 1 for a
    // positive ratio, so this stops by `num_crops + 1`.
    while scale as f64 * (scale as f64 / ratio).ceil() <= num_crops as f64 {
        scale += 1;
    }
    scale -= 1;
    let new_w = scale * CROP_SIZE;
    // `int(new_w / ratio)`: float64 division, truncation.
    let new_h = (new_w as f64 / ratio) as usize;
    (transposed, new_w, new_h)
}

fn hd_geometry(width: u32, height: u32, config: &Phi3VImageProcessorConfig) -> Result<HdGeometry> {
    config.validate().map_err(|m| Error::checkpoint("preprocessor_config.json", m))?;
    if width == 0 || height == 0 {
        return Err(Error::Media(format!("image has no pixels ({width}x{height})")));
    }
    let (transposed, new_w, new_h) = resize_target(width, height, config.num_crops);
    if new_h == 0 {
        let (long, short) = (width.max(height), width.min(height));
        return Err(Error::InvalidRequest(format!(
            "image of {width}x{height} pixels has an aspect ratio too extreme for Phi-3.5-vision \
             ({long}:{short}; its short side would be resized to 0 pixels); at most {new_w}:1 is supported \
             with num_crops = {}",
            config.num_crops
        )));
    }
    let padded_h = new_h.div_ceil(CROP_SIZE) * CROP_SIZE;
    let top = (padded_h - new_h) / 2;
    Ok(HdGeometry { transposed, resized: (new_w, new_h), padded_h, top })
}

/// `(height, width)` of the HD canvas for an image of this size, or the error
/// [`preprocess`] would return for it.
pub fn hd_canvas_size(width: u32, height: u32, config: &Phi3VImageProcessorConfig) -> Result<(usize, usize)> {
    hd_geometry(width, height, config).map(|g| g.hd_size())
}

/// The token count for an image of this size without preprocessing it (for validation and
/// KV-cache planning). Equals [`Phi3VImage::num_image_tokens`] of [`preprocess`] whenever
/// that succeeds. For sizes `preprocess` rejects it mirrors the reference's
/// `calc_num_image_tokens_from_image_size` (an aspect ratio too extreme gives a 0-row canvas;
/// a zero dimension or `num_crops = 0` gives the count of an empty canvas) instead of failing;
/// use [`hd_canvas_size`] to validate.
pub fn num_image_tokens_for(width: u32, height: u32, config: &Phi3VImageProcessorConfig) -> usize {
    if width == 0 || height == 0 {
        return num_image_tokens_for_grid(0, 0);
    }
    let (transposed, new_w, new_h) = resize_target(width, height, config.num_crops);
    let padded_h = new_h.div_ceil(CROP_SIZE) * CROP_SIZE;
    let (h, w) = if transposed { (new_w, padded_h) } else { (padded_h, new_w) };
    num_image_tokens_for_grid(h / CROP_SIZE, w / CROP_SIZE)
}

/// `PIL.Image.convert("RGB")` of the image as PIL would have decoded it: alpha is dropped (not
/// composited on white: transformers' `convert_to_rgb` is a plain `convert("RGB")`), grey is
/// replicated, 16-bit RGB(A) and grey+alpha keep the high byte (PIL decodes 16-bit PNGs that
/// way), and 16-bit grey is clipped to 255 (PIL's `I;16` to `RGB` conversion clips, it does
/// not rescale).
pub fn to_rgb_like_pil(image: &DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    match image {
        DynamicImage::ImageRgb8(img) => img.clone(),
        DynamicImage::ImageRgba8(img) => RgbImage::from_fn(w, h, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([p[0], p[1], p[2]])
        }),
        DynamicImage::ImageLuma8(img) => RgbImage::from_fn(w, h, |x, y| {
            let v = img.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA8(img) => RgbImage::from_fn(w, h, |x, y| {
            let v = img.get_pixel(x, y).0[0];
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageRgb16(img) => RgbImage::from_fn(w, h, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
        }),
        DynamicImage::ImageRgba16(img) => RgbImage::from_fn(w, h, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
        }),
        DynamicImage::ImageLuma16(img) => RgbImage::from_fn(w, h, |x, y| {
            let v = img.get_pixel(x, y).0[0].min(255) as u8;
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(img) => RgbImage::from_fn(w, h, |x, y| {
            let v = (img.get_pixel(x, y).0[0] >> 8) as u8;
            image::Rgb([v, v, v])
        }),
        // Float images are not produced by the enabled decoders.
        other => other.to_rgb8(),
    }
}

/// `Image.transpose(Image.TRANSPOSE)`: swaps rows and columns.
fn transpose(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.height(), img.width(), |x, y| *img.get_pixel(y, x))
}

/// `ToTensor()` then `Normalize(mean, std)` as torchvision computes them in `f32`:
/// `(v / 255 - mean) / std`, each operation rounded to `f32`. Indexed by channel and value.
fn normalization_table(config: &Phi3VImageProcessorConfig) -> [[f32; 256]; 3] {
    let mut table = [[0f32; 256]; 3];
    for (c, row) in table.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - config.image_mean[c]) / config.image_std[c];
        }
    }
    table
}

/// Runs the Phi-3.5-vision image processor on one decoded image.
///
/// Errors: [`Error::InvalidRequest`] for an aspect ratio so extreme that the short side would
/// be resized to 0 pixels (the reference crashes there), [`Error::Checkpoint`] for an invalid
/// `config` (e.g. `num_crops = 0`).
pub fn preprocess(image: &DynamicImage, config: &Phi3VImageProcessorConfig) -> Result<Phi3VImage> {
    let geometry = hd_geometry(image.width(), image.height(), config)?;
    let mut rgb = to_rgb_like_pil(image);
    if geometry.transposed {
        rgb = transpose(&rgb);
    }
    let (new_w, new_h) = geometry.resized;
    let resized = resize_bilinear_pil(&rgb, new_w as u32, new_h as u32);
    drop(rgb);

    // `padding_336`: white rows above and below, centred.
    let mut canvas =
        RgbImage::from_pixel(new_w as u32, geometry.padded_h as u32, image::Rgb([255, 255, 255]));
    let row_bytes = new_w * 3;
    let offset = geometry.top * row_bytes;
    (*canvas)[offset..offset + new_h * row_bytes].copy_from_slice(resized.as_raw());
    drop(resized);
    if geometry.transposed {
        canvas = transpose(&canvas);
    }
    let (hd_h, hd_w) = geometry.hd_size();
    debug_assert_eq!((canvas.height() as usize, canvas.width() as usize), (hd_h, hd_w));

    // HD tensor [3, H, W].
    let table = normalization_table(config);
    let plane = hd_h * hd_w;
    let mut hd = vec![0f32; 3 * plane];
    for (i, px) in canvas.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            hd[c * plane + i] = table[c][px[c] as usize];
        }
    }
    drop(canvas);

    let (rows, cols) = (hd_h / CROP_SIZE, hd_w / CROP_SIZE);
    let crop_len = 3 * CROP_SIZE * CROP_SIZE;
    let n_crops = 1 + rows * cols;
    let mut pixels = Vec::with_capacity(n_crops * crop_len);
    pixels.extend(interpolate_bicubic(&hd, 3, hd_h, hd_w, CROP_SIZE, CROP_SIZE));
    // reshape(3, rows, 336, cols, 336).permute(1, 3, 0, 2, 4): crop (r, q) row-major.
    for r in 0..rows {
        for q in 0..cols {
            for c in 0..3 {
                for y in 0..CROP_SIZE {
                    let start = c * plane + (r * CROP_SIZE + y) * hd_w + q * CROP_SIZE;
                    pixels.extend_from_slice(&hd[start..start + CROP_SIZE]);
                }
            }
        }
    }
    let pixel_values = Tensor::from_vec(pixels, (n_crops, 3, CROP_SIZE, CROP_SIZE), &Device::Cpu)?;
    Ok(Phi3VImage {
        pixel_values,
        hd_size: (hd_h, hd_w),
        num_image_tokens: num_image_tokens_for_grid(rows, cols),
        num_crops_padded: config.max_crops(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(num_crops: usize) -> Phi3VImageProcessorConfig {
        Phi3VImageProcessorConfig { num_crops, ..Default::default() }
    }

    #[test]
    fn token_constants_follow_tower_geometry() {
        assert_eq!(PATCHES_PER_SIDE, 24);
        assert_eq!(TOKENS_PER_CROP, 144);
        assert_eq!(MERGED_PER_SIDE, 12);
    }

    #[test]
    fn scale_search_matches_reference() {
        // (w, h, num_crops) -> (transposed, new_w, new_h), computed with the reference's Python.
        let cases = [
            ((1000, 600, 4), (false, 672, 403)),
            ((600, 1000, 4), (true, 672, 403)),
            ((336, 336, 4), (false, 672, 672)),
            ((336, 336, 16), (false, 1344, 1344)),
            ((1000, 600, 16), (false, 1680, 1008)),
            ((3000, 20, 4), (false, 1344, 8)),
            ((2000, 500, 4), (false, 1344, 336)),
            ((1, 1, 1), (false, 336, 336)),
            ((500, 499, 4), (false, 672, 670)),
        ];
        for ((w, h, n), want) in cases {
            assert_eq!(resize_target(w, h, n), want, "{w}x{h} num_crops={n}");
        }
    }

    #[test]
    fn worked_example_token_count() {
        // 1000x600, num_crops 4 -> 672x403 -> padded 672x672 -> 2x2 grid -> 757 tokens.
        let c = config(4);
        assert_eq!(hd_canvas_size(1000, 600, &c).unwrap(), (672, 672));
        assert_eq!(num_image_tokens_for(1000, 600, &c), 757);
        assert_eq!(num_image_tokens_for(600, 1000, &c), 757);
        // 2000x500 -> 1344x336: 1 row x 4 cols.
        assert_eq!(hd_canvas_size(2000, 500, &c).unwrap(), (336, 1344));
        assert_eq!(num_image_tokens_for(2000, 500, &c), (4 + 1) * 144 + 1 + 2 * 12);
        // Portrait: 4 rows x 1 col, so the row term differs from the landscape one.
        assert_eq!(hd_canvas_size(500, 2000, &c).unwrap(), (1344, 336));
        assert_eq!(num_image_tokens_for(500, 2000, &c), (4 + 1) * 144 + 1 + 5 * 12);
    }

    fn solid(w: u32, h: u32, v: u8) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb([v, v, v])))
    }

    /// Value of channel 0 of the HD canvas at (y, x), read back from the crops.
    fn hd_value(img: &Phi3VImage, y: usize, x: usize) -> f32 {
        let (_, cols) = img.grid();
        let crop = 1 + (y / CROP_SIZE) * cols + x / CROP_SIZE;
        img.pixel_values
            .get(crop)
            .unwrap()
            .get(0)
            .unwrap()
            .get(y % CROP_SIZE)
            .unwrap()
            .get(x % CROP_SIZE)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn landscape_padding_is_centred_vertically() {
        // 1000x600 black -> 672x403 black, padded to 672 rows: top = (672-403)/2 = 134.
        let img = preprocess(&solid(1000, 600, 0), &config(4)).unwrap();
        assert_eq!(img.hd_size, (672, 672));
        let white = (1.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0];
        let black = (0.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0];
        assert_eq!(hd_value(&img, 133, 300), white);
        assert_eq!(hd_value(&img, 134, 300), black);
        assert_eq!(hd_value(&img, 134 + 402, 300), black);
        assert_eq!(hd_value(&img, 134 + 403, 300), white);
        // Columns are never padded for a landscape image.
        assert_eq!(hd_value(&img, 300, 0), black);
        assert_eq!(hd_value(&img, 300, 671), black);
    }

    #[test]
    fn portrait_padding_is_centred_horizontally() {
        // 600x1000 is transposed, so the padding lands left and right: columns 134..537 black.
        let img = preprocess(&solid(600, 1000, 0), &config(4)).unwrap();
        assert_eq!(img.hd_size, (672, 672));
        let white = (1.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0];
        let black = (0.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0];
        assert_eq!(hd_value(&img, 300, 133), white);
        assert_eq!(hd_value(&img, 300, 134), black);
        assert_eq!(hd_value(&img, 300, 536), black);
        assert_eq!(hd_value(&img, 300, 537), white);
        assert_eq!(hd_value(&img, 0, 300), black);
        assert_eq!(hd_value(&img, 671, 300), black);
    }

    #[test]
    fn portrait_is_transposed_not_rotated() {
        // A black block in the top-left corner of a portrait image must stay top-left after the
        // transpose / resize / transpose-back round trip (a rotation would move it).
        let mut src = RgbImage::from_pixel(200, 400, image::Rgb([255, 255, 255]));
        for y in 0..100 {
            for x in 0..50 {
                src.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
        let img = preprocess(&DynamicImage::ImageRgb8(src), &config(4)).unwrap();
        // 200x400 -> transposed 400x200, ratio 2, scale 2 -> 672x336, no padding; transposed
        // back the HD canvas is 336 wide and 672 high, with the block at x < 84, y < 168.
        assert_eq!(img.hd_size, (672, 336));
        let black = (0.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0];
        assert_eq!(hd_value(&img, 10, 10), black);
        assert!(hd_value(&img, 660, 10) > 1.5);
        assert!(hd_value(&img, 10, 325) > 1.5);
    }

    #[test]
    fn crop_layout_and_counts() {
        let img = preprocess(&solid(1000, 600, 128), &config(4)).unwrap();
        assert_eq!(img.pixel_values.dims(), &[5, 3, 336, 336]);
        assert_eq!(img.grid(), (2, 2));
        assert_eq!(img.num_crops(), 5);
        assert_eq!(img.num_crops_padded, 5);
        assert_eq!(img.num_image_tokens, 757);
        let img = preprocess(&solid(2000, 500, 128), &config(16)).unwrap();
        assert_eq!(img.num_crops_padded, 17);
        assert_eq!(img.num_image_tokens, num_image_tokens_for(2000, 500, &config(16)));
    }

    #[test]
    fn extreme_aspect_ratio_is_an_error_not_a_panic() {
        // 1344 / 3000 < 1: the reference would resize to height 0 and crash.
        // The planning count mirrors the reference's calc_num_image_tokens_from_image_size
        // (a 0-row canvas; rows and columns swap for the portrait one) instead of panicking.
        for (w, h, tokens) in [(3000, 1, 157), (1, 3000, 144 + 1 + 5 * 12), (2000, 1, 157)] {
            let err = preprocess(&solid(w, h, 0), &config(4)).unwrap_err();
            assert!(matches!(err, Error::InvalidRequest(ref m) if m.contains("aspect ratio")), "{err}");
            assert!(hd_canvas_size(w, h, &config(4)).is_err());
            assert_eq!(num_image_tokens_for(w, h, &config(4)), tokens, "{w}x{h}");
        }
        // Thin but representable images work.
        for (w, h) in [(20, 3000), (3000, 20), (1, 1), (1, 7), (1000, 1)] {
            let img = preprocess(&solid(w, h, 0), &config(4)).unwrap();
            assert_eq!(img.num_image_tokens, num_image_tokens_for(w, h, &config(4)), "{w}x{h}");
        }
    }

    #[test]
    fn invalid_config_is_rejected() {
        assert!(matches!(preprocess(&solid(10, 10, 0), &config(0)), Err(Error::Checkpoint { .. })));
        let mut c = config(4);
        c.image_std[1] = 0.0;
        assert!(preprocess(&solid(10, 10, 0), &c).is_err());
    }

    #[test]
    fn rgba_alpha_is_dropped_like_pil_convert() {
        let rgba = image::RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]));
        let rgb = to_rgb_like_pil(&DynamicImage::ImageRgba8(rgba));
        assert!(rgb.pixels().all(|p| p.0 == [10, 20, 30]));
        let grey = image::GrayImage::from_pixel(2, 2, image::Luma([77]));
        assert!(to_rgb_like_pil(&DynamicImage::ImageLuma8(grey)).pixels().all(|p| p.0 == [77, 77, 77]));
    }

    #[test]
    fn normalisation_matches_torchvision_f32() {
        let t = normalization_table(&config(1));
        // torch 2.15: (torch.arange(256.).repeat(3, 1) / 255 - mean) / std in float32, with the
        // CLIP mean/std as (3, 1) float32 tensors; bit patterns of four entries.
        assert_eq!(t[0][255].to_bits(), 0x3ff7_1541);
        assert_eq!(t[2][0].to_bits(), 0xbfbd_77d8);
        assert_eq!(t[1][128].to_bits(), 0x3e2c_f36b);
        assert_eq!(t[0][1].to_bits(), 0xbfe3_8a7f);
    }

    #[test]
    fn config_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("preprocessor_config.json");
        std::fs::write(
            &path,
            r#"{"auto_map": {}, "do_convert_rgb": true, "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "Phi3VImageProcessor", "image_std": 0.25,
                "num_crops": 4, "num_img_tokens": 144, "processor_class": "Phi3VProcessor"}"#,
        )
        .unwrap();
        let c = Phi3VImageProcessorConfig::from_file(&path).unwrap();
        assert_eq!((c.num_crops, c.image_mean, c.image_std), (4, [0.5; 3], [0.25; 3]));
        std::fs::write(&path, "{}").unwrap();
        let c = Phi3VImageProcessorConfig::from_file(&path).unwrap();
        assert_eq!(
            (c.num_crops, c.image_mean, c.image_std, c.do_convert_rgb),
            (1, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, true)
        );
        std::fs::write(&path, r#"{"num_crops": "four"}"#).unwrap();
        let err = Phi3VImageProcessorConfig::from_file(&path).unwrap_err();
        assert!(
            matches!(err, Error::Checkpoint { ref path, .. } if path.ends_with("preprocessor_config.json")),
            "{err}"
        );
        std::fs::write(&path, r#"{"num_crops": 0}"#).unwrap();
        assert!(Phi3VImageProcessorConfig::from_file(&path).is_err());
    }
}
