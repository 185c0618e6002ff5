#!/usr/bin/env bash
# One pass of the ISQ table in BENCHMARKS.md: the six rows, F32 first (it writes the reference
# logits the other rows are compared with). Needs the real-shape checkpoint:
#   tools/.venv/bin/python tools/make_fixtures.py --real-shape /tmp/phi35-real --layers 4
# usage: scripts/bench-isq.sh PASS_LABEL [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p phive --example isq_bench
bench=target/release/examples/isq_bench
model=${2:-/tmp/phi35-real}
for t in f32 bf16 q8_0 q6k q4k q4_0; do
    if [ "$t" = f32 ]; then ref="--write-reference /tmp/isq-ref.safetensors"; else ref="--reference /tmp/isq-ref.safetensors"; fi
    cmd="$bench --model $model --isq $t $ref --prefill-tokens 512 --decode-tokens 32"
    echo "## pass ${1:-1} $t load-before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "CMD: $cmd"
    $cmd 2>&1 | grep -v '^\s*$'
done
