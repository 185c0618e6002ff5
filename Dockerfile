# syntax=docker/dockerfile:1.7
# phive's container image: phive built from source with cargo, shipped on a slim runtime with
# a non-root user, the Hugging Face cache as a volume and `phive serve vision` as entry point.
#
#   docker build -t phive:cpu .
#   docker run -p 8000:8000 -v hf:/data/hf -e PHIVE_MODEL=microsoft/Phi-3.5-vision-instruct \
#       -e PHIVE_ISQ=q4k phive:cpu
#
# Every `phive serve` flag is also a PHIVE_* variable (--max-num-seqs: PHIVE_MAX_NUM_SEQS), and
# flags may follow the image name. `--build-arg VARIANT=cuda --build-arg CARGO_FEATURES=cuda`
# builds on NVIDIA's CUDA 13 images with candle's CUDA backend, for `--device cuda` (see
# docs/deploy.md; scripts/build-cuda.sh builds the same binary without Docker).

ARG VARIANT=cpu
ARG RUST_VERSION=1.95.0
ARG CUDA_VERSION=13.0.1

FROM rust:${RUST_VERSION}-slim-bookworm AS build-cpu

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build-cuda
ARG RUST_VERSION
# candle's kernels are compiled for this GPU generation (90: H100/H200).
ARG CUDA_COMPUTE_CAP=90
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} LIBRARY_PATH=/usr/local/cuda/lib64/stubs
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"

# hadolint ignore=DL3006
FROM build-${VARIANT} AS build
ARG CARGO_FEATURES=""
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p phive-cli ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} \
    && cp target/release/phive /usr/local/bin/phive

FROM debian:bookworm-slim AS runtime-cpu

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS runtime-cuda

# hadolint ignore=DL3006
FROM runtime-${VARIANT}
# curl for HEALTHCHECK, CA certificates for Hub downloads.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/phive phive \
    && mkdir -p /data/hf \
    && chown phive /data/hf
COPY --from=build /usr/local/bin/phive /usr/local/bin/phive
ENV HF_HOME=/data/hf PHIVE_HOST=0.0.0.0 PHIVE_PORT=8000
VOLUME ["/data/hf"]
USER 10001
EXPOSE 8000
# The port opens once the model is loaded (a first download can take many minutes).
HEALTHCHECK --interval=15s --timeout=3s --start-period=15m --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${PHIVE_PORT}/health/live\" || exit 1"]
ENTRYPOINT ["phive", "serve", "vision"]
