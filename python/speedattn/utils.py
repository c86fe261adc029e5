"""Helpers for moving between speedattn's conventions and flash-attn / PyTorch ones.

- :func:`softmax_lse` turns the forward's ``softmax_max`` / ``softmax_sum`` pair into the
  log-sum-exp (LSE) that flash-attn and PyTorch's SDPA return.
- :func:`cu_seqlens_to_actual_seq` / :func:`actual_seq_to_cu_seqlens` convert between
  flash-attn's ``cu_seqlens`` (cumulative offsets WITH a leading 0) and speedattn's
  ``actual_seq_qlen`` / ``actual_seq_kvlen`` (cumulative end offsets WITHOUT a leading 0).

Every function accepts numpy arrays and torch tensors (torch is never imported unless a torch
tensor is passed) and, for the sequence helpers, plain lists and tuples as well. Wrong types
raise TypeError, wrong values ValueError, each naming the argument and what it got.
"""

from __future__ import annotations

import numbers
import sys

import numpy as np

__all__ = ["softmax_lse", "cu_seqlens_to_actual_seq", "actual_seq_to_cu_seqlens"]

# softmax_sum of an "invalid-line" row (SPEC section 4): +FLT_MAX. A real row's sum is at most S2
# (<= 524288), so this value can only mean "no kept key".
_FLT_MAX = float(np.finfo(np.float32).max)


def _torch_module():
    return sys.modules.get("torch")


def _is_torch(x) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"numpy.ndarray of dtype {x.dtype} and shape {tuple(x.shape)}"
    if _is_torch(x):
        return f"torch.Tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    r = repr(x)
    return f"{type(x).__name__} {r if len(r) <= 80 else r[:77] + '...'}"


# ----------------------------------------------------------------------------------------------
# softmax statistics -> log-sum-exp


def _stats_to_float64(x, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array (float32 as returned by "
                            f"speed_fusion_attention), got {_describe(x)}")
        return x.astype(np.float64)
    if _is_torch(x):
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor (float32 as returned by "
                            f"speed_fusion_attention), got {_describe(x)}")
        return x.detach().cpu().double().numpy()
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {_describe(x)}")


def _cum_list(x, name: str, *, leading_zero: bool) -> list:
    """A 1-D integer sequence (list, tuple, numpy array, torch tensor) -> validated list[int]."""
    what = "a 1-D sequence of int (list, tuple, integer numpy array or torch tensor)"
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu" or x.ndim != 1:
            raise TypeError(f"{name} must be {what}, got {_describe(x)}")
        items = [int(v) for v in x.tolist()]
    elif _is_torch(x):
        torch = _torch_module()
        if x.dim() != 1 or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must be {what}, got {_describe(x)}")
        items = [int(v) for v in x.tolist()]
    elif isinstance(x, (list, tuple)):
        items = []
        for i, v in enumerate(x):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}[{i}] must be an int, got {_describe(v)}")
            items.append(int(v))
    else:
        raise TypeError(f"{name} must be {what}, got {_describe(x)}")

    if leading_zero:
        if len(items) < 2:
            raise ValueError(f"{name} must hold at least 2 values (a leading 0 and one end offset per "
                             f"sequence), got {items}")
        if items[0] != 0:
            raise ValueError(f"{name} must start with 0 (flash-attn cu_seqlens convention), got {items}")
    elif len(items) < 1:
        raise ValueError(f"{name} must hold at least one value (the end offset of each sequence, "
                         f"without a leading 0), got {items}")
    prev = 0
    for i, v in enumerate(items):
        if v < 0:
            raise ValueError(f"{name} must hold non-negative cumulative offsets; value {v} at index {i} "
                             f"is negative (got {items})")
        if v < prev:
            raise ValueError(f"{name} must be non-decreasing (cumulative offsets); value {v} at index {i} "
                             f"is below the previous {prev} (got {items})")
        prev = v
    return items


def _like(values: list, template):
    """values shaped as the input kind: list for list/tuple, array/tensor with its dtype otherwise."""
    if isinstance(template, np.ndarray):
        return np.asarray(values, dtype=template.dtype)
    if _is_torch(template):
        return _torch_module().tensor(values, dtype=template.dtype, device=template.device)
    return list(values)


