"""Reliability tests (docs/reliability.md): a Python-level fuzz of the public API, 64-bit indexing
with a > 2^31-element tensor, numerical edge cases (NaN/Inf, fully masked rows, extreme scales),
memory safety of views, and determinism / concurrency.

Budgets: the whole file runs in well under a minute here. SPEEDATTN_FUZZ_EXAMPLES (default 150)
scales the API fuzz; SPEEDATTN_LARGE=0 skips the > 2^31-element test, SPEEDATTN_LARGE=1 forces it
(by default it runs when the machine reports >= 10 GiB available memory).
"""

from __future__ import annotations

import math
import os
import threading

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import twin
from conftest import as_int, build, make_dy, random_spec

BF16 = ml_dtypes.bfloat16
FLT_MAX = float(np.finfo(np.float32).max)
NP_DT = {"float16": np.float16, "bfloat16": BF16, "float32": np.float32}


def _np(x):
    return twin.to64(x)


def _fwd(sa, q, k, v, n, layout, **kw):
    return sa.speed_fusion_attention(q, k, v, n, layout, **kw)


def _bwd(sa, q, k, v, dy, n, layout, res, **kw):
    out, smax, ssum, _, seed, offset, numels = res
    return sa.speed_fusion_attention_grad(q, k, v, dy, n, layout, softmax_max=smax, softmax_sum=ssum,
                                          attention_in=out, seed=seed, offset=offset, numels=numels, **kw)


def _rand(shape, dtype, rng, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(NP_DT[dtype])


# ==============================================================================================
# 1. Python-level fuzz of the public API: any call ends in a result, TypeError or ValueError.
# ==============================================================================================
FUZZ_EXAMPLES = int(os.environ.get("SPEEDATTN_FUZZ_EXAMPLES", "150"))


def _weird_values():
    import torch

    return st.sampled_from([
        None, "", "BSH", "TND", "bnsd", 0, -1, 1, 2, 7, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 1.5, -0.0,
        float("nan"), float("inf"), -float("inf"), 1e-300, True, False, np.int64(3), np.float32(0.5),
        np.bool_(True), [], [1], [-1], [0, 0], [3, 2], [1, 2, 3], (4,), [1.5], ["a"], [None], [2**63], {}, b"BSH",
        object(), np.zeros((2, 2), np.int32), np.zeros(3, np.float64), np.zeros((), np.float32),
        np.zeros((1, 1, 1, 1, 1), np.float32), np.zeros((2,), np.complex64), np.array([1, 2], np.int64),
        np.array(["x"]), torch.zeros(2, dtype=torch.int64), torch.zeros(2, 2), torch.tensor(1.0),
        torch.zeros((1, 2, 4), dtype=torch.float16), np.zeros((1, 2, 4), np.float16),
        np.zeros((2048, 2048), bool), np.ones((1, 1, 2, 2), np.uint8),
    ])


_OPTION_NAMES = ("head_num", "input_layout", "pse", "padding_mask", "atten_mask", "scale", "keep_prob",
                 "pre_tokens", "next_tokens", "inner_precise", "prefix", "actual_seq_qlen", "actual_seq_kvlen",
                 "sparse_mode", "gen_mask_parallel", "sync", "pse_type", "q_start_idx", "kv_start_idx", "backend",
                 "rng")


@st.composite
def api_calls(draw):
    layout = draw(st.sampled_from(("BSH", "SBH", "BSND", "BNSD", "TND")))
    modes = (0, 1, 2, 3, 4, 6, 7, 8) if layout == "TND" else (0, 1, 2, 3, 4, 5, 6)
    pses = ("none", "t2", "t3") if layout == "TND" else ("none", "t0", "t1", "t0b", "t1b", "t2", "t3")
    seed = draw(st.integers(0, 2**20))
    spec = random_spec(np.random.default_rng(seed), layout, draw(st.sampled_from(modes)),
                       draw(st.sampled_from(pses)), seed=seed)
    spec.torch = draw(st.booleans()) and draw(st.booleans())
    built = build(spec)
    q, k, v = built.q, built.k, built.v
    kw = dict(built.kwargs)
    head_num, lay = built.head_num, layout
    # Mutations: replace options / tensors by arbitrary values, or reshape tensors.
    n_mut = draw(st.integers(0, 3))
    for _ in range(n_mut):
        what = draw(st.sampled_from(_OPTION_NAMES + ("query", "key", "value", "reshape", "dtype")))
        val = draw(_weird_values())
        if what == "head_num":
            head_num = val
        elif what == "input_layout":
            lay = val
        elif what == "query":
            q = val
        elif what == "key":
            k = val
        elif what == "value":
            v = val
        elif what == "reshape":
            shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=5)))
            arr = np.zeros(shape, np.float32) if draw(st.booleans()) else np.full(shape, np.nan, np.float32)
            which = draw(st.sampled_from("qkv"))
            q, k, v = (arr if which == "q" else q), (arr if which == "k" else k), (arr if which == "v" else v)
        elif what == "dtype":
            dt = draw(st.sampled_from((np.float16, np.float32, np.float64, np.int32, np.uint8, BF16)))
            q = np.asarray(twin.to64(q)).astype(dt) if not spec.torch else q
        else:
            kw[what] = val
    backward = draw(st.booleans())
    bwd_mut = draw(st.sampled_from((None, None, "numels", "offset", "smax_shape", "smax_dtype", "dy", "seed_type")))
    return spec, q, k, v, head_num, lay, kw, backward, bwd_mut


@pytest.mark.parametrize("which", ["gen_mask_parallel", "sync"])
def test_debug_switches_take_any_value(sa, which):
    """finding F4: gen_mask_parallel / sync are accepted and ignored, whatever their value."""
    import torch

    q = np.zeros((1, 4, 8), np.float32)
    for val in (torch.zeros(2, 2), np.zeros(3), [1, 2], "yes", None):
        try:
            sa.speed_fusion_attention(q, q, q, 1, "BSH", **{which: val})
        except (TypeError, ValueError):
            pass


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          derandomize=os.environ.get("SPEEDATTN_HYPOTHESIS_RANDOM") != "1",
          suppress_health_check=list(HealthCheck), print_blob=True)
