#!/usr/bin/env bash
# Builds phive with candle's CUDA backend (`--features cuda`), on any x86-64 Linux machine, GPU
# or not. The CUDA 13.0 compiler, headers and libraries come from PyPI wheels unpacked into
# `.cuda/` (ignored by git); the GPU driver (libcuda) is only linked against a stub here and
# loaded from the host at run time. Leaves the binary at target/release/phive.
#
#   bash scripts/build-cuda.sh            # the CLI and server (what `phive` is)
#   bash scripts/build-cuda.sh --python   # also the Python SDK wheel, into target/wheels
#
# CUDA_COMPUTE_CAP picks the GPU generation (default 90: H100/H200). The binary needs, at run
# time, an NVIDIA driver that supports CUDA 13.0 (580 or newer) and the CUDA 13 libraries
# (libcudart, libcublas, libcublasLt, libcurand, libnvrtc) on the library path: PyTorch's
# `nvidia/cu13/lib` folder has them, as does `.cuda/nvidia/cu13/lib` here.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_SERIES=13.0
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
root="$PWD/.cuda"
cuda_home="$root/nvidia/cu13"
wheels=(nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-cccl nvidia-cuda-runtime
    nvidia-cuda-nvrtc nvidia-cublas)

if [ ! -x "$cuda_home/bin/nvcc" ]; then
    echo "== CUDA $CUDA_SERIES toolkit from PyPI into .cuda/ (about 700 MB unpacked)"
    mkdir -p "$root/wheels"
    specs=()
    for w in "${wheels[@]}"; do specs+=("$w==$CUDA_SERIES.*"); done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$root/wheels" \
        --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2010_x86_64 \
        --python-version 3.12 "${specs[@]}" "nvidia-curand>=10.4,<10.5"
    for w in "$root"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$root"
    done
    chmod +x "$cuda_home"/bin/* "$cuda_home"/nvvm/bin/*
    rm -rf "$root/wheels"
fi

# Unversioned names for the linker, as a toolkit's development packages would install them.
for lib in cudart cublas cublasLt curand nvrtc; do
    versioned=$(cd "$cuda_home/lib" && ls "lib$lib.so."* | sort | head -n 1)
    ln -sf "$versioned" "$cuda_home/lib/lib$lib.so"
done

# The driver API is linked against a stub with the driver's soname; the real libcuda.so.1
# comes from the GPU host's driver at run time. Its symbols are the ones cudarc binds, and each
# answers CUDA_ERROR_NO_DEVICE (100), so a run that picks the stub up reports no GPU.
stub="$cuda_home/lib/stubs/libcuda.so"
if [ ! -f "$stub" ]; then
    cargo fetch --locked --quiet
    cudarc=$(cargo metadata --locked --format-version 1 --features phive/cuda 2>/dev/null |
        python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
    bindings="$(dirname "$cudarc")/src/driver/sys/mod.rs"
    mkdir -p "$(dirname "$stub")"
    grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$bindings" | sed 's/pub unsafe fn //' | sort -u |
        sed 's/.*/int &(void) { return 100; }/' > "$root/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$root/libcuda_stub.c"
fi

export CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH"
export LIBRARY_PATH="$cuda_home/lib:$cuda_home/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "== nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
echo "== cargo build --release -p phive-cli --features cuda (compute capability $CUDA_COMPUTE_CAP)"
start=$(date +%s)
cargo build --release --locked -p phive-cli --features cuda
if [ "${1:-}" = "--python" ]; then
    python3 -m pip install --quiet "maturin>=1.5,<2"
    python3 -m maturin build --release --features cuda -m crates/phive-python/Cargo.toml
fi
echo "== built ${CARGO_TARGET_DIR:-target}/release/phive with CUDA in $(($(date +%s) - start)) s"
