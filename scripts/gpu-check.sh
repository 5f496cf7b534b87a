#!/usr/bin/env bash
# The GPU check for the `cuda` feature, in one prepared run (under 5 minutes on a GPU
# machine): build with the feature, run the GPU tests (GPU vs CPU gradients), time the
# SNF vs exact FC step at D in {784, 2048, 4096}, batch 128, and ten FC 2-layer MNIST
# epochs on the GPU. Writes everything to ${OUT:-gpu-results}/gpu-check.txt.
#
# On a GPU machine without a Rust toolchain, build the binaries elsewhere first:
#   scripts/gpu-check.sh --prebuild      # here: builds tests/cuda.rs, gpu_bench and gpu_train_fc into .gpu/ (git-ignored via .git/info/exclude)
#   SNF_GPU_BIN=.gpu scripts/gpu-check.sh   # there: runs the prebuilt binaries
# cudarc loads libcuda, cuBLAS and NVRTC at run time; the script adds the CUDA toolkit's
# and pip's nvidia library folders to LD_LIBRARY_PATH when it finds them.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prebuild" ]; then
  cargo build --release --features cuda --example gpu_bench --example gpu_train_fc --test cuda --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable"): print(m["target"]["name"], m["executable"])' \
    | { mkdir -p .gpu; while read -r name exe; do cp "$exe" ".gpu/$name"; echo ".gpu/$name"; done; }
  exit
fi
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.txt"
exec > >(tee "$LOG") 2>&1
echo "== gpu-check $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi not available"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import glob,site; print(" ".join(glob.glob(site.getsitepackages()[0]+"/nvidia/*/lib")))' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
if [ -n "${SNF_GPU_BIN:-}" ]; then
  TESTS="$SNF_GPU_BIN/cuda"; BENCH="$SNF_GPU_BIN/gpu_bench"
  # the binaries find the shipped MNIST through the path they were built at
  echo "== prebuilt binaries from $SNF_GPU_BIN"
else
  echo "== build"
  cargo build --release --features cuda --example gpu_bench || exit 1
  TESTS="cargo test --release --features cuda --test cuda --"; BENCH=target/release/examples/gpu_bench
fi
echo "== GPU tests (GPU vs CPU gradients; they skip with a reason without a GPU)"
$TESTS --nocapture --test-threads 1 || echo "GPU TESTS FAILED"
echo "== SNF vs exact FC step, batch 128, and ten FC 2-layer MNIST epochs"
timeout 200 "$BENCH" 784,2048,4096 128 10 || echo "GPU BENCH FAILED"
echo "== done"
