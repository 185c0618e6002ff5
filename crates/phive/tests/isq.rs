//! In-situ quantization: per-type round-trip error, the type fallback for narrow widths, greedy
//! decoding on both tiny fixtures (Q8_0 equals f32 on every golden case), and `quantize` →
//! reload giving the in-situ result bit for bit.

mod common;

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use phive::checkpoint::Checkpoint;
use phive::engine::{Completion, Engine, EngineConfig, GenerationParams, KvCacheDtype};
use phive::export::quantize_checkpoint;
use phive::models::phi3v::{Phi3V, Phi3VConfig};
use phive::nn::linear::LoadVb;
use phive::pipeline::{LoadOptions, Pipeline};
use phive::quant::{self, IsqType, LoadContext, LoadReport};
use phive::{KvDtype, ModelDType};

fn options(dir: &Path, isq: Option<IsqType>) -> LoadOptions {
    LoadOptions { model: dir.to_string_lossy().into_owned(), isq, ..Default::default() }
}

fn load(dir: &Path, isq: Option<IsqType>) -> Engine {
    Engine::new(Pipeline::load(&options(dir, isq)).unwrap(), EngineConfig::default()).unwrap()
}

/// The model itself (for raw logits), loaded the way the pipeline does.
fn load_model(dir: &Path, isq: Option<IsqType>) -> (Phi3V, LoadReport) {
    let ck = Checkpoint::open(&dir.to_string_lossy(), None).unwrap();
    let cfg = Phi3VConfig::from_json(&ck.config).unwrap();
    let (vb, ctx) = LoadContext::open(&ck.weights, isq, false, &candle_core::Device::Cpu).unwrap();
    let model = Phi3V::new(&cfg, LoadVb::new(vb, &ctx)).unwrap();
    (model, ctx.finish())
}

/// Logits at every position of a text-only prompt, flattened.
fn prefill_logits(model: &Phi3V, ids: &[u32]) -> Vec<f32> {
    let embeds = model.embed(ids, &[]).unwrap();
    let hidden = model.forward(&embeds, &mut model.new_cache()).unwrap();
    let rows: Vec<usize> = (0..ids.len()).collect();
    model.logits(&hidden, &rows).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

use common::greedy_tokens as golden_greedy;

fn greedy(engine: &Engine, case: &serde_json::Value, logprobs: Option<usize>) -> Completion {
    let (messages, images) = common::openai_messages(&case["openai_messages"]);
    let prepared = engine.pipeline().prepare(&messages, &images).unwrap();
    let params = GenerationParams { max_tokens: Some(16), logprobs, ..Default::default() };
    common::complete(engine, prepared, &params)
}

fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    // Deterministic pseudo-normal values (sum of uniforms) so bounds do not flake.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let data: Vec<f32> = (0..rows * cols).map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0).collect();
    Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
}

#[test]
fn round_trip_error_per_type_is_within_bounds() {
    let x = random(96, 1024, 7);
    // Relative RMS error of dequantize(quantize(x)) for near-Gaussian weights.
    let bounds = [
        (IsqType::Q8_0, 0.01),
        (IsqType::Q8K, 0.01),
        (IsqType::Q6K, 0.03),
        (IsqType::Q5K, 0.05),
        (IsqType::Q5_0, 0.06),
        (IsqType::Q5_1, 0.05),
        (IsqType::Q4K, 0.10),
        (IsqType::Q4_0, 0.12),
        (IsqType::Q4_1, 0.10),
        (IsqType::Q3K, 0.20),
        (IsqType::Q2K, 0.40),
        (IsqType::F16, 0.001),
        (IsqType::BF16, 0.005),
    ];
    assert_eq!(bounds.len(), IsqType::ALL.len());
    let mut last = 0.0;
    for (ty, bound) in bounds {
        let e = quant::round_trip_error(&x, ty).unwrap();
        eprintln!("{ty}: relative RMS error {:.4}% (bound {:.1}%)", e * 100.0, bound * 100.0);
        assert!(e < bound, "{ty}: {e} >= {bound}");
        assert!(e > 0.0 || ty == IsqType::BF16, "{ty} is lossy");
        last = e;
    }
    assert!(last > 0.0);
}

