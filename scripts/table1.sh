#!/usr/bin/env bash
# Table 1, every row we can run, side by side on the shipped MNIST: same seed, same data
# order, same epochs; then the test NLL of each best checkpoint and a Markdown table.
#   scripts/table1.sh fc     # FC 2-layer: SNF, exact, relative gradient (16 epochs, 10-epoch warm-up)
#   scripts/table1.sh conv   # Conv 9-layer: SNF, exact, emerging, conv. exponential (5 epochs, 1-epoch warm-up)
# EPOCHS=N and WARMUP=W override; SNF_BIN=path uses a prebuilt binary; RESUME=1 continues existing runs to EPOCHS (bit-exact resume).
# Writes runs/table1-MODEL-ROW/ (run folders with test.json) and prints the table
# (scripts/table1_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-conv}
case "$MODEL" in
    fc) EPOCHS=${EPOCHS:-16}; WARMUP=${WARMUP:-10}; rows=("snf --grad snf" "exact --grad exact" "relative --grad relative") ;;
    conv) EPOCHS=${EPOCHS:-5}; WARMUP=${WARMUP:-1}; rows=("snf --grad snf" "emerging --mixing emerging" "convexp --mixing convexp" "exact --grad exact") ;;
    *) echo "usage: $0 fc|conv" >&2; exit 2 ;;
esac
# SNF_BIN=path runs a binary built earlier (so that rebuilding the crate mid-run changes nothing)
if [ -z "${SNF_BIN:-}" ]; then cargo build --release --features cli --bin snf; fi
SNF=${SNF_BIN:-target/release/snf}
for row in "${rows[@]}"; do
    read -r name flags <<< "$row"
    out="runs/table1-$MODEL-$name"
    if [ "${RESUME:-0}" = 1 ]; then
        $SNF train --resume --out "$out" --epochs "$EPOCHS" --quiet --samples 0
    else
        # shellcheck disable=SC2086
        $SNF train --model "$MODEL" $flags --epochs "$EPOCHS" --warmup "$WARMUP" --seed 0 --quiet --force --samples 0 --out "$out"
    fi
    $SNF eval "$out" --json > "$out/test.json"
done
python3 scripts/table1_table.py "$MODEL"
