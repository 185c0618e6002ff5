//! Phi-3.5-vision network against the independent PyTorch reference (`tools/reference_phi3v.py`)
//! on the tiny random checkpoint `tests/fixtures/phi3v-tiny`.
//!
//! For each golden case: CLIP features and projected image embeddings of the golden
//! (preprocessed) pixels, the prefill logits at the recorded positions, and 16 greedy tokens
//! (prefill once, then one cached decode step per token; `long_text` crosses position 4096, so
//! the later steps run with the long LongRoPE factors while the cached keys keep the short ones).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use phive::models::phi3v::{Phi3V, Phi3VConfig};
use phive::nn::linear::LoadVb;
use phive::vision::phi3v_hd::{preprocess, Phi3VImageProcessorConfig};

use common::{fixtures, read_json, shard_files};

/// Max abs error allowed (f32 compute on both sides, same bf16 weights; observed ~1e-5 to 7e-5).
const TOL: f32 = 1e-3;

/// `tests/fixtures/goldens/phi3v`, or `PHIVE_PHI3V_GOLDENS` (same layout) to check against a
/// regenerated set.
fn goldens_dir() -> PathBuf {
    std::env::var_os("PHIVE_PHI3V_GOLDENS").map_or_else(|| fixtures().join("goldens/phi3v"), PathBuf::from)
}

fn load_model(files: &[PathBuf]) -> phive::Result<Phi3V> {
    let dir = fixtures().join("phi3v-tiny");
    let config = Phi3VConfig::from_json(&read_json(&dir.join("config.json"))).unwrap();
    // SAFETY: the fixture files are not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, DType::F32, &Device::Cpu)? };
    Phi3V::new(&config, LoadVb::plain(vb))
}