#[test]
fn parallel_quantize_is_byte_identical_to_candle() {
    // Enough rows for several rayon tasks.
    let x = random(600, 512, 3);
    for ty in [IsqType::Q4K, IsqType::Q8_0, IsqType::Q6K, IsqType::Q4_0, IsqType::Q2K] {
        let ours = quant::quantize(&x, ty.ggml()).unwrap();
        let reference = QTensor::quantize(&x, ty.ggml()).unwrap();
        assert_eq!(ours.shape().dims(), &[600, 512]);
        assert!(ours.data().unwrap() == reference.data().unwrap(), "{ty}");
    }
    // A width that does not fit the block is an error, not a panic.
    let e = quant::quantize(&random(4, 64, 1), IsqType::Q4K.ggml()).unwrap_err().to_string();
    assert!(e.contains("block size 256"), "{e}");
}

#[test]
fn unknown_type_lists_valid_ones() {
    let e = "q4".parse::<IsqType>().unwrap_err().to_string();
    for t in IsqType::ALL {
        assert!(e.contains(t.name()), "{e}");
    }
    assert_eq!("q4k".parse::<IsqType>().unwrap(), IsqType::Q4K);
    assert_eq!("Q8_0".parse::<IsqType>().unwrap(), IsqType::Q8_0);
    assert_eq!("bf16".parse::<IsqType>().unwrap(), IsqType::BF16);
    assert_eq!(IsqType::Q4K.to_string(), "Q4K");
}

#[test]
fn narrow_widths_fall_back_to_a_fitting_type() {
    // The tiny fixture has hidden 64 and intermediate 128: no k-quant fits (256), so Q4K falls
    // back to Q5_0 for the 8 decoder linears, and lm_head (promoted to Q6K) to Q8_0.
    let (_, report) = load_model(&common::phi3v_tiny(), Some(IsqType::Q4K));
    assert_eq!(report.quantized_tensors, 9, "{report}");
    assert_eq!(report.fallbacks, 9, "{report}");
    assert_eq!(report.by_type, vec![("Q5_0".to_string(), 8), ("Q8_0".to_string(), 1)], "{report}");
    assert!(report.quantized_bytes < report.f32_bytes / 3, "{report}");
    // Q8_0 fits every width: no fallbacks; lm_head stays Q8_0 (its promotion).
    let (_, report) = load_model(&common::phi3v_tiny(), Some(IsqType::Q8_0));
    assert_eq!((report.fallbacks, report.quantized_tensors), (0, 9), "{report}");
    assert_eq!(report.by_type, vec![("Q8_0".to_string(), 9)]);
    // Without ISQ nothing is converted.
    let (_, report) = load_model(&common::phi3v_tiny(), None);
    assert_eq!(report.quantized_tensors, 0);
}

/// Smallest f32 top-2 logit gap at any golden greedy step. The tiny fixtures are trained to
/// answer each golden prompt with at least this margin (tools/fixture_training.py): their
/// untrained random weights left gaps of 0.07-0.5 logits, so any rounding flipped tokens.
/// Q8_0 moves this model's logits by an rms of about 0.3, far below the margin.
const TRAINED_MARGIN: f64 = 4.0;

#[test]
fn q8_0_greedy_tokens_equal_f32s_on_both_fixtures() {
    // Phi-3.5-vision: 5 cases, including two images and a 4086-token prompt crossing 4096.
    let engine = load(&common::phi3v_tiny(), Some(IsqType::Q8_0));
    assert_eq!(engine.pipeline().load_report().isq, Some(IsqType::Q8_0));
    let goldens = common::golden_json("phi3v/generation.json");
    for case in goldens["cases"].as_array().unwrap() {
        assert_trained_margin(case);
        let got = greedy(&engine, case, None).tokens;
        assert_eq!(got, golden_greedy(case), "Q8_0 {}", case["name"]);
    }
    // Phi-4-multimodal: text, images, audio, image + audio, each through its LoRA adapter on
    // the quantized base.
    let engine = load(&common::phi4mm_tiny(), Some(IsqType::Q8_0));
    let goldens = common::golden_json("phi4mm/generation.json");
    for case in goldens["cases"].as_array().unwrap() {
        assert_trained_margin(case);
        let prepared = common::phi4mm_prepare(engine.pipeline(), case);
        let params = GenerationParams { max_tokens: Some(16), ..Default::default() };
        let got = common::complete(&engine, prepared, &params);
        assert_eq!(got.tokens, golden_greedy(case), "Q8_0 {}", case["name"]);
    }
}