def softmax_lse(softmax_max, softmax_sum, *, actual_seq_qlen=None):
    """Log-sum-exp of each attention row: ``lse = softmax_max + ln(softmax_sum)``.

    Parameters
    ----------
    softmax_max, softmax_sum:
        The forward's statistics (float32; numpy or torch), shape ``(B, N1, S1, 8)`` for the
        BSH / SBH / BSND / BNSD layouts or ``(T1, N1, 8)`` for TND. The 8 trailing values are
        identical; the first is used.
    actual_seq_qlen:
        TND only, optional. When given (the same cumulative ends, without a leading 0, that were
        passed to the forward), the result is reordered to flash-attn's varlen layout
        ``(N1, T1)``: ``lse[n, t]`` belongs to token ``t`` and head ``n``. Without it a TND input
        gives ``(T1, N1)`` in the statistics' own (per-sequence head-major) data order.

    Returns
    -------
    float32 array of the input kind (numpy in, numpy out; torch in, torch out), shape
    ``softmax_max.shape[:-1]`` (``(B, N1, S1)``, like flash-attn's ``softmax_lse`` and the
    ``logsumexp`` of PyTorch's flash SDPA), or ``(N1, T1)`` with ``actual_seq_qlen``.
    Computed in float64, rounded once to float32.

    Special rows (SPEC section 4):

    - invalid-line rows (``softmax_sum == +FLT_MAX``, i.e. ``inner_precise=2`` or the automatic
      invalid-line case): ``-inf`` — the log-sum-exp of an empty set of keys, the value
      flash-attn / SDPA use for a row with nothing to attend to;
    - fully masked rows in the default "uniform" handling (``softmax_max == -FLT_MAX``,
      ``softmax_sum == S2``): ``-FLT_MAX + ln(S2)``, which rounds to ``-FLT_MAX`` (finite), the
      exact LSE of the ``-FLT_MAX`` logits the operator used;
    - TND token rows after the last sequence (statistics zero-filled): ``-inf``.
    """
    torch_out = _is_torch(softmax_max)
    mx = _stats_to_float64(softmax_max, "softmax_max")
    sm = _stats_to_float64(softmax_sum, "softmax_sum")
    if mx.shape != sm.shape:
        raise ValueError(f"softmax_max and softmax_sum must have the same shape, got {mx.shape} and {sm.shape}")
    if mx.ndim not in (3, 4) or mx.shape[-1] != 8:
        raise ValueError(f"softmax_max must have shape (B, N1, S1, 8) or (T1, N1, 8) (TND), got {mx.shape}")
    if np.any(sm[..., 0] < 0) or np.any(np.isnan(sm[..., 0])):
        raise ValueError("softmax_sum must be non-negative (a sum of exponentials); got negative or NaN values")

    m = mx[..., 0]
    s = sm[..., 0]
    invalid = s >= _FLT_MAX
    with np.errstate(divide="ignore"):
        lse = m + np.log(np.where(invalid, 1.0, s))
    lse[invalid] = -np.inf
    lse = lse.astype(np.float32)

    if actual_seq_qlen is not None:
        if mx.ndim != 3:
            raise ValueError(f"actual_seq_qlen is only meaningful for TND statistics of shape (T1, N1, 8); "
                             f"got softmax_max of shape {mx.shape}")
        ends = _cum_list(actual_seq_qlen, "actual_seq_qlen", leading_zero=False)
        T1, N1 = lse.shape
        if ends[-1] > T1:
            raise ValueError(f"actual_seq_qlen: last value {ends[-1]} exceeds the T1={T1} rows of softmax_max")
        flat = lse.reshape(-1)  # data order: per sequence b, a block (N1, sq_b)
        out = np.full((N1, T1), -np.inf, dtype=np.float32)
        start = 0
        for end in ends:
            sq = end - start
            if sq:
                out[:, start:end] = flat[start * N1:end * N1].reshape(N1, sq)
            start = end
        lse = out

    if torch_out:
        torch = _torch_module()
        return torch.from_numpy(np.ascontiguousarray(lse)).to(softmax_max.device)
    return lse


# ----------------------------------------------------------------------------------------------
# cu_seqlens <-> actual_seq


def cu_seqlens_to_actual_seq(cu_seqlens):
    """flash-attn ``cu_seqlens`` (leading 0) -> speedattn ``actual_seq_qlen`` / ``actual_seq_kvlen``.

    ``[0, 2, 4, 6]`` -> ``[2, 4, 6]``. The input must be 1-D, start with 0 and be non-decreasing.
    Returns the same kind as the input (list for list/tuple; numpy array or torch tensor of the
    input's dtype otherwise).
    """
    items = _cum_list(cu_seqlens, "cu_seqlens", leading_zero=True)
    return _like(items[1:], cu_seqlens)


def actual_seq_to_cu_seqlens(actual_seq):
    """speedattn ``actual_seq_qlen`` / ``actual_seq_kvlen`` (no leading 0) -> flash-attn ``cu_seqlens``.

    ``[2, 4, 6]`` -> ``[0, 2, 4, 6]``. The input must be 1-D, non-empty, non-negative and
    non-decreasing. Returns the same kind as the input (list for list/tuple; numpy array or torch
    tensor of the input's dtype otherwise — flash-attn wants ``torch.int32``: pass an int32
    tensor or call ``.int()`` on the result).
    """
    items = _cum_list(actual_seq, "actual_seq", leading_zero=False)
    return _like([0] + items, actual_seq)