@given(call=api_calls())
def test_api_fuzz_only_type_or_value_errors(sa, call):
    spec, q, k, v, head_num, lay, kw, backward, bwd_mut = call
    try:
        res = sa.speed_fusion_attention(q, k, v, head_num, lay, **kw)
    except (TypeError, ValueError):
        return
    assert len(res) == 7
    assert tuple(res[0].shape) == tuple(q.shape)
    if not backward:
        return
    out, smax, ssum, _, seed, offset, numels = res
    dy = out
    if bwd_mut == "numels":
        numels = as_int(numels) + 1
    elif bwd_mut == "offset":
        offset = -1
    elif bwd_mut == "smax_shape":
        smax = smax[..., :4]
    elif bwd_mut == "smax_dtype":
        smax = np.asarray(twin.to64(smax)).astype(np.float16)
    elif bwd_mut == "dy":
        dy = np.zeros((1,) * max(1, len(q.shape)), np.float32)
    elif bwd_mut == "seed_type":
        seed = 1.5
    kw.pop("rng", None)
    try:
        grads = sa.speed_fusion_attention_grad(q, k, v, dy, head_num, lay, softmax_max=smax, softmax_sum=ssum,
                                               attention_in=out, seed=seed, offset=offset, numels=numels, **kw)
    except (TypeError, ValueError):
        assert bwd_mut is not None or kw.get("rng") is not None, "backward rejected a valid forward's state"
        return
    assert tuple(grads[0].shape) == tuple(q.shape)


# ==============================================================================================
# 2. 64-bit indexing: tensors with more than 2^31 elements; overflowing shapes.
# ==============================================================================================
def _mem_available_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _large_enabled():
    env = os.environ.get("SPEEDATTN_LARGE")
    if env is not None:
        return env == "1"
    return _mem_available_gib() >= 10.0


def _attention64(q, k, v, scale, keep=None):
    """float64 attention of one head: q (S1, D), k/v (S2, D), keep (S1, S2) bool."""
    x = scale * (q @ k.T)
    if keep is not None:
        x = np.where(keep, x, -FLT_MAX)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=1, keepdims=True)
    return p @ v


@pytest.mark.skipif(not _large_enabled(), reason="needs >= 10 GiB available memory (SPEEDATTN_LARGE=1 forces)")
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_tnd_key_value_beyond_2_31_elements(sa, backend):
    """TND key/value of 2^31 + 2048 bf16 elements each (4 GiB, lazily zero pages): sequence 0
    has no query tokens and 2^24 key tokens, so sequence 1's keys start at element offset 2^31.
    Only a few pages are ever written; the result is compared with float64 numpy."""
    D, N = 128, 1
    S_skip = 2**24  # 2^24 * 128 = 2^31 elements before sequence 1
    sq, skv = 4, 16
    T2 = S_skip + skv
    rng = np.random.default_rng(0)
    k = np.zeros((T2, N, D), BF16)  # calloc: untouched pages cost nothing
    v = np.zeros((T2, N, D), BF16)
    assert k.size > 2**31
    k[S_skip:] = rng.standard_normal((skv, N, D)).astype(BF16)
    v[S_skip:] = rng.standard_normal((skv, N, D)).astype(BF16)
    q = rng.standard_normal((sq, N, D)).astype(BF16)
    scale = 1 / math.sqrt(D)
    for mode, extra in ((0, {}), (3, {"atten_mask": twin.causal_template()})):
        out, smax, ssum, *_ = sa.speed_fusion_attention(
            q, k, v, N, "TND", scale=scale, actual_seq_qlen=[0, sq], actual_seq_kvlen=[S_skip, T2],
            sparse_mode=mode, backend=backend, **extra)
        keep = None
        if mode == 3:
            keep = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)
        ref = _attention64(_np(q[:, 0]), _np(k[S_skip:, 0]), _np(v[S_skip:, 0]), scale, keep)
        twin.assert_close(out[:, 0], ref, "bfloat16", f"TND > 2^31 elements, mode {mode}")


# Keys per kv head above which the AMX kernels no longer pre-pack K/V for the whole call
# (fwd_amx.cpp kMaxPrePackBytes = 48 MiB: 4 * D bytes per key for bf16, 8 * D for fp16, 12 * D
# for fp32's three parts) but pack each block per q-block task; the case has a tail block
# (S2 % 256 != 0, S2 % 32 != 0).
_LOCAL_PACK_S2 = {"bfloat16": 98304 + 333, "float16": 49152 + 333, "float32": 32768 + 333}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("mode,kw", [(0, {}), (0, {"keep_prob": 0.9}), (4, {"pre_tokens": 70000, "next_tokens": -50})],
                         ids=["plain", "dropout", "band"])
def test_long_kv_packed_per_block(sa, dtype, mode, kw):
    """K/V too large for the shared pre-pack (S2 ~ 98k bf16 / 49k fp16 / 33k fp32, D 128, GQA 2:1 so 80
    rows per kv head take the AMX path): every block is packed by the task, value rows with an
    Inf among them, compared with the float64 twin."""
    D, N1, N2, S1, S2 = 128, 2, 1, 40, _LOCAL_PACK_S2[dtype]
    rng = np.random.default_rng(7)
    q, k, v = _rand((1, S1, N1, D), dtype, rng), _rand((1, S2, N2, D), dtype, rng), _rand((1, S2, N2, D), dtype, rng)
    if mode == 0 and not kw:  # (the twin's (P * drop) @ V turns a masked or dropped Inf into NaN)
        v[0, S2 - 5, 0, 3] = np.inf  # in the tail block: propagates to every row
    args = dict(scale=1 / math.sqrt(D), sparse_mode=mode, **kw)
    if mode:
        args["atten_mask"] = twin.causal_template()
    got = _fwd(sa, q, k, v, N1, "BSND", backend="auto", rng=(5, 9), **args)
    ref = twin.forward(q, k, v, N1, "BSND", seed=5, offset=9, **args)
    _same_nonfinite_and_close(got[0], ref[0], dtype, f"local pack {dtype} mode {mode} out")
    twin.assert_stats_close(got[1], ref[1], "softmax_max")
    twin.assert_stats_close(got[2], ref[2], "softmax_sum")


