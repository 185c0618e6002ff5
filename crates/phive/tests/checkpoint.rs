//! Checkpoint resolution and broken-checkpoint errors, on the tiny Phi-3.5-vision fixture.

use std::path::{Path, PathBuf};

use phive::checkpoint::{Architecture, Checkpoint, FileFetcher, ModelLocation};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/phi3v-tiny")
}

/// Copies the fixture checkpoint into a fresh temporary folder that a test may break.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn open_err(dir: &Path) -> String {
    match Checkpoint::open(dir.to_str().unwrap(), None) {
        Ok(_) => panic!("expected {} to fail to open", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn opens_the_sharded_fixture() {
    let ckpt = Checkpoint::open(fixture().to_str().unwrap(), None).unwrap();
    assert_eq!(ckpt.architecture, Architecture::Phi3V);
    assert_eq!(ckpt.weights.files.len(), 2);
    assert!(ckpt.preprocessor_config.is_some());
    let stops = &ckpt.tokenizer.stop_token_ids;
    for id in [32007, 32001, 32000] {
        assert!(stops.contains(&id), "stop ids {stops:?} lack {id}");
    }
    assert!(ckpt.tokenizer.chat_template.contains("<|end|>"));
    assert_eq!(ckpt.tokenizer.tokenizer.token_to_id("<|user|>"), Some(32010));
}

#[test]
fn missing_config_names_the_file() {
    let (_tmp, dir) = copy_fixture();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = open_err(&dir);
    assert!(err.contains("config.json") && err.contains("missing"), "{err}");
}

#[test]
fn bad_json_names_the_file() {
    let (_tmp, dir) = copy_fixture();
    std::fs::write(dir.join("config.json"), "{ \"architectures\": [").unwrap();
    let err = open_err(&dir);
    assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");
}

#[test]
fn unsupported_architecture_lists_supported_ones() {
    let (_tmp, dir) = copy_fixture();
    std::fs::write(dir.join("config.json"), r#"{"architectures": ["LlamaForCausalLM"]}"#).unwrap();
    let err = open_err(&dir);
    assert!(err.contains("LlamaForCausalLM") && err.contains("Phi3VForCausalLM"), "{err}");
}

#[test]
fn missing_tokenizer_names_the_file() {
    let (_tmp, dir) = copy_fixture();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = open_err(&dir);
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn missing_shard_names_the_shard() {
    let (_tmp, dir) = copy_fixture();
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = open_err(&dir);
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn truncated_shard_is_reported_when_mapping() {
    let (_tmp, dir) = copy_fixture();
    let shard = dir.join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let ckpt = Checkpoint::open(dir.to_str().unwrap(), None).unwrap();
    let err = ckpt.weights.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu).err().unwrap();
    let err = err.to_string();
    assert!(err.contains("model-00001-of-00002.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn single_file_checkpoint_is_found() {
    let (_tmp, dir) = copy_fixture();
    merge_shards(&dir);
    let ckpt = Checkpoint::open(dir.to_str().unwrap(), None).unwrap();
    assert_eq!(ckpt.weights.files, vec![dir.join("model.safetensors")]);
    let vb = ckpt.weights.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(vb.contains_tensor("model.embed_tokens.weight"));
    assert!(vb.contains_tensor("lm_head.weight"));
}

/// Rewrites a sharded checkpoint folder as a single `model.safetensors`.
pub fn merge_shards(dir: &Path) {
    let mut all = std::collections::HashMap::new();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        all.extend(candle_core::safetensors::load(dir.join(shard), &candle_core::Device::Cpu).unwrap());
        std::fs::remove_file(dir.join(shard)).unwrap();
    }
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
}

#[test]
fn offline_hub_model_not_in_cache_names_id_and_cache() {
    let cache = tempfile::tempdir().unwrap();
    let location = ModelLocation::parse("microsoft/Phi-3.5-vision-instruct", None).unwrap();
    let fetcher = FileFetcher::with_cache(location, cache.path().to_path_buf(), true);
    let err = Checkpoint::open_with(fetcher).err().unwrap().to_string();
    assert!(err.contains("microsoft/Phi-3.5-vision-instruct"), "{err}");
    assert!(err.contains(&cache.path().display().to_string()), "{err}");
    assert!(err.contains("offline"), "{err}");
}

#[test]
fn offline_hub_model_loads_from_the_cache_layout() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--microsoft--Phi-3.5-vision-instruct");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    for revision in [None, Some(commit)] {
        let location = ModelLocation::parse("microsoft/Phi-3.5-vision-instruct", revision).unwrap();
        let fetcher = FileFetcher::with_cache(location, cache.path().to_path_buf(), true);
        let ckpt = Checkpoint::open_with(fetcher).unwrap();
        assert_eq!(ckpt.architecture, Architecture::Phi3V);
        assert!(ckpt.weights.files.iter().all(|f| f.starts_with(&snapshot)));
    }
    // An unknown branch is not cached.
    let location = ModelLocation::parse("microsoft/Phi-3.5-vision-instruct", Some("dev")).unwrap();
    let fetcher = FileFetcher::with_cache(location, cache.path().to_path_buf(), true);
    assert!(Checkpoint::open_with(fetcher).is_err());
}

/// Rewrites the merged single-file checkpoint in `dir` with `edit` applied to its tensors.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>)) {
    merge_shards(dir);
    let file = dir.join("model.safetensors");
    let mut all = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    edit(&mut all);
    candle_core::safetensors::save(&all, &file).unwrap();
}

fn load_err(dir: &Path) -> String {
    let options = phive::pipeline::LoadOptions { model: dir.to_string_lossy().into(), ..Default::default() };
    match phive::pipeline::Pipeline::load(&options) {
        Ok(_) => panic!("expected {} to fail to load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_fixture();
    edit_tensors(&dir, |all| {
        all.remove("model.layers.1.mlp.down_proj.weight");
    });
    let err = load_err(&dir);
    assert!(err.contains("model.layers.1.mlp.down_proj.weight"), "{err}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let (_tmp, dir) = copy_fixture();
    edit_tensors(&dir, |all| {
        let wrong =
            candle_core::Tensor::zeros((7, 64), candle_core::DType::BF16, &candle_core::Device::Cpu).unwrap();
        all.insert("model.layers.0.self_attn.o_proj.weight".into(), wrong);
    });
    let err = load_err(&dir);
    assert!(err.contains("model.layers.0.self_attn.o_proj.weight") && err.contains("shape"), "{err}");
    assert!(err.contains("[7, 64]") && err.contains("[64, 64]"), "{err}");
}
