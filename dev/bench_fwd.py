#!/usr/bin/env python3
"""Forward: speedattn (auto kernel) vs PyTorch SDPA, same process, interleaved reps.

    .venv/bin/python dev/bench_fwd.py [reps] [shape...]     shape = dtype:B:N:S:D:causal(0/1)[:S1[:N2]]
    (S1 < S: decode-style, S2 = S; N2 < N: GQA, torch with enable_gqa=True)

Prints wall medians/min and CPU-seconds per call (robust to other processes time-sharing the two
cores), TFLOP/s in the 4*B*N*S^2*D convention (halved for causal), and the speedup over torch.
"""
import os, sys, time
import numpy as np
import torch
import speedattn

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
shapes = sys.argv[2:] or ["bf16:1:16:4096:128:0", "fp32:1:16:4096:128:0", "fp16:1:16:4096:128:0",
                          "bf16:1:16:4096:128:1"]
DT = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
torch.set_num_threads(2)
speedattn.set_num_threads(2)


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


for sh in shapes:
    f = sh.split(":")
    dts, B, N, S, D, causal = f[0], *(int(x) for x in f[1:6])
    S1 = int(f[6]) if len(f) > 6 else S  # decode: dtype:B:N:S2:D:0:S1:N2
    N2 = int(f[7]) if len(f) > 7 else N
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N, S1, D, generator=g).to(DT[dts])
    k, v = (torch.randn(B, N2, S, D, generator=g).to(DT[dts]) for _ in range(2))
    scale = 1.0 / D ** 0.5
    kw = {}
    if causal:
        kw = dict(atten_mask=torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1), sparse_mode=3)
    f_sa = lambda: speedattn.speed_fusion_attention(q, k, v, N, "BNSD", scale=scale, **kw)
    gqa = dict(enable_gqa=True) if N2 != N else {}
    f_pt = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=scale,
                                                                    **gqa)
    out_sa = f_sa()[0]
    out_pt = f_pt()
    out_sa = out_sa if isinstance(out_sa, torch.Tensor) else torch.as_tensor(np.asarray(out_sa))
    err = (out_sa.float() - out_pt.float()).abs().max().item()
    res = {"sa": [], "pt": []}
    for _ in range(reps):
        res["sa"].append(timed(f_sa))
        res["pt"].append(timed(f_pt))
    flops = 4 * B * N * S1 * S * D / (2 if causal else 1)
    kv_gb = 2 * B * N2 * S * D * k.element_size() * 1e-9  # K + V bytes (decode roofline)
    line = f"{sh:24s} maxdiff {err:.2e} | "
    med = {}
    for name in ("sa", "pt"):
        w = sorted(x[0] for x in res[name]); c = sorted(x[1] for x in res[name])
        med[name] = w[len(w) // 2]
        line += (f"{name}: med {w[len(w)//2]*1e3:8.1f} ms min {w[0]*1e3:8.1f} ms cpu {c[0]*1e3:8.1f} ms "
                 f"({flops / w[0] * 1e-12:5.2f} TF/s best, {flops / c[len(c)//2] * 1e-9:6.0f} GF/cpu-s med"
                 + (f", K+V {kv_gb / w[len(w)//2]:5.1f} GB/s med" if S1 < 16 else "") + ") | ")
    line += f"speedup(med) {med['pt'] / med['sa']:.2f}x"
    print(line, flush=True)
