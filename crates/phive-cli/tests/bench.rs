//! `phive bench` on the tiny Phi-3.5-vision fixture with tiny token counts: the table is
//! printed, `--json` holds every figure in the `phive-bench/1` schema with sane values, and bad
//! inputs stop before anything runs, naming the problem.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn bench(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phive"));
    command.args(["bench", "-m"]).arg(fixtures().join("phi3v-tiny")).args(args);
    command.env_remove("PHIVE_MAX_NUM_SEQS").env_remove("PHIVE_KV_CACHE_MEM");
    command.output().unwrap()
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn json_report_has_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let image = fixtures().join("images/wide_1000x600.png");
    let output = bench(&[
        "--prompt-tokens",
        "40",
        "--decode-tokens",
        "4",
        "--concurrency",
        "1,2",
        "--image",
        image.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("| concurrency | TTFT p50 s"), "{stdout}");
    assert!(stdout.contains("measured by phive"), "{stdout}");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["schema"], "phive-bench/1");
    assert_eq!(r["engine"]["name"], "phive");
    assert!(r["date"].as_str().unwrap().ends_with('Z'));
    assert!(r["machine"]["threads"].as_u64().unwrap() >= 1);
    assert!(r["machine"]["flags"].is_array() && r["machine"]["model"].is_string());
    assert_eq!(r["model"]["architecture"], "phi3v");
    positive(&r["model"]["lm_params"], "lm_params");
    positive(&r["model"]["lm_weight_bytes"], "lm_weight_bytes");
    assert_eq!(r["workload"]["prompt_tokens"], 40);
    assert_eq!(r["workload"]["decode_tokens"], 4);
    assert_eq!(r["workload"]["kv_cache_dtype"], "f32");
    positive(&r["load"]["seconds"], "load seconds");
    positive(&r["load"]["peak_rss_bytes"], "peak RSS");
    positive(&r["load"]["first_request_ttft_s"], "first request's TTFT");
    positive(&r["peak"]["memory_read_gb_s"], "memory bandwidth");
    positive(&r["peak"]["matmul_gflop_s"], "matmul peak");
    assert_eq!(r["peak"]["measured_by"], "phive");

    let levels = r["levels"].as_array().unwrap();
    let concurrency: Vec<u64> = levels.iter().map(|l| l["concurrency"].as_u64().unwrap()).collect();
    assert_eq!(concurrency, [1, 2]);
    for l in levels {
        let c = l["concurrency"].as_u64().unwrap();
        assert_eq!(l["prompt_tokens"], 40, "the prompt length is exact");
        assert_eq!(l["completion_tokens"].as_u64().unwrap(), 4 * c, "stop tokens are banned");
        let p50 = positive(&l["ttft_s"]["p50"], "TTFT p50");
        assert!(l["ttft_s"]["p99"].as_f64().unwrap() >= p50);
        positive(&l["itl_ms"]["p50"], "ITL p50");
        for key in [
            "prefill_tok_s",
            "decode_tok_s_per_stream",
            "decode_tok_s_aggregate",
            "decode_gb_s",
            "decode_pct_of_peak",
            "prefill_gflop_s",
            "prefill_pct_of_peak",
        ] {
            positive(&l[key], key);
        }
    }
    let images = r["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0]["image_tokens"].as_u64().unwrap() > 0);
    assert!(images[0]["prompt_tokens"].as_u64().unwrap() > images[0]["image_tokens"].as_u64().unwrap());
    positive(&images[0]["ttft_s"], "image TTFT");
}

#[test]
fn no_peak_leaves_the_roofline_out() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let json_path = json.to_str().unwrap();
    let args = [
        "--prompt-tokens",
        "24",
        "--decode-tokens",
        "2",
        "--no-peak",
        "--kv-cache-dtype",
        "f16",
        "--json",
        json_path,
    ];
    let output = bench(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r["peak"].is_null());
    assert_eq!(r["workload"]["concurrency"], serde_json::json!([1]));
    assert_eq!(r["workload"]["kv_cache_dtype"], "f16");
    assert!(String::from_utf8_lossy(&output.stdout).contains(", KV cache in f16"));
    assert!(r["levels"][0]["decode_pct_of_peak"].is_null());
    positive(&r["levels"][0]["decode_gb_s"], "decode GB/s");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let missing = std::env::temp_dir().join("phive-bench-no-such-dir/out.json");
    for (args, says) in [
        (vec!["--concurrency", "0"], "invalid value '0' for '--concurrency"),
        (vec!["--concurrency", "1,x"], "invalid value 'x' for '--concurrency"),
        (vec!["--decode-tokens", "1"], "invalid value '1' for '--decode-tokens"),
        (vec!["--prompt-tokens", "0"], "invalid value '0' for '--prompt-tokens"),
        (vec!["--prompt-tokens", "2"], "a prompt needs at least"),
        (vec!["--prompt-tokens", "100000000"], "exceed the model's context"),
        (vec!["--json", missing.to_str().unwrap()], "does not exist"),
        (vec!["--image", "/no/such/picture.png"], "image /no/such/picture.png"),
    ] {
        let output = bench(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
