"""Smoke run of the Python extension under AddressSanitizer + UBSan (tests/sanitize/run.sh).

Runs random small forward/backward cases through the public API (every layout and sparse
mode, every dtype, strided views, both backends, 1 and 2 threads) and a set of invalid
calls that must raise TypeError / ValueError. The sanitizer runtime aborts the process on
any report, so reaching the end means clean. Uses numpy only (torch is not imported).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import speedattn as sa  # noqa: E402
from conftest import (  # noqa: E402
    NON_TND_MODES,
    PSE_KINDS,
    TND_MODES,
    TND_PSE_KINDS,
    random_spec,
    run_backward_check,
    run_forward_check,
)

N_CASES = int(os.environ.get("SANITIZE_PY_CASES", "48"))


def main():
    t0 = time.time()
    want = os.environ.get("SANITIZE_EXPECT_PKG")
    if want:
        assert os.path.abspath(sa.__file__).startswith(os.path.abspath(want)), (
            f"imported {sa.__file__}, not the sanitized copy under {want}")
    print(f"speedattn from {sa.__file__}; kernels fwd={sa.forward_kernel_for('float32')} "
          f"bwd={sa.backward_kernel_for('bfloat16')}")
    rng = np.random.default_rng(20240607)
    layouts = ("BSH", "SBH", "BSND", "BNSD", "TND")
    for c in range(N_CASES):
        layout = layouts[c % len(layouts)]
        modes = TND_MODES if layout == "TND" else NON_TND_MODES
        pses = TND_PSE_KINDS if layout == "TND" else PSE_KINDS
        mode = int(modes[int(rng.integers(len(modes)))])
        pse = str(pses[int(rng.integers(len(pses)))])
        spec = random_spec(rng, layout, mode, pse, seed=c)
        if layout != "TND" and c % 3 == 0:
            spec.strided = ("rows", "lastdim", "outer")[c % 9 // 3]
        sa.set_num_threads(1 + c % 2)
        backend = ("reference", "auto")[c % 2]
        if c % 4 < 2:
            run_backward_check(sa, spec, backend)
        else:
            run_forward_check(sa, spec, backend)

    # Misaligned views: element-offset and byte-offset (numpy allows unaligned arrays).
    for dt in (np.float32, np.float16):
        a = rng.standard_normal((2, 9, 16)).astype(dt)
        raw = np.zeros(a.nbytes + 1, np.uint8)
        byte_off = raw[1:].view(dt).reshape(a.shape)
        byte_off[...] = a
        elem = np.empty(a.size + 1, dt)[1:].reshape(a.shape)
        elem[...] = a
        want = sa.speed_fusion_attention(a, a, a, 2, "BSH", scale=0.3)[0]
        for view in (byte_off, elem):
            got = sa.speed_fusion_attention(view, view, view, 2, "BSH", scale=0.3)
            assert np.array_equal(got[0], want)
            sa.speed_fusion_attention_grad(view, view, view, view, 2, "BSH", softmax_max=got[1], softmax_sum=got[2],
                                           attention_in=got[0], seed=got[4], offset=got[5], numels=got[6],
                                           scale=0.3)

    # Invalid calls: only TypeError / ValueError.
    q = np.zeros((1, 4, 8), np.float32)
    bad = [
        dict(head_num=3),
        dict(head_num=1, input_layout="XYZ"),
        dict(head_num=1, scale=float("nan")),
        dict(head_num=1, keep_prob=0.0),
        dict(head_num=1, sparse_mode=9),
        dict(head_num=1, sparse_mode=2, atten_mask=np.zeros((4, 4), bool)),
        dict(head_num=1, atten_mask=np.zeros((4, 4), np.float32)),
        dict(head_num=1, pse_type=2),
        dict(head_num=1, padding_mask=np.zeros((1,), bool)),
        dict(head_num="1"),
    ]
    for kw in bad:
        kw.setdefault("input_layout", "BSH")
        try:
            sa.speed_fusion_attention(q, q, q, **kw)
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError(f"accepted invalid call {kw}")
    sa.set_num_threads(2)
    print(f"sanitize py_smoke: {N_CASES} cases + {len(bad)} invalid calls clean in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
