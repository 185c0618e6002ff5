//! Phi-4-multimodal image preprocessing: the "dynamic HD" transform of the Hub's remote code
//! `processing_phi4mm.py` (`Phi4MMImageProcessor.dynamic_preprocess` / `preprocess`),
//! reproduced pixel for pixel.
//!
//! Per image, independently:
//! 1. convert to RGB as PIL's `Image.convert("RGB")` does;
//! 2. pick the crop grid `(cols, rows)`: `(ceil(W/448), ceil(H/448))` when that needs at most
//!    `dynamic_hd` crops, otherwise the grid among `i·j <= dynamic_hd` whose aspect ratio is
//!    closest to the image's (ties: a later candidate wins when `W·H > 0.5·448²·i·j`, with the
//!    candidates in exactly the order of the reference's `sorted(set(...))`, see
//!    [`candidate_grids`]);
//! 3. resize keeping the aspect ratio so the image fills the grid's width or height (the other
//!    side truncated with `int()`), with Pillow's antialiased bilinear filter (what torchvision
//!    does to a PIL image), and pad with white on the right and bottom;
//! 4. a 32×32 patch attention mask per crop: the last `floor(pad/14)` columns (rows) of the
//!    whole canvas mask are zeroed when the padding is at least one patch wide;
//! 5. `ToTensor` + `Normalize(0.5, 0.5)` to an `f32` `[3, H, W]` canvas;
//! 6. global view: PyTorch bicubic interpolation of the canvas to 448×448 (mask all ones);
//! 7. crops: the canvas cut into 448×448 tiles, row-major, after the global view.
//!
//! The token count is `256 + 1 + sum(sub mask[0::2, 0::2]) + (its rows) + 16`: the pooled
//! 16×16 global view with a separator after each row, one global separator, and the useful
//! part of the pooled sub-crop grid with a separator after each row.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::vision::phi3v_hd::to_rgb_like_pil;
use crate::vision::resize::{interpolate_bicubic, resize_bilinear_pil};
use crate::{Error, Result};

/// Side of one crop (and of the global view) in pixels (the Hub processor's
/// `dyhd_base_resolution`, SigLIP-so400m-patch14-448's input size).
pub const CROP_SIZE: usize = 448;
/// Side of one SigLIP patch in pixels.
pub const PATCH_SIZE: usize = 14;
/// Patches (mask entries) along one side of a crop (32).
pub const MASK_SIZE: usize = CROP_SIZE / PATCH_SIZE;
/// Tokens along one side of a crop after the 2×2 average pool (16).
pub const POOLED_SIZE: usize = MASK_SIZE / 2;
/// Largest `dynamic_hd` accepted. The reference has no bound; the candidate grid search is
/// quadratic in it and the canvas grows with it, so this only rejects nonsense.
pub const MAX_DYNAMIC_HD: usize = 1024;
/// The resized image must keep at least this many pixels on each side (the reference raises
/// "the aspect ratio is very extreme" below it).
pub const MIN_RESIZED_SIDE: usize = 10;

/// `preprocessor_config.json` of Phi-4-multimodal (the image part).
///
/// Unknown keys (the audio extractor's settings, `auto_map`, ...) are ignored. `image_mean` /
/// `image_std` are ignored too: the Hub processor hard-codes `Normalize(0.5, 0.5)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Phi4MMImageProcessorConfig {
    /// Maximum number of 448×448 sub-crops per image (36 on the Hub).
    #[serde(default = "default_dynamic_hd")]
    pub dynamic_hd: usize,
}

fn default_dynamic_hd() -> usize {
    36
}

impl Default for Phi4MMImageProcessorConfig {
    /// The Hub processor's default (`dynamic_hd = 36`).
    fn default() -> Self {
        Self { dynamic_hd: default_dynamic_hd() }
    }
}

