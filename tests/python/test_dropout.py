"""Dropout (SPEC section 7): the twin's Philox against Random123's known answers, the library's
keep mask bit for bit against the twin (exposed through an identity V), statistics, and the
process-wide (seed, offset) generator."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKENDS, Spec, as_int, build, check_forward_result, lib_forward, to_layout

import twin

# Random123 tests/kat_vectors, philox4x32_10 (counter words, key words, expected output).
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


@pytest.mark.parametrize("ctr,key,want", PHILOX_KAT)
def test_oracle_philox_known_answers(ctr, key, want):
    got = twin.philox4x32_10(np.array(ctr), np.array(key))
    assert [int(x) for x in got] == list(want)


def test_oracle_philox_vectorized_matches_scalar():
    ctrs = np.array([c for c, _, _ in PHILOX_KAT])
    keys = np.array([k for _, k, _ in PHILOX_KAT])
    got = twin.philox4x32_10(ctrs, keys)
    assert got.tolist() == [list(w) for _, _, w in PHILOX_KAT]


def test_oracle_dropout_element_to_counter_mapping():
    """e -> counter (offset + e // 4, high word, 0, 0), key (seed lo, seed hi), word e % 4."""
    seed, offset = (7 << 32) | 0x1234, (1 << 32) - 2  # exercises both high words and the carry
    e = np.arange(16)
    words = twin.dropout_words(seed, offset, e)
    for blk in range(4):
        c = offset + blk
        w = twin.philox4x32_10(np.array([c & 0xFFFFFFFF, c >> 32, 0, 0]),
                               np.array([seed & 0xFFFFFFFF, seed >> 32]))
        assert words[4 * blk:4 * blk + 4].tolist() == w.tolist()
    thr = twin.keep_threshold(0.25)
    assert thr == 1 << 30
    assert np.array_equal(twin.dropout_keep(seed, offset, e, 0.25), words < thr)
    assert twin.dropout_keep(seed, offset, e, 1.0).all()


# ------------------------------------------------------------------------------------------------
# library: the keep mask, bit for bit, read through an identity V
# ------------------------------------------------------------------------------------------------
def _identity_problem(layout, dtype, B=2, N1=4, N2=2, S1=5, S2=16, seqs=None):
    """q = k = 0 (all logits 0, P = 1/S2 exactly), V = identity (D = S2): then
    out[b, n, i, j] = keep[b, n, i, j] / (S2 * keep_prob), exposing every keep bit."""
    dt = twin.np_dtype(dtype)
    if layout == "TND":
        T1 = sum(a for a, _ in seqs)
        T2 = sum(b for _, b in seqs)
        D = max(b for _, b in seqs)
        q = np.zeros((T1, N1, D))
        k = np.zeros((T2, N2, D))
        v = np.zeros((T2, N2, D))
        pos = 0
        for _, skv in seqs:
            v[pos:pos + skv, :, :skv] = np.eye(skv)[:, None, :]
            pos += skv
        kw = dict(actual_seq_qlen=np.cumsum([a for a, _ in seqs]).tolist(),
                  actual_seq_kvlen=np.cumsum([b for _, b in seqs]).tolist())
    else:
        q = to_layout(np.zeros((B, N1, S1, S2)), layout)
        k = to_layout(np.zeros((B, N2, S2, S2)), layout)
        v = to_layout(np.broadcast_to(np.eye(S2), (B, N2, S2, S2)).copy(), layout)
        kw = {}
    return q.astype(dt), k.astype(dt), v.astype(dt), kw


def _mask_from_out(out, layout, N1, seqs=None):
    """Recover the keep bits from out, in the element order e of SPEC section 7."""
    o = twin.to64(out)
    if layout == "TND":
        bits = []
        pos = 0
        for sq, skv in seqs:
            blk = o[pos:pos + sq, :, :skv].transpose(1, 0, 2)  # (N1, sq, skv)
            bits.append((blk > 0).reshape(-1))
            pos += sq
        return np.concatenate(bits)
    if layout == "BNSD":
        X = o
    elif layout == "BSND":
        X = o.transpose(0, 2, 1, 3)
    else:
        if layout == "SBH":
            o = o.transpose(1, 0, 2)
        B, S, H = o.shape
        X = o.reshape(B, S, N1, H // N1).transpose(0, 2, 1, 3)
    return (X > 0).reshape(-1)


SEQS = ((3, 5), (0, 0), (4, 7), (0, 2), (2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout,dtype,kp,seed,S1,S2,seqs", [
    ("BNSD", "float32", 0.5, 0, 5, 16, None),
    ("BSND", "float16", 0.3, 2**40 + 5, 5, 16, None),  # seed > 2^32: the key's high word
    ("BSH", "bfloat16", 0.9, 123456789, 5, 16, None),
    ("SBH", "float32", 0.7, 42, 5, 16, None),
    ("BNSD", "bfloat16", 0.6, 7, 70, 136, None),  # crossing the kernels' q / kv blocks
    ("TND", "float32", 0.5, 99, 0, 0, SEQS),
    ("TND", "bfloat16", 0.25, 2**33 + 1, 0, 0, SEQS),
    ("TND", "float32", 0.8, 5, 0, 0, ((67, 130), (0, 9), (3, 1), (129, 140))),
])
def test_keep_mask_bit_exact(sa, backend, layout, dtype, kp, seed, S1, S2, seqs):
    N1 = 4
    q, k, v, kw = _identity_problem(layout, dtype, S1=S1, S2=S2, seqs=seqs)
    SEQS = seqs  # noqa: N806
    sa.manual_seed(seed)
    # a first call moves the offset away from 0 (and not to a multiple of anything special)
    warm = sa.speed_fusion_attention(q, k, v, N1, layout, keep_prob=kp, backend=backend, **kw)
    res = sa.speed_fusion_attention(q, k, v, N1, layout, keep_prob=kp, backend=backend, **kw)
    out, _, _, _, rseed, roffset, numels = res
    assert as_int(rseed) == seed
    assert as_int(warm[5]) == 0
    assert as_int(roffset) == math.ceil(as_int(numels) / 4)
    got = _mask_from_out(out, layout, N1, SEQS)
    assert got.size == as_int(numels)
    e = np.arange(got.size)
    want = twin.dropout_keep(seed, as_int(roffset), e, kp)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"{bad.size} keep bits differ, first at e={bad[:8].tolist()} "
                           f"(library {got[bad[:8]].astype(int).tolist()})")
    # and the values: kept = 1 / (S2 * keep_prob) in each (row, kept column)
    ref = twin.forward(q, k, v, N1, layout, keep_prob=kp, seed=seed, offset=as_int(roffset),
                       **kw)[0]
    twin.assert_close(out, ref, dtype, f"[{backend}] identity-V dropout out")


def test_keep_mask_identical_across_backends(sa):
    q, k, v, kw = _identity_problem("BSND", "bfloat16", S1=37, S2=16)
    outs = []
    for backend in BACKENDS:
        sa.manual_seed(31337)
        outs.append(twin.to64(sa.speed_fusion_attention(q, k, v, 4, "BSND", keep_prob=0.6,
                                                        backend=backend)[0]))
    assert np.array_equal(outs[0] > 0, outs[1] > 0)


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kp", [0.1, 0.5, 0.9])
def test_kept_fraction_and_scaling(sa, backend, kp):
    """q = k = 0, V = ones (D = 1): out[i] = (kept count in row i) / (S2 * keep_prob).
    The count must be an integer (scaling by exactly 1/keep_prob) and the kept fraction must be
    within 5 binomial standard deviations of keep_prob."""
    B, N, S1, S2 = 2, 4, 64, 256
    q = np.zeros((B, N, S1, 1), np.float32)
    k = np.zeros((B, N, S2, 1), np.float32)
    v = np.ones((B, N, S2, 1), np.float32)
    sa.manual_seed(2024)
    out = twin.to64(sa.speed_fusion_attention(q, k, v, N, "BNSD", keep_prob=kp,
                                              backend=backend)[0])
    counts = out[..., 0] * S2 * kp
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    # bit-exact: the per-row counts equal the twin's (seed 2024, offset 0)
    e = np.arange(B * N * S1 * S2)
    want = twin.dropout_keep(2024, 0, e, kp).reshape(B, N, S1, S2).sum(-1)
    assert np.array_equal(np.round(counts), want)
    n = B * N * S1 * S2
    frac = np.round(counts).sum() / n
    sigma = math.sqrt(kp * (1 - kp) / n)
    assert abs(frac - kp) < 5 * sigma, f"kept fraction {frac} vs keep_prob {kp} (sigma {sigma})"
    # rows are not all identical (the mask is not constant along rows)
    assert np.unique(np.round(counts)).size > 3


# ------------------------------------------------------------------------------------------------
# generator: seed / offset bookkeeping
# ------------------------------------------------------------------------------------------------
def _small(shape_s1=3, shape_s2=3):
    spec = Spec(layout="BNSD", B=1, N1=1, N2=1, S1=shape_s1, S2=shape_s2, D=4, keep_prob=0.5,
                seed=1)
    return build(spec)


@pytest.mark.parametrize("backend", BACKENDS)
def test_offset_advances_by_ceil_numels_over_4(sa, backend):
    b9 = _small(3, 3)  # numels 9 -> advances by 3
    b10 = _small(2, 5)  # numels 10 -> advances by 3
    sa.manual_seed(77)
    r1 = lib_forward(sa, b9, backend)
    r2 = lib_forward(sa, b9, backend)
    r3 = lib_forward(sa, b10, backend)
    r4 = lib_forward(sa, b9, backend)
    assert [as_int(r[4]) for r in (r1, r2, r3, r4)] == [77] * 4
    assert [as_int(r[5]) for r in (r1, r2, r3, r4)] == [0, 3, 6, 9]
    assert [as_int(r[6]) for r in (r1, r2, r3, r4)] == [9, 9, 10, 9]
    for r, b in ((r1, b9), (r2, b9), (r3, b10), (r4, b9)):
        check_forward_result(r, b, f"[{backend}] generator sequence")


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_offset_same_output_and_advancing_changes_mask(sa, backend):
    q, k, v, kw = _identity_problem("BNSD", "float32", B=1, N1=2, N2=1, S1=8, S2=16)
    sa.manual_seed(5)
    a = twin.to64(sa.speed_fusion_attention(q, k, v, 2, "BNSD", keep_prob=0.5,
                                            backend=backend)[0])
    b = twin.to64(sa.speed_fusion_attention(q, k, v, 2, "BNSD", keep_prob=0.5,
                                            backend=backend)[0])
    sa.manual_seed(5)
    c = twin.to64(sa.speed_fusion_attention(q, k, v, 2, "BNSD", keep_prob=0.5,
                                            backend=backend)[0])
    assert np.array_equal(a, c), "same (seed, offset) must give the same output"
    assert not np.array_equal(a > 0, b > 0), "an advanced offset must give a different mask"
    sa.manual_seed(6)
    d = twin.to64(sa.speed_fusion_attention(q, k, v, 2, "BNSD", keep_prob=0.5,
                                            backend=backend)[0])
    assert not np.array_equal(a > 0, d > 0), "another seed must give a different mask"


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_prob_one_draws_nothing(sa, backend):
    b = _small(3, 3)
    sa.manual_seed(11)
    b.kwargs["keep_prob"] = 1.0
    r0 = lib_forward(sa, b, backend)
    assert as_int(r0[6]) == 9, "numels is returned always"
    b.kwargs["keep_prob"] = 0.5
    r1 = lib_forward(sa, b, backend)
    assert (as_int(r1[4]), as_int(r1[5])) == (11, 0), "keep_prob 1 must not advance the offset"


def test_default_generator_seed_is_zero_in_a_fresh_process():
    code = ("import numpy as np, speedattn\n"
            "q = np.zeros((1, 1, 3, 4), np.float32)\n"
            "r1 = speedattn.speed_fusion_attention(q, q, q, 1, 'BNSD', keep_prob=0.5)\n"
            "r2 = speedattn.speed_fusion_attention(q, q, q, 1, 'BNSD', keep_prob=0.5)\n"
            "print(int(r1[4]), int(r1[5]), int(r2[4]), int(r2[5]))\n")
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "0", "0", "3"]


