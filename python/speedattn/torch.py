"""PyTorch integration: ``speedattn.torch.speed_fusion_attention`` as a differentiable custom op.

    import speedattn.torch as sat
    out, smax, ssum, _, seed, offset, numels = sat.speed_fusion_attention(q, k, v, N1, "BNSD", scale=D**-0.5)
    out.sum().backward()          # fills q.grad, k.grad, v.grad (and pse.grad when it requires grad)

Two ops are registered with ``torch.library.custom_op`` (CPU tensors): ``speedattn::fwd`` and
``speedattn::bwd``, each with a fake (meta) implementation, and ``fwd`` has an autograd formula
that calls ``bwd``. Dropout state is an explicit (seed, offset) input of both ops, so each op is a
pure function of its inputs and the backward regenerates exactly the forward's keep mask; the
public wrapper draws (seed, offset) from the process generator (``speedattn.manual_seed``) when
keep_prob < 1, like the numpy API. float64 tensors run the float64 reference backend (for
``torch.autograd.gradcheck``). No math here: everything is computed by the C++ library.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _api

__all__ = ["speed_fusion_attention"]

_MAX_TOKENS = 2147483647


def _stat_shape(query: Tensor, head_num: int, input_layout: str) -> Tuple[int, ...]:
    """Shape of softmax_max / softmax_sum (SPEC §8) for the fake implementation."""
    s = query.shape
    if input_layout == "TND":
        return (s[0], head_num, 8)
    batch_seq = {"BSH": (0, 1), "SBH": (1, 0), "BSND": (0, 1), "BNSD": (0, 2)}[input_layout]
    return (s[batch_seq[0]], head_num, s[batch_seq[1]], 8)


def _kwargs(pse, atten_mask, scale, keep_prob, pre_tokens, next_tokens, inner_precise, prefix, actual_seq_qlen,
            actual_seq_kvlen, sparse_mode, pse_type, q_start_idx, kv_start_idx):
    return dict(pse=pse, atten_mask=atten_mask, scale=scale, keep_prob=keep_prob, pre_tokens=pre_tokens,
                next_tokens=next_tokens, inner_precise=inner_precise, prefix=prefix,
                actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen, sparse_mode=sparse_mode,
                pse_type=pse_type, q_start_idx=q_start_idx, kv_start_idx=kv_start_idx)


def _backend(query: Tensor) -> str:
    return "reference" if query.dtype == torch.float64 else "auto"


@torch.library.custom_op("speedattn::fwd", mutates_args=(), device_types="cpu")
def _fwd(query: Tensor, key: Tensor, value: Tensor, pse: Optional[Tensor], atten_mask: Optional[Tensor],
         head_num: int, input_layout: str, scale: float, keep_prob: float, pre_tokens: int, next_tokens: int,
         inner_precise: int, prefix: Optional[List[int]], actual_seq_qlen: Optional[List[int]],
         actual_seq_kvlen: Optional[List[int]], sparse_mode: int, pse_type: int,
         q_start_idx: Optional[List[int]], kv_start_idx: Optional[List[int]], seed: int,
         offset: int) -> Tuple[Tensor, Tensor, Tensor]:
    out, smax, ssum, *_ = _api.speed_fusion_attention(
        query, key, value, head_num, input_layout,
        **_kwargs(pse, atten_mask, scale, keep_prob, pre_tokens, next_tokens, inner_precise, prefix,
                  actual_seq_qlen, actual_seq_kvlen, sparse_mode, pse_type, q_start_idx, kv_start_idx),
        backend=_backend(query), rng=(seed, offset))
    return out, smax, ssum


@_fwd.register_fake
def _fwd_fake(query, key, value, pse, atten_mask, head_num, input_layout, scale, keep_prob, pre_tokens,
              next_tokens, inner_precise, prefix, actual_seq_qlen, actual_seq_kvlen, sparse_mode, pse_type,
              q_start_idx, kv_start_idx, seed, offset):
    stat = _stat_shape(query, head_num, input_layout)
    return (query.new_empty(query.shape), query.new_empty(stat, dtype=torch.float32),
            query.new_empty(stat, dtype=torch.float32))


@torch.library.custom_op("speedattn::bwd", mutates_args=(), device_types="cpu")
def _bwd(query: Tensor, key: Tensor, value: Tensor, dy: Tensor, pse: Optional[Tensor],
         atten_mask: Optional[Tensor], softmax_max: Tensor, softmax_sum: Tensor, attention_in: Tensor,
         head_num: int, input_layout: str, scale: float, keep_prob: float, pre_tokens: int, next_tokens: int,
         inner_precise: int, prefix: Optional[List[int]], actual_seq_qlen: Optional[List[int]],
         actual_seq_kvlen: Optional[List[int]], sparse_mode: int, pse_type: int,
         q_start_idx: Optional[List[int]], kv_start_idx: Optional[List[int]], seed: int,
         offset: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    kw = _kwargs(pse, atten_mask, scale, keep_prob, pre_tokens, next_tokens, inner_precise, prefix, actual_seq_qlen,
                 actual_seq_kvlen, sparse_mode, pse_type, q_start_idx, kv_start_idx)
    numels = _api.forward_plan(query, key, value, head_num, input_layout, **kw)[0].numels
    dq, dk, dv, dpse = _api.speed_fusion_attention_grad(
        query, key, value, dy, head_num, input_layout, softmax_max=softmax_max, softmax_sum=softmax_sum,
        attention_in=attention_in, seed=seed, offset=offset, numels=numels, **kw, backend=_backend(query))
    return dq, dk, dv, dpse


@_bwd.register_fake
def _bwd_fake(query, key, value, dy, pse, atten_mask, softmax_max, softmax_sum, attention_in, head_num,
              input_layout, scale, keep_prob, pre_tokens, next_tokens, inner_precise, prefix, actual_seq_qlen,
              actual_seq_kvlen, sparse_mode, pse_type, q_start_idx, kv_start_idx, seed, offset):
    dpse = pse.new_empty(pse.shape) if pse is not None else query.new_empty((0,))
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), dpse


# Positions of the fwd op's arguments (the autograd formula returns one gradient per argument).
_FWD_ARGS = ("query", "key", "value", "pse", "atten_mask", "head_num", "input_layout", "scale", "keep_prob",
             "pre_tokens", "next_tokens", "inner_precise", "prefix", "actual_seq_qlen", "actual_seq_kvlen",
             "sparse_mode", "pse_type", "q_start_idx", "kv_start_idx", "seed", "offset")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_FWD_ARGS, inputs))
    out, smax, ssum = output
    ctx.save_for_backward(args["query"], args["key"], args["value"], args["pse"], args["atten_mask"], out, smax,
                          ssum)
    ctx.options = {k: v for k, v in args.items()
                   if k not in ("query", "key", "value", "pse", "atten_mask")}
    ctx.mark_non_differentiable(smax, ssum)


def _backward(ctx, grad_out, _grad_smax, _grad_ssum):
    query, key, value, pse, atten_mask, out, smax, ssum = ctx.saved_tensors
    o = ctx.options
    option_args = [o[name] for name in _FWD_ARGS[5:]]  # head_num .. offset
    dq, dk, dv, dpse = _bwd(query, key, value, grad_out.contiguous(), pse, atten_mask, smax, ssum, out,
                            *option_args)
    grads = {"query": dq, "key": dk, "value": dv, "pse": dpse if pse is not None else None}
    return tuple(grads.get(name) for name in _FWD_ARGS)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def speed_fusion_attention(query, key, value, head_num, input_layout, *, pse=None, padding_mask=None,
                           atten_mask=None, scale=1.0, keep_prob=1.0, pre_tokens=_MAX_TOKENS,
                           next_tokens=_MAX_TOKENS, inner_precise=0, prefix=None, actual_seq_qlen=None,
                           actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False, pse_type=1,
                           q_start_idx=None, kv_start_idx=None):
    """Differentiable speed_fusion_attention on torch CPU tensors (same signature and outputs as
    :func:`speedattn.speed_fusion_attention`): ``(attention_out, softmax_max, softmax_sum,
    softmax_out, seed, offset, numels)``. Gradients flow to query, key, value and pse."""
    if not isinstance(query, Tensor):
        raise TypeError(f"query must be a torch.Tensor, got {type(query).__name__}")
    # Full validation (and Python type checks) happen here, before anything is drawn.
    plan, _ = _api.forward_plan(query, key, value, head_num, input_layout, padding_mask=padding_mask,
                                gen_mask_parallel=gen_mask_parallel, sync=sync,
                                **_kwargs(pse, atten_mask, scale, keep_prob, pre_tokens, next_tokens, inner_precise,
                                          prefix, actual_seq_qlen, actual_seq_kvlen, sparse_mode, pse_type,
                                          q_start_idx, kv_start_idx))
    numels = plan.numels
    seed, offset = _api.reserve_rng(numels) if float(keep_prob) < 1.0 else _api.rng_state()

    def ints(x):
        return None if x is None else [int(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]

    out, smax, ssum = _fwd(query, key, value, pse, atten_mask, int(head_num), input_layout, float(scale),
                           float(keep_prob), int(pre_tokens), int(next_tokens), int(inner_precise), ints(prefix),
                           ints(actual_seq_qlen), ints(actual_seq_kvlen), int(sparse_mode), int(pse_type),
                           ints(q_start_idx), ints(kv_start_idx), int(seed), int(offset))
    as64 = lambda v: torch.tensor(int(v), dtype=torch.int64)  # noqa: E731
    return out, smax, ssum, query.new_empty((0,)), as64(seed), as64(offset), as64(numels)
