"""Markdown tables for docs/performance.md from `speedattn bench --json FILE` reports.

usage: python dev/bench_to_md.py REPORT.json [REPORT.json ...]
Prints, per report: the peaks line (1 and 2 threads, max / median), then one table row per case
and direction (fwd; bwd and fwd+bwd when timed). %peak is the bench's (of the max peak of the
run's thread count); decode rows show K+V GB/s and % of the same-run DRAM probe instead.
"""

import json
import sys


def _peaks(d):
    p = d["peaks"]["probes"]
    out = []
    for name, label in (("amx_bf16", "AMX-BF16"), ("fp32_fma", "FP32 FMA"), ("dram_read", "DRAM"),
                        ("clock", "clock")):
        if name in p:
            u = p[name]["unit"]
            fmt = ".2f" if name == "clock" else ".0f"
            per = ", ".join(f"{t} thr {p[name][t]['max']:{fmt}} / {p[name][t]['median']:{fmt}}"
                            for t in ("1", "2") if t in p[name])
            out.append(f"{label} ({u}, max / median) {per}")
    return "; ".join(out)


def _row(r, direction, dram):
    x = r[direction]
    sa, th = x["speedattn"], x["torch"]
    if r["case"]["S1"] == 1:  # decode: bandwidth-bound, report K+V streaming
        gbps = r["bytes"] / sa["median_s"] / 1e9
        perf = f"({gbps:.1f} GB/s = {100 * gbps / dram:.0f}% DRAM)" if dram else f"({gbps:.1f} GB/s)"
        pct = ""
    else:
        perf = f"{sa['tflops']:.3f}"
        pct = f"{x['pct_peak']:.1f}%"
    err = ""
    if direction == "fwd":
        v = r["validation"]
        err = f"{v['speedattn_err']:.1e} / {v['torch_err']:.1e}"
    return (f"| {r['label'] if direction == 'fwd' else ''} | {r['dtype'] if direction == 'fwd' else ''} | "
            f"{direction} | {1e3 * sa['median_s']:.1f} | {1e3 * th['median_s']:.1f} | "
            f"{x['speedup']:.2f}× | {perf} | {pct} | {err} |")


def main(paths):
    for path in paths:
        d = json.load(open(path))
        threads = str(d["threads"])
        dram = d["peaks"]["probes"].get("dram_read", {}).get(threads, {}).get("max")
        kern = ", ".join(f"{dt} {k['forward']}" + (f" / {k['backward']}" if k.get("backward") else "")
                         for dt, k in d["kernels"].items())
        print(f"Peaks: {_peaks(d)}. Kernels: {kern}.\n")
        print("| case | dtype | dir | speedattn ms | torch ms | speedup | speedattn TF/s | %peak | err (sa / torch) |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|")
        for r in d["results"]:
            for direction in ("fwd", "bwd", "fwdbwd"):
                if direction in r:
                    print(_row(r, direction, dram))
        print()
        for c in d.get("causal_pairs", []):
            if "error" not in c:
                print(f"Causal / non-causal time, paired ({c['pairs']} alternations): {c['label']} {c['dtype']} "
                      f"**{c['median_pair_ratio']:.3f}** (pairs {c['min']:.3f}–{c['max']:.3f}).  ")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
