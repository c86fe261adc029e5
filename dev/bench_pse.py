#!/usr/bin/env python3
"""B1 N8 S2048 D128 causal: plain / ALiBi (pse_type 2 slopes) / fp32|bf16 bias tensor vs torch SDPA
(explicit float bias + -inf causal), interleaved, medians. Usage: bench_pse.py [reps] [dtype:kind ...]"""
import sys, time, math, torch, numpy as np, speedattn
torch.set_num_threads(2); speedattn.set_num_threads(2)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
DT = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
for sh in sys.argv[2:] or ["fp32:alibi", "bf16:alibi", "fp32:causal", "bf16:causal", "fp32:tensor", "bf16:tensor"]:
    dts, kind = sh.split(":")
    B, N, S, D = 1, 8, 2048, 128
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, N, S, D, generator=g).to(DT[dts]) for _ in range(3))
    scale = 1 / math.sqrt(D)
    sa = dict(atten_mask=torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1), sparse_mode=3, scale=scale)
    slopes = torch.tensor([2.0 ** (-8.0 * (n + 1) / N) for n in range(N)], dtype=torch.float32)
    i = torch.arange(S).view(-1, 1); j = torch.arange(S).view(1, -1)
    bias = -slopes.view(1, -1, 1, 1) * (j - i).abs().float()
    if kind == "alibi": sa.update(pse=slopes, pse_type=2)
    if kind == "tensor": sa.update(pse=bias.to(DT[dts]), pse_type=0)
    tb = bias.masked_fill(j > i, float("-inf")).to(DT[dts])
    f_sa = lambda: speedattn.speed_fusion_attention(q, k, v, N, "BNSD", **sa)
    if kind == "causal":
        f_pt = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        f_pt = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tb, scale=scale)
    f_sa(); f_pt()
    ts, tp = [], []
    for _ in range(reps):
        t0 = time.perf_counter(); f_sa(); ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); f_pt(); tp.append(time.perf_counter() - t0)
    ms, mp = np.median(ts) * 1e3, np.median(tp) * 1e3
    print(f"{sh:14s} sa {ms:7.1f} ms  torch {mp:7.1f} ms  speedup {mp/ms:5.2f}", flush=True)