impl Phi4MMImageProcessorConfig {
    /// Reads and validates `preprocessor_config.json`. Errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::checkpoint(path, format!("cannot read: {e}")))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(path, format!("invalid Phi-4-multimodal preprocessor config: {e}"))
        })?;
        config.validate().map_err(|m| Error::checkpoint(path, m))?;
        Ok(config)
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.dynamic_hd == 0 || self.dynamic_hd > MAX_DYNAMIC_HD {
            return Err(format!(
                "dynamic_hd must be between 1 and {MAX_DYNAMIC_HD}, got {}",
                self.dynamic_hd
            ));
        }
        Ok(())
    }
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct Phi4MMImage {
    /// `f32` on the CPU, `[1 + rows·cols, 3, 448, 448]`: the global view first, then the
    /// sub-crops in row-major order (not padded to a batch's crop count).
    pub pixel_values: Tensor,
    /// `u8` on the CPU, `[1 + rows·cols, 32, 32]`: 1 for patches with image content, 0 for
    /// patches that are white padding (the global view's mask is all ones).
    pub patch_mask: Tensor,
    /// `(height, width)` of the padded HD canvas in pixels, multiples of 448 (the reference's
    /// `image_sizes` entry).
    pub hd_size: (usize, usize),
    /// Number of `<|endoftext10|>` placeholder tokens this image expands to in the prompt.
    pub num_image_tokens: usize,
}

impl Phi4MMImage {
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

/// Everything the transform decides from the image size alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HdGeometry {
    /// Grid `(cols, rows)` of sub-crops (the reference's `target_aspect_ratio`).
    pub grid_w_h: (usize, usize),
    /// Size `(width, height)` the image is resized to.
    pub resized_w_h: (usize, usize),
    /// White padding `(right, bottom)` in pixels.
    pub padding_w_h: (usize, usize),
    /// Mask columns (rows) zeroed at the right (bottom) of the canvas mask.
    pub masked_cols_rows: (usize, usize),
}

impl HdGeometry {
    /// `(height, width)` of the padded canvas.
    pub fn hd_size(&self) -> (usize, usize) {
        (self.grid_w_h.1 * CROP_SIZE, self.grid_w_h.0 * CROP_SIZE)
    }

    /// Rows and columns of the pooled (16 per crop) sub-crop mask that are ones: the useful
    /// part of the sub-crop feature grid.
    pub fn useful_rows_cols(&self) -> (usize, usize) {
        let (gw, gh) = self.grid_w_h;
        // mask[0::2, 0::2]: canvas mask row/col k survives when it is even.
        let kept = |total: usize, masked: usize| (total - masked).div_ceil(2);
        (kept(MASK_SIZE * gh, self.masked_cols_rows.1), kept(MASK_SIZE * gw, self.masked_cols_rows.0))
    }

    /// `256 + 1 + sum(pooled sub mask) + useful rows + 16` (the reference's formula; the mask is
    /// a rectangle of ones, so its sum is `rows · cols`).
    pub fn num_image_tokens(&self) -> usize {
        let (r, c) = self.useful_rows_cols();
        POOLED_SIZE * POOLED_SIZE + 1 + r * c + r + POOLED_SIZE
    }
}

/// CPython 3 (64-bit) `hash((i, j))` for small non-negative ints (tuplehash, xxHash-based).
fn py_tuple_hash(items: &[u64]) -> u64 {
    const P1: u64 = 11400714785074694791;
    const P2: u64 = 14029467366897019727;
    const P5: u64 = 2870177450012600261;
    let mut acc = P5;
    for &lane in items {
        // hash(int) is the int itself for values below 2^61 - 1.
        acc = acc.wrapping_add(lane.wrapping_mul(P2));
        acc = acc.rotate_left(31);
        acc = acc.wrapping_mul(P1);
    }
    acc = acc.wrapping_add(items.len() as u64 ^ (P5 ^ 3527539));
    if acc == u64::MAX {
        1546275796
    } else {
        acc
    }
}

/// CPython's `set` of `(i, j)` tuples (Objects/setobject.c): open addressing with 9 linear
/// probes then perturbed jumps, grown to `4·used` when 3/5 full; iteration is table order.
struct PySet {
    table: Vec<Option<((usize, usize), u64)>>,
    fill: usize,
}

impl PySet {
    const LINEAR_PROBES: usize = 9;
    const PERTURB_SHIFT: u32 = 5;

    fn new() -> Self {
        Self { table: vec![None; 8], fill: 0 }
    }