# Keys per kv head at which 16 kv heads' packs (bf16 512, fp16 1024, fp32 1536 bytes per key at
# D 128) exceed the 48 MiB pre-pack budget while threads + 1 heads fit it: the AMX kernels then
# recycle a few head slots (fwd_amx.cpp Shared::acquire); with tail blocks.
_SLOT_PACK_S2 = {"bfloat16": 8192 + 333, "float16": 4096 + 333, "float32": 4096 + 333}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_kv_heads_share_recycled_pack_slots(sa, dtype):
    """16 kv heads whose packs exceed the pre-pack budget: slots packed, handed to later heads and
    repacked; one head's value row holds an Inf (its flag must not leak into the heads that reuse
    the slot). Compared with the float64 twin, and bit-identical for 1, 2 and 7 threads (7: the
    slots no longer fit, every block is packed by its task)."""
    D, N1, N2, S1, S2 = 128, 32, 16, 40, _SLOT_PACK_S2[dtype]
    rng = np.random.default_rng(11)
    q, k, v = _rand((1, S1, N1, D), dtype, rng), _rand((1, S2, N2, D), dtype, rng), _rand((1, S2, N2, D), dtype, rng)
    v[0, 300, 5, 7] = np.inf
    args = dict(scale=1 / math.sqrt(D))
    old = sa.get_num_threads()
    got = {}
    try:
        for t in (1, 2, 7):
            sa.set_num_threads(t)
            got[t] = [_np(x) for x in _fwd(sa, q, k, v, N1, "BSND", **args)[:3]]
    finally:
        sa.set_num_threads(old)
    for t in (2, 7):
        for a, b in zip(got[1], got[t]):
            np.testing.assert_array_equal(a, b, err_msg=f"{dtype}: 1 vs {t} threads")
    ref = twin.forward(q, k, v, N1, "BSND", **args)
    _same_nonfinite_and_close(got[1][0], ref[0], dtype, f"pack slots {dtype} out")
    out = got[1][0]  # only query heads 10, 11 (kv head 5) read the Inf, in column 7
    assert np.isinf(out[0, :, 10:12, 7]).all() and np.isfinite(out).sum() == out.size - 2 * S1
    twin.assert_stats_close(got[1][1], ref[1], "softmax_max")
    twin.assert_stats_close(got[1][2], ref[2], "softmax_sum")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_outputs_reuse_freed_memory_and_never_alias_live_ones(kind):
    """Outputs of >= 1 MiB come from the output cache (_api._Alloc, _core.output_block): a call
    reuses the memory of outputs freed before it, never of outputs (or views of them) still
    alive, and forward and backward results are the same as with fresh memory."""
    import speedattn as sa
    from speedattn import _core

    if kind == "torch":
        torch = pytest.importorskip("torch")
        conv, ptr, copy = torch.from_numpy, (lambda t: t.data_ptr()), (lambda t: t.clone())
    else:
        conv, ptr, copy = (lambda a: a), (lambda a: a.__array_interface__["data"][0]), np.copy
    D, N, S = 128, 4, 700  # out 1.4 MiB fp32, dq / dk / dv too
    rng = np.random.default_rng(5)
    q, k, v, dy = (conv(rng.standard_normal((1, N, S, D)).astype(np.float32)) for _ in range(4))
    kw = dict(head_num=N, input_layout="BNSD", scale=1 / math.sqrt(D))

    def fwd(x):
        return sa.speed_fusion_attention(x, k, v, **kw)

    first = fwd(q)
    keep = copy(first[0])
    view = first[0][:, 1:3]  # a view keeps the whole block alive
    keep_view = copy(view)
    tmp = fwd(q)
    del first, tmp
    before = _core.output_cached_bytes()
    assert before >= 2 << 20  # at least tmp's output block (first's is held by the view)
    second = fwd(dy)  # other inputs: other values in reused memory
    assert _core.output_cached_bytes() == before - (2 << 20)  # its 2 MiB block came from the cache
    assert ptr(second[0]) not in (ptr(keep), ptr(view))
    np.testing.assert_array_equal(_np(view), _np(keep_view))
    np.testing.assert_array_equal(_np(view), _np(keep)[:, 1:3])
    del view
    third = fwd(q)
    np.testing.assert_array_equal(_np(third[0]), _np(keep))  # bit-identical to the first call
    out, mx, sm, _, seed, offset, numels = third
    grads = [sa.speed_fusion_attention_grad(q, k, v, dy, softmax_max=mx, softmax_sum=sm, attention_in=out,
                                            seed=seed, offset=offset, numels=numels, **kw) for _ in range(2)]
    assert len({ptr(g) for pair in grads for g in pair[:3]}) == 6  # both calls' grads alive: no sharing
    for a, b in zip(grads[0][:3], grads[1][:3]):
        np.testing.assert_array_equal(_np(a), _np(b))
    assert _core.output_cached_bytes() <= 128 << 20


@pytest.mark.skipif(not _large_enabled(), reason="needs >= 10 GiB available memory (SPEEDATTN_LARGE=1 forces)")
def test_bsh_band_key_beyond_2_31_elements(sa):
    """BSH key/value (1, 2^24 + 64, 128) bf16 with a bottom-right band (sparse_mode 4,
    pre=3, next=0) and S1 = 4: only the last keys are attended, at offsets >= 2^31."""
    D = 128
    S2 = 2**24 + 64
    S1 = 4
    rng = np.random.default_rng(1)
    k = np.zeros((1, S2, D), BF16)
    v = np.zeros((1, S2, D), BF16)
    assert k.size > 2**31
    tail = 64
    k[0, -tail:] = rng.standard_normal((tail, D)).astype(BF16)
    v[0, -tail:] = rng.standard_normal((tail, D)).astype(BF16)
    q = rng.standard_normal((1, S1, D)).astype(BF16)
    scale = 1 / math.sqrt(D)
    pre, nxt = 3, 0
    out, smax, ssum, *_ = sa.speed_fusion_attention(q, k, v, 1, "BSH", scale=scale, sparse_mode=4,
                                                    atten_mask=twin.causal_template(), pre_tokens=pre,
                                                    next_tokens=nxt)
    i = np.arange(S1)[:, None]
    j = np.arange(S2 - tail, S2)[None, :]
    diag = S2 - S1
    keep = (j >= i + diag - pre) & (j <= i + diag + nxt)
    ref = _attention64(_np(q[0]), _np(k[0, -tail:]), _np(v[0, -tail:]), scale, keep)
    twin.assert_close(out[0], ref, "bfloat16", "BSH band > 2^31 elements")


