#!/usr/bin/env bash
# The GPU check for the `cuda` feature, in one prepared run (under 5 minutes on a GPU
# machine): build with the feature, run the GPU tests (GPU vs CPU gradients), time the
# SNF vs exact FC step at D in {784, 2048, 4096}, batch 128, and one FC 2-layer MNIST
# epoch on the GPU. Writes everything to ${OUT:-gpu-results}/gpu-check.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.txt"
exec > >(tee "$LOG") 2>&1
echo "== gpu-check $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi not available"
echo "== build"
cargo build --release --features cuda --example gpu_bench || exit 1
echo "== GPU tests (GPU vs CPU gradients; they skip with a reason without a GPU)"
cargo test --release --features cuda --test cuda -- --nocapture || echo "GPU TESTS FAILED"
echo "== SNF vs exact FC step, batch 128, and one FC 2-layer MNIST epoch"
timeout 200 target/release/examples/gpu_bench 784,2048,4096 128 || echo "GPU BENCH FAILED"
echo "== done"
