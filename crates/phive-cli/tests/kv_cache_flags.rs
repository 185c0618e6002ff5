//! `--kv-cache-dtype` on `phive run`: f16 holds twice the tokens of f32 in the same
//! `--kv-cache-mem`, the load summary says which is in use (by default f32 for the f32 model,
//! f16 under `--isq`), and an unknown type stops before loading, naming the choices; so does a
//! GPU memory share outside (0, 1].

use std::path::PathBuf;
use std::process::Command;

/// `phive run` on the tiny checkpoint with `args`; (success, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/phi3v-tiny");
    let mut command = Command::new(env!("CARGO_BIN_EXE_phive"));
    command.args(["run", "-m"]).arg(model).args(["-p", "Hi", "--max-tokens", "2"]).args(args);
    let output = command.env_remove("PHIVE_KV_CACHE_DTYPE").output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The token capacity in the summary line `kv cache: X GiB of T, N tokens in ...`.
fn capacity(stderr: &str, dtype: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("kv cache:")).unwrap_or_else(|| panic!("{stderr}"));
    let after = line.split_once(&format!(" of {dtype}, ")).unwrap_or_else(|| panic!("{line}")).1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn f16_holds_twice_the_tokens_of_f32() {
    let (ok, exact) = run(&["--kv-cache-mem", "0.05"]);
    assert!(ok, "{exact}");
    let (ok, half) = run(&["--kv-cache-mem", "0.05", "--kv-cache-dtype", "f16"]);
    assert!(ok, "{half}");
    // Twice the blocks, give or take the one left over where the memory does not divide evenly.
    let (half, exact) = (capacity(&half, "f16"), capacity(&exact, "f32"));
    assert!((2 * exact..=2 * exact + 16).contains(&half), "f16 {half} tokens, f32 {exact}");
}

#[test]
fn auto_is_f16_under_isq_unless_asked_otherwise() {
    let (ok, quantized) = run(&["--kv-cache-mem", "0.05", "--isq", "q8_0"]);
    assert!(ok, "{quantized}");
    let (ok, exact) = run(&["--kv-cache-mem", "0.05", "--isq", "q8_0", "--kv-cache-dtype", "f32"]);
    assert!(ok, "{exact}");
    let (half, exact) = (capacity(&quantized, "f16"), capacity(&exact, "f32"));
    assert!((2 * exact..=2 * exact + 16).contains(&half), "f16 {half} tokens, f32 {exact}");
}

#[test]
fn an_unknown_type_is_a_startup_error() {
    let (ok, err) = run(&["--kv-cache-dtype", "fp8"]);
    assert!(!ok && err.contains("unknown KV cache dtype \"fp8\": use auto, f32 or f16"), "{err}");
}

#[test]
fn a_gpu_memory_share_outside_zero_to_one_is_a_startup_error() {
    for share in ["0", "1.5", "nan"] {
        let (ok, err) = run(&["--gpu-memory-utilization", share]);
        assert!(
            !ok && err.contains("--gpu-memory-utilization must be a fraction in (0, 1]"),
            "{share}: {err}"
        );
    }
    // On the CPU the share is accepted and has nothing to size.
    let (ok, err) = run(&["--gpu-memory-utilization", "0.5"]);
    assert!(ok, "{err}");
}
