#!/usr/bin/env bash
# Table 1 "FC 2-layer", Fig. 2, Fig. 3 and Fig. 5 on the shipped MNIST: the self-normalizing
# model and its exact twin, same seed, same data order, 10 epochs (about 10 minutes on
# 2 cores), then test NLL, plots and samples. Writes runs/repro-fc-{snf,exact}/ and
# copies the pictures into docs/img/.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-10}
cargo build --release --bin snf
SNF=target/release/snf
common=(--model fc --epochs "$EPOCHS" --lambda 0.5 --warmup 10 --angle-batches 2 --seed 0 --quiet --force)
$SNF train --grad snf "${common[@]}" --out runs/repro-fc-snf
$SNF train --grad exact "${common[@]}" --out runs/repro-fc-exact
for g in snf exact; do
    $SNF eval runs/repro-fc-$g --json > runs/repro-fc-$g/test.json
    cat runs/repro-fc-$g/test.json
done
mkdir -p docs/img
$SNF plot runs/repro-fc-snf runs/repro-fc-exact --out docs/img
$SNF sample runs/repro-fc-snf -n 64 --inverse both --out docs/img/fc_samples.png
