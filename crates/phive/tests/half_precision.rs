//! The language model in bf16 and f16 (`--dtype`, the default on a GPU) keeps the reference's
//! answers on both fixtures: every golden case decodes the same 16 greedy tokens as the f32
//! reference, and the chosen tokens' log-probabilities stay near the f32 engine's.

mod common;

use std::path::Path;

use phive::engine::{Completion, Engine, EngineConfig, GenerationParams};
use phive::pipeline::{LoadOptions, Pipeline, PreparedPrompt};
use phive::ModelDType;

/// Largest difference allowed between a chosen token's log-probability in half precision and
/// in f32 (observed: 0.005 in bf16, 1e-4 in f16 on these fixtures).
const LOGPROB_TOL: f32 = 0.05;

fn engine(dir: &Path, dtype: ModelDType) -> Engine {
    let options = LoadOptions { model: dir.to_string_lossy().into_owned(), dtype, ..Default::default() };
    Engine::new(Pipeline::load(&options).unwrap(), EngineConfig::default()).unwrap()
}

fn greedy(engine: &Engine, prepared: PreparedPrompt) -> Completion {
    let params = GenerationParams { max_tokens: Some(16), logprobs: Some(0), ..Default::default() };
    common::complete(engine, prepared, &params)
}

/// Every golden case of `family` through the f32 engine and one in `dtype`.
fn compare(dir: &Path, family: &str, dtype: ModelDType, name_of_dtype: &str) {
    let (reference, half) = (engine(dir, ModelDType::F32), engine(dir, dtype));
    assert_eq!(half.pipeline().dtype_name(), name_of_dtype);
    assert_eq!(reference.pipeline().dtype_name(), "f32");
    let goldens = common::golden_json(&format!("{family}/generation.json"));
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prepare = |engine: &Engine| match family {
            "phi3v" => {
                let (messages, images) = common::openai_messages(&case["openai_messages"]);
                engine.pipeline().prepare(&messages, &images).unwrap()
            }
            _ => common::phi4mm_prepare(engine.pipeline(), case),
        };
        let (want, got) = (greedy(&reference, prepare(&reference)), greedy(&half, prepare(&half)));
        assert_eq!(want.tokens, common::greedy_tokens(case), "{family}/{name}: the f32 reference");
        assert_eq!(got.tokens, want.tokens, "{family}/{name} in {name_of_dtype}: greedy tokens");
        for (step, (w, g)) in want.logprobs.iter().zip(&got.logprobs).enumerate() {
            let diff = (w.chosen.logprob - g.chosen.logprob).abs();
            assert!(
                diff < LOGPROB_TOL,
                "{family}/{name} in {name_of_dtype}: step {step} logprob differs by {diff}"
            );
        }
    }
}

#[test]
fn phi3v_in_bf16_and_f16_keeps_the_golden_answers() {
    compare(&common::phi3v_tiny(), "phi3v", ModelDType::BF16, "bf16");
    compare(&common::phi3v_tiny(), "phi3v", ModelDType::F16, "f16");
}

#[test]
fn phi4mm_in_bf16_keeps_the_golden_answers_with_its_adapters_and_encoders() {
    compare(&common::phi4mm_tiny(), "phi4mm", ModelDType::BF16, "bf16");
}

#[test]
fn auto_is_f32_on_the_cpu() {
    assert_eq!(engine(&common::phi3v_tiny(), ModelDType::Auto).pipeline().dtype_name(), "f32");
}
