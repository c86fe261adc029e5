"""Backward: the twin's gradient formulas against central finite differences of the twin's own
forward (float64, tiny cases), then the library's speed_fusion_attention_grad (both backends)
against the twin over a randomized grid (layouts, modes, pse kinds incl. dpse, GQA, TND,
dropout, dtypes)."""

import math
import zlib

import numpy as np
import pytest
from conftest import (BACKENDS, NON_TND_MODES, PSE_KINDS, TND_MODES, TND_PSE_KINDS, Spec,
                      build, random_spec, run_backward_check, to_layout)

import twin

# ------------------------------------------------------------------------------------------------
# 1. finite differences of the twin (validates the twin's backward independently)
# ------------------------------------------------------------------------------------------------


def _fd_check(q, k, v, dy, head_num, layout, kw, pse_cells=None, qkv_cells=None, h=1e-6):
    """Compare twin.backward with central differences of L = sum(out * dy)."""

    def loss(qq, kk, vv, pp):
        kk2 = dict(kw)
        if pp is not None:
            kk2["pse"] = pp
        out = twin.forward(qq, kk, vv, head_num, layout, **kk2)[0]
        return float(np.sum(out * dy))

    pse = kw.get("pse")
    grads = twin.backward(q, k, v, dy, head_num, layout, **kw)
    arrays = [q, k, v] + ([pse] if pse is not None else [])
    for which, (a, g) in enumerate(zip(arrays, grads)):
        a = np.asarray(a, dtype=np.float64)
        if which < 3:
            cells = range(a.size) if qkv_cells is None else qkv_cells
        else:
            cells = range(a.size) if pse_cells is None else pse_cells
        for idx in cells:
            plus, minus = a.copy(), a.copy()
            plus.flat[idx] += h
            minus.flat[idx] -= h
            args_p = [q, k, v, pse]
            args_m = [q, k, v, pse]
            args_p[which], args_m[which] = plus, minus
            fd = (loss(*args_p) - loss(*args_m)) / (2 * h)
            an = g.flat[idx]
            assert abs(fd - an) <= 1e-5 * (1 + abs(fd)), (
                f"{['dq', 'dk', 'dv', 'dpse'][which]}[{idx}]: finite difference {fd} vs "
                f"twin backward {an}")


def _rand(rng, *shape):
    return rng.standard_normal(shape)


FD_CASES = {
    "plain-gqa": dict(layout="BNSD", kw=dict(scale=0.7)),
    "bsh-pse1-full": dict(layout="BSH", kw=dict(scale=0.6), pse=("t1", (2, 2, 3, 4))),
    "bsnd-pse0-bcast": dict(layout="BSND", kw=dict(scale=0.6, pse_type=0),
                            pse=("t0", (1, 2, 1, 4))),
    "pse1-rowbcast-B": dict(layout="BNSD", kw=dict(scale=0.6), pse=("t1", (2, 2, 1, 4))),
    "alibi2-slopesBN": dict(layout="BNSD", kw=dict(scale=0.6, pse_type=2, q_start_idx=[1],
                                                   kv_start_idx=[-2]), pse=("sl", (2, 2))),
    "alibi3-slopesN": dict(layout="SBH", kw=dict(scale=0.6, pse_type=3), pse=("sl", (2,))),
    "mode0-mask-band-uniform-rows": dict(layout="BNSD", kw=dict(scale=0.9, sparse_mode=0,
                                                                pre_tokens=2, next_tokens=1),
                                         mask=("rowmask",)),
    "mode0-mask-invalid-lines": dict(layout="BNSD", kw=dict(scale=0.9, sparse_mode=0,
                                                            inner_precise=2),
                                     mask=("rowmask",)),
    "mode3-S1>S2-auto-invalid": dict(layout="BNSD", S=(5, 3),
                                     kw=dict(scale=0.9, sparse_mode=3),
                                     mask=("template",)),
    "mode5-prefix": dict(layout="BNSD", S=(5, 4),
                         kw=dict(scale=0.9, sparse_mode=5, prefix=[1, 0]), mask=("rand4",)),
    "dropout": dict(layout="BSND", kw=dict(scale=0.8, keep_prob=0.6, seed=7, offset=5)),
    "tnd-alibi-dropout": dict(layout="TND", kw=dict(scale=0.8, keep_prob=0.7, seed=3, offset=1,
                                                    pse_type=2, sparse_mode=2,
                                                    actual_seq_qlen=[2, 2, 5],
                                                    actual_seq_kvlen=[3, 5, 8]),
                              pse=("sl", (3, 2)), mask=("template",)),
}


