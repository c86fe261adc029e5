"""Forward cross-check of the library (both backends) against the NumPy twin.

The grid covers every (layout, sparse mode, pse kind) triple that SPEC allows, each with a seeded
random choice of the other dimensions (dtype, GQA, odd sizes, masks, band, dropout, invalid-line
handling). Targeted cases follow: strided / torch inputs, large and tiny D, compressed ALiBi pse,
fully masked rows, automatic invalid-line handling, determinism across thread counts.
"""

import math
import os

import numpy as np
import pytest
from conftest import (BACKENDS, NON_TND_MODES, PSE_KINDS, TND_MODES, TND_PSE_KINDS,
                      Spec, build, check_forward_result, lib_forward, random_spec,
                      run_forward_check)

import twin


def _grid():
    rng = np.random.default_rng(20240611)
    specs = []
    seed = 0
    for layout in ("BSH", "SBH", "BSND", "BNSD", "TND"):
        modes = TND_MODES if layout == "TND" else NON_TND_MODES
        kinds = TND_PSE_KINDS if layout == "TND" else PSE_KINDS
        for mode in modes:
            for pse in kinds:
                seed += 1
                specs.append(random_spec(rng, layout, mode, pse, seed=seed))
    # extra random cases: numpy strided views and torch inputs (incl. transposed views)
    layouts = ("BSH", "SBH", "BSND", "BNSD", "TND")
    for t in range(40):
        seed += 1
        layout = layouts[t % 5]
        modes = TND_MODES if layout == "TND" else NON_TND_MODES
        kinds = TND_PSE_KINDS if layout == "TND" else PSE_KINDS
        s = random_spec(rng, layout, int(rng.choice(modes)), str(rng.choice(kinds)), seed=seed)
        if t % 2 == 0:
            s.strided = ("rows", "lastdim", "outer")[(t // 2) % 3]
        else:
            s.torch = True
            s.strided = ("none", "transposed", "outer")[(t // 2) % 3]
        specs.append(s)
    return specs


GRID = _grid()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", GRID, ids=[s.id() for s in GRID])
def test_forward_grid(sa, spec, backend):
    run_forward_check(sa, spec, backend)


# ------------------------------------------------------------------------------------------------
# targeted cases
# ------------------------------------------------------------------------------------------------
TARGETED = [
    # head sizes at the ends of the supported range and odd ones
    Spec(layout="BSH", B=1, N1=2, N2=1, S1=3, S2=5, D=768, dtype="bfloat16",
         scale=1 / math.sqrt(768), seed=1),
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=2, S2=3, D=768, dtype="float32",
         scale=1 / math.sqrt(768), seed=2),
    Spec(layout="BSND", B=2, N1=3, N2=1, S1=7, S2=11, D=1, dtype="float16", seed=3),
    Spec(layout="SBH", B=2, N1=4, N2=2, S1=13, S2=17, D=80, dtype="bfloat16",
         scale=1 / math.sqrt(80), seed=4),
    Spec(layout="BSH", B=1, N1=2, N2=2, S1=1, S2=1, D=3, dtype="float32", seed=5),
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=1, S2=37, D=17, dtype="float16", seed=6),
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=37, S2=1, D=17, dtype="float16", seed=7),
    # longer rows than the kernels' tiles (crossing block boundaries), GQA
    Spec(layout="BSND", B=1, N1=4, N2=2, S1=131, S2=263, D=64, dtype="bfloat16",
         scale=0.125, seed=8),
    Spec(layout="BNSD", B=1, N1=2, N2=1, S1=257, S2=129, D=32, dtype="float32", mode=3,
         mask="template", seed=9),
    Spec(layout="BSH", B=1, N1=2, N2=1, S1=200, S2=300, D=16, dtype="float16", mode=4,
         mask="template", pre=40, nxt=7, pse="t2", seed=10),
    # fully masked rows from a user mask: uniform rows (inner_precise 0) and invalid lines (2)
    Spec(layout="BNSD", B=2, N1=2, N2=2, S1=9, S2=6, D=8, mode=0, mask="BN", density=0.5,
         empty_rows=True, seed=11),
    Spec(layout="BNSD", B=2, N1=2, N2=2, S1=9, S2=6, D=8, mode=0, mask="BN", density=0.5,
         empty_rows=True, inner_precise=2, seed=11),
    Spec(layout="BSH", B=1, N1=2, N2=1, S1=8, S2=8, D=8, mode=1, mask="2d", density=0.9,
         empty_rows=True, dtype="bfloat16", pse="t1", seed=12),
    Spec(layout="BSH", B=1, N1=2, N2=1, S1=8, S2=8, D=8, mode=1, mask="2d", density=0.9,
         empty_rows=True, dtype="bfloat16", pse="t1", inner_precise=2, seed=12),
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=8, S2=8, D=4, mode=5, mask="B1", density=0.3,
         empty_rows=True, prefix=(2,), keep_prob=0.8, seed=13),
    # automatic invalid-line handling (SPEC section 4)
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=6, S2=6, D=4, mode=0, mask="2d", density=0.0,
         pre=3, nxt=-1, seed=14),  # next < 0: row 0 empty
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=9, S2=4, D=4, mode=0, mask="2d", density=0.0,
         pre=2, nxt=1, seed=15),  # pre + S2 < S1
    Spec(layout="BSND", B=1, N1=2, N2=1, S1=9, S2=4, D=4, mode=3, mask="template",
         dtype="float16", seed=16),  # mode 3 with S1 > S2
    Spec(layout="BSND", B=1, N1=2, N2=1, S1=5, S2=9, D=4, mode=4, mask="template", pre=-2,
         nxt=3, dtype="float16", seed=17),  # mode 4: next' = 3+4 >= 0, pre' = -2-4 ...
    Spec(layout="BNSD", B=2, N1=1, N2=1, S1=9, S2=4, D=4, mode=5, mask="BN", density=0.1,
         prefix=(0, 3), seed=18),  # modes 5/6 with S1 > S2 and a zero prefix
    Spec(layout="BNSD", B=2, N1=1, N2=1, S1=9, S2=4, D=4, mode=6, mask="template",
         prefix=(2, 0), seed=19),
    Spec(layout="BNSD", B=2, N1=1, N2=1, S1=9, S2=4, D=4, mode=6, mask="template",
         prefix=(2, 1), seed=20),  # S1 > S2 but no zero prefix: uniform rows
    Spec(layout="TND", seqs=((3, 5), (6, 2), (2, 2)), N1=2, N2=1, D=8, mode=0, mask="2d",
         density=0.0, pre=1, nxt=0, seed=21),  # only sequence 1 has pre + skv < sq
    Spec(layout="TND", seqs=((3, 5), (0, 0), (0, 4), (2, 2)), N1=2, N2=2, D=8, mode=4,
         mask="template", pre=1, nxt=0, seed=22),
    # no mask: every mode is full attention, pre/next ignored
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=5, S2=7, D=4, mode=4, mask="none", pre=0, nxt=0,
         seed=23),
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=5, S2=7, D=4, mode=0, mask="none", pre=0, nxt=0,
         seed=24),
    # ALiBi offsets and slopes of both shapes
    Spec(layout="BSND", B=2, N1=2, N2=1, S1=7, S2=12, D=8, pse="t3", q_start=5, kv_start=-2,
         mode=3, mask="template", seed=25),
    Spec(layout="BSND", B=2, N1=2, N2=1, S1=7, S2=12, D=8, pse="t2", pse_b1=True, q_start=-4,
         kv_start=6, seed=26),
    Spec(layout="TND", seqs=((4, 6), (0, 3), (5, 5)), N1=2, N2=1, D=8, pse="t2", q_start=2,
         kv_start=1, mode=2, mask="template", seed=27),
    # TND modes 7/8: the banded sequence is the last / first NON-EMPTY one
    Spec(layout="TND", seqs=((3, 5), (4, 7), (0, 0)), N1=1, N2=1, D=8, mode=7,
         mask="template", pre=1, nxt=0, seed=28),
    Spec(layout="TND", seqs=((0, 0), (0, 3), (4, 7), (3, 5)), N1=1, N2=1, D=8, mode=8,
         mask="template", pre=0, nxt=1, seed=29),
    # larger shapes crossing the kernels' q/kv blocks with every kind of mask
    Spec(layout="BNSD", B=1, N1=2, N2=1, S1=150, S2=270, D=16, mode=0, mask="B1", density=0.2,
         pre=60, nxt=25, pse="t1", dtype="bfloat16", seed=31),
    Spec(layout="BSND", B=2, N1=2, N2=2, S1=140, S2=140, D=8, mode=5, mask="BN", density=0.05,
         prefix=(70, 3), dtype="float16", seed=32),
    Spec(layout="BSH", B=2, N1=1, N2=1, S1=300, S2=130, D=8, mode=6, mask="template",
         prefix=(0, 77), seed=33),
    Spec(layout="TND", seqs=((130, 200), (0, 0), (70, 70), (5, 260)), N1=2, N2=1, D=16,
         mode=7, mask="template", pre=33, nxt=4, keep_prob=0.9, dtype="bfloat16", seed=34),
    Spec(layout="TND", seqs=((0, 5), (130, 200), (70, 70), (5, 260)), N1=2, N2=1, D=16,
         mode=8, mask="template", pre=20, nxt=50, pse="t2", seed=35),
    Spec(layout="TND", seqs=((129, 129), (64, 300), (200, 65)), N1=3, N2=1, D=8, mode=0,
         mask="2d", density=0.1, pre=50, nxt=3, pse="t3", inner_precise=2, seed=36),
    # inner_precise 1 behaves like 0 (uniform rows)
    Spec(layout="BNSD", B=2, N1=2, N2=2, S1=9, S2=6, D=8, mode=0, mask="BN", density=0.5,
         empty_rows=True, inner_precise=1, seed=37),
    # dropout through the full grid machinery
    Spec(layout="TND", seqs=((5, 7), (0, 0), (3, 4)), N1=2, N2=1, D=8, keep_prob=0.6,
         seed=30),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", TARGETED, ids=[s.id() for s in TARGETED])