struct Fixture {
    model: Phi3V,
    goldens: HashMap<String, Tensor>,
    cases: Vec<serde_json::Value>,
    preprocess: Vec<serde_json::Value>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = Instant::now();
        let model = load_model(&shard_files(&fixtures().join("phi3v-tiny"))).expect("load phi3v-tiny");
        let gen = read_json(&goldens_dir().join("generation.json"));
        let goldens =
            candle_core::safetensors::load(goldens_dir().join("generation.safetensors"), &Device::Cpu)
                .expect("generation.safetensors");
        let preprocess = read_json(&goldens_dir().join("preprocess.json")).as_array().unwrap().clone();
        eprintln!("fixture loaded in {:?}", t.elapsed());
        Fixture { model, goldens, cases: gen["cases"].as_array().unwrap().clone(), preprocess }
    })
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Our own preprocessing of a fixture image: pixels (f32, as the reference computed them; the
/// golden pixel files are stored in f16, which is too coarse to reproduce 1e-3 logits) and the HD
/// grid `(rows, cols)`, checked against the golden grid.
fn pixels(f: &Fixture, image: &str) -> (Tensor, (usize, usize)) {
    let entry = f.preprocess.iter().find(|e| e["image"] == image).expect("image in preprocess.json");
    let config =
        Phi3VImageProcessorConfig::from_file(&fixtures().join("phi3v-tiny/preprocessor_config.json"))
            .unwrap();
    let img = image::open(fixtures().join("images").join(image)).unwrap();
    let processed = preprocess(&img, &config).unwrap();
    let grid = &entry["crop_grid"];
    let golden_grid = (grid[0].as_u64().unwrap() as usize, grid[1].as_u64().unwrap() as usize);
    assert_eq!(processed.grid(), golden_grid, "{image}: HD grid");
    let grid = processed.grid();
    (processed.pixel_values, grid)
}

fn run_case(name: &str) {
    let f = fixture();
    let m = &f.model;
    let Some(case) = f.cases.iter().find(|c| c["name"] == name) else {
        eprintln!("[{name}] not in {}; skipped", goldens_dir().display());
        return;
    };
    let g = |suffix: &str| &f.goldens[&format!("{name}.{suffix}")];
    let tol = TOL;
    let t0 = Instant::now();

    // Images: CLIP features of the first image, projected embeddings of all.
    let images: Vec<&str> = case["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut features = Vec::new();
    for (k, image) in images.iter().enumerate() {
        let (pv, grid) = pixels(f, image);
        if k == 0 {
            let clip = m.clip_features(&pv).unwrap();
            let err = max_abs(&clip, g("clip_features"));
            eprintln!("[{name}] clip_features max abs err {err:.3e}");
            assert!(err < tol, "[{name}] clip features differ by {err}");
        }
        let feats = m.encode_image(&pv, grid).unwrap();
        let want = case["num_image_tokens"][k].as_u64().unwrap() as usize;
        assert_eq!(feats.dim(0).unwrap(), want, "[{name}] image {k} token count");
        assert_eq!(m.config().num_image_tokens(grid.0, grid.1), want);
        features.push(feats);
    }
    if !features.is_empty() {
        let all = Tensor::cat(&features, 0).unwrap();
        let err = max_abs(&all, g("image_embeds"));
        eprintln!("[{name}] image_embeds max abs err {err:.3e}");
        assert!(err < tol, "[{name}] image embeds differ by {err}");
    }
    let t_vision = t0.elapsed();

    // Token ids: negative runs are image placeholders, filled with the images in order.
    let ids: Vec<i64> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut media = Vec::new();
    let mut p = 0;
    while p < ids.len() {
        if ids[p] < 0 {
            let feats = features[media.len()].clone();
            let n = feats.dim(0).unwrap();
            assert!(
                ids[p..p + n].iter().all(|&id| id < 0),
                "[{name}] placeholder run shorter than the image"
            );
            media.push((p, feats));
            p += n;
        } else {
            p += 1;
        }
    }
    assert_eq!(media.len(), features.len());
    let token_ids: Vec<u32> = ids.iter().map(|&id| id.max(0) as u32).collect();

    // Prefill.
    let t1 = Instant::now();
    let embeds = m.embed(&token_ids, &media).unwrap();
    let mut cache = m.new_cache();
    let hidden = m.forward(&embeds, &mut cache).unwrap();
    let positions: Vec<usize> =
        case["logits_positions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let logits = m.logits(&hidden, &positions).unwrap();
    let err = max_abs(&logits, g("logits"));
    eprintln!("[{name}] prefill logits ({} tokens) max abs err {err:.3e}", ids.len());
    assert!(err < tol, "[{name}] prefill logits differ by {err}");
    let t_prefill = t1.elapsed();

    // Greedy decoding with the KV cache.
    let t2 = Instant::now();
    let want: Vec<u32> =
        case["greedy_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let top5_ids = g("step_top5_ids").to_vec2::<i64>().unwrap();
    let top5_logits = g("step_top5_logits").to_vec2::<f32>().unwrap();
    let mut step_logits =
        m.logits(&hidden, &[ids.len() - 1]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut got = Vec::new();
    let mut step_err = 0f32;
    for step in 0..want.len() {
        for (id, v) in top5_ids[step].iter().zip(&top5_logits[step]) {
            step_err = step_err.max((step_logits[*id as usize] - v).abs());
        }
        let next = argmax(&step_logits);
        got.push(next);
        if step + 1 == want.len() {
            break;
        }
        let e = m.embed(&[next], &[]).unwrap();
        let h = m.forward(&e, &mut cache).unwrap();
        step_logits = m.logits(&h, &[0]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    }
    eprintln!("[{name}] decode-step top-5 logits max abs err {step_err:.3e}");
    assert_eq!(got, want, "[{name}] greedy tokens");
    assert!(step_err < tol, "[{name}] decode-step logits differ by {step_err}");
    assert_eq!(cache.len(), ids.len() + want.len() - 1);
    eprintln!(
        "[{name}] vision {:?}, prefill {:?}, {} decode steps {:?}",
        t_vision,
        t_prefill,
        want.len() - 1,
        t2.elapsed()
    );
}

#[test]
fn text() {
    run_case("text");
}

#[test]
fn one_image() {
    run_case("one_image");
}

#[test]
fn two_images() {
    run_case("two_images");
}

#[test]
fn system_and_turns() {
    run_case("system_and_turns");
}

#[test]
fn long_text_crosses_longrope_switch() {
    let f = fixture();
    let case = f.cases.iter().find(|c| c["name"] == "long_text").unwrap();
    let n = case["input_ids"].as_array().unwrap().len();
    // The prefill is short (≤ 4096 positions), the last decode steps are long.
    let rotary = f.model.decoder().rotary();
    assert!(!rotary.uses_long(0, n));
    assert!(rotary.uses_long(n + 14, 1));
    run_case("long_text");
}

#[test]
fn missing_shard_names_the_tensor() {
    let files = shard_files(&fixtures().join("phi3v-tiny"));
    let err = match load_model(&files[..1]) {
        Ok(_) => panic!("loading with one shard must fail"),
        Err(e) => e.to_string(),
    };
    // Shard 2 holds lm_head and more; whichever is looked up first must be named.
    assert!(err.contains("cannot find tensor") || err.contains("not found"), "{err}");
    assert!(err.contains("model.") || err.contains("lm_head"), "{err}");
}
