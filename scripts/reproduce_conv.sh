#!/usr/bin/env bash
# Table 1 "Conv. 9-layer": the self-normalizing model and its exact twin, same seed, same
# data order, ${EPOCHS:-2} epochs (about 10 minutes on 2 cores for 2 epochs), then test NLL,
# plots and samples. Writes runs/repro-conv-{snf,exact}/ and docs/img/conv_*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-2}
cargo build --release --bin snf
SNF=target/release/snf
common=(--model conv --epochs "$EPOCHS" --lambda 1 --warmup 1 --angle-batches 1 --seed 0 --quiet --force --samples 0)
$SNF train --grad snf "${common[@]}" --out runs/repro-conv-snf
$SNF train --grad exact "${common[@]}" --out runs/repro-conv-exact
for g in snf exact; do
    $SNF eval runs/repro-conv-$g --json > runs/repro-conv-$g/test.json
    cat runs/repro-conv-$g/test.json
done
mkdir -p docs/img/conv
$SNF plot runs/repro-conv-snf runs/repro-conv-exact --out docs/img/conv
$SNF sample runs/repro-conv-snf -n 64 --inverse both --out docs/img/conv/samples.png
