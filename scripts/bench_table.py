#!/usr/bin/env python3
"""Print the Markdown tables of docs/benchmarks.md from criterion's saved estimates.

Usage: python3 scripts/bench_table.py [target/criterion]
Reads <group>/<function>/<size>/new/estimates.json (slope or mean, ns) for the groups
fc_step_f32 and fc_step_f64 (`cargo bench --bench fc_step`) and conv_step_f32 and
conv_prim_f32 (`cargo bench --bench conv_step`).
"""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
BATCH = 128

def mean_ms(group, fn, d):
    p = os.path.join(root, group, fn, str(d), "new", "estimates.json")
    try:
        with open(p) as f:
            est = json.load(f)
            # criterion prints the slope estimate when it has one, else the mean
            key = "slope" if est.get("slope") else "mean"
            return est[key]["point_estimate"] / 1e6
    except OSError:
        return None

for group in ("fc_step_f32", "fc_step_f64"):
    gdir = os.path.join(root, group, "snf")
    if not os.path.isdir(gdir):
        continue
    dims = sorted(int(x) for x in os.listdir(gdir) if x.isdigit())
    print(f"\n### {group} (batch {BATCH})\n")
    print("| D | SNF step (ms) | exact step (ms) | exact / SNF | 6 faer GEMMs (ms) | SNF / 6 GEMMs | SNF GFLOP/s | GEMM GFLOP/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        s, e, g = (mean_ms(group, fn, d) for fn in ("snf", "exact", "gemm6"))
        flops = 12 * d * d * BATCH
        cell = lambda v, fmt: (fmt % v) if v is not None else "n/a"
        print(f"| {d} | {cell(s,'%.3f')} | {cell(e,'%.3f')} | {cell(e/s if e and s else None,'%.2f')} | "
              f"{cell(g,'%.3f')} | {cell(s/g if s and g else None,'%.2f')} | "
              f"{cell(flops/s/1e6 if s else None,'%.1f')} | {cell(flops/g/1e6 if g else None,'%.1f')} |")

# conv_step (benches/conv_step.rs): one SNF conv-layer step vs the exact one, and the conv
# primitive (forward + both gradients) vs the GEMMs it lowers to.
SHAPES = ["1x28x28", "4x14x14", "16x7x7"]
if os.path.isdir(os.path.join(root, "conv_step_f32")):
    print("\n### conv_step_f32 (batch 100, 3x3 kernels, D = 784)\n")
    print("| shape | SNF step (ms) | exact step (ms) | exact / SNF |")
    print("|---|---:|---:|---:|")
    for s in SHAPES:
        a, e = mean_ms("conv_step_f32", "snf", s), mean_ms("conv_step_f32", "exact", s)
        if a and e:
            print(f"| {s} | {a:.3f} | {e:.3f} | {e/a:.1f} |")
if os.path.isdir(os.path.join(root, "conv_prim_f32")):
    print("\n### conv_prim_f32 (batch 100: forward + input grad + kernel grad)\n")
    print("| shape | conv, 1 thread (ms) | its 3 GEMMs per example, 1 thread (ms) | conv / GEMMs | conv, 2 threads (ms) |")
    print("|---|---:|---:|---:|---:|")
    for s in SHAPES:
        c, g, p = (mean_ms("conv_prim_f32", f, s) for f in ("conv3_seq", "gemm3_seq", "conv3_par"))
        if c and g and p:
            print(f"| {s} | {c:.3f} | {g:.3f} | {c/g:.2f} | {p:.3f} |")
