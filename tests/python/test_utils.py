"""speedattn.utils: softmax_lse and the cu_seqlens <-> actual_seq conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest

FLT_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def utils():
    from speedattn import utils  # noqa: PLC0415 - unguarded: a broken package is a test error

    return utils


def test_exported_from_package(sa):
    assert sa.softmax_lse is sa.utils.softmax_lse
    assert sa.cu_seqlens_to_actual_seq is sa.utils.cu_seqlens_to_actual_seq
    assert sa.actual_seq_to_cu_seqlens is sa.utils.actual_seq_to_cu_seqlens


# ----------------------------------------------------------------------------------------------
# cu_seqlens <-> actual_seq


@pytest.mark.parametrize("cu, actual", [
    ([0, 2, 4, 6], [2, 4, 6]),
    ([0, 5], [5]),
    ([0, 0, 3, 3, 7], [0, 3, 3, 7]),  # zero-length sequences are allowed
])
def test_round_trip_lists(utils, cu, actual):
    assert utils.cu_seqlens_to_actual_seq(cu) == actual
    assert utils.actual_seq_to_cu_seqlens(actual) == cu
    assert utils.cu_seqlens_to_actual_seq(tuple(cu)) == actual
    assert utils.actual_seq_to_cu_seqlens(tuple(actual)) == cu


def test_numpy_keeps_kind_and_dtype(utils):
    cu = np.array([0, 3, 10], dtype=np.int32)
    a = utils.cu_seqlens_to_actual_seq(cu)
    assert isinstance(a, np.ndarray) and a.dtype == np.int32 and a.tolist() == [3, 10]
    back = utils.actual_seq_to_cu_seqlens(np.array([3, 10], dtype=np.int64))
    assert isinstance(back, np.ndarray) and back.dtype == np.int64 and back.tolist() == [0, 3, 10]


def test_torch_keeps_kind_and_dtype(utils):
    torch = pytest.importorskip("torch")
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    a = utils.cu_seqlens_to_actual_seq(cu)
    assert isinstance(a, torch.Tensor) and a.dtype == torch.int32 and a.tolist() == [3, 10]
    back = utils.actual_seq_to_cu_seqlens(a)
    assert back.dtype == torch.int32 and back.tolist() == [0, 3, 10]


@pytest.mark.parametrize("bad, exc, words", [
    ([1, 2, 3], ValueError, "start with 0"),
    ([0], ValueError, "at least 2"),
    ([], ValueError, "at least 2"),
    ([0, 3, 2], ValueError, "non-decreasing"),
    ([0, -1], ValueError, "non-negative"),
    (5, TypeError, "1-D sequence"),
    ("0,1", TypeError, "1-D sequence"),
    ([0, 1.5], TypeError, "cu_seqlens[1] must be an int"),
    ([0, True], TypeError, "must be an int"),
    (np.array([0.0, 1.0]), TypeError, "1-D sequence"),
    (np.array([[0, 1]]), TypeError, "1-D sequence"),
])
def test_cu_seqlens_errors(utils, bad, exc, words):
    with pytest.raises(exc, match="cu_seqlens") as ei:
        utils.cu_seqlens_to_actual_seq(bad)
    assert words in str(ei.value)


@pytest.mark.parametrize("bad, exc, words", [
    ([], ValueError, "at least one"),
    ([3, 2], ValueError, "non-decreasing"),
    ([-1, 2], ValueError, "non-negative"),
    (None, TypeError, "1-D sequence"),
])
def test_actual_seq_errors(utils, bad, exc, words):
    with pytest.raises(exc, match="actual_seq") as ei:
        utils.actual_seq_to_cu_seqlens(bad)
    assert words in str(ei.value)


# ----------------------------------------------------------------------------------------------
# softmax_lse


def _stats(m, s):
    m = np.repeat(np.asarray(m, np.float32)[..., None], 8, axis=-1)
    s = np.repeat(np.asarray(s, np.float32)[..., None], 8, axis=-1)
    return m, s


def test_lse_formula_and_shape(utils):
    m, s = _stats([[[0.5, -2.0, 3.0]]], [[[1.0, 2.5, 7.0]]])
    lse = utils.softmax_lse(m, s)
    assert lse.shape == (1, 1, 3) and lse.dtype == np.float32
    np.testing.assert_allclose(lse, [[[0.5, -2.0 + math.log(2.5), 3.0 + math.log(7.0)]]], rtol=1e-7)


def test_lse_special_rows(utils):
    # invalid-line row (-FLT_MAX, +FLT_MAX) -> -inf; uniform fully masked row (-FLT_MAX, S2) -> -FLT_MAX
    m, s = _stats([[[-FLT_MAX, -FLT_MAX, 1.0]]], [[[FLT_MAX, 6.0, 1.0]]])
    lse = utils.softmax_lse(m, s)
    assert lse[0, 0, 0] == -np.inf
    assert lse[0, 0, 1] == np.float32(-FLT_MAX)
    assert lse[0, 0, 2] == np.float32(1.0)
    assert not np.isnan(lse).any()


def test_lse_torch_in_torch_out(utils):
    torch = pytest.importorskip("torch")
    m, s = _stats([[[0.25, 1.0]]], [[[2.0, 3.0]]])
    lse = utils.softmax_lse(torch.from_numpy(m), torch.from_numpy(s))
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32 and tuple(lse.shape) == (1, 1, 2)
    np.testing.assert_allclose(lse.numpy(), utils.softmax_lse(m, s))


@pytest.mark.parametrize("m_shape, s_shape, exc, words", [
    ((1, 1, 4, 8), (1, 1, 4, 7), ValueError, "same shape"),
    ((1, 1, 4, 4), (1, 1, 4, 4), ValueError, "(B, N1, S1, 8)"),
    ((4, 8), (4, 8), ValueError, "(B, N1, S1, 8)"),
])
def test_lse_shape_errors(utils, m_shape, s_shape, exc, words):
    with pytest.raises(exc) as ei:
        utils.softmax_lse(np.zeros(m_shape, np.float32), np.ones(s_shape, np.float32))
    assert words in str(ei.value)


def test_lse_type_errors(utils):
    with pytest.raises(TypeError, match="softmax_max"):
        utils.softmax_lse([[0.0] * 8], np.ones((1, 8), np.float32))
    with pytest.raises(TypeError, match="softmax_sum"):
        utils.softmax_lse(np.zeros((1, 1, 1, 8), np.float32), np.ones((1, 1, 1, 8), np.int32))
    with pytest.raises(ValueError, match="non-negative"):
        utils.softmax_lse(np.zeros((1, 1, 1, 8), np.float32), -np.ones((1, 1, 1, 8), np.float32))


def test_lse_tnd_reorder(utils):
    # TND statistics: per sequence a block (N1, sq_b); reordered to flash-attn's (N1, T1).
    T1, N1, ends = 6, 2, [2, 5]  # token 5 is after the last sequence
    data = np.arange(T1 * N1, dtype=np.float32)
    m = np.repeat(data.reshape(T1, N1)[..., None], 8, axis=-1)
    s = np.ones_like(m)
    s[5] = 0.0  # zero-filled tail row
    m[5] = 0.0
    raw = utils.softmax_lse(m, s)
    assert raw.shape == (T1, N1)
    got = utils.softmax_lse(m, s, actual_seq_qlen=ends)
    assert got.shape == (N1, T1)
    np.testing.assert_array_equal(got[:, :2], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(got[:, 2:5], [[4, 5, 6], [7, 8, 9]])
    assert np.all(got[:, 5] == -np.inf)
    with pytest.raises(ValueError, match="exceeds"):
        utils.softmax_lse(m, s, actual_seq_qlen=[2, 7])
    with pytest.raises(ValueError, match="TND"):
        utils.softmax_lse(np.zeros((1, 1, 2, 8), np.float32), np.ones((1, 1, 2, 8), np.float32),
                          actual_seq_qlen=[2])


def test_lse_matches_logsumexp_of_logits(sa, utils):
    rng = np.random.default_rng(3)
    B, N, S1, S2, D = 1, 2, 5, 7, 8
    q = rng.standard_normal((B, N, S1, D), dtype=np.float32)
    k = rng.standard_normal((B, N, S2, D), dtype=np.float32)
    v = rng.standard_normal((B, N, S2, D), dtype=np.float32)
    scale = 0.3
    _, smax, ssum, *_ = sa.speed_fusion_attention(q, k, v, N, "BNSD", scale=scale)
    x = scale * np.einsum("bnid,bnjd->bnij", q.astype(np.float64), k.astype(np.float64))
    ref = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    np.testing.assert_allclose(utils.softmax_lse(smax, ssum), ref, rtol=1e-5, atol=1e-5)


def test_lse_tnd_matches_per_sequence(sa, utils):
    rng = np.random.default_rng(4)
    N, D = 2, 8
    seqs = [3, 0, 4]
    ends = list(np.cumsum(seqs))
    T = ends[-1]
    q = rng.standard_normal((T, N, D), dtype=np.float32)
    k = rng.standard_normal((T, N, D), dtype=np.float32)
    v = rng.standard_normal((T, N, D), dtype=np.float32)
    cu = utils.actual_seq_to_cu_seqlens(ends)
    _, smax, ssum, *_ = sa.speed_fusion_attention(q, k, v, N, "TND", actual_seq_qlen=ends, actual_seq_kvlen=ends)
    lse = utils.softmax_lse(smax, ssum, actual_seq_qlen=utils.cu_seqlens_to_actual_seq(cu))
    for b in range(len(seqs)):
        lo, hi = cu[b], cu[b + 1]
        x = np.einsum("ind,jnd->nij", q[lo:hi].astype(np.float64), k[lo:hi].astype(np.float64))
        if hi > lo:
            ref = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
            np.testing.assert_allclose(lse[:, lo:hi], ref, rtol=1e-5, atol=1e-5)
