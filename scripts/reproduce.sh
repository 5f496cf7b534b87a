#!/usr/bin/env bash
# Reproduce a Table 1 row on the shipped MNIST: the self-normalizing model and its exact
# twin, same seed, same data order, then test NLL, plots and a sample grid.
#   scripts/reproduce.sh fc     # FC 2-layer, 10 epochs, the projection fit (the default), 10-epoch warm-up (~5 min on 2 cores)
#                               # (PENALTY=1: the paper's penalty with lambda 0.5, docs/results.md run E)
#   scripts/reproduce.sh conv   # Conv 9-layer, 2 epochs, the projection fit (the default), 1-epoch warm-up (~10 min on 2 cores)
#                               # (PENALTY=1: the paper's penalty with lambda 1, docs/reproduction.md's older rows)
# EPOCHS=N overrides the epochs. Writes runs/repro-MODEL-{snf,exact}/ and the pictures into
# docs/img/ (fc) or docs/img/conv/ (conv).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-fc}
case "$MODEL" in
    fc) EPOCHS=${EPOCHS:-10}; flags=(--warmup 10 --angle-batches 2); img=docs/img
        if [ -n "${PENALTY:-}" ]; then flags+=(--inverse-fit penalty --lambda 0.5); fi ;;
    conv) EPOCHS=${EPOCHS:-2}; flags=(--warmup 1 --angle-batches 1); img=docs/img/conv
        if [ -n "${PENALTY:-}" ]; then flags+=(--inverse-fit penalty --lambda 1); fi ;;
    *) echo "usage: $0 fc|conv" >&2; exit 2 ;;
esac
cargo build --release --features cli --bin snf
SNF=target/release/snf
for g in snf exact; do
    $SNF train --model "$MODEL" --grad $g --epochs "$EPOCHS" "${flags[@]}" --seed 0 --quiet --force --samples 0 --out runs/repro-$MODEL-$g
done
for g in snf exact; do
    $SNF eval runs/repro-$MODEL-$g --json > runs/repro-$MODEL-$g/test.json
    cat runs/repro-$MODEL-$g/test.json
done
mkdir -p "$img"
$SNF plot runs/repro-$MODEL-snf runs/repro-$MODEL-exact --out "$img"
if [ "$MODEL" = fc ]; then out="$img/fc_samples.png"; else out="$img/samples.png"; fi
$SNF sample runs/repro-$MODEL-snf -n 64 --inverse both --out "$out"