# ------------------------------------------------------------------------------------------------
# backward regenerates the same mask
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_regenerates_mask(sa, backend):
    """dV = P'^T dy: with q = k = 0 and dy = e_i rows, dv exposes the keep bits column-wise;
    compared with the twin (which regenerates the mask from the returned seed/offset)."""
    q, k, v, kw = _identity_problem("TND", "float32", N1=4, N2=2, seqs=SEQS)
    sa.manual_seed(4242)
    sa.speed_fusion_attention(q, k, v, 4, "TND", keep_prob=0.5, backend=backend, **kw)
    out, mx, sm, _, seed, offset, numels = sa.speed_fusion_attention(
        q, k, v, 4, "TND", keep_prob=0.5, backend=backend, **kw)
    rng = np.random.default_rng(0)
    dy = rng.standard_normal(q.shape).astype(np.float32)
    dq, dk, dv, _ = sa.speed_fusion_attention_grad(
        q, k, v, dy, 4, "TND", softmax_max=mx, softmax_sum=sm, attention_in=out, seed=seed,
        offset=offset, numels=numels, keep_prob=0.5, backend=backend, **kw)
    (rq, rk, rv, _), (mq, mk, mv, _) = twin.backward(
        q, k, v, dy, 4, "TND", attention_in=out, keep_prob=0.5, seed=as_int(seed),
        offset=as_int(offset), magnitudes=True, **kw)
    twin.assert_close(dv, rv, "float32", f"[{backend}] dropout dv", magnitude=mv)
    twin.assert_close(dq, rq, "float32", f"[{backend}] dropout dq", magnitude=mq)
    twin.assert_close(dk, rk, "float32", f"[{backend}] dropout dk", magnitude=mk)
    # with the wrong offset the twin disagrees: the check is sensitive to the mask
    wrong = twin.backward(q, k, v, dy, 4, "TND", attention_in=out, keep_prob=0.5,
                          seed=as_int(seed), offset=as_int(offset) + 1, **kw)[2]
    assert np.max(np.abs(wrong - rv)) > 1e-2