def _bcast(shape):
    return np.broadcast_to(np.zeros((1,) * len(shape), np.float32), shape)  # stride 0: no memory


def test_overflowing_shapes_are_value_errors(sa):
    # B*N1*S1*S2 = 2^31 * 2^33 overflows int64.
    q, k = _bcast((1, 2**31, 1)), _bcast((1, 2**33, 1))
    with pytest.raises(ValueError):
        sa.speed_fusion_attention(q, k, k, 1, "BSH")
    # TND: N1 * sum(sq * skv) overflows
    qt = _bcast((2**40, 4, 1))
    with pytest.raises(ValueError):
        sa.speed_fusion_attention(qt, qt, qt, 4, "TND", actual_seq_qlen=[2**40], actual_seq_kvlen=[2**40])
    # H = N * D overflow through a huge head_num is a ValueError too
    with pytest.raises(ValueError):
        sa.speed_fusion_attention(q, k, k, 2**62, "BSH")


def test_huge_batch_is_value_error_not_memory_error(sa):
    # finding F3: B = 2^40 (stride-0 view): numels = 2^80 overflows; must be a ValueError before any allocation
    q4 = _bcast((2**40, 2**20, 1, 1))
    with pytest.raises(ValueError):
        sa.speed_fusion_attention(q4, q4, q4, 1, "BSND")


@pytest.mark.parametrize("mode", [0, 4])
def test_extreme_pre_next_tokens_do_not_overflow(sa, mode):
    """finding F12: pre/next near INT64_MAX/MIN act as unbounded (no int64 overflow in the band
    legality arithmetic); an all-negative band is still a ValueError."""
    rng = np.random.default_rng(15)
    q, k, v = (_rand((1, 2, s, 8), "float32", rng) for s in (16, 5, 5))
    mask = twin.causal_template() if mode == 4 else np.zeros((16, 5), bool)
    base = _fwd(sa, q, k, v, 2, "BNSD", sparse_mode=mode, atten_mask=mask)
    big = _fwd(sa, q, k, v, 2, "BNSD", sparse_mode=mode, atten_mask=mask, pre_tokens=2**63 - 1,
               next_tokens=2**63 - 1)
    assert np.array_equal(base[0], big[0])
    with pytest.raises(ValueError):
        _fwd(sa, q, k, v, 2, "BNSD", sparse_mode=mode, atten_mask=mask, pre_tokens=-(2**63), next_tokens=-(2**63))


# ==============================================================================================
# 3. Numerical edge cases.
# ==============================================================================================
def _same_nonfinite_and_close(got, ref, dtype, what):
    g, r = _np(got), _np(ref)
    assert g.shape == r.shape, what
    assert np.array_equal(np.isnan(g), np.isnan(r)), (
        f"{what}: NaN pattern differs at {np.argwhere(np.isnan(g) != np.isnan(r))[:5].tolist()}")
    inf_r = np.isinf(r)
    assert np.array_equal(np.isinf(g), inf_r) and np.array_equal(g[inf_r], r[inf_r]), f"{what}: Inf pattern differs"
    fin = np.isfinite(r)
    if fin.any():
        twin.assert_close(g[fin], r[fin], dtype, what)


