#!/usr/bin/env python3
"""Markdown table of the Table 1 runs written by scripts/table1.sh.

    python3 scripts/table1_table.py fc|conv|glow-4k|glow-16k

(glow-*: the runs/table5-SIZE-* folders of scripts/table5.sh, with the last epoch's mean
SNF-vs-exact gradient angle over the mixing layers.)

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
    ("glow-4k", "exact1x1"): "678.3 ± 2.0 (Table 5)",
    ("glow-4k", "snf1x1"): "678.3 ± 9.7 (Table 5)",
    ("glow-4k", "snf5x5"): "669.9 ± 2.8 (Table 5)",
    ("glow-16k", "exact1x1"): "575.7 ± 0.8 (Table 1)",
    ("glow-16k", "snf1x1"): "575.4 ± 1.4 (Table 1)",
}
NAMES = {"exact1x1": "Glow 1x1 (exact)", "lu1x1": "Glow LU 1x1 (exact)", "snf1x1": "SNF 1x1", "snf5x5": "SNF 5x5", "snf1x1geco": "SNF 1x1, GECO λ", "snf5x5geco": "SNF 5x5, GECO λ", "snf": "self-normalizing", "exact": "exact gradient", "relative": "relative gradient", "emerging": "emerging convolution", "convexp": "convolution exponential"}


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else "conv"
    rows = []
    pattern = f"runs/table5-{model[5:]}-*" if model.startswith("glow-") else f"runs/table1-{model}-*"
    for d in sorted(glob.glob(pattern)):
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
        sys.exit(f"no {pattern} folders")
    epochs = len(rows[0][1])
    shown = sorted({e for e in range(5, epochs + 1, 5)} | {epochs})
    glow = model.startswith("glow-")
    extra = " angle all blocks / W (deg, last epoch) |" if glow else ""
    print(f"| {model} model | " + " | ".join(f"val NLL ep. {e}" for e in shown) + f" | test NLL (best ckpt) | bits/dim | s/epoch (median) |{extra} paper (converged) |")
    print("|---|" + "---:|" * (len(shown) + 4 + glow))
    for name, m, test, secs in rows:
        vals = [f"{float(m[e - 1]['val_nll']):.2f}" if e <= len(m) else "—" for e in shown]
        nll = f"{test['nll_nats']:.2f}" if test else "—"
        bpd = f"{test['bits_per_dim']:.4f}" if test else "—"
        ang = ""
        if glow:
            a, w = m[-1].get("mean_angle_deg", ""), m[-1].get("mean_angle_w_deg", "")
            ok = a not in ("", None) and float(a) == float(a)
            ang = f" {float(a):.2f} / {float(w):.3f} |" if ok else " — |"
        print(f"| {NAMES.get(name, name)} | " + " | ".join(vals) + f" | {nll} | {bpd} | {secs:.1f} |{ang} {PAPER.get((model, name), '')} |")


if __name__ == "__main__":
    main()
