#!/usr/bin/env bash
# The GPU check of a CUDA build (tools/gpu_check.py): the tiny fixtures' golden answers in f32
# and bf16 through `phive serve --device cuda`, then `phive bench` on a real-width Phi-3.5-vision
# checkpoint generated there (decode at 1, 8 and 64 streams; time to first token with one
# 1024x768 image). Two steps, because the GPU machine has no compiler for Rust and no internet:
#
#   here:             bash scripts/build-cuda.sh && bash scripts/gpu-check.sh --prepare
#   on the GPU host:  bash scripts/gpu-check.sh [--bench-layers N] [--skip-bench]
#
# --prepare leaves the stripped, xz-compressed binary in .gpu/ (ignored by git; about 11 MB),
# which is all the GPU host needs besides the repository: it brings its own NVIDIA driver and
# CUDA 13 libraries (PyTorch's nvidia/cu13 wheels or a toolkit). Results go to $OUT (or
# ./gpu-check-out): goldens.json, bench_*.json and logs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    bin="${CARGO_TARGET_DIR:-target}/release/phive"
    [ -x "$bin" ] || { echo "no $bin: run scripts/build-cuda.sh first" >&2; exit 1; }
    ldd "$bin" | grep -q libcuda || { echo "$bin is not a CUDA build: run scripts/build-cuda.sh" >&2; exit 1; }
    mkdir -p .gpu
    strip -o .gpu/phive "$bin"
    xz -T0 -6 -f .gpu/phive
    ls -l .gpu/phive.xz
    exit 0
fi

out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
xz -dc .gpu/phive.xz > /tmp/phive
chmod +x /tmp/phive

# CUDA 13 user-space libraries: the nvidia/cu13 wheels of the Python that holds PyTorch, or a
# toolkit's lib64.
libs=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null || true)
for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64; do
    [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
if ldd /tmp/phive | grep "not found"; then
    echo "missing libraries above (searched: $LD_LIBRARY_PATH)" >&2
    exit 1
fi
# NVRTC (which compiles the fused decode attention at first use) opens its builtins library at
# run time, so ldd does not list it.
builtins=""
IFS=: read -ra dirs <<< "$LD_LIBRARY_PATH"
for d in "${dirs[@]}"; do
    compgen -G "$d/libnvrtc-builtins.so*" > /dev/null && builtins="$d"
done
[ -n "$builtins" ] || echo "warning: no libnvrtc-builtins on $LD_LIBRARY_PATH: decode attention will gather instead of the fused kernel" >&2
python3 tools/gpu_check.py --phive /tmp/phive --device cuda --out "$out" "$@"