@pytest.mark.parametrize("name", list(FD_CASES))
def test_oracle_backward_matches_finite_differences(name):
    c = FD_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    layout = c["layout"]
    B, N1, N2, D = 2, 2, 1, 3
    S1, S2 = c.get("S", (3, 4))
    kw = dict(c["kw"])
    if layout == "TND":
        q, k, v = _rand(rng, 5, N1, D), _rand(rng, 8, N2, D), _rand(rng, 8, N2, D)
    else:
        q = to_layout(_rand(rng, B, N1, S1, D), layout)
        k = to_layout(_rand(rng, B, N2, S2, D), layout)
        v = to_layout(_rand(rng, B, N2, S2, D), layout)
    if "pse" in c:
        kind, shape = c["pse"]
        kw["pse"] = rng.uniform(0.05, 0.5, shape) if kind == "sl" else _rand(rng, *shape)
    if "mask" in c:
        if c["mask"][0] == "template":
            kw["atten_mask"] = twin.causal_template()
        elif c["mask"][0] == "rowmask":
            m = rng.random((B, 1, S1, S2)) < 0.3
            m[0, 0, 1, :] = True  # a fully masked row
            kw["atten_mask"] = m
        else:
            kw["atten_mask"] = rng.random((B, N1, S1, S2)) < 0.2
    dy = rng.standard_normal(q.shape)
    _fd_check(q, k, v, dy, N1, layout, kw)


def test_oracle_compressed_pse_gradient_matches_finite_differences():
    """dpse for the compressed (B, N1, 1024, S2) form accumulates into the cell each position
    reads: check a few cells (including ones read by many diagonal positions)."""
    rng = np.random.default_rng(5)
    S = 1027
    q = rng.standard_normal((1, 1, S, 1)) * 0.5
    k = rng.standard_normal((1, 1, S, 1)) * 0.5
    v = rng.standard_normal((1, 1, S, 1))
    pse = rng.standard_normal((1, 1, 1024, S)) * 0.3
    kw = dict(scale=0.5, sparse_mode=2, atten_mask=twin.causal_template(), pse=pse)
    dy = rng.standard_normal(q.shape)
    cells = [0 * S + 3, 1 * S + 4, 1023 * S + 1026, 1023 * S + 0, 500 * S + 7]
    _fd_check(q, k, v, dy, 1, "BNSD", kw, pse_cells=cells, qkv_cells=[0, 1026])


# ------------------------------------------------------------------------------------------------
# 2. library backward vs twin
# ------------------------------------------------------------------------------------------------
def _grid():
    rng = np.random.default_rng(777)
    specs = []
    seed = 5000
    for layout in ("BSH", "SBH", "BSND", "BNSD", "TND"):
        modes = TND_MODES if layout == "TND" else NON_TND_MODES
        kinds = TND_PSE_KINDS if layout == "TND" else PSE_KINDS
        for mode in modes:
            for _ in range(2):
                seed += 1
                s = random_spec(rng, layout, mode, str(rng.choice(kinds)), seed=seed)
                s.empty_rows = False  # uniform rows are tested separately below
                if seed % 7 == 0:
                    s.torch = True
                    s.strided = "transposed"
                elif seed % 5 == 0:
                    s.strided = "rows"
                specs.append(s)
    return specs


GRID = _grid()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", GRID, ids=[s.id() for s in GRID])
def test_backward_grid(sa, spec, backend):
    run_backward_check(sa, spec, backend)


