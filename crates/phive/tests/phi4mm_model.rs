//! Phi-4-multimodal network against transformers' native `Phi4MultimodalForCausalLM`
//! (`tools/phi4mm/reference.py`: eager attention, f32 compute, unmerged LoRA hooks) on the tiny
//! checkpoint `tests/fixtures/phi4mm-tiny` (Hub layout; random weights, the LM decoder trained by
//! `tools/phi4mm/train_fixture.py` so every greedy step wins by >= 4 logits).
//!
//! Per golden case: the golden input ids (positive placeholder runs of 200010 / 200011 are
//! filled with our own image / audio features, in order), the projected image and audio
//! embeddings, the prefill logits at the recorded positions (last row fully, the others at the
//! stored top-64 ids, plus logsumexp), and 16 greedy tokens (prefill + cached decode steps with
//! the adapter [`route`] picks). A routing test runs the text prompt under all three adapters.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use phive::audio::AudioProjectionMode;
use phive::models::phi4mm::{route, Adapter, Phi4MM, Phi4MMConfig, AUDIO_TOKEN_ID, IMAGE_TOKEN_ID};
use phive::nn::linear::LoadVb;
use phive::vision::phi4mm_hd::{preprocess, Phi4MMImageProcessorConfig};

use common::{fixtures, phi4mm_goldens, read_json, shard_files};

/// Max abs error allowed (f32 compute on both sides, same bf16 weights).
const TOL: f32 = 1e-3;

struct Fixture {
    model: Phi4MM,
    goldens: HashMap<String, Tensor>,
    cases: Vec<serde_json::Value>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = Instant::now();
        let dir = fixtures().join("phi4mm-tiny");
        let config = Phi4MMConfig::from_json(&read_json(&dir.join("config.json"))).unwrap();
        // SAFETY: the fixture files are not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&shard_files(&dir), DType::F32, &Device::Cpu) }
            .unwrap();
        let model = Phi4MM::new(&config, LoadVb::plain(vb)).expect("load phi4mm-tiny");
        let tensors =
            candle_core::safetensors::load(phi4mm_goldens().join("generation.safetensors"), &Device::Cpu)
                .expect("generation.safetensors");
        let gen = read_json(&phi4mm_goldens().join("generation.json"));
        eprintln!("fixture loaded in {:?}", t.elapsed());
        Fixture { model, goldens: tensors, cases: gen["cases"].as_array().unwrap().clone() }
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

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn file_stem(path: &str) -> String {
    Path::new(path).file_stem().unwrap().to_str().unwrap().to_string()
}

fn adapter_name(a: Adapter) -> &'static str {
    a.name().unwrap_or("none")
}

fn mode_name(m: AudioProjectionMode) -> &'static str {
    match m {
        AudioProjectionMode::Speech => "speech",
        AudioProjectionMode::Vision => "vision",
    }
}

/// Runs of `id` in `ids`: `(start, len)`.
fn runs(ids: &[u32], id: u32) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < ids.len() {
        if ids[p] == id {
            let s = p;
            while p < ids.len() && ids[p] == id {
                p += 1;
            }
            out.push((s, p - s));
        } else {
            p += 1;
        }
    }
    out
}

/// Splits a placeholder run that holds several consecutive media items of the given sizes.
fn spans_for(ids: &[u32], id: u32, sizes: &[usize]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut sizes = sizes.iter();
    for (s, len) in runs(ids, id) {
        let mut off = 0;
        while off < len {
            let n = *sizes.next().expect("more placeholders than media");
            starts.push(s + off);
            off += n;
        }
        assert_eq!(off, len, "placeholder run does not split into whole media items");
    }
    assert!(sizes.next().is_none(), "fewer placeholders than media");
    starts
}

