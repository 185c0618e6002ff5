//! Crop limits (`num_crops` for Phi-3.5-vision, `dynamic_hd` for Phi-4-multimodal) at load time
//! and per request: image-token counts equal the Hub processors' for the same limit
//! (`goldens/crop_limits.json`, from `tools/crop_token_counts.py`), a request's limit reaches
//! that request's preprocessing only, the encoder and prefix caches never hand one limit's
//! features to another, and bad values are refused naming the field.

mod common;

use phive::api::{ApiError, ChatCompletionRequest, RequestLimits};
use phive::engine::{Completion, Engine, EngineConfig, GenerationParams};
use phive::media::MediaPolicy;
use phive::models::PreprocessOptions;
use phive::pipeline::{LoadOptions, Pipeline, PreparedPrompt};
use phive::prompt::MediaKind;
use phive::vision::{phi3v_hd, phi4mm_hd};
use serde_json::{json, Value};

fn size(case: &Value) -> (u32, u32) {
    (case["size"][0].as_u64().unwrap() as u32, case["size"][1].as_u64().unwrap() as u32)
}

fn golden(family: &str, setting: &str, (w, h): (u32, u32), limit: usize) -> usize {
    let goldens = common::golden_json("crop_limits.json");
    let case = goldens[family].as_array().unwrap().iter().find(|c| size(c) == (w, h) && c[setting] == limit);
    case.and_then(|c| c["num_image_tokens"].as_u64()).expect("a golden for this size and limit") as usize
}

#[test]
fn token_counts_match_the_hub_processors_for_every_limit() {
    let goldens = common::golden_json("crop_limits.json");
    for case in goldens["phi3v"].as_array().unwrap() {
        let (w, h) = size(case);
        let config = phi3v_hd::Phi3VImageProcessorConfig {
            num_crops: case["num_crops"].as_u64().unwrap() as usize,
            ..Default::default()
        };
        let want = case["num_image_tokens"].as_u64().unwrap() as usize;
        assert_eq!(phi3v_hd::num_image_tokens_for(w, h, &config), want, "{case}");
    }
    for case in goldens["phi4mm"].as_array().unwrap() {
        let (w, h) = size(case);
        let config = phi4mm_hd::Phi4MMImageProcessorConfig {
            dynamic_hd: case["dynamic_hd"].as_u64().unwrap() as usize,
        };
        let ours = phi4mm_hd::num_image_tokens_for(w, h, &config).ok();
        assert_eq!(ours, case["num_image_tokens"].as_u64().map(|n| n as usize), "{case}");
    }
}

/// A chat request with the fixture image `name` and `extra` top-level fields.
fn request(name: &str, extra: Value) -> ChatCompletionRequest {
    let path = common::fixtures().join("images").join(name);
    let mut body = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": path.to_string_lossy()}},
        {"type": "text", "text": "What is in this picture?"}]}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    serde_json::from_value(body).unwrap()
}

fn prepare(pipeline: &Pipeline, name: &str, extra: Value) -> Result<PreparedPrompt, ApiError> {
    request(name, extra).into_chat(&RequestLimits::default())?.prepare(pipeline, &MediaPolicy::trusted())
}

fn image_tokens(prepared: &PreparedPrompt) -> usize {
    prepared.tokens.media.iter().filter(|s| s.kind == MediaKind::Image).map(|s| s.len).sum()
}

fn load(dir: std::path::PathBuf, preprocess: PreprocessOptions) -> phive::Result<Pipeline> {
    Pipeline::load(&LoadOptions {
        model: dir.to_string_lossy().into_owned(),
        preprocess,
        ..Default::default()
    })
}

#[test]
fn phi3v_request_and_load_limits_reach_the_preprocessing() {
    let pipeline = load(common::phi3v_tiny(), PreprocessOptions::default()).unwrap();
    assert_eq!(pipeline.crop_limit(), ("num_crops", 4), "the checkpoint's preprocessor_config.json");
    let wide = (1000, 600);
    assert_eq!(
        image_tokens(&prepare(&pipeline, "wide_1000x600.png", json!({})).unwrap()),
        golden("phi3v", "num_crops", wide, 4)
    );
    for n in [1, 16, 32] {
        let prepared = prepare(&pipeline, "wide_1000x600.png", json!({"num_crops": n})).unwrap();
        assert_eq!(image_tokens(&prepared), golden("phi3v", "num_crops", wide, n), "num_crops {n}");
    }
    // vLLM's spelling.
    let nested =
        prepare(&pipeline, "wide_1000x600.png", json!({"mm_processor_kwargs": {"num_crops": 16}})).unwrap();
    assert_eq!(image_tokens(&nested), golden("phi3v", "num_crops", wide, 16));

    // --num-crops 16 at load time becomes the default; a request still sets its own.
    let sixteen =
        load(common::phi3v_tiny(), PreprocessOptions { num_crops: Some(16), ..Default::default() }).unwrap();
    assert_eq!(sixteen.crop_limit(), ("num_crops", 16));
    assert_eq!(
        image_tokens(&prepare(&sixteen, "wide_1000x600.png", json!({})).unwrap()),
        golden("phi3v", "num_crops", wide, 16)
    );
    assert_eq!(
        image_tokens(&prepare(&sixteen, "wide_1000x600.png", json!({"num_crops": 4})).unwrap()),
        golden("phi3v", "num_crops", wide, 4)
    );
}