TARGETED = [
    Spec(layout="BNSD", B=2, N1=2, N2=2, S1=5, S2=7, D=8, pse="t1", seed=1),
    Spec(layout="BNSD", B=2, N1=2, N2=2, S1=5, S2=7, D=8, pse="t1", pse_b1=True, seed=2),
    Spec(layout="BSH", B=2, N1=2, N2=1, S1=5, S2=7, D=8, pse="t0b", seed=3),
    Spec(layout="BSH", B=2, N1=2, N2=1, S1=5, S2=7, D=8, pse="t1b", pse_b1=True, seed=4),
    Spec(layout="BSND", B=2, N1=4, N2=2, S1=6, S2=9, D=16, pse="t2", q_start=2, kv_start=-1,
         dtype="bfloat16", seed=5),
    Spec(layout="BSND", B=2, N1=4, N2=2, S1=6, S2=9, D=16, pse="t3", pse_b1=True,
         dtype="float16", mode=3, mask="template", seed=6),
    Spec(layout="TND", seqs=((3, 5), (0, 0), (0, 2), (4, 4)), N1=4, N2=1, D=8, pse="t3",
         keep_prob=0.7, mode=2, mask="template", seed=7),
    Spec(layout="BSND", B=1, N1=3, N2=1, S1=67, S2=141, D=64, dtype="bfloat16",
         keep_prob=0.8, scale=0.125, mode=4, mask="template", pre=30, nxt=10, seed=8),
    Spec(layout="BNSD", B=1, N1=2, N2=1, S1=9, S2=4, D=4, mode=3, mask="template",
         inner_precise=0, seed=9),  # auto invalid lines
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=2, S2=3, D=768, scale=1 / math.sqrt(768),
         dtype="float16", seed=10),
    Spec(layout="BNSD", B=1, N1=1, N2=1, S1=1, S2=1, D=1, seed=11),
    Spec(layout="BNSD", B=2, N1=2, N2=2, S1=9, S2=6, D=8, mode=0, mask="BN", density=0.5,
         empty_rows=True, inner_precise=2, pse="t1", seed=12),  # invalid lines: no gradient
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", TARGETED, ids=[s.id() for s in TARGETED])
def test_backward_targeted(sa, spec, backend):
    run_backward_check(sa, spec, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_uniform_rows(sa, backend):
    """Fully masked rows with inner_precise 0: out = mean(V). The twin returns the true
    gradient (zero for q, k and pse in such rows; dV = P'^T dy). Kept separate so that a
    disagreement is attributable to this one (SPEC-ambiguous) point."""
    spec = Spec(layout="BNSD", B=2, N1=2, N2=2, S1=9, S2=6, D=8, mode=0, mask="BN",
                density=0.5, empty_rows=True, pse="t1", seed=13)
    run_backward_check(sa, spec, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pse_type", [1, 0])
def test_backward_compressed_pse(sa, backend, pse_type):
    S = 1029
    spec = Spec(layout="BNSD", B=1, N1=2, N2=1, S1=S, S2=S, D=2, dtype="float32", mode=3,
                mask="template", seed=60)
    built = build(spec)
    rng = np.random.default_rng(3)
    comp = (rng.standard_normal((1, 2, 1024, S)) * 0.5).astype(np.float32)
    for kw in (built.kwargs, built.twin_kwargs):
        kw["pse"], kw["pse_type"] = comp, pse_type
    from conftest import as_int, lib_forward, make_dy

    sa_res = lib_forward(sa, built, backend, manual_seed=3)
    out, smax, ssum, _, seed, offset, numels = sa_res
    dy = make_dy(built)
    dq, dk, dv, dpse = sa.speed_fusion_attention_grad(
        built.q, built.k, built.v, dy, 2, "BNSD", softmax_max=smax, softmax_sum=ssum,
        attention_in=out, seed=seed, offset=offset, numels=numels, backend=backend,
        **built.kwargs)
    refs, mags = twin.backward(built.q, built.k, built.v, dy, 2, "BNSD", attention_in=out,
                               seed=as_int(seed), offset=as_int(offset), magnitudes=True,
                               **built.twin_kwargs)
    for name, got, ref, mag in zip(("dq", "dk", "dv", "dpse"), (dq, dk, dv, dpse), refs, mags):
        twin.assert_close(got, ref, "float32", f"[{backend}] compressed t{pse_type} {name}",
                          magnitude=mag)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_bitwise_identical_for_any_thread_count(sa, backend):
    import os

    from conftest import lib_forward, make_dy

    spec = Spec(layout="BSND", B=1, N1=4, N2=2, S1=90, S2=130, D=32, dtype="bfloat16",
                mode=3, mask="template", pse="t1", keep_prob=0.9, seed=70)
    built = build(spec)
    dy = make_dy(built)
    res = lib_forward(sa, built, backend, manual_seed=9)
    out, smax, ssum, _, seed, offset, numels = res
    grads = []
    try:
        for nt in (1, 2, 3):
            sa.set_num_threads(nt)
            grads.append(sa.speed_fusion_attention_grad(
                built.q, built.k, built.v, dy, 4, "BSND", softmax_max=smax, softmax_sum=ssum,
                attention_in=out, seed=seed, offset=offset, numels=numels, backend=backend,
                **built.kwargs))
    finally:
        sa.set_num_threads(os.cpu_count() or 1)
    for g in grads[1:]:
        for a, b in zip(grads[0], g):
            assert np.array_equal(twin.to64(a), twin.to64(b))


def test_oracle_gradient_term_magnitudes_bound_the_gradients():
    """twin.backward(magnitudes=True): the |terms| sums are >= |gradient| everywhere (they feed
    the float32 floor of the tolerance), and are positive where terms cancel (S2 == 1)."""
    rng = np.random.default_rng(11)
    for S2, pse_kw in ((1, dict(pse=rng.standard_normal((1, 2, 3, 1)))),
                       (5, dict(pse=rng.uniform(0.1, 0.3, (2,)), pse_type=3)),
                       (5, dict(pse=rng.standard_normal((1, 2, 1, 5)), pse_type=0))):
        q = rng.standard_normal((1, 2, 3, 4))
        k = rng.standard_normal((1, 1, S2, 4))
        v = rng.standard_normal((1, 1, S2, 4))
        dy = rng.standard_normal(q.shape)
        grads, mags = twin.backward(q, k, v, dy, 2, "BNSD", scale=0.5, keep_prob=0.7, seed=1,
                                    magnitudes=True, **pse_kw)
        for g, m in zip(grads, mags):
            assert g.shape == m.shape
            assert np.all(m >= np.abs(g) - 1e-12)
        if S2 == 1:
            assert np.max(np.abs(grads[0])) < 1e-12 < np.max(mags[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_backward_cancellation_exposes_intermediate_precision(sa, backend, dtype):
    """SPEC section 1: all arithmetic in float32 or wider. Two nearly identical query rows with
    dy = (+64, -64): dV[j] = 64 * (P'[0, j] - P'[1, j]) and dK cancel likewise, so probabilities
    (or dS) rounded to the input dtype before the matrix products show up as many ulps of error,
    while float32 intermediates stay well inside the SPEC section 11 tolerance."""
    d = twin.np_dtype(dtype)
    rng = np.random.default_rng(1)
    S2, D = 32, 64
    base = rng.uniform(-1, 1, (D,))
    q = np.stack([base, base]).astype(d)
    q[1, 0] = q[1, 0] + d.type(0.0625)
    q = q.reshape(1, 1, 2, D)
    k = rng.uniform(-1, 1, (1, 1, S2, D)).astype(d)
    v = rng.standard_normal((1, 1, S2, D)).astype(d)
    dy = np.stack([np.full(D, 64.0), np.full(D, -64.0)]).reshape(1, 1, 2, D).astype(d)
    out, mx, sm, _, seed, offset, numels = sa.speed_fusion_attention(
        q, k, v, 1, "BNSD", scale=0.125, backend=backend)
    grads = sa.speed_fusion_attention_grad(
        q, k, v, dy, 1, "BNSD", softmax_max=mx, softmax_sum=sm, attention_in=out, seed=seed,
        offset=offset, numels=numels, scale=0.125, backend=backend)
    refs, mags = twin.backward(q, k, v, dy, 1, "BNSD", attention_in=out, scale=0.125,
                               magnitudes=True)
    for name, g, r, m in zip(("dq", "dk", "dv"), grads, refs, mags):
        twin.assert_close(g, r, dtype, f"[{backend}] cancelling backward {name}", magnitude=m)
