#!/usr/bin/env python3
"""23 — small problems against PyTorch SDPA (docs/performance.md "Small problems").

Back-to-back calls of each library (30 per case, medians), torch tensors in BNSD, 2 threads. The
bench (`speedattn bench`) pauses 10 ms before every call, which at these sizes measures cold
starts of both libraries (thread pools asleep, caches cold), so small shapes are timed here.
Usage: .venv/bin/python dev/23_small_shapes.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

import speedattn as sa

torch.set_num_threads(2)
sa.set_num_threads(2)


def med_ms(f, n=30):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
for dt in (torch.bfloat16, torch.float32):
    for (B, N, S, D) in ((1, 8, 128, 64), (1, 8, 256, 64), (1, 16, 512, 128), (4, 16, 1024, 64)):
        q, k, v = (torch.randn(B, N, S, D).to(dt) for _ in range(3))
        kw = dict(head_num=N, input_layout="BNSD", scale=D**-0.5)
        a = med_ms(lambda: sa.speed_fusion_attention(q, k, v, **kw))
        b = med_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=D**-0.5))
        c = med_ms(lambda: sa.speed_fusion_attention(q, k, v, atten_mask=mask, sparse_mode=3, **kw))
        d = med_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=D**-0.5, is_causal=True))
        print(f"{str(dt):15s} B{B} N{N} S{S} D{D}: full speedattn {a:.3f} ms, torch {b:.3f} ms ({b / a:.2f}x); "
              f"causal {c:.3f} / {d:.3f} ms ({d / c:.2f}x)")