fn run_case(name: &str) {
    let f = fixture();
    let m = &f.model;
    let case = f.cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("case {name}"));
    let g = |suffix: &str| &f.goldens[&format!("{name}.{suffix}")];
    let t0 = Instant::now();
    let images = strings(&case["images"]);
    let audios = strings(&case["audios"]);
    let (adapter, mode) = route(!images.is_empty(), !audios.is_empty());
    assert_eq!(adapter_name(adapter), case["adapter"].as_str().unwrap(), "[{name}] adapter");
    assert_eq!(mode_name(mode), case["audio_projection_mode"].as_str().unwrap(), "[{name}] projection");
    let ids: Vec<u32> = g("input_ids").to_vec1::<i64>().unwrap().iter().map(|&i| i as u32).collect();
    assert_eq!(ids.len(), case["num_tokens"].as_u64().unwrap() as usize);

    // Images.
    let pcfg =
        Phi4MMImageProcessorConfig::from_file(&fixtures().join("phi4mm-tiny/preprocessor_config.json"))
            .unwrap();
    let mut image_feats = Vec::new();
    for (k, path) in images.iter().enumerate() {
        let img = image::open(fixtures().join("images").join(Path::new(path).file_name().unwrap())).unwrap();
        let p = preprocess(&img, &pcfg).unwrap();
        assert_eq!(p.num_image_tokens, case["num_image_tokens"][k].as_u64().unwrap() as usize);
        let feats = m.encode_image(&p).unwrap();
        assert_eq!(feats.dim(0).unwrap(), p.num_image_tokens, "[{name}] image {k} rows");
        image_feats.push(feats);
    }
    let t_image = t0.elapsed();
    let mut image_err = None;
    if !image_feats.is_empty() {
        let err = max_abs(&Tensor::cat(&image_feats, 0).unwrap(), g("image_embeds"));
        image_err = Some(err);
        assert!(err <= TOL, "[{name}] image embeds differ by {err}");
    }

    // Audio.
    let t1 = Instant::now();
    let mut audio_feats = Vec::new();
    for (k, path) in audios.iter().enumerate() {
        let st = candle_core::safetensors::load(
            phi4mm_goldens().join(format!("audio/{}.safetensors", file_stem(path))),
            &Device::Cpu,
        )
        .unwrap();
        let feats = m.encode_audio(&st["features"], mode).unwrap();
        assert_eq!(feats.dim(0).unwrap(), case["num_audio_tokens"][k].as_u64().unwrap() as usize);
        audio_feats.push(feats);
    }
    let t_audio = t1.elapsed();
    let mut audio_err = None;
    if !audio_feats.is_empty() {
        let err = max_abs(&Tensor::cat(&audio_feats, 0).unwrap(), g("audio_embeds"));
        audio_err = Some(err);
        assert!(err <= TOL, "[{name}] audio embeds differ by {err}");
    }

    // Spans: placeholder runs filled in order.
    let mut media = Vec::new();
    let sizes: Vec<usize> = image_feats.iter().map(|t| t.dim(0).unwrap()).collect();
    for (s, f) in spans_for(&ids, IMAGE_TOKEN_ID, &sizes).into_iter().zip(&image_feats) {
        media.push((s, f.clone()));
    }
    let sizes: Vec<usize> = audio_feats.iter().map(|t| t.dim(0).unwrap()).collect();
    for (s, f) in spans_for(&ids, AUDIO_TOKEN_ID, &sizes).into_iter().zip(&audio_feats) {
        media.push((s, f.clone()));
    }

    // Prefill.
    let t2 = Instant::now();
    let embeds = m.embed(&ids, &media).unwrap();
    let mut cache = m.new_cache();
    let hidden = m.forward(&embeds, &mut cache, adapter).unwrap();
    let positions: Vec<usize> =
        case["logits_positions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let logits = m.logits(&hidden, &positions).unwrap();
    let t_prefill = t2.elapsed();
    let last = logits.get(positions.len() - 1).unwrap();
    let last_err = max_abs(&last, g("logits_last"));
    let topk_ids = g("topk_ids").to_vec2::<i64>().unwrap();
    let topk_vals = g("topk_values").to_vec2::<f32>().unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    let mut topk_err = 0f32;
    for (r, (ids_r, vals_r)) in topk_ids.iter().zip(&topk_vals).enumerate() {
        for (id, v) in ids_r.iter().zip(vals_r) {
            topk_err = topk_err.max((rows[r][*id as usize] - v).abs());
        }
    }
    let lse = logits.log_sum_exp(D::Minus1).unwrap();
    let lse_err = max_abs(&lse, g("logsumexp"));
    assert!(last_err <= TOL, "[{name}] last logits differ by {last_err}");
    assert!(topk_err <= TOL, "[{name}] top-64 logits differ by {topk_err}");
    assert!(lse_err <= TOL, "[{name}] logsumexp differs by {lse_err}");

    // Greedy decoding with the same adapter.
    let t3 = Instant::now();
    let want: Vec<u32> = g("greedy_tokens").to_vec1::<i64>().unwrap().iter().map(|&i| i as u32).collect();
    let mut step_logits = last.to_vec1::<f32>().unwrap();
    let mut got = Vec::new();
    for step in 0..want.len() {
        let next = argmax(&step_logits);
        got.push(next);
        if step + 1 == want.len() {
            break;
        }
        let e = m.embed(&[next], &[]).unwrap();
        let h = m.forward(&e, &mut cache, adapter).unwrap();
        step_logits = m.logits(&h, &[0]).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    }
    let t_decode = t3.elapsed();
    eprintln!(
        "[{name}] {} tokens, adapter {}: image_embeds err {image_err:?}, audio_embeds err {audio_err:?}, \
         last logits err {last_err:.2e}, top-64 err {topk_err:.2e}, logsumexp err {lse_err:.2e}; \
         image {t_image:?}, audio {t_audio:?}, prefill {t_prefill:?}, 15 decode steps {t_decode:?}",
        ids.len(),
        adapter_name(adapter)
    );
    assert_eq!(got, want, "[{name}] greedy tokens");
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
fn one_audio() {
    run_case("one_audio");
}

#[test]
fn image_and_audio() {
    run_case("image_and_audio");
}

/// The text prompt's last-position logits under each adapter match the reference run with
/// that adapter, and the three differ (so the adapter really is selected per call).
#[test]
fn adapter_routing() {
    let f = fixture();
    let m = &f.model;
    let ids: Vec<u32> =
        f.goldens["text.input_ids"].to_vec1::<i64>().unwrap().iter().map(|&i| i as u32).collect();
    let embeds = m.embed(&ids, &[]).unwrap();
    let mut outs = Vec::new();
    for (adapter, key) in [
        (Adapter::None, "text.logits_last"),
        (Adapter::Vision, "text.logits_last_vision"),
        (Adapter::Speech, "text.logits_last_speech"),
    ] {
        let h = m.forward(&embeds, &mut m.new_cache(), adapter).unwrap();
        let l = m.logits(&h, &[ids.len() - 1]).unwrap().squeeze(0).unwrap();
        let err = max_abs(&l, &f.goldens[key]);
        eprintln!("[routing] {adapter:?}: last logits err {err:.2e}");
        assert!(err <= TOL, "{adapter:?}: logits differ from {key} by {err}");
        outs.push(l);
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let d = max_abs(&outs[a], &outs[b]);
        assert!(d > 1.0, "adapters {a} and {b} give nearly equal logits ({d})");
    }
    // One loaded model, adapters switched per call: the first result is reproducible.
    let h = m.forward(&embeds, &mut m.new_cache(), Adapter::None).unwrap();
    let again = m.logits(&h, &[ids.len() - 1]).unwrap().squeeze(0).unwrap();
    assert_eq!(max_abs(&again, &outs[0]), 0.0);
}