#[test]
fn bad_limits_are_refused_naming_the_field() {
    let pipeline = load(common::phi3v_tiny(), PreprocessOptions::default()).unwrap();
    // The limit is checked before the image is fetched: this one does not exist.
    let refused = |extra: Value| prepare(&pipeline, "missing.png", extra).err().unwrap();
    for (extra, param, says) in [
        (json!({"num_crops": 0}), "num_crops", "num_crops must be between 1 and 256, got 0"),
        (json!({"num_crops": 257}), "num_crops", "num_crops must be between 1 and 256, got 257"),
        (json!({"dynamic_hd": 4}), "dynamic_hd", "dynamic_hd (4) applies to Phi-4-multimodal only"),
        (json!({"mm_processor_kwargs": {"dynamic_hd": 4}}), "dynamic_hd", "applies to Phi-4-multimodal only"),
    ] {
        let e = refused(extra.clone());
        assert_eq!((e.status(), e.param.as_deref()), (400, Some(param)), "{extra}: {e:?}");
        assert!(e.message.contains(says), "{extra}: {e:?}");
    }
    let e = request("x.png", json!({"num_crops": 4, "mm_processor_kwargs": {"num_crops": 16}}))
        .into_chat(&RequestLimits::default())
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("mm_processor_kwargs.num_crops"));
    // At load time: the other family's limit, and a value out of range, stop the load.
    let e = load(common::phi3v_tiny(), PreprocessOptions { dynamic_hd: Some(16), ..Default::default() });
    assert!(e.err().unwrap().to_string().contains("dynamic_hd (16) applies to Phi-4-multimodal only"));
    let e = load(common::phi3v_tiny(), PreprocessOptions { num_crops: Some(0), ..Default::default() });
    assert!(e.err().unwrap().to_string().contains("num_crops must be between 1 and 256, got 0"));
}

#[test]
fn phi4mm_dynamic_hd_per_request_and_at_load() {
    let pipeline = load(common::phi4mm_tiny(), PreprocessOptions::default()).unwrap();
    assert_eq!(pipeline.crop_limit(), ("dynamic_hd", 36));
    let wide = (1000, 600);
    for n in [1, 4, 36] {
        let prepared = prepare(&pipeline, "wide_1000x600.png", json!({"dynamic_hd": n})).unwrap();
        assert_eq!(image_tokens(&prepared), golden("phi4mm", "dynamic_hd", wide, n), "dynamic_hd {n}");
    }
    let e = prepare(&pipeline, "wide_1000x600.png", json!({"num_crops": 16})).err().unwrap();
    assert_eq!((e.status(), e.param.as_deref()), (400, Some("num_crops")), "{e:?}");
    let e = prepare(&pipeline, "wide_1000x600.png", json!({"dynamic_hd": 1025})).err().unwrap();
    assert_eq!(e.param.as_deref(), Some("dynamic_hd"), "{e:?}");
    let two =
        load(common::phi4mm_tiny(), PreprocessOptions { dynamic_hd: Some(2), ..Default::default() }).unwrap();
    assert_eq!(
        image_tokens(&prepare(&two, "wide_1000x600.png", json!({})).unwrap()),
        golden("phi4mm", "dynamic_hd", wide, 2)
    );
    let e = load(common::phi4mm_tiny(), PreprocessOptions { num_crops: Some(4), ..Default::default() });
    assert!(e.err().unwrap().to_string().contains("num_crops (4) applies to Phi-3.5-vision only"));
}

fn ask(engine: &Engine, name: &str, extra: Value) -> Completion {
    let params = GenerationParams { max_tokens: Some(6), logprobs: Some(1), ..Default::default() };
    common::complete(engine, prepare(engine.pipeline(), name, extra).unwrap(), &params)
}

fn hits_misses(engine: &Engine) -> (u64, u64) {
    let s = engine.stats();
    (s.media_cache_hits, s.media_cache_misses)
}

#[test]
fn the_caches_keep_each_limits_features_apart() {
    let engine = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let four = ask(&engine, "wide_1000x600.png", json!({"num_crops": 4}));
    assert_eq!(hits_misses(&engine), (0, 1));
    let sixteen = ask(&engine, "wide_1000x600.png", json!({"num_crops": 16}));
    assert_eq!(hits_misses(&engine), (0, 2), "num_crops 16 must not get num_crops 4's features");
    assert_ne!(four.usage.prompt_tokens, sixteen.usage.prompt_tokens);
    assert_eq!(
        sixteen.usage.image_tokens - four.usage.image_tokens,
        golden("phi3v", "num_crops", (1000, 600), 16) - golden("phi3v", "num_crops", (1000, 600), 4)
    );
    // The prefix cache reused at most the text before the image (the image's blocks differ).
    let image_start =
        prepare(engine.pipeline(), "wide_1000x600.png", json!({})).unwrap().tokens.media[0].start;
    assert!(sixteen.usage.cached_tokens <= image_start, "{} > {image_start}", sixteen.usage.cached_tokens);
    // Back to 4: its own features, and the same answer as without any cache.
    let again = ask(&engine, "wide_1000x600.png", json!({"num_crops": 4}));
    assert_eq!(hits_misses(&engine), (1, 2));
    let fresh = common::engine(
        &common::phi3v_tiny(),
        EngineConfig { media_cache_bytes: 0, prefix_cache: false, ..Default::default() },
    );
    for (cached, extra) in [(&again, json!({"num_crops": 4})), (&sixteen, json!({"num_crops": 16}))] {
        assert_eq!(cached.tokens, ask(&fresh, "wide_1000x600.png", extra).tokens);
    }
    // A limit that yields the same crops (a square image: 2x2 for both 4 and 5) shares them.
    ask(&engine, "checker_800x800.png", json!({"num_crops": 4}));
    ask(&engine, "checker_800x800.png", json!({"num_crops": 5}));
    assert_eq!(hits_misses(&engine), (2, 3));
}