NONFINITE_CASES = [
    ("q_nan", "q", np.nan), ("k_nan", "k", np.nan), ("v_nan", "v", np.nan),
    ("k_inf", "k", np.inf), ("k_ninf", "k", -np.inf), ("v_inf", "v", np.inf), ("q_inf", "q", np.inf),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("name,where,val", NONFINITE_CASES, ids=[c[0] for c in NONFINITE_CASES])
@pytest.mark.parametrize("mode", [0, 2])
def test_nonfinite_inputs_propagate_like_reference(sa, dtype, name, where, val, mode):
    """finding F2: automatic reproduces the reference's NaN/Inf pattern exactly."""
    rng = np.random.default_rng(11)
    B, N, S, D = 1, 2, 37, 16
    t = {x: _rand((B, N, S, D), dtype, rng) for x in "qkv"}
    t[where][0, 1, 5, 3] = val  # one element in head 1, row/key 5
    kw = dict(scale=0.25, sparse_mode=mode)
    if mode == 2:
        kw["atten_mask"] = twin.causal_template()
    got = _fwd(sa, t["q"], t["k"], t["v"], N, "BNSD", backend="auto", **kw)
    ref = _fwd(sa, t["q"], t["k"], t["v"], N, "BNSD", backend="reference", **kw)
    f64 = {x: t[x].astype(np.float64) for x in "qkv"}  # the unrounded oracle (same NaN/Inf)
    ref64 = _fwd(sa, f64["q"], f64["k"], f64["v"], N, "BNSD", backend="reference", **kw)
    for i, what in ((0, "attention_out"), (1, "softmax_max"), (2, "softmax_sum")):
        _same_nonfinite_and_close(got[i], ref64[i], dtype if i == 0 else "float32", f"{name} mode {mode} {what}")
        assert np.array_equal(np.isnan(_np(ref[i])), np.isnan(_np(ref64[i])))
    dy = _rand((B, N, S, D), dtype, rng)
    g = _bwd(sa, t["q"], t["k"], t["v"], dy, N, "BNSD", ref, backend="auto", **kw)
    saved = (_np(ref[0]),) + tuple(ref[1:])
    r = _bwd(sa, f64["q"], f64["k"], f64["v"], dy.astype(np.float64), N, "BNSD", saved, backend="reference", **kw)
    for i, what in enumerate(("dq", "dk", "dv")):
        _same_nonfinite_and_close(g[i], r[i], dtype, f"{name} mode {mode} {what}")


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nonfinite_at_masked_positions_does_not_leak(sa, backend, dtype):
    """Causal mask: keys j > i are masked for row i. NaN/Inf in a pse at masked positions and
    Inf in keys/values that some rows mask must not reach those rows (SPEC §1: a masked logit
    is -FLT_MAX whatever the inputs)."""
    rng = np.random.default_rng(12)
    B, N, S, D = 1, 1, 40, 8
    q, k, v = (_rand((B, N, S, D), dtype, rng) for _ in range(3))
    pse = _rand((B, N, S, S), dtype, rng)
    iu = np.triu_indices(S, 1)
    pse[0, 0][iu] = np.nan
    kw = dict(scale=0.3, sparse_mode=2, atten_mask=twin.causal_template(), pse=pse, pse_type=1)
    out, smax, ssum, *_ = _fwd(sa, q, k, v, N, "BNSD", backend=backend, **kw)
    assert np.isfinite(_np(out)).all() and np.isfinite(_np(smax)).all() and np.isfinite(_np(ssum)).all()
    clean = pse.copy()
    clean[0, 0][iu] = 0
    f64 = [x.astype(np.float64) for x in (q, k, v)]
    ref = _fwd(sa, *f64, N, "BNSD", backend="reference", **{**kw, "pse": clean.astype(np.float64)})
    twin.assert_close(out, ref[0], dtype, "pse NaN at masked positions")
    # Inf in the last key: only the last row attends it.
    k2 = k.copy()
    k2[0, 0, S - 1, :] = np.inf
    out2 = _np(_fwd(sa, q, k2, v, N, "BNSD", backend=backend, **{**kw, "pse": clean})[0])
    assert np.isfinite(out2[0, 0, : S - 1]).all(), "Inf in a masked key leaked into earlier rows"


MASKED_ROW_CASES = [
    # (layout, mode, kwargs builder) whose parameters leave rows fully masked
    ("mask_all_rows", 1), ("band_empty", 0), ("mode3_s1_gt_s2", 3), ("mode4_empty", 4), ("prefix0", 5),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("inner_precise", [0, 2])
@pytest.mark.parametrize("case,mode", MASKED_ROW_CASES, ids=[c[0] for c in MASKED_ROW_CASES])
def test_fully_masked_rows_never_nan(sa, backend, inner_precise, case, mode):
    rng = np.random.default_rng(13)
    B, N, D = 2, 2, 16
    S1, S2 = (9, 5) if case in ("mode3_s1_gt_s2", "prefix0") else (9, 9)
    q = _rand((B, N, S1, D), "bfloat16", rng, 3.0)
    k = _rand((B, N, S2, D), "bfloat16", rng, 3.0)
    v = _rand((B, N, S2, D), "bfloat16", rng, 3.0)
    kw = dict(scale=0.5, sparse_mode=mode, inner_precise=inner_precise, keep_prob=0.8)
    if case == "mask_all_rows":
        m = rng.random((B, N, S1, S2)) < 0.3
        m[:, :, ::2, :] = True
        kw["atten_mask"] = m
    elif case == "band_empty":
        kw.update(atten_mask=np.zeros((S1, S2), bool), pre_tokens=-2, next_tokens=4)
    elif case == "mode3_s1_gt_s2":
        kw["atten_mask"] = twin.causal_template()
    elif case == "mode4_empty":
        kw.update(atten_mask=twin.causal_template(), pre_tokens=3, next_tokens=-1)
    elif case == "prefix0":
        kw.update(atten_mask=np.ones((B, 1, S1, S2), bool), prefix=[0, 2])
    sa.manual_seed(3)
    res = _fwd(sa, q, k, v, N, "BNSD", backend=backend, **kw)
    for x, what in zip(res[:3], ("out", "softmax_max", "softmax_sum")):
        assert not np.isnan(_np(x)).any(), f"{case}: NaN in {what}"
    assert np.isfinite(_np(res[0])).all(), f"{case}: non-finite attention_out"
    dy = _rand((B, N, S1, D), "bfloat16", rng)
    grads = _bwd(sa, q, k, v, dy, N, "BNSD", res, backend=backend, **kw)
    for x, what in zip(grads[:3], ("dq", "dk", "dv")):
        assert np.isfinite(_np(x)).all(), f"{case}: non-finite {what}"


@pytest.mark.parametrize("isa", ["amx", "avx512", "avx2", "scalar"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("pse_type,slopes", [(2, (-0.3, -0.1)), (3, (-3.0, -1.0))])
def test_slope_gradient_long_rows(sa, monkeypatch, dtype, isa, pse_type, slopes):
    """Finding F13 (docs/reliability.md). Negative slopes put each row's P on its farthest keys
    (distance ~1100), so the slope gradient is a difference of terms ~1e2..1e3 times larger than
    itself: until every backend centred each row's distances on their P-weighted mean, the
    float32 statistics and the rounded attention_out behind P and Dsum moved it 9..73x the
    tolerance (4..15x for pse_type 3) on every kernel. The slopes keep |logit| <= ~330 so that
    the float32 rounding of the logits themselves (a relative error of 2^-24 |logit| in every P,
    the same in the forward) stays well inside the tolerance.
    Oracle: the float64 reference fed the same saved statistics and attention_out.
    D = 32: AMX for bfloat16 / float16 under the "amx" cap."""
    monkeypatch.setenv("SPEEDATTN_MAX_ISA", isa)
    rng = np.random.default_rng(17)
    q = _rand((4, 2, 4, 32), dtype, rng)
    k, v = (_rand((4, 2, 1100, 32), dtype, rng) for _ in range(2))
    dy = _rand(q.shape, dtype, rng)
    kw = dict(scale=0.5, sparse_mode=4, atten_mask=twin.causal_template(), pse_type=pse_type,
              pse=rng.uniform(*slopes, (2,)).astype(np.float32))
    res = _fwd(sa, q, k, v, 2, "BNSD", **kw)
    got = _bwd(sa, q, k, v, dy, 2, "BNSD", res, **kw)[3]
    f64 = [_np(x) for x in (q, k, v, dy)]
    ref = sa.speed_fusion_attention_grad(*f64, 2, "BNSD", softmax_max=res[1], softmax_sum=res[2],
                                         attention_in=_np(res[0]), seed=res[4], offset=res[5],
                                         numels=res[6], backend="reference", **kw)[3]
    twin.assert_close(got, ref, "float32", "slope gradient")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, -1e39])
def test_nonfinite_scale_or_keep_prob_rejected(sa, bad):
    q = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ValueError):
        sa.speed_fusion_attention(q, q, q, 1, "BSH", scale=bad)
    with pytest.raises(ValueError):
        sa.speed_fusion_attention(q, q, q, 1, "BSH", keep_prob=bad)
    res = sa.speed_fusion_attention(q, q, q, 1, "BSH")
    with pytest.raises(ValueError):
        _bwd(sa, q, q, q, q, 1, "BSH", res, scale=bad)
    with pytest.raises(ValueError):
        _bwd(sa, q, q, q, q, 1, "BSH", res, keep_prob=bad)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("scale", [1e-6, 1e4, -1e4])
@pytest.mark.parametrize("mode", [0, 3])
def test_extreme_scales_stay_finite(sa, dtype, scale, mode):
    rng = np.random.default_rng(14)
    B, N, S1, S2, D = 1, 2, 33, 70, 64
    q = _rand((B, S1, N * D), dtype, rng)
    k = _rand((B, S2, N * D), dtype, rng)
    v = _rand((B, S2, N * D), dtype, rng)
    kw = dict(scale=scale, sparse_mode=mode, keep_prob=0.9)
    if mode == 3:
        kw["atten_mask"] = twin.causal_template()
    ref = _fwd(sa, q, k, v, N, "BSH", backend="reference", rng=(1, 2), **kw)
    got = _fwd(sa, q, k, v, N, "BSH", backend="auto", rng=(1, 2), **kw)
    for i in range(3):
        r, g = _np(ref[i]), _np(got[i])
        assert np.isfinite(g[np.isfinite(r)]).all(), f"scale {scale}: output {i} not finite where reference is"
    if abs(scale) < 1:  # the float64 (unrounded) reference is the oracle of the SPEC tolerance
        f64 = [x.astype(np.float64) for x in (q, k, v)]
        ref64 = _fwd(sa, *f64, N, "BSH", backend="reference", rng=(1, 2), **kw)
        twin.assert_close(got[0], ref64[0], dtype, f"scale {scale}")
    dy = _rand((B, S1, N * D), dtype, rng)
    gr = _bwd(sa, q, k, v, dy, N, "BSH", ref, backend="reference", **kw)
    ga = _bwd(sa, q, k, v, dy, N, "BSH", ref, backend="auto", **kw)
    for r, g in zip(gr[:3], ga[:3]):
        r, g = _np(r), _np(g)
        assert np.isfinite(g[np.isfinite(r)]).all(), f"scale {scale}: gradient not finite where reference is"


# ==============================================================================================
# 4. Memory safety of views.
# ==============================================================================================
def _case(layout="BSH", dtype="float32", S1=19, S2=23, N=2, D=16, B=2, seed=0):
    rng = np.random.default_rng(seed)
    if layout == "BSH":
        shp_q, shp_k = (B, S1, N * D), (B, S2, N * D)
    else:
        shp_q, shp_k = (B, N, S1, D), (B, N, S2, D)
    return _rand(shp_q, dtype, rng), _rand(shp_k, dtype, rng), _rand(shp_k, dtype, rng)


def _views(a, how):
    if how == "misaligned_elem":  # data pointer offset by one element from the allocation
        buf = np.empty(a.size + 1, a.dtype)
        out = buf[1:].reshape(a.shape)
        out[...] = a
        return out
    if how == "misaligned_byte":  # not even element-aligned
        raw = np.zeros(a.nbytes + 1, np.uint8)
        out = raw[1:].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    if how == "negative":  # reversed sequence axis, copied so values match after reversing back
        return np.ascontiguousarray(a[:, ::-1])[:, ::-1]
    if how == "broadcast":  # batch dim of stride 0
        return np.broadcast_to(a[:1], a.shape)
    if how == "readonly":
        b = a.copy()
        b.setflags(write=False)
        return b
    if how == "padded":
        big = np.zeros(a.shape[:-1] + (a.shape[-1] + 3,), a.dtype)
        big[..., 1:-2] = a
        return big[..., 1:-2]
    if how == "torch_t":
        import torch

        t = torch.from_numpy(np.ascontiguousarray(np.swapaxes(_np(a).astype(np.float32), 0, 1)))
        return t.to({"float32": torch.float32, "float16": torch.float16,
                     "bfloat16": torch.bfloat16}[twin.dtype_name(a)]).transpose(0, 1)
    raise ValueError(how)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("how", ["misaligned_elem", "misaligned_byte", "negative", "broadcast", "readonly",
                                 "padded", "torch_t"])
def test_views_give_same_results_as_contiguous(sa, backend, dtype, how):
    q, k, v = _case(dtype=dtype, seed=3)
    dy = _rand(q.shape, dtype, np.random.default_rng(4))
    if how == "broadcast":  # batch-constant values, so the stride-0 views hold the same data
        q, k, v, dy = (np.ascontiguousarray(np.broadcast_to(x[:1], x.shape)) for x in (q, k, v, dy))
    kw = dict(scale=0.3, keep_prob=0.85, rng=(9, 0))
    base = _fwd(sa, q, k, v, 2, "BSH", backend=backend, **kw)
    qv, kv, vv = (_views(x, how) for x in (q, k, v))
    snap = [_np(x).copy() for x in (qv, kv, vv)]
    got = _fwd(sa, qv, kv, vv, 2, "BSH", backend=backend, **kw)
    for i in range(3):
        assert np.array_equal(_np(got[i]), _np(base[i])), f"{how}: output {i} differs from the contiguous call"
    kw.pop("rng")
    gb = _bwd(sa, q, k, v, dy, 2, "BSH", base, backend=backend, **kw)
    gv = _bwd(sa, qv, kv, vv, _views(dy, how), 2, "BSH", base, backend=backend, **kw)
    for i in range(3):
        assert np.array_equal(_np(gv[i]), _np(gb[i])), f"{how}: gradient {i} differs from the contiguous call"
    for s, x in zip(snap, (qv, kv, vv)):
        assert np.array_equal(s, _np(x), equal_nan=True), f"{how}: an input was modified"


@pytest.mark.parametrize("S1", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_negative_batch_stride_decode(sa, S1, dtype):
    """finding F11: negative batch strides on the decode path (S1 = 1), with a non-finite value
    row so the kernel's bad-row copy runs; results equal the contiguous call."""
    rng = np.random.default_rng(16)
    q = _rand((3, S1, 4, 8), dtype, rng)
    k, v = _rand((3, 40, 2, 8), dtype, rng), _rand((3, 40, 2, 8), dtype, rng)
    v[1, 7, 0, 2] = np.inf
    kw = dict(scale=0.3, sparse_mode=3, atten_mask=twin.causal_template())
    base = _fwd(sa, q, k, v, 4, "BSND", **kw)
    flip = lambda x: np.ascontiguousarray(x[::-1])[::-1]  # noqa: E731 - same values, negative strides
    got = _fwd(sa, flip(q), flip(k), flip(v), 4, "BSND", **kw)
    for a, b in zip(got[:3], base[:3]):
        assert np.array_equal(_np(a), _np(b), equal_nan=True)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_outputs_never_alias_inputs(sa, backend):
    q, k, v = _case(seed=5)
    mask = np.zeros((19, 23), bool)
    res = _fwd(sa, q, k, v, 2, "BSH", backend=backend, atten_mask=mask, scale=0.2)
    ins = (q, k, v, mask)
    for o in res[:4]:
        for x in ins:
            assert not np.shares_memory(o, x)
    dy = q.copy()
    grads = _bwd(sa, q, k, v, dy, 2, "BSH", res, backend=backend, atten_mask=mask, scale=0.2)
    for o in grads:
        for x in ins + (dy,) + tuple(res[:3]):
            assert not np.shares_memory(o, x)
    # outputs of two calls are distinct buffers too
    res2 = _fwd(sa, q, k, v, 2, "BSH", backend=backend, atten_mask=mask, scale=0.2)
    assert not np.shares_memory(res[0], res2[0])


ZERO_SIZE_CASES = [
    ("B0", "BSH", (0, 4, 16), (0, 5, 16), {}),
    ("S1_0", "BSH", (2, 0, 16), (2, 5, 16), {}),
    ("S1_S2_0", "BNSD", (1, 2, 0, 8), (1, 2, 0, 8), {}),
    ("SBH_B0", "SBH", (4, 0, 16), (5, 0, 16), {}),
    ("TND_empty_seqs", "TND", (3, 2, 8), (4, 2, 8), dict(actual_seq_qlen=[0, 0], actual_seq_kvlen=[0, 4])),
    ("TND_T1_0", "TND", (0, 2, 8), (4, 2, 8), dict(actual_seq_qlen=[0], actual_seq_kvlen=[4])),
    ("TND_T_0", "TND", (0, 2, 8), (0, 2, 8), dict(actual_seq_qlen=[0], actual_seq_kvlen=[0])),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name,layout,qs,ks,kw", ZERO_SIZE_CASES, ids=[c[0] for c in ZERO_SIZE_CASES])
def test_zero_size_inputs(sa, backend, name, layout, qs, ks, kw):
    q = np.ones(qs, np.float32)
    k = np.ones(ks, np.float32)
    n = 2 if layout in ("TND", "BNSD") else 1
    try:
        res = _fwd(sa, q, k, k, n, layout, backend=backend, keep_prob=0.5, **kw)
    except ValueError:
        return  # a clean rejection is acceptable for degenerate shapes
    assert res[0].shape == q.shape
    assert np.isfinite(res[0]).all()
    grads = _bwd(sa, q, k, k, np.ones(qs, np.float32), n, layout, res, backend=backend, keep_prob=0.5, **kw)
    assert grads[0].shape == q.shape and grads[1].shape == k.shape and grads[2].shape == k.shape
    assert np.isfinite(grads[1]).all() and np.isfinite(grads[2]).all()


def test_zero_size_with_null_like_pointer_and_nonzero_strides(sa):
    # a zero-size slice of a larger array keeps its (nonzero) strides
    big = np.ones((3, 8, 16), np.float32)
    q = big[:, :0]
    res = _fwd(sa, q, big, big, 1, "BSH")
    assert res[0].shape == (3, 0, 16)


def test_nothing_changes_on_error(sa):
    q, k, v = _case(seed=6)
    snap = [x.copy() for x in (q, k, v)]
    sa.manual_seed(77)
    state = sa.rng_state()
    bad_calls = [
        dict(head_num=3), dict(scale=float("nan")), dict(keep_prob=0.0), dict(sparse_mode=4, atten_mask=np.ones(
            (2048, 2048), bool)), dict(pse=np.zeros((2, 2, 19, 22), np.float32)),
    ]
    for kw in bad_calls:
        kw = {"head_num": 2, "keep_prob": 0.5, **kw}
        n = kw.pop("head_num")
        with pytest.raises((TypeError, ValueError)):
            _fwd(sa, q, k, v, n, "BSH", **kw)
    assert sa.rng_state() == state, "a rejected call advanced the dropout generator"
    res = _fwd(sa, q, k, v, 2, "BSH")
    out_snap = [_np(x).copy() for x in res[:3]]
    with pytest.raises(ValueError):
        _bwd(sa, q, k, v, q, 2, "BSH", res[:6] + (np.int64(5),))  # wrong numels
    with pytest.raises((TypeError, ValueError)):
        _bwd(sa, q, k, v, q[:, :3], 2, "BSH", res)  # wrong dy shape
    for s, x in zip(snap, (q, k, v)):
        assert np.array_equal(s, x)
    for s, x in zip(out_snap, res[:3]):
        assert np.array_equal(s, _np(x))


# ==============================================================================================
# 5. Determinism and concurrency.
# ==============================================================================================
DET_CASES = [
    ("BSH_causal", "BSH", 2, 4, 2, 200, 200, 64, dict(sparse_mode=3)),
    ("BNSD_band_pse", "BNSD", 1, 4, 4, 130, 300, 32, dict(sparse_mode=4, pre_tokens=70, next_tokens=5)),
    ("TND_mode7", "TND", None, 4, 2, None, None, 48, dict(sparse_mode=7, pre_tokens=20, next_tokens=3)),
    ("decode_S1_1", "BSND", 2, 2, 1, 1, 700, 64, dict()),
]


def _det_inputs(layout, B, N1, N2, S1, S2, D, dtype, kw):
    rng = np.random.default_rng(21)
    kw = dict(kw, keep_prob=0.9, scale=1 / math.sqrt(D))
    if kw.get("sparse_mode", 0) in (2, 3, 4, 7, 8):
        kw["atten_mask"] = twin.causal_template()
    if layout == "TND":
        seqs = [(60, 90), (0, 10), (130, 130), (5, 40)]
        T1, T2 = sum(a for a, _ in seqs), sum(b for _, b in seqs)
        q, k, v = _rand((T1, N1, D), dtype, rng), _rand((T2, N2, D), dtype, rng), _rand((T2, N2, D), dtype, rng)
        kw["actual_seq_qlen"] = np.cumsum([a for a, _ in seqs]).tolist()
        kw["actual_seq_kvlen"] = np.cumsum([b for _, b in seqs]).tolist()
        return q, k, v, kw
    shapes = {"BSH": lambda S, N: (B, S, N * D), "BNSD": lambda S, N: (B, N, S, D), "BSND": lambda S, N: (B, S, N, D)}
    q = _rand(shapes[layout](S1, N1), dtype, rng)
    k, v = _rand(shapes[layout](S2, N2), dtype, rng), _rand(shapes[layout](S2, N2), dtype, rng)
    if layout == "BNSD":
        kw["pse"] = _rand((B, N1, S1, S2), dtype, rng)
    return q, k, v, kw


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("name,layout,B,N1,N2,S1,S2,D,kw", DET_CASES, ids=[c[0] for c in DET_CASES])
def test_bit_identical_across_thread_counts(sa, dtype, name, layout, B, N1, N2, S1, S2, D, kw):
    q, k, v, kw = _det_inputs(layout, B, N1, N2, S1, S2, D, dtype, kw)
    dy = _rand(q.shape, dtype, np.random.default_rng(22))
    old = sa.get_num_threads()
    results = {}
    try:
        for t in (1, 2, 3, 7):
            sa.set_num_threads(t)
            res = _fwd(sa, q, k, v, N1, layout, rng=(123, 456), **kw)
            grads = _bwd(sa, q, k, v, dy, N1, layout, res, **kw)
            results[t] = [_np(x) for x in res[:3]] + [_np(x) for x in grads]
    finally:
        sa.set_num_threads(old)
    names = ("out", "softmax_max", "softmax_sum", "dq", "dk", "dv", "dpse")
    for t in (2, 3, 7):
        for nm, a, b in zip(names, results[1], results[t]):
            assert a.tobytes() == b.tobytes(), f"{name}: {nm} differs between 1 and {t} threads"


def test_concurrent_python_threads_match_sequential(sa):
    """8 Python threads call forward + backward at once (the GIL is released in the core);
    results equal sequential calls. With dropout drawn from the process generator, the call
    that got offset m*k must equal the m-th sequential call."""
    rng = np.random.default_rng(31)
    B, N, S, D = 2, 4, 96, 32
    inputs = []
    for i in range(8):
        q = _rand((B, S, N * D), "bfloat16", rng)
        k = _rand((B, S, N * D), "bfloat16", rng)
        v = _rand((B, S, N * D), "bfloat16", rng)
        inputs.append((q, k, v, _rand((B, S, N * D), "bfloat16", rng)))
    kw = dict(scale=0.2, sparse_mode=2, atten_mask=twin.causal_template())

    def work(i, keep_prob, out):
        q, k, v, dy = inputs[i]
        res = _fwd(sa, q, k, v, N, "BSH", keep_prob=keep_prob, **kw)
        grads = _bwd(sa, q, k, v, dy, N, "BSH", res, keep_prob=keep_prob, **kw)
        out[i] = (as_int(res[5]), [_np(x) for x in res[:3]] + [_np(x) for x in grads[:3]])

    for keep_prob in (1.0, 0.8):
        sa.manual_seed(99)
        seq = {}
        for i in range(8):
            work(i, keep_prob, seq)
        sa.manual_seed(99)
        con = {}
        errors = []

        def run(i):
            try:
                work(i, keep_prob, con)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        if keep_prob == 1.0:
            for i in range(8):
                for a, b in zip(seq[i][1], con[i][1]):
                    assert a.tobytes() == b.tobytes(), f"call {i} differs when run concurrently"
        else:
            # all inputs have the same numels, so call m of the sequential run used offset m*step
            step = seq[1][0] - seq[0][0]
            assert sorted(c[0] for c in con.values()) == [m * step for m in range(8)], "offsets not distinct"
            for i in range(8):
                off = con[i][0]
                # recompute call i sequentially with the offset it got
                q, k, v, dy = inputs[i]
                res = _fwd(sa, q, k, v, N, "BSH", keep_prob=keep_prob, rng=(99, off), **kw)
                grads = _bwd(sa, q, k, v, dy, N, "BSH", res, keep_prob=keep_prob, **kw)
                want = [_np(x) for x in res[:3]] + [_np(x) for x in grads[:3]]
                for a, b in zip(want, con[i][1]):
                    assert a.tobytes() == b.tobytes(), f"call {i} (offset {off}) differs when run concurrently"