/// By default the KV cache is exact f32 for the f32 model, whose answers must be the
/// reference's, and f16 where the weights are quantized or the model computes in half
/// precision (their rounding is far above the cache's); an explicit choice wins.
#[test]
fn the_kv_cache_is_f32_for_exact_models_and_f16_otherwise() {
    let tiny = common::phi3v_tiny();
    let engine = |options: LoadOptions, kv_cache_dtype| {
        let config = EngineConfig { kv_cache_dtype, ..Default::default() };
        Engine::new(Pipeline::load(&options).unwrap(), config).unwrap().kv_cache_dtype()
    };
    assert_eq!(engine(options(&tiny, None), KvCacheDtype::Auto), KvDtype::F32);
    for isq in [IsqType::Q8_0, IsqType::Q4K, IsqType::BF16] {
        assert_eq!(engine(options(&tiny, Some(isq)), KvCacheDtype::Auto), KvDtype::F16, "{isq}");
    }
    let half = LoadOptions { dtype: ModelDType::BF16, ..options(&tiny, None) };
    assert_eq!(engine(half, KvCacheDtype::Auto), KvDtype::F16);
    let fixed = KvCacheDtype::Fixed(KvDtype::F32);
    assert_eq!(engine(options(&tiny, Some(IsqType::Q8_0)), fixed), KvDtype::F32);
    assert_eq!(engine(options(&tiny, None), KvCacheDtype::Fixed(KvDtype::F16)), KvDtype::F16);
}

/// The golden's f32 greedy steps all win by the trained margin (so agreement is not luck).
fn assert_trained_margin(case: &serde_json::Value) {
    let gap = case["min_top2_gap"].as_f64().unwrap();
    assert!(gap >= TRAINED_MARGIN, "{}: f32 top-2 gap {gap}", case["name"]);
}

#[test]
fn bf16_storage_matches_the_f32_goldens() {
    // The fixture's weights are bf16, so BF16 storage is lossless; only the summation order of
    // the half-precision kernel differs from f32 gemm.
    let engine = load(&common::phi3v_tiny(), Some(IsqType::BF16));
    assert_eq!(engine.pipeline().load_report().by_type, vec![("BF16".to_string(), 9)]);
    let goldens = common::golden_json("phi3v/generation.json");
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if name == "long_text" {
            continue; // covered for f32 elsewhere; slow here.
        }
        assert_eq!(greedy(&engine, case, None).tokens, golden_greedy(case), "{name}");
    }
}

#[test]
fn quantize_then_reload_is_bit_identical_to_in_situ() {
    let out = tempfile::tempdir().unwrap();
    let tiny = common::phi3v_tiny();
    let report = quantize_checkpoint(&options(&tiny, Some(IsqType::Q4K)), out.path()).unwrap();
    assert_eq!(report.quantized, 9);
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "preprocessor_config.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} copied");
        assert!(report.copied.iter().any(|c| c == f));
    }
    assert!(out.path().join("model.gguf").is_file());

    // Raw logits at every position of a text prompt: bit-identical.
    let goldens = common::golden_json("phi3v/generation.json");
    let ids = common::golden_ids(&goldens["cases"][0]["input_ids"], 0);
    let (in_situ, in_situ_report) = load_model(&tiny, Some(IsqType::Q4K));
    let (reloaded, reload_report) = load_model(out.path(), None);
    assert!(reload_report.prequantized);
    assert_eq!(reload_report.isq, Some(IsqType::Q4K));
    assert_eq!(reload_report.by_type, in_situ_report.by_type);
    assert_eq!(reload_report.quantized_bytes, in_situ_report.quantized_bytes);
    let a = prefill_logits(&in_situ, &ids);
    let b = prefill_logits(&reloaded, &ids);
    assert_eq!(a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ");

    // Through the pipeline, with an image: same greedy tokens and bit-identical logprobs.
    let p1 = load(&tiny, Some(IsqType::Q4K));
    let p2 = load(out.path(), Some(IsqType::Q4K)); // the same type as recorded is accepted
    let case = &goldens["cases"][1];
    assert!(!case["images"].as_array().unwrap().is_empty());
    let c1 = greedy(&p1, case, Some(2));
    let c2 = greedy(&p2, case, Some(2));
    assert_eq!(c1.tokens, c2.tokens);
    assert_eq!(format!("{:?}", c1.logprobs), format!("{:?}", c2.logprobs));

    // A different --isq on a pre-quantized checkpoint is refused, naming both types.
    let e = Pipeline::load(&options(out.path(), Some(IsqType::Q8_0))).err().unwrap().to_string();
    assert!(e.contains("Q4K") && e.contains("Q8_0"), "{e}");
    // Quantizing a GGUF again is refused.
    let again = tempfile::tempdir().unwrap();
    let e =
        quantize_checkpoint(&options(out.path(), Some(IsqType::Q4K)), again.path()).unwrap_err().to_string();
    assert!(e.contains("already"), "{e}");
}