    /// The slot `set_insert_clean` / `set_add_entry` would put a new key with this hash in,
    /// or `None` if an equal key is already present.
    fn probe(table: &[Option<((usize, usize), u64)>], key: (usize, usize), hash: u64) -> Option<usize> {
        let mask = table.len() - 1;
        let mut perturb = hash;
        let mut i = hash as usize & mask;
        loop {
            let probes = if i + Self::LINEAR_PROBES <= mask { Self::LINEAR_PROBES } else { 0 };
            for (j, slot) in table.iter().enumerate().skip(i).take(probes + 1) {
                match *slot {
                    None => return Some(j),
                    Some((k, h)) if h == hash && k == key => return None,
                    _ => {}
                }
            }
            perturb >>= Self::PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb as usize)) & mask;
        }
    }

    fn add(&mut self, key: (usize, usize)) {
        let hash = py_tuple_hash(&[key.0 as u64, key.1 as u64]);
        let Some(slot) = Self::probe(&self.table, key, hash) else { return };
        self.table[slot] = Some((key, hash));
        self.fill += 1;
        let mask = self.table.len() - 1;
        if self.fill * 5 < mask * 3 {
            return;
        }
        // set_table_resize(so, used > 50000 ? used * 2 : used * 4)
        let min_used = if self.fill > 50000 { self.fill * 2 } else { self.fill * 4 };
        let mut size = 8;
        while size <= min_used {
            size <<= 1;
        }
        let old = std::mem::replace(&mut self.table, vec![None; size]);
        for (k, h) in old.into_iter().flatten() {
            let slot = Self::probe(&self.table, k, h).expect("keys are unique");
            self.table[slot] = Some((k, h));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.table.iter().flatten().map(|(k, _)| *k)
    }
}

/// The reference's candidate grids `(i, j)` (`i` columns, `j` rows) in its exact order:
/// `sorted({(i, j) for n in 1..=max for i in 1..=n for j in 1..=n if 1 <= i*j <= max},
/// key=i*j)`. The sort is stable, so grids of equal area keep CPython's set iteration order,
/// which decides exact ties of [`HdGeometry`]'s aspect-ratio search; it is reproduced here by
/// emulating CPython's tuple hash and set table.
pub fn candidate_grids(max_num: usize) -> Vec<(usize, usize)> {
    let mut set = PySet::new();
    for n in 1..=max_num {
        for i in 1..=n {
            for j in 1..=n {
                if i * j <= max_num {
                    set.add((i, j));
                }
            }
        }
    }
    let mut v: Vec<(usize, usize)> = set.iter().collect();
    v.sort_by_key(|&(i, j)| i * j);
    v
}

