#!/usr/bin/env python3
# Usage: python3 scripts/compare_runs.py SNF_RUN_DIR EXACT_RUN_DIR [WARMUP_EPOCHS]
#
# Prints a markdown table of validation NLL by epoch for a self-normalizing run and its
# exact twin (both `snf train` run folders), with the gap in % of the exact NLL, the SNF
# run's mean angle on W, relative reconstruction error, lambda and monitor alerts, and a
# summary line: the largest gap after the warm-up (default 10 epochs, the CLI default).
import csv, os, sys

def load(d):
    with open(os.path.join(d, 'metrics.csv')) as f:
        return {int(r['epoch']): r for r in csv.DictReader(f)}

snf, exact = load(sys.argv[1]), load(sys.argv[2])
warmup = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
print('| epoch | SNF val NLL | exact val NLL | gap | angle W (deg) | rel. recon | lambda | alerts |')
print('|---:|---:|---:|---:|---:|---:|---:|---:|')
worst = None
for e in sorted(set(snf) & set(exact)):
    s, x = snf[e], exact[e]
    a, b = float(s['val_nll']), float(x['val_nll'])
    gap = 100.0 * (a - b) / abs(b)
    if e > warmup and (worst is None or gap > worst[1]):
        worst = (e, gap)
    rel = s.get('relative_reconstruction_error', 'nan')
    print(f"| {e} | {a:.2f} | {b:.2f} | {gap:+.2f} % | {float(s['mean_angle_w_deg']):.3f} | {float(rel):.2e} | {float(s['lambda']):.3f} | {s.get('alerts', '0')} |")
if worst:
    print(f"\nLargest gap after the {warmup:g}-epoch warm-up: {worst[1]:+.2f} % (epoch {worst[0]}).")
else:
    print(f"\nNo common epoch after the {warmup:g}-epoch warm-up.")
