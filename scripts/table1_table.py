#!/usr/bin/env python3
"""Markdown table of the Table 1 runs written by scripts/table1.sh.

    python3 scripts/table1_table.py fc|conv

One row per run folder runs/table1-MODEL-*: test NLL (nats) and bits/dim of the best
checkpoint (test.json, from `snf eval --json`), the validation NLL at every fifth epoch and
the last, and the median training seconds per epoch (metrics.csv), next to the paper's
Table 1 figure for that row.
"""
import csv
import glob
import json
import os
import statistics
import sys

PAPER = {
    ("fc", "exact"): "947.6 ± 0.2",
    ("fc", "snf"): "947.1 ± 0.2",
    ("fc", "relative"): "1096.5 ± 0.5",
    ("conv", "exact"): "637.4 ± 0.2",
    ("conv", "snf"): "638.6 ± 0.9",
    ("conv", "emerging"): "645.7 ± 3.6",
    ("conv", "convexp"): "638.1 ± 1.0",
}
NAMES = {"snf": "self-normalizing", "exact": "exact gradient", "relative": "relative gradient", "emerging": "emerging convolution", "convexp": "convolution exponential"}


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else "conv"
    rows = []
    for d in sorted(glob.glob(f"runs/table1-{model}-*")):
        name = d.rsplit("-", 1)[1]
        with open(os.path.join(d, "metrics.csv")) as f:
            m = list(csv.DictReader(f))
        test = {}
        if os.path.exists(os.path.join(d, "test.json")):
            with open(os.path.join(d, "test.json")) as f:
                test = json.load(f)
        secs = statistics.median(float(r["train_seconds"]) for r in m)
        rows.append((name, m, test, secs))
    if not rows:
        sys.exit(f"no runs/table1-{model}-* folders")
    epochs = len(rows[0][1])
    shown = sorted({e for e in range(5, epochs + 1, 5)} | {epochs})
    print(f"| {model} model | " + " | ".join(f"val NLL ep. {e}" for e in shown) + " | test NLL (best ckpt) | bits/dim | s/epoch (median) | paper (converged) |")
    print("|---|" + "---:|" * (len(shown) + 4))
    for name, m, test, secs in rows:
        vals = [f"{float(m[e - 1]['val_nll']):.2f}" if e <= len(m) else "—" for e in shown]
        nll = f"{test['nll_nats']:.2f}" if test else "—"
        bpd = f"{test['bits_per_dim']:.4f}" if test else "—"
        print(f"| {NAMES.get(name, name)} | " + " | ".join(vals) + f" | {nll} | {bpd} | {secs:.1f} | {PAPER.get((model, name), '')} |")


if __name__ == "__main__":
    main()