/// `find_closest_aspect_ratio` of the reference, in its float64 arithmetic.
fn closest_grid(width: usize, height: usize, max_num: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let area = (width * height) as f64;
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for (i, j) in candidate_grids(max_num) {
        let diff = (aspect - i as f64 / j as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > 0.5 * (CROP_SIZE * CROP_SIZE) as f64 * (i * j) as f64 {
            best = (i, j);
        }
    }
    best
}

/// The geometry of the dynamic-HD transform for an image of `width × height` pixels.
///
/// Errors: [`Error::Media`] for an empty image, [`Error::InvalidRequest`] for an aspect ratio
/// so extreme that a side would shrink below [`MIN_RESIZED_SIDE`] pixels (the reference raises
/// `ValueError`, or fails its mask assertion, there), [`Error::Checkpoint`] for an invalid
/// `config`.
pub fn hd_geometry(width: u32, height: u32, config: &Phi4MMImageProcessorConfig) -> Result<HdGeometry> {
    config.validate().map_err(|m| Error::checkpoint("preprocessor_config.json", m))?;
    if width == 0 || height == 0 {
        return Err(Error::Media(format!("image has no pixels ({width}x{height})")));
    }
    let (w, h) = (width as usize, height as usize);
    let (wc, hc) = (w.div_ceil(CROP_SIZE), h.div_ceil(CROP_SIZE));
    let grid = if wc * hc > config.dynamic_hd { closest_grid(w, h, config.dynamic_hd) } else { (wc, hc) };
    let (tw, th) = (grid.0 * CROP_SIZE, grid.1 * CROP_SIZE);
    let ratio_w = tw as f64 / w as f64;
    let ratio_h = th as f64 / h as f64;
    let (resized, padding) = if ratio_w < ratio_h {
        let nh = (h as f64 * ratio_w) as usize;
        ((tw, nh), (0, th.saturating_sub(nh)))
    } else {
        let nw = (w as f64 * ratio_h) as usize;
        ((nw, th), (tw.saturating_sub(nw), 0))
    };
    let masked = |pad: usize| if pad >= PATCH_SIZE { pad / PATCH_SIZE } else { 0 };
    let g = HdGeometry {
        grid_w_h: grid,
        resized_w_h: resized,
        padding_w_h: padding,
        masked_cols_rows: (masked(padding.0), masked(padding.1)),
    };
    if resized.0.min(tw) < MIN_RESIZED_SIDE || resized.1.min(th) < MIN_RESIZED_SIDE {
        return Err(Error::InvalidRequest(format!(
            "image of {width}x{height} pixels has an aspect ratio too extreme for Phi-4-multimodal: it \
             would be resized to {}x{} pixels to fit a {}x{} grid of {CROP_SIZE}-pixel crops, and each \
             side must keep at least {MIN_RESIZED_SIDE} pixels",
            resized.0, resized.1, grid.0, grid.1
        )));
    }
    Ok(g)
}

/// The token count for an image of this size without preprocessing it (prompt expansion,
/// KV-cache planning). Equals [`Phi4MMImage::num_image_tokens`] of [`preprocess`].
pub fn num_image_tokens_for(width: u32, height: u32, config: &Phi4MMImageProcessorConfig) -> Result<usize> {
    hd_geometry(width, height, config).map(|g| g.num_image_tokens())
}

/// `ToTensor()` then `Normalize(0.5, 0.5)` in `f32`, indexed by the 8-bit value.
fn normalization_table() -> [f32; 256] {
    std::array::from_fn(|v| (v as f32 / 255.0 - 0.5) / 0.5)
}

/// Runs the Phi-4-multimodal image processor on one decoded image.
///
/// Errors as [`hd_geometry`].
pub fn preprocess(image: &DynamicImage, config: &Phi4MMImageProcessorConfig) -> Result<Phi4MMImage> {
    let g = hd_geometry(image.width(), image.height(), config)?;
    let rgb = to_rgb_like_pil(image);
    let (new_w, new_h) = g.resized_w_h;
    let resized = resize_bilinear_pil(&rgb, new_w as u32, new_h as u32);
    drop(rgb);
    let (hd_h, hd_w) = g.hd_size();
    let mut canvas = RgbImage::from_pixel(hd_w as u32, hd_h as u32, image::Rgb([255, 255, 255]));
    for (y, row) in resized.as_raw().chunks_exact(new_w * 3).enumerate() {
        let start = y * hd_w * 3;
        canvas.as_mut()[start..start + new_w * 3].copy_from_slice(row);
    }
    drop(resized);
    Ok(crops_from_canvas(&canvas, &g))
}

/// Normalises the padded canvas and cuts it into the global view and the sub-crops.
fn crops_from_canvas(canvas: &RgbImage, g: &HdGeometry) -> Phi4MMImage {
    let (hd_h, hd_w) = g.hd_size();
    let table = normalization_table();
    let plane = hd_h * hd_w;
    let mut hd = vec![0f32; 3 * plane];
    for (i, px) in canvas.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            hd[c * plane + i] = table[px[c] as usize];
        }
    }
    let (gw, gh) = g.grid_w_h;
    let n_crops = 1 + gw * gh;
    let crop_len = 3 * CROP_SIZE * CROP_SIZE;
    let mut pixels = Vec::with_capacity(n_crops * crop_len);
    pixels.extend(interpolate_bicubic(&hd, 3, hd_h, hd_w, CROP_SIZE, CROP_SIZE));
    for r in 0..gh {
        for q in 0..gw {
            for c in 0..3 {
                for y in 0..CROP_SIZE {
                    let start = c * plane + (r * CROP_SIZE + y) * hd_w + q * CROP_SIZE;
                    pixels.extend_from_slice(&hd[start..start + CROP_SIZE]);
                }
            }
        }
    }
    // Canvas mask [32·rows, 32·cols], last columns / rows zeroed, cut like the pixels.
    let (mask_w, mask_h) = (MASK_SIZE * gw, MASK_SIZE * gh);
    let (zc, zr) = g.masked_cols_rows;
    let mut mask = vec![1u8; MASK_SIZE * MASK_SIZE];
    for r in 0..gh {
        for q in 0..gw {
            for y in 0..MASK_SIZE {
                for x in 0..MASK_SIZE {
                    let (cy, cx) = (r * MASK_SIZE + y, q * MASK_SIZE + x);
                    mask.push(u8::from(cy < mask_h - zr && cx < mask_w - zc));
                }
            }
        }
    }
    let pixel_values = Tensor::from_vec(pixels, (n_crops, 3, CROP_SIZE, CROP_SIZE), &Device::Cpu)
        .expect("length matches the shape");
    let patch_mask = Tensor::from_vec(mask, (n_crops, MASK_SIZE, MASK_SIZE), &Device::Cpu)
        .expect("length matches the shape");
    Phi4MMImage { pixel_values, patch_mask, hd_size: (hd_h, hd_w), num_image_tokens: g.num_image_tokens() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dynamic_hd: usize) -> Phi4MMImageProcessorConfig {
        Phi4MMImageProcessorConfig { dynamic_hd }
    }

    fn fmt(v: &[(usize, usize)]) -> String {
        v.iter().map(|(i, j)| format!("{i}x{j}")).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn candidate_order_is_cpython_set_order() {
        // Python 3.11: sorted({...}, key=lambda x: x[0] * x[1]) as in the reference.
        assert_eq!(
            fmt(&candidate_grids(7)),
            "1x1,1x2,2x1,3x1,1x3,4x1,1x4,2x2,1x5,5x1,6x1,2x3,1x6,3x2,7x1,1x7"
        );
        assert_eq!(
            fmt(&candidate_grids(12)),
            "1x1,1x2,2x1,3x1,1x3,2x2,4x1,1x4,5x1,1x5,1x6,6x1,3x2,2x3,7x1,1x7,4x2,2x4,1x8,8x1,1x9,3x3,9x1,\
             2x5,5x2,10x1,1x10,11x1,1x11,12x1,3x4,4x3,1x12,6x2,2x6"
        );
        assert_eq!(
            fmt(&candidate_grids(36)),
            "1x1,1x2,2x1,3x1,1x3,2x2,4x1,1x4,5x1,1x5,6x1,3x2,2x3,1x6,7x1,1x7,4x2,2x4,1x8,8x1,9x1,3x3,1x9,\
             1x10,5x2,10x1,2x5,1x11,11x1,6x2,1x12,2x6,12x1,3x4,4x3,13x1,1x13,14x1,1x14,7x2,2x7,1x15,5x3,\
             3x5,15x1,8x2,16x1,4x4,1x16,2x8,1x17,17x1,18x1,3x6,9x2,1x18,6x3,2x9,1x19,19x1,20x1,5x4,2x10,\
             1x20,4x5,10x2,7x3,1x21,3x7,21x1,2x11,11x2,22x1,1x22,1x23,23x1,1x24,24x1,6x4,3x8,4x6,2x12,\
             8x3,12x2,5x5,1x25,25x1,1x26,2x13,13x2,26x1,9x3,27x1,3x9,1x27,1x28,7x4,14x2,2x14,4x7,28x1,\
             29x1,1x29,3x10,15x2,1x30,2x15,10x3,5x6,30x1,6x5,1x31,31x1,8x4,1x32,4x8,32x1,16x2,2x16,1x33,\
             33x1,3x11,11x3,34x1,17x2,2x17,1x34,35x1,1x35,7x5,5x7,4x9,6x6,3x12,18x2,12x3,36x1,1x36,9x4,\
             2x18"
        );
    }

    #[test]
    fn exact_tie_follows_set_order() {
        // On an exact tie of the aspect-ratio distance the later candidate wins when the image
        // area exceeds half the candidate's canvas area.
        let (w, h) = (5000, 4000); // 1.25, needs 12x9 = 108 > 36 crops
        let g = hd_geometry(w, h, &config(36)).unwrap();
        // Closest ratios to 1.25 among i*j <= 36: 5x4 exactly.
        assert_eq!(g.grid_w_h, (5, 4));
        // dynamic_hd 2: candidates 1x1 (diff .25), 1x2, 2x1 (diff .75): 1x1.
        assert_eq!(closest_grid(5000, 4000, 2), (1, 1));
        // dynamic_hd 3, aspect 1.5: 1x1 (.5), 2x1 (.5) tie; area 2e7 > 0.5·448²·2 -> 2x1.
        assert_eq!(closest_grid(6000, 4000, 3), (2, 1));
        // Same aspect, tiny area: the earlier 1x1 stays.
        assert_eq!(closest_grid(3, 2, 3), (1, 1));
    }

    #[test]
    fn geometry_matches_reference_cases() {
        // (w, h) -> grid, resized, padding, tokens (from tests/fixtures/goldens/phi4mm).
        let cases = [
            ((336, 336), (1, 1), (448, 448), (0, 0), 545),
            ((400, 300), (1, 1), (448, 336), (0, 112), 477),
            ((300, 200), (1, 1), (448, 298), (0, 150), 460),
            ((333, 777), (1, 2), (384, 896), (64, 0), 753),
            ((1600, 120), (4, 1), (1792, 134), (0, 314), 598),
            ((480, 640), (2, 2), (672, 896), (224, 0), 1073),
            ((1000, 600), (3, 2), (1344, 806), (0, 90), 1694),
        ];
        for ((w, h), grid, resized, pad, tokens) in cases {
            let g = hd_geometry(w, h, &config(36)).unwrap();
            assert_eq!(g.grid_w_h, grid, "{w}x{h}");
            assert_eq!(g.resized_w_h, resized, "{w}x{h}");
            assert_eq!(g.padding_w_h, pad, "{w}x{h}");
            assert_eq!(g.num_image_tokens(), tokens, "{w}x{h}");
        }
    }

    #[test]
    fn extreme_aspect_ratio_is_an_error() {
        for (w, h) in [(1, 5000), (5000, 1), (1, 20000), (20000, 3)] {
            let e = hd_geometry(w, h, &config(36)).unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(ref m) if m.contains("aspect ratio")), "{w}x{h}: {e}");
        }
        assert!(matches!(hd_geometry(0, 5, &config(36)), Err(Error::Media(_))));
        assert!(matches!(hd_geometry(5, 5, &config(0)), Err(Error::Checkpoint { .. })));
        // Thin but representable.
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(20, 3000, image::Rgb([0, 0, 0])));
        let p = preprocess(&img, &config(36)).unwrap();
        assert_eq!(p.num_image_tokens, num_image_tokens_for(20, 3000, &config(36)).unwrap());
    }

    #[test]
    fn mask_and_layout() {
        // 1000x600 -> 3x2 grid, 1344x806, 90 px of padding at the bottom: 6 mask rows zeroed.
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(1000, 600, image::Rgb([0, 0, 0])));
        let p = preprocess(&img, &config(36)).unwrap();
        assert_eq!(p.pixel_values.dims(), &[7, 3, 448, 448]);
        assert_eq!(p.patch_mask.dims(), &[7, 32, 32]);
        assert_eq!(p.hd_size, (896, 1344));
        assert_eq!(p.grid(), (2, 3));
        let m = p.patch_mask.to_dtype(candle_core::DType::U32).unwrap();
        let sums: Vec<u32> = m.sum((1, 2)).unwrap().to_vec1().unwrap();
        assert_eq!(sums, vec![1024, 1024, 1024, 1024, 26 * 32, 26 * 32, 26 * 32]);
        // White padding at the bottom right of the last crop, black image elsewhere.
        let last = p.pixel_values.get(6).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(last[447][447], 1.0);
        assert_eq!(last[0][0], -1.0);
    }
}
