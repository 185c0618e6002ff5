//! Phi-3.5-vision preprocessing against goldens recorded by the Python reference
//! (`tools/reference_phi3v.py`, which follows the Hub's `image_processing_phi3_v.py`).
//!
//! For every entry of `tests/fixtures/goldens/phi3v/preprocess.json` the fixture PNG is run
//! through `phive::vision::phi3v_hd::preprocess` and compared with the reference: HD canvas
//! size, token counts (also through `num_image_tokens_for`), crop count, and every pixel of
//! every crop. Pixels come from the golden's `pixel_values` (float16, global view first) when
//! it stores them; otherwise from its `global_crop` (float16) plus the reference's lossless HD
//! canvas PNG (`hd_canvas_png`), normalised here, for the sub-crops.
//!
//! `PHI3V_PREPROCESS_GOLDENS` / `PHI3V_PREPROCESS_IMAGES` point the test at another golden
//! directory / image directory (e.g. float32 goldens recorded on the spot, to measure the
//! error without float16 rounding).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use phive::vision::phi3v_hd::{
    num_image_tokens_for, preprocess, Phi3VImage, Phi3VImageProcessorConfig, CROP_SIZE,
};

use common::fixtures;

/// Largest accepted |ours - reference| over all pixels of all crops (normalised units). The
/// goldens are float16 (rounding error up to ~1e-3 at |v| ~ 2); one 8-bit level is ~0.0146.
const TOLERANCE: f32 = 0.015;
/// Largest accepted error beyond the golden's own float16 rounding. The port reproduces the
/// reference's f32 arithmetic to a few f32 ulps (~1e-6), far below one 8-bit level (~0.0146).
const EXCESS_TOLERANCE: f32 = 1e-4;

fn golden_dir() -> PathBuf {
    std::env::var_os("PHI3V_PREPROCESS_GOLDENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures().join("goldens/phi3v"))
}

fn image_dir() -> PathBuf {
    std::env::var_os("PHI3V_PREPROCESS_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures().join("images"))
}

fn pair(v: &serde_json::Value, key: &str, name: &str) -> (usize, usize) {
    let a = v[key].as_array().unwrap_or_else(|| panic!("{name}: {key} missing"));
    (a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize)
}

/// Pixel differences of one image: the max |ours - golden| (what the tolerance bounds) and the
/// max excess of that difference over the golden's own rounding (half a float16 ulp for
/// float16 goldens, nothing for float32 ones). The excess is ~0 for a faithful port, and a
/// single 8-bit level anywhere (~0.0146) shows up in it.
#[derive(Debug, Clone, Copy, Default)]
struct Diff {
    max_abs: f32,
    max_excess: f32,
}

impl Diff {
    fn merge(self, other: Diff) -> Diff {
        Diff { max_abs: self.max_abs.max(other.max_abs), max_excess: self.max_excess.max(other.max_excess) }
    }
}

/// Half the float16 spacing at magnitude `v` (10 fraction bits, subnormals below 2^-14).
fn half_ulp_f16(v: f32) -> f32 {
    let v = v.abs().max(2f32.powi(-14));
    2f32.powi(v.log2().floor() as i32 - 11)
}

fn diff(ours: &Tensor, golden: &Tensor) -> Diff {
    assert_eq!(ours.dims(), golden.dims(), "shape mismatch");
    let f16 = golden.dtype() == DType::F16;
    let flat = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (a, b) = (flat(ours), flat(golden));
    a.iter().zip(&b).fold(Diff::default(), |acc, (&x, &g)| {
        let d = (x - g).abs();
        let rounding = if f16 { half_ulp_f16(x.abs().max(g.abs())) } else { 0.0 };
        acc.merge(Diff { max_abs: d, max_excess: (d - rounding).max(0.0) })
    })
}

/// The reference's HD canvas (lossless PNG) through torchvision's ToTensor + Normalize, cut
/// into row-major 336x336 crops: `[rows * cols, 3, 336, 336]`.
fn crops_from_canvas(path: &Path, config: &Phi3VImageProcessorConfig) -> Tensor {
    let canvas = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let (w, h) = (canvas.width() as usize, canvas.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, px) in canvas.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = (px[c] as f32 / 255.0 - config.image_mean[c]) / config.image_std[c];
        }
    }
    let (rows, cols) = (h / CROP_SIZE, w / CROP_SIZE);
    Tensor::from_vec(data, (3, rows, CROP_SIZE, cols, CROP_SIZE), &Device::Cpu)
        .unwrap()
        .permute((1, 3, 0, 2, 4))
        .unwrap()
        .reshape((rows * cols, 3, CROP_SIZE, CROP_SIZE))
        .unwrap()
}

