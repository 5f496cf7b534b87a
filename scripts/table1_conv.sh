#!/usr/bin/env bash
# Table 1, conv rows, side by side on the shipped MNIST: the 9-layer conv model with its
# mixing layers self-normalizing, exact, emerging and convolution-exponential; same seed,
# same data order, same epochs, then the test NLL of each best checkpoint.
#   scripts/table1_conv.sh            # 5 epochs each, 1-epoch warm-up (~25 min on 2 cores)
# EPOCHS=N and WARMUP=W override. Writes runs/table1-conv-{snf,exact,emerging,convexp}/.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}
WARMUP=${WARMUP:-1}
cargo build --release --features cli --bin snf
SNF=target/release/snf
run() {
    local name=$1; shift
    $SNF train --model conv "$@" --epochs "$EPOCHS" --warmup "$WARMUP" --seed 0 --quiet --force --samples 0 --out "runs/table1-conv-$name"
    $SNF eval "runs/table1-conv-$name" --json > "runs/table1-conv-$name/test.json"
    cat "runs/table1-conv-$name/test.json"
}
run snf --grad snf
run emerging --mixing emerging
run convexp --mixing convexp
run exact --grad exact
