#!/usr/bin/env bash
# Table 5 (and Table 1's Glow row) side by side on the shipped MNIST: Glow with exact 1x1,
# self-normalizing 1x1 and self-normalizing 5x5 mixing; same seed, data order and epochs;
# then the test NLL of each best checkpoint and a Markdown table.
#   scripts/table5.sh          # Table 5's 2L-4K, width 16 (8 epochs, 1-epoch warm-up)
#   scripts/table5.sh 16k      # the paper's MNIST 2L-16K, width 512 (exact 1x1 vs SNF 1x1)
# EPOCHS=N, WARMUP=W, SUBSET=N (training images), VALID_SUBSET=N override; SNF_BIN=path uses a prebuilt
# binary; RESUME=1 continues existing runs to EPOCHS (bit-exact resume).
# Writes runs/table5-SIZE-ROW/ and prints the table (scripts/table1_table.py glow-SIZE).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-4k}
case "$SIZE" in
    4k) EPOCHS=${EPOCHS:-8}; WARMUP=${WARMUP:-1}; arch="--levels 2 --steps 4 --width 16"; rows=(exact1x1 lu1x1 snf1x1 snf5x5) ;;
    16k) EPOCHS=${EPOCHS:-1}; WARMUP=${WARMUP:-1}; arch="--levels 2 --steps 16 --width 512"; rows=(exact1x1 lu1x1 snf1x1) ;;
    *) echo "usage: $0 [4k|16k]" >&2; exit 2 ;;
esac
# ROWS="snf1x1 snf5x5" runs some rows only; self-normalizing rows train with the paper's
# MNIST Glow penalty lambda = 100 (A.3: --inverse-fit penalty --lambda 100) unless SNF_FLAGS says
# otherwise (e.g. "--inverse-fit projection" for the default projection fit, "--inverse-fit penalty
# --recon-target 3e-3" for the adaptive penalty, or "--inverse-fit penalty --geco-target 1e-3").
if [ -n "${ROWS:-}" ]; then read -r -a rows <<< "$ROWS"; fi
SNF_FLAGS=${SNF_FLAGS---inverse-fit penalty --lambda 100}
if [ -z "${SNF_BIN:-}" ]; then cargo build --release --features cli --bin snf; fi
SNF=${SNF_BIN:-target/release/snf}
subset=()
if [ -n "${SUBSET:-}" ]; then subset=(--train-subset "$SUBSET"); fi
if [ -n "${VALID_SUBSET:-}" ]; then subset+=(--valid-subset "$VALID_SUBSET"); fi
for row in "${rows[@]}"; do
    out="runs/table5-$SIZE-$row"
    if [ "${RESUME:-0}" = 1 ]; then
        $SNF train --resume --out "$out" --epochs "$EPOCHS" --quiet --samples 0
    else
        extra=""
        case "$row" in snf*) extra=$SNF_FLAGS ;; esac
        # shellcheck disable=SC2086
        $SNF train --model glow $arch --mixing "$row" $extra --epochs "$EPOCHS" --warmup "$WARMUP" --seed 0 --quiet --force --samples 16 "${subset[@]}" --out "$out"
    fi
    $SNF eval "$out" --json > "$out/test.json"
done
python3 scripts/table1_table.py "glow-$SIZE"
