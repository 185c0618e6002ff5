//! Phi-4-multimodal dynamic-HD preprocessing against the Python reference
//! (`tools/phi4mm/reference.py`, the Hub `processing_phi4mm.py` path), golden files in
//! `tests/fixtures/goldens/phi4mm/preprocess*`: geometry, patch masks and token counts exactly;
//! sub-crop pixels against the stored HD canvas; global-view rows and sums; full pixel values
//! (f16) for `odd_333x777`.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use phive::vision::phi4mm_hd::{
    hd_geometry, num_image_tokens_for, preprocess, Phi4MMImageProcessorConfig, CROP_SIZE,
};

use common::{fixtures, phi4mm_goldens, read_json};

/// Max abs pixel error allowed (one 8-bit level is 1/127.5 ≈ 0.0078 after Normalize(0.5, 0.5)).
const PIXEL_TOL: f32 = 0.015;

fn config() -> Phi4MMImageProcessorConfig {
    Phi4MMImageProcessorConfig::from_file(&fixtures().join("phi4mm-tiny/preprocessor_config.json")).unwrap()
}

fn pair(v: &serde_json::Value) -> (usize, usize) {
    (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn config_file_and_defaults() {
    assert_eq!(config().dynamic_hd, 36);
    assert_eq!(Phi4MMImageProcessorConfig::default().dynamic_hd, 36);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("preprocessor_config.json");
    std::fs::write(&p, r#"{"dynamic_hd": "many"}"#).unwrap();
    let e = Phi4MMImageProcessorConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("preprocessor_config.json"), "{e}");
    std::fs::write(&p, r#"{"dynamic_hd": 0}"#).unwrap();
    assert!(Phi4MMImageProcessorConfig::from_file(&p).is_err());
}

#[test]
fn preprocessing_matches_reference() {
    let doc = read_json(&phi4mm_goldens().join("preprocess.json"));
    let cfg = config();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let image_path = case["image"].as_str().unwrap();
        let name = Path::new(image_path).file_name().unwrap().to_str().unwrap();
        let stem = name.trim_end_matches(".png");
        let img = image::open(fixtures().join("images").join(name)).unwrap();
        let t = std::time::Instant::now();
        let p = preprocess(&img, &cfg).unwrap();
        let elapsed = t.elapsed();
        let st: HashMap<String, Tensor> = candle_core::safetensors::load(
            phi4mm_goldens().join(format!("preprocess/{stem}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();

        // Geometry and counts: exact.
        let g = hd_geometry(img.width(), img.height(), &cfg).unwrap();
        assert_eq!(g.grid_w_h, pair(&case["grid_w_h"]), "{stem}: grid");
        assert_eq!(g.resized_w_h, pair(&case["resized_w_h"]), "{stem}: resized size");
        assert_eq!(g.padding_w_h, pair(&case["padding_w_h"]), "{stem}: padding");
        let size: Vec<i64> = st["image_size"].to_vec1().unwrap();
        assert_eq!(p.hd_size, (size[0] as usize, size[1] as usize), "{stem}: image_size");
        let tokens = st["num_image_tokens"].to_vec1::<i64>().unwrap()[0] as usize;
        assert_eq!(p.num_image_tokens, tokens, "{stem}: num_image_tokens");
        assert_eq!(tokens, case["num_image_tokens"].as_u64().unwrap() as usize);
        assert_eq!(num_image_tokens_for(img.width(), img.height(), &cfg).unwrap(), tokens);
        assert_eq!(p.num_crops(), case["num_crops"].as_u64().unwrap() as usize, "{stem}: crops");
        assert_eq!(
            g.useful_rows_cols(),
            (case["useful_rows"].as_u64().unwrap() as usize, case["useful_cols"].as_u64().unwrap() as usize)
        );

        // Masks: exact.
        let mask = &st["attention_mask"];
        assert_eq!(p.patch_mask.dims(), mask.dims(), "{stem}: mask shape");
        let ours: Vec<u8> = p.patch_mask.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<u8> = mask.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours, want, "{stem}: patch mask");

        // Sub-crops: functions of the stored HD canvas.
        let canvas =
            image::open(phi4mm_goldens().join(format!("preprocess/{stem}.hd.png"))).unwrap().to_rgb8();
        let (hd_h, hd_w) = p.hd_size;
        assert_eq!((canvas.height() as usize, canvas.width() as usize), (hd_h, hd_w), "{stem}: canvas");
        let pv = p.pixel_values.to_dtype(DType::F32).unwrap();
        let (rows, cols) = p.grid();
        let mut sub_err = 0f32;
        for r in 0..rows {
            for q in 0..cols {
                let crop: Vec<f32> =
                    pv.get(1 + r * cols + q).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for c in 0..3 {
                    for y in 0..CROP_SIZE {
                        for x in 0..CROP_SIZE {
                            let v =
                                canvas.get_pixel((q * CROP_SIZE + x) as u32, (r * CROP_SIZE + y) as u32).0[c];
                            let want = v as f32 / 255.0 * 2.0 - 1.0;
                            let got = crop[(c * CROP_SIZE + y) * CROP_SIZE + x];
                            sub_err = sub_err.max((got - want).abs());
                        }
                    }
                }
            }
        }

        // Global view: selected rows and per-channel sums.
        let global = pv.get(0).unwrap();
        let sel = Tensor::new(&[0u32, 1, 100, 223, 224, 447], &Device::Cpu).unwrap();
        let rows_ours: Vec<f32> =
            global.index_select(&sel, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let rows_want: Vec<f32> = st["global_crop_rows"].flatten_all().unwrap().to_vec1().unwrap();
        let glb_err = max_abs(&rows_ours, &rows_want);
        let sums_want: Vec<f64> = st["global_crop_sum"].to_vec1().unwrap();
        let g64: Vec<f32> = global.flatten_all().unwrap().to_vec1().unwrap();
        let plane = CROP_SIZE * CROP_SIZE;
        let sum_err = (0..3)
            .map(|c| {
                let s: f64 = g64[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).sum();
                (s - sums_want[c]).abs()
            })
            .fold(0.0, f64::max);

        // Full pixel values where stored (f16).
        let full_err = st.get("pixel_values").map(|want| {
            let want: Vec<f32> = want.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let ours: Vec<f32> = pv.flatten_all().unwrap().to_vec1().unwrap();
            max_abs(&ours, &want)
        });
        eprintln!(
            "{stem}: {} crops, {tokens} tokens, sub-crop err {sub_err:.2e}, global rows err {glb_err:.2e}, \
             global sum err {sum_err:.2e}, full pixels err {full_err:?} ({elapsed:?})",
            p.num_crops()
        );
        assert!(sub_err <= PIXEL_TOL, "{stem}: sub-crop pixels differ by {sub_err}");
        assert!(glb_err <= PIXEL_TOL, "{stem}: global rows differ by {glb_err}");
        // 200704 values per channel: one level on every pixel would move the sum by ~1500.
        assert!(sum_err <= 0.05, "{stem}: global sums differ by {sum_err}");
        if let Some(e) = full_err {
            assert!(e <= PIXEL_TOL, "{stem}: pixel values differ by {e}");
        }
    }
}

#[test]
fn extreme_aspect_ratio_is_a_clear_error() {
    let cfg = config();
    for (w, h) in [(4000u32, 2u32), (2, 4000)] {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h));
        let e = preprocess(&img, &cfg).unwrap_err();
        assert!(matches!(e, phive::Error::InvalidRequest(_)), "{e}");
        assert!(e.to_string().contains("aspect ratio"), "{e}");
    }
}
