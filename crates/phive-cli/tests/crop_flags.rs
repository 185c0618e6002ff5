//! `--num-crops` / `--dynamic-hd` (and their `PHIVE_*` variables) on `phive run`: the limit in
//! use is in the load summary and sets the image-token count; the other family's flag or a value
//! out of range stops before generating, naming the problem.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let image = fixtures().join("images/wide_1000x600.png");
    let mut command = Command::new(env!("CARGO_BIN_EXE_phive"));
    command.args(["run", "-m"]).arg(fixtures().join("phi3v-tiny")).arg("--image").arg(image);
    command.args(["-p", "What?", "--max-tokens", "1"]).args(args);
    command.env_remove("PHIVE_NUM_CROPS").env_remove("PHIVE_DYNAMIC_HD").envs(env.iter().copied());
    command.output().unwrap()
}

/// The Hub processor's token count for wide_1000x600.png (goldens/crop_limits.json).
fn golden(num_crops: u64) -> u64 {
    let goldens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("goldens/crop_limits.json")).unwrap()).unwrap();
    let cases = goldens["phi3v"].as_array().unwrap();
    let case =
        cases.iter().find(|c| c["size"] == serde_json::json!([1000, 600]) && c["num_crops"] == num_crops);
    case.unwrap()["num_image_tokens"].as_u64().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_flag_and_its_variable_set_the_limit() {
    for (args, env, n) in [
        (&[][..], &[][..], 4),
        (&["--num-crops", "16"][..], &[][..], 16),
        (&[][..], &[("PHIVE_NUM_CROPS", "1")][..], 1),
    ] {
        let output = run(args, env);
        let err = stderr(&output);
        assert!(output.status.success(), "{err}");
        assert!(err.contains(&format!("(phi3v, num_crops {n})")), "{err}");
        assert!(err.contains(&format!("({} image, 0 audio)", golden(n))), "{err}");
    }
}

#[test]
fn wrong_family_or_range_is_a_startup_error() {
    for (args, says) in [
        (&["--dynamic-hd", "16"][..], "dynamic_hd (16) applies to Phi-4-multimodal only"),
        (&["--num-crops", "0"][..], "num_crops must be between 1 and 256, got 0"),
        (&["--num-crops", "four"][..], "invalid value 'four' for '--num-crops <N>'"),
    ] {
        let output = run(args, &[]);
        assert!(!output.status.success() && stderr(&output).contains(says), "{args:?}: {}", stderr(&output));
    }
}