#[test]
fn bf16_quantize_then_reload_is_bit_identical() {
    // Half-precision linears are saved as BF16 tensors, like the checkpoint's other tensors;
    // the GGUF's metadata tells the reload to store them as BF16 linears again.
    let out = tempfile::tempdir().unwrap();
    let tiny = common::phi3v_tiny();
    quantize_checkpoint(&options(&tiny, Some(IsqType::BF16)), out.path()).unwrap();
    let ids: Vec<u32> = vec![1, 32010, 15043, 29892, 920, 526, 366, 29973, 32007, 32001];
    let (a, ra) = load_model(&tiny, Some(IsqType::BF16));
    let (b, rb) = load_model(out.path(), None);
    assert_eq!(ra.by_type, rb.by_type);
    let (la, lb) = (prefill_logits(&a, &ids), prefill_logits(&b, &ids));
    assert!(la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ");
}

#[test]
fn phi4mm_quantizes_lora_base_layers_and_stores_adapters_as_q8_0() {
    // Phi-4-multimodal's projections are PEFT LoRA layers: `*.base_layer` is quantized, the
    // vision/speech adapters are stored as Q8_0 where their width fits its 32-weight blocks (else
    // they keep the checkpoint's bf16), and the SigLIP and conformer encoders' projections keep
    // bf16 (all multiplied in f32).
    let dir = common::phi4mm_tiny();
    let engine = load(&dir, Some(IsqType::Q8_0));
    let report = engine.pipeline().load_report();
    // 2 layers x (qkv, o, gate_up, down), plus lm_head: it is tied to the embeddings in this
    // checkpoint, and the output projection is quantized (at Q8_0, promotion keeps Q8_0) while
    // the embedding lookup keeps the checkpoint's bf16. Then the adapters' `lora_A` [r, 64 or
    // 128] of both adapters on those 8 projections; their `lora_B` [out, r] have r = 8 or 4
    // input features, too few for a block, and stay bf16.
    assert_eq!(report.by_type, vec![("Q8_0".to_string(), 9 + 16)], "{report}");
    // `phive quantize` saves the adapters' blocks, and the reload takes them as they are.
    let out = tempfile::tempdir().unwrap();
    quantize_checkpoint(&options(&dir, Some(IsqType::Q8_0)), out.path()).unwrap();
    let reloaded = Pipeline::load(&options(out.path(), None)).unwrap();
    let reload_report = reloaded.load_report();
    assert!(reload_report.prequantized);
    assert_eq!(reload_report.by_type, report.by_type);
    assert_eq!(reload_report.quantized_bytes, report.quantized_bytes);
    // A dense ISQ type leaves the adapters as stored.
    let dense = Pipeline::load(&options(&dir, Some(IsqType::BF16))).unwrap();
    assert_eq!(dense.load_report().by_type, vec![("BF16".to_string(), 9)], "{}", dense.load_report());
    let with_encoders =
        Pipeline::load(&LoadOptions { isq_encoders: true, ..options(&dir, Some(IsqType::Q8_0)) }).unwrap();
    assert!(with_encoders.load_report().quantized_tensors > 25, "{}", with_encoders.load_report());
}