def test_forward_targeted(sa, spec, backend):
    run_forward_check(sa, spec, backend)


def alibi_bias(slopes, S1, S2, rows=None):
    """A genuine ALiBi (Toeplitz) bias -slope*|j - i| as float32 (N1, rows, S2) per batch 1."""
    i = np.arange(S1)[:, None] if rows is None else rows[:, None]
    j = np.arange(S2)[None, :]
    return (-np.asarray(slopes, np.float64)[:, None, None] * np.abs(j - i)[None]).astype(
        np.float32)[None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,mask", [(2, "template"), (3, "template"), (0, "2d-causal")])
@pytest.mark.parametrize("pse_type", [1, 0])
def test_compressed_alibi_pse(sa, backend, mode, mask, pse_type):
    """(B, N1, 1024, S2) pse with S1 == S2 > 1024 and a causal pattern (SPEC section 5)."""
    S = 1031
    spec = Spec(layout="BNSD", B=1, N1=2, N2=1, S1=S, S2=S, D=2, dtype="float32", mode=mode,
                mask="template" if mask == "template" else "none", seed=40 + mode)
    built = build(spec)
    slopes = [0.05, 0.013]
    full = alibi_bias(slopes, S, S)
    comp = np.ascontiguousarray(full[:, :, S - 1024:, :])
    for kw in (built.kwargs, built.twin_kwargs):
        kw["pse_type"] = pse_type
        kw["pse"] = comp
        if mask == "2d-causal":
            kw["atten_mask"] = np.triu(np.ones((S, S), dtype=bool), k=1)
    res = lib_forward(sa, built, backend)
    ref = check_forward_result(res, built, f"[{backend}] compressed m{mode} t{pse_type}")
    # SPEC: for a genuine ALiBi bias the compressed form equals the full bias on kept positions
    kw = dict(built.twin_kwargs, pse=full)
    ref_full = twin.forward(built.q, built.k, built.v, 2, "BNSD", **kw)[0]
    np.testing.assert_allclose(ref, ref_full, rtol=1e-12, atol=1e-12)
    got_full = lib_forward(sa, built.__class__(built.spec, built.q, built.k, built.v,
                                               dict(built.kwargs, pse=full), kw), backend)[0]
    twin.assert_close(got_full, ref_full, "float32", f"[{backend}] full ALiBi pse")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitwise_identical_for_any_thread_count(sa, backend):
    """SPEC section 11: bit-identical results for any thread count."""
    spec = Spec(layout="BSND", B=2, N1=4, N2=2, S1=97, S2=150, D=64, dtype="bfloat16",
                mode=4, mask="template", pre=50, nxt=20, pse="t3", keep_prob=0.7, seed=50)
    built = build(spec)
    outs = []
    try:
        for nt in (1, 2, 3):
            sa.set_num_threads(nt)
            outs.append(lib_forward(sa, built, backend, manual_seed=77))
    finally:
        sa.set_num_threads(os.cpu_count() or 1)
    for r in outs[1:]:
        for a, b in zip(outs[0][:3], r[:3]):
            assert np.array_equal(twin.to64(a), twin.to64(b))


def test_oracle_no_mask_is_full_attention_in_every_mode():
    """Twin self-check: without atten_mask every mode equals plain attention."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 5, 4))
    k = rng.standard_normal((1, 1, 7, 4))
    v = rng.standard_normal((1, 1, 7, 4))
    base = twin.forward(q, k, v, 2, "BNSD", scale=0.3)
    for mode in range(7):
        kw = dict(sparse_mode=mode, scale=0.3, pre_tokens=0, next_tokens=0)
        if mode in (5, 6):
            kw["prefix"] = [3]
        got = twin.forward(q, k, v, 2, "BNSD", **kw)
        for a, b in zip(got, base):
            np.testing.assert_array_equal(a, b)
    # and plain attention by hand
    x = 0.3 * np.einsum("nid,jd->nij", q[0], k[0, 0])
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(base[0][0], p @ v[0, 0], rtol=1e-12)


def test_oracle_layouts_agree():
    """Twin self-check: the same logical problem in every layout gives the same result."""
    rng = np.random.default_rng(1)
    B, N1, N2, S1, S2, D = 2, 4, 2, 5, 6, 3
    Q = rng.standard_normal((B, N1, S1, D))
    K = rng.standard_normal((B, N2, S2, D))
    V = rng.standard_normal((B, N2, S2, D))
    from conftest import to_layout

    ref = twin.forward(Q, K, V, N1, "BNSD", scale=0.7, pse=np.float32([0.1, 0.2, 0.3, 0.4]),
                       pse_type=2)
    for layout in ("BSH", "SBH", "BSND"):
        out, mx, sm = twin.forward(to_layout(Q, layout), to_layout(K, layout),
                                   to_layout(V, layout), N1, layout, scale=0.7,
                                   pse=np.float32([0.1, 0.2, 0.3, 0.4]), pse_type=2)
        np.testing.assert_allclose(out, to_layout(ref[0], layout), rtol=1e-13)
        np.testing.assert_allclose(mx, ref[1], rtol=1e-13)
    # TND with equal lengths == BNSD
    tq = Q.transpose(0, 2, 1, 3).reshape(B * S1, N1, D)
    tk = K.transpose(0, 2, 1, 3).reshape(B * S2, N2, D)
    tv = V.transpose(0, 2, 1, 3).reshape(B * S2, N2, D)
    out, mx, sm = twin.forward(tq, tk, tv, N1, "TND", scale=0.7,
                               actual_seq_qlen=[S1, 2 * S1], actual_seq_kvlen=[S2, 2 * S2],
                               pse=np.float32([0.1, 0.2, 0.3, 0.4]), pse_type=2)
    np.testing.assert_allclose(out, ref[0].transpose(0, 2, 1, 3).reshape(B * S1, N1, D),
                               rtol=1e-13)
    # TND statistics: per sequence head-major blocks (N1, sq, 8)
    np.testing.assert_allclose(mx.reshape(-1), ref[1].reshape(-1), rtol=1e-13)


def test_oracle_tolerance_definition():
    ref = np.array([1.0, 1.0 + 2.0**-11, 3.0])  # the middle value is halfway in float16
    tol = twin.tolerance(ref, "float16")
    assert tol >= 2 * 2.0**-11
    assert twin.tolerance(np.zeros(3), "float32") == twin.FLOOR_ABS
    with pytest.raises(AssertionError):
        twin.assert_close(ref + 0.01, ref, "float16", "x")
    twin.assert_close(ref.astype(np.float16), ref, "float16", "x")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_cancellation_exposes_intermediate_precision(sa, backend, dtype):
    """SPEC section 1 says all arithmetic is float32 or wider. Two keys with logits delta and 0
    and V = (+64, -64) give out = 64 * (P0 - P1) = 64 * tanh(delta / 2): the probabilities'
    error is amplified by 1 / (P0 - P1), so an intermediate rounded to the input dtype (e.g. P
    or exp(x - max) rounded to bfloat16 before the P.V product) shows up as several ulps of
    error, while float32 intermediates stay far inside the SPEC section 11 tolerance."""
    d = twin.np_dtype(dtype)
    rng = np.random.default_rng(0)
    S1 = 32
    delta = rng.uniform(0.01, 0.2, S1).astype(d)
    q = delta.reshape(1, 1, S1, 1)
    k = np.array([1, 0], dtype=d).reshape(1, 1, 2, 1)
    v = np.array([64, -64], dtype=d).reshape(1, 1, 2, 1)
    out = sa.speed_fusion_attention(q, k, v, 1, "BNSD", scale=1.0, backend=backend)[0]
    ref = twin.forward(q, k, v, 1, "BNSD", scale=1.0)[0]
    twin.assert_close(out, ref, dtype, f"[{backend}] cancelling P.V, {dtype}")


def test_random_bf16_causal_alibi_case(sa):
    """Found by a randomized sweep (auto backend, bfloat16, D = 1): row 8 came out as -0.5234375
    where the float64 reference is -0.52013 (bf16 neighbours -0.51953125 / -0.5234375)."""
    spec = Spec(layout="BSH", B=1, N1=2, N2=2, S1=127, S2=129, D=1, dtype="bfloat16", mode=2,
                mask="template", pse="t3", pse_b1=True, scale=0.125, seed=200935)
    for backend in BACKENDS:
        run_forward_check(sa, spec, backend)
