//! The CUDA decode attention kernel (`src/nn/paged_decode.cu`), compiled as C++20 with CUDA's
//! built-ins emulated on CPU threads (`tests/cuda_emulation/`), against a plain attention in
//! double precision: the kernel's arithmetic is checked on every build, GPU or not. The check
//! itself fails the test on any mismatch; its report is printed.

use std::process::Command;

#[test]
fn the_cuda_decode_attention_matches_a_plain_attention_on_emulated_threads() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let exe = std::env::temp_dir().join(format!("phive-paged-decode-check-{}", std::process::id()));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&compiler)
        .args(["-std=c++20", "-O1", "-pthread"])
        .arg(format!("-I{dir}/tests/cuda_emulation"))
        .arg(format!("-I{dir}/src/nn"))
        .arg(format!("{dir}/tests/cuda_emulation/paged_decode_check.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| {
            panic!("running the C++20 compiler `{compiler}` (set CXX to choose another): {e}")
        });
    assert!(
        built.status.success(),
        "the emulated kernel does not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output().expect("running the emulated kernel's check");
    let _ = std::fs::remove_file(&exe);
    let report = String::from_utf8_lossy(&ran.stdout);
    println!("{report}");
    assert!(ran.status.success(), "the kernel differs from the plain attention:\n{report}");
    assert!(report.contains("0 failures") && report.matches(" ok").count() == 18, "{report}");
}