/// Compares one image; returns the pixel differences or a description of the mismatch.
fn check(
    entry: &serde_json::Value,
    config: &Phi3VImageProcessorConfig,
    goldens: &Path,
) -> Result<Diff, String> {
    let name = entry["image"].as_str().expect("entry without image name");
    let path = image_dir().join(name);
    let img = image::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ours: Phi3VImage = preprocess(&img, config).map_err(|e| format!("preprocess: {e}"))?;

    let hd = pair(entry, "hd_size", name);
    if ours.hd_size != hd {
        return Err(format!("hd_size {:?} != reference {hd:?}", ours.hd_size));
    }
    let tokens = entry["num_image_tokens"].as_u64().unwrap() as usize;
    if ours.num_image_tokens != tokens {
        return Err(format!("num_image_tokens {} != reference {tokens}", ours.num_image_tokens));
    }
    let (w, h) = pair(entry, "orig_size", name);
    let planned = num_image_tokens_for(w as u32, h as u32, config);
    if planned != tokens {
        return Err(format!("num_image_tokens_for {planned} != reference {tokens}"));
    }
    if let Some(padded) = entry["num_crops_padded"].as_u64() {
        if ours.num_crops_padded != padded as usize {
            return Err(format!("num_crops_padded {} != reference {padded}", ours.num_crops_padded));
        }
    }
    let (rows, cols) = ours.grid();
    if entry.get("crop_grid").is_some_and(|g| g.is_array()) {
        let grid = pair(entry, "crop_grid", name);
        if grid != (rows, cols) {
            return Err(format!("grid {:?} != reference {grid:?}", (rows, cols)));
        }
    }

    let file = entry["pixel_values_file"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("preprocess/{}.safetensors", name.trim_end_matches(".png")));
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(goldens.join(&file), &Device::Cpu)
        .map_err(|e| format!("{file}: {e}"))?;
    let n = 1 + rows * cols;
    if ours.pixel_values.dims() != [n, 3, CROP_SIZE, CROP_SIZE] {
        return Err(format!("pixel_values shape {:?}", ours.pixel_values.dims()));
    }
    if let Some(full) = tensors.get("pixel_values") {
        if full.dims() != ours.pixel_values.dims() {
            return Err(format!(
                "crop count: ours {:?}, reference {:?}",
                ours.pixel_values.dims(),
                full.dims()
            ));
        }
        return Ok(diff(&ours.pixel_values, full));
    }
    let global =
        tensors.get("global_crop").ok_or_else(|| format!("{file}: neither pixel_values nor global_crop"))?;
    let global = diff(&ours.pixel_values.narrow(0, 0, 1).unwrap(), global);
    let canvas = entry["hd_canvas_png"]
        .as_str()
        .ok_or_else(|| format!("{name}: no pixel_values and no hd_canvas_png"))?;
    let reference = crops_from_canvas(&goldens.join(canvas), config);
    if reference.dim(0).unwrap() != rows * cols {
        return Err(format!("crop count: ours {}, reference {}", rows * cols, reference.dim(0).unwrap()));
    }
    let crops = diff(&ours.pixel_values.narrow(0, 1, rows * cols).unwrap(), &reference);
    Ok(global.merge(crops))
}

#[test]
fn preprocess_matches_reference_goldens() {
    let goldens = golden_dir();
    let index = goldens.join("preprocess.json");
    let text = std::fs::read_to_string(&index)
        .unwrap_or_else(|e| panic!("{}: {e} (goldens come from tools/reference_phi3v.py)", index.display()));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!entries.is_empty(), "{}: no entries", index.display());
    let config =
        Phi3VImageProcessorConfig::from_file(&fixtures().join("phi3v-tiny/preprocessor_config.json"))
            .unwrap();

    let mut failures = Vec::new();
    for entry in &entries {
        let name = entry["image"].as_str().unwrap_or("?");
        match check(entry, &config, &goldens) {
            Ok(d) => {
                println!(
                    "{name}: max |pixel - golden| = {:.3e} (beyond the golden's float16 rounding: {:.3e})",
                    d.max_abs, d.max_excess
                );
                if d.max_abs.is_nan() || d.max_abs > TOLERANCE {
                    failures.push(format!("{name}: max |pixel - golden| = {} > {TOLERANCE}", d.max_abs));
                }
                if d.max_excess.is_nan() || d.max_excess > EXCESS_TOLERANCE {
                    failures.push(format!(
                        "{name}: max |pixel - golden| = {}, {} more than the golden's float16 \
                         rounding explains (> {EXCESS_TOLERANCE}): some 8-bit value differs",
                        d.max_abs, d.max_excess
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} images differ from the reference:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}
