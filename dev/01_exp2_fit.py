#!/usr/bin/env python3
"""01 — exp2 polynomial fit for src/cpu/tile/exp2_poly.h.

p(f) ~= 2^f on f in [0, 1) (f = t - floor(t); the kernels use vreduceps / vscalefps), fitted by
iteratively reweighted least squares on the RELATIVE error over a 20001-point grid, then evaluated
in float32 Horner. Result (2026-11-27):
  degree 3: 7.5e-05   degree 4: 2.7e-06   degree 5: 1.6e-07   degree 6: 9.0e-08 (float32 Horner)
Kernels: AMX (bf16 P, fp32 softmax_sum must meet 2^-15 of max|sum|) degree 4; fp32 paths degree 5.
"""
import numpy as np

for deg in (3, 4, 5, 6):
    x = np.linspace(0, 1, 20001)
    y = 2 ** x
    w = np.ones_like(x)
    for _ in range(200):
        V = np.vander(x, deg + 1, increasing=True)
        c, *_ = np.linalg.lstsq(V * (w / y)[:, None], w, rcond=None)
        err = (V @ c - y) / y
        w = w * (1 + 0.5 * np.abs(err) / np.abs(err).max())
    c32 = c.astype(np.float32)
    xf = x.astype(np.float32)
    p = np.float32(0) * xf + c32[-1]
    for k in range(deg - 1, -1, -1):
        p = p * xf + c32[k]
    print(deg, float(np.abs((p.astype(np.float64) - y) / y).max()), [float(v) for v in c32])
