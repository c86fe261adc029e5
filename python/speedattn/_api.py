"""Python front end: argument checks, zero-copy array conversion, output allocation.

numpy arrays (bfloat16 = ``ml_dtypes.bfloat16``) and torch CPU tensors are passed to the C++
core by data pointer and element strides, without copying. A copy is made only when the last
dimension is not unit-stride (SPEC section 2) or when numpy byte strides are not a multiple of
the item size. Outputs are the same kind as ``query`` (numpy in, numpy out; torch in, torch out).
torch is imported only when a torch tensor is actually passed.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
import weakref

import ml_dtypes
import numpy as np

from . import _core

__all__ = [
    "speed_fusion_attention",
    "speed_fusion_attention_grad",
    "manual_seed",
    "rng_state",
    "set_num_threads",
    "get_num_threads",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_TOKENS = 2147483647

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")  # float64: reference backend only
_MASK_DTYPES = ("bool", "uint8")

_NP_TO_NAME = {
    np.dtype(np.float16): "float16",
    np.dtype(ml_dtypes.bfloat16): "bfloat16",
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
    np.dtype(np.bool_): "bool",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int64): "int64",
}
_NAME_TO_NP = {name: dt for dt, name in _NP_TO_NAME.items()}

_torch_maps = None  # (torch dtype -> name, name -> torch dtype), built on first torch use


def _torch():
    import torch  # noqa: PLC0415 - optional dependency, imported on demand

    return torch


def _torch_dtype_maps():
    global _torch_maps
    if _torch_maps is None:
        torch = _torch()
        to_name = {
            torch.float16: "float16",
            torch.bfloat16: "bfloat16",
            torch.float32: "float32",
            torch.float64: "float64",
            torch.bool: "bool",
            torch.uint8: "uint8",
            torch.int64: "int64",
        }
        _torch_maps = (to_name, {n: t for t, n in to_name.items()})
    return _torch_maps


def _is_torch_tensor(x) -> bool:
    # No torch tensor can exist unless torch was imported by someone: never import it here.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"numpy.ndarray of dtype {x.dtype} and shape {tuple(x.shape)}"
    if _is_torch_tensor(x):
        return f"torch.Tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    r = repr(x)
    if len(r) > 80:
        r = r[:77] + "..."
    return f"{type(x).__name__} {r}"


# ----------------------------------------------------------------------------------------------
# scalar checks


def _check_int(name: str, x) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(x)}")
    v = int(x)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {v}")
    return v


def _check_real(name: str, x) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a float (or int), got {_describe(x)}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def _check_str(name: str, x) -> str:
    if not isinstance(x, str):
        raise TypeError(f"{name} must be a str, got {_describe(x)}")
    return str(x)


def _check_int_seq(name: str, x):
    """None, or a list/tuple/1-D numpy array/1-D torch tensor of ints -> list[int]."""
    if x is None:
        return None
    what = "a sequence of int (list, tuple, 1-D integer numpy array or torch tensor) or None"
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu" or x.ndim != 1:
            raise TypeError(f"{name} must be {what}, got {_describe(x)}")
        items = x.tolist()
    elif _is_torch_tensor(x):
        torch = _torch()
        if x.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) or x.dim() != 1:
            raise TypeError(f"{name} must be {what}, got {_describe(x)}")
        items = x.tolist()
    elif isinstance(x, (list, tuple)):
        items = list(x)
    else:
        raise TypeError(f"{name} must be {what}, got {_describe(x)}")
    out = []
    for i, v in enumerate(items):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}[{i}] must be an int, got {_describe(v)} ({name} must be {what})")
        v = int(v)
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"{name}[{i}] must fit in int64, got {v}")
        out.append(v)
    return out


def _check_scalar_int(name: str, x) -> int:
    """int-like, or a one-element integer numpy array / torch tensor (seed, offset, numels)."""
    if isinstance(x, np.ndarray) and x.size == 1 and x.dtype.kind in "iu":
        return int(x.reshape(()))
    if _is_torch_tensor(x) and x.numel() == 1 and not x.dtype.is_floating_point and not x.dtype.is_complex \
            and x.dtype != _torch().bool:
        return int(x.item())
    return _check_int(name, x)


# ----------------------------------------------------------------------------------------------
# tensor conversion


class _Arg:
    """A tensor prepared for the core: keeps the (possibly copied) array alive."""

    __slots__ = ("obj", "spec")

    def __init__(self, obj, spec):
        self.obj = obj
        self.spec = spec


def _numpy_arg(x: np.ndarray, name: str, allowed) -> _Arg:
    dt = _NP_TO_NAME.get(x.dtype)
    if dt is None or dt not in allowed:
        raise TypeError(f"{name} has unsupported dtype {x.dtype}; allowed: {', '.join(allowed)}")
    if x.ndim > 4:
        raise ValueError(f"{name} must have at most 4 dimensions, got shape {tuple(x.shape)}")
    item = x.itemsize
    if (not x.flags.aligned or any(s % item for s in x.strides)
            or (x.ndim and x.shape[-1] > 1 and x.strides[-1] != item)):
        x = np.require(x, requirements=("C", "A"))  # contiguous and aligned (a copy)
    shape = list(x.shape)
    strides = [s // item for s in x.strides]
    if shape and shape[-1] <= 1:
        strides[-1] = 1
    ptr = x.__array_interface__["data"][0]
    return _Arg(x, (ptr, dt, shape, strides))


def _torch_arg(x, name: str, allowed) -> _Arg:
    torch = _torch()
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if x.device.type != "cpu":
        raise TypeError(f"{name} must be a CPU tensor, got a tensor on device {x.device}")
    to_name, _ = _torch_dtype_maps()
    dt = to_name.get(x.dtype)
    if dt is None or dt not in allowed:
        raise TypeError(f"{name} has unsupported dtype {x.dtype}; allowed: {', '.join(allowed)}")
    if x.dim() > 4:
        raise ValueError(f"{name} must have at most 4 dimensions, got shape {tuple(x.shape)}")
    if x.dim() and x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    shape = list(x.shape)
    strides = list(x.stride())
    if shape and shape[-1] <= 1:
        strides[-1] = 1
    return _Arg(x, (x.data_ptr(), dt, shape, strides))


def _tensor_arg(x, name: str, allowed) -> _Arg:
    if isinstance(x, np.ndarray):
        return _numpy_arg(x, name, allowed)
    if _is_torch_tensor(x):
        return _torch_arg(x, name, allowed)
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {_describe(x)}")


def _optional_tensor_arg(x, name: str, allowed):
    if x is None:
        return None
    return _tensor_arg(x, name, allowed)


_CACHED_OUTPUT_BYTES = 1 << 20  # outputs this large come from the core's output cache


class _Alloc:
    """Allocates outputs of the query's kind. Outputs of >= 1 MiB reuse the memory of outputs
    freed earlier (``_core.output_block``): a fresh multi-MiB tensor would be page-faulted in by
    the kernel while it writes it (~4100 faults, 3-5 ms for 16 MiB)."""

    def __init__(self, like):
        self.torch = _is_torch_tensor(like)

    def empty(self, spec):
        dtype_name, shape = spec
        shape = tuple(shape)
        np_dtype = _NAME_TO_NP[dtype_name]
        nbytes = math.prod(shape) * np_dtype.itemsize
        if self.torch:
            torch = _torch()
            tdt = _torch_dtype_maps()[1][dtype_name]
            if nbytes >= _CACHED_OUTPUT_BYTES:
                out = torch.from_numpy(_core.output_block(nbytes)).view(tdt).view(shape)
            else:
                out = torch.empty(shape, dtype=tdt)
            return out, out.data_ptr()
        if nbytes >= _CACHED_OUTPUT_BYTES:
            out = _core.output_block(nbytes).view(np_dtype).reshape(shape)
        else:
            out = np.empty(shape, dtype=np_dtype)
        return out, out.__array_interface__["data"][0]

    def int64(self, v: int):
        if self.torch:
            return _torch().tensor(int(v), dtype=_torch().int64)
        return np.asarray(int(v), dtype=np.int64)


class _CheckedTemplates:
    """torch template masks (sparse modes 2-4, 6-8) whose 4-6 MiB of content the core has
    checked: a later call with the same tensor, unchanged, tells the core (template_verified)
    and skips re-reading it (~0.3 ms per call). "Unchanged" is torch's version counter, which
    in-place torch ops bump; writes through aliases that bypass it (a numpy view, ``.data``)
    are not seen, and such a template is not checked again. numpy masks are always checked."""

    _MODES = frozenset((2, 3, 4, 6, 7, 8))
    _SIZE = 8  # tensors remembered (weakly), oldest dropped first

    def __init__(self):
        self._entries = {}  # id(mask) -> (weakref to mask, _state(mask))
        self._lock = threading.Lock()  # calls run concurrently (the kernels release the GIL)

    @staticmethod
    def _state(m):
        return m._version, m.data_ptr(), tuple(m.shape), m.stride()

    def _applies(self, mask, mode) -> bool:
        return mode in self._MODES and _is_torch_tensor(mask)

    def holds(self, mask, mode) -> bool:
        if not self._applies(mask, mode):
            return False
        with self._lock:
            e = self._entries.get(id(mask))
        return e is not None and e[0]() is mask and e[1] == self._state(mask)

    def add(self, mask, mode) -> None:
        """Call after the core accepted ``mask`` for ``mode`` (its content was checked)."""
        if not self._applies(mask, mode):
            return
        entry = (weakref.ref(mask), self._state(mask))
        with self._lock:
            self._entries.pop(id(mask), None)  # re-inserted last: the dict's order is the age
            while len(self._entries) >= self._SIZE:
                self._entries.pop(next(iter(self._entries)))
            self._entries[id(mask)] = entry


_checked_templates = _CheckedTemplates()


def _check_backend(backend) -> str:
    backend = _check_str("backend", backend)
    if backend not in ("auto", "reference"):
        raise ValueError(f"backend must be 'auto' or 'reference', got {backend!r}")
    return backend


def _options(head_num, input_layout, pse, padding_mask, atten_mask, scale, keep_prob, pre_tokens, next_tokens,
             inner_precise, prefix, actual_seq_qlen, actual_seq_kvlen, sparse_mode, gen_mask_parallel, sync,
             pse_type, q_start_idx, kv_start_idx, backend):
    """Type-checks every option; returns (options dict for the core, list of _Arg to keep alive)."""
    opts = {
        "input_layout": _check_str("input_layout", input_layout),
        "head_num": _check_int("head_num", head_num),
        "scale": _check_real("scale", scale),
        "keep_prob": _check_real("keep_prob", keep_prob),
        "pre_tokens": _check_int("pre_tokens", pre_tokens),
        "next_tokens": _check_int("next_tokens", next_tokens),
        "inner_precise": _check_int("inner_precise", inner_precise),
        "sparse_mode": _check_int("sparse_mode", sparse_mode),
        "pse_type": _check_int("pse_type", pse_type),
        "prefix": _check_int_seq("prefix", prefix),
        "actual_seq_qlen": _check_int_seq("actual_seq_qlen", actual_seq_qlen),
        "actual_seq_kvlen": _check_int_seq("actual_seq_kvlen", actual_seq_kvlen),
        "q_start_idx": _check_int_seq("q_start_idx", q_start_idx),
        "kv_start_idx": _check_int_seq("kv_start_idx", kv_start_idx),
        # gen_mask_parallel and sync are Ascend debug switches: accepted and ignored (any value)
        "backend": _check_backend(backend),
    }
    keep = []
    pse_arg = _optional_tensor_arg(pse, "pse", _FLOAT_DTYPES)
    if padding_mask is not None:
        if not (isinstance(padding_mask, np.ndarray) or _is_torch_tensor(padding_mask)):
            raise TypeError(f"padding_mask must be None (reserved), got {_describe(padding_mask)}")
        raise ValueError(f"padding_mask is reserved and must be None, got {_describe(padding_mask)}")
    mask_arg = _optional_tensor_arg(atten_mask, "atten_mask", _MASK_DTYPES)
    for key, arg in (("pse", pse_arg), ("atten_mask", mask_arg)):
        opts[key] = None if arg is None else arg.spec
        if arg is not None:
            keep.append(arg)
    opts["padding_mask"] = None
    opts["template_verified"] = _checked_templates.holds(atten_mask, opts["sparse_mode"])
    return opts, keep


# ----------------------------------------------------------------------------------------------
# public API


def forward_plan(query, key, value, head_num, input_layout, *, pse=None, padding_mask=None, atten_mask=None,
                 scale=1.0, keep_prob=1.0, pre_tokens=_MAX_TOKENS, next_tokens=_MAX_TOKENS, inner_precise=0,
                 prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True,
                 sync=False, pse_type=1, q_start_idx=None, kv_start_idx=None, backend="auto", rng=None):
    """Validates a forward call; returns ``(plan, keep_alive)``. ``plan`` has the output specs,
    ``numels`` and ``kernel_name``; the inputs in ``keep_alive`` must outlive ``plan.run``."""
    opts, keep = _options(head_num, input_layout, pse, padding_mask, atten_mask, scale, keep_prob, pre_tokens,
                          next_tokens, inner_precise, prefix, actual_seq_qlen, actual_seq_kvlen, sparse_mode,
                          gen_mask_parallel, sync, pse_type, q_start_idx, kv_start_idx, backend)
    if rng is not None:
        if not isinstance(rng, (tuple, list)) or len(rng) != 2:
            raise TypeError(f"rng must be None or a (seed, offset) pair of int, got {_describe(rng)}")
        opts["rng"] = (_check_scalar_int("rng[0] (seed)", rng[0]), _check_scalar_int("rng[1] (offset)", rng[1]))
    q = _tensor_arg(query, "query", _FLOAT_DTYPES)
    k = _tensor_arg(key, "key", _FLOAT_DTYPES)
    v = _tensor_arg(value, "value", _FLOAT_DTYPES)
    plan = _core.forward_plan(q.spec, k.spec, v.spec, opts)
    _checked_templates.add(atten_mask, opts["sparse_mode"])
    return plan, keep + [q, k, v]


def speed_fusion_attention(query, key, value, head_num, input_layout, *, pse=None, padding_mask=None,
                           atten_mask=None, scale=1.0, keep_prob=1.0, pre_tokens=_MAX_TOKENS,
                           next_tokens=_MAX_TOKENS, inner_precise=0, prefix=None, actual_seq_qlen=None,
                           actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False, pse_type=1,
                           q_start_idx=None, kv_start_idx=None, backend="auto", rng=None):
    """Fused attention forward (MindSpore speed_fusion_attention semantics, see SPEC).

    Returns ``(attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, numels)``.
    ``backend``: "auto" (fastest kernel) or "reference". ``rng``: an optional ``(seed, offset)``
    used for dropout instead of drawing from the process generator (which is then not advanced).
    """
    plan, keep = forward_plan(query, key, value, head_num, input_layout, pse=pse, padding_mask=padding_mask,
                              atten_mask=atten_mask, scale=scale, keep_prob=keep_prob, pre_tokens=pre_tokens,
                              next_tokens=next_tokens, inner_precise=inner_precise, prefix=prefix,
                              actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen,
                              sparse_mode=sparse_mode, gen_mask_parallel=gen_mask_parallel, sync=sync,
                              pse_type=pse_type, q_start_idx=q_start_idx, kv_start_idx=kv_start_idx,
                              backend=backend, rng=rng)
    alloc = _Alloc(query)
    out, out_ptr = alloc.empty(plan.attention_out_spec)
    smax, smax_ptr = alloc.empty(plan.softmax_stat_spec)
    ssum, ssum_ptr = alloc.empty(plan.softmax_stat_spec)
    seed, offset = plan.run(out_ptr, smax_ptr, ssum_ptr)
    del keep  # inputs alive until here
    softmax_out, _ = alloc.empty((plan.attention_out_spec[0], (0,)))
    return out, smax, ssum, softmax_out, alloc.int64(seed), alloc.int64(offset), alloc.int64(plan.numels)


def speed_fusion_attention_grad(query, key, value, dy, head_num, input_layout, *, pse=None, padding_mask=None,
                                atten_mask=None, softmax_max, softmax_sum, softmax_in=None, attention_in,
                                scale=1.0, keep_prob=1.0, pre_tokens=_MAX_TOKENS, next_tokens=_MAX_TOKENS,
                                inner_precise=0, seed, offset, numels, prefix=None, actual_seq_qlen=None,
                                actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
                                pse_type=1, q_start_idx=None, kv_start_idx=None, backend="auto"):
    """Backward of :func:`speed_fusion_attention`. Returns ``(dq, dk, dv, dpse)``."""
    opts, keep = _options(head_num, input_layout, pse, padding_mask, atten_mask, scale, keep_prob, pre_tokens,
                          next_tokens, inner_precise, prefix, actual_seq_qlen, actual_seq_kvlen, sparse_mode,
                          gen_mask_parallel, sync, pse_type, q_start_idx, kv_start_idx, backend)
    saved_ints = {
        "seed": _check_scalar_int("seed", seed),
        "offset": _check_scalar_int("offset", offset),
        "numels": _check_scalar_int("numels", numels),
    }
    q = _tensor_arg(query, "query", _FLOAT_DTYPES)
    k = _tensor_arg(key, "key", _FLOAT_DTYPES)
    v = _tensor_arg(value, "value", _FLOAT_DTYPES)
    g = _tensor_arg(dy, "dy", _FLOAT_DTYPES)
    smax = _tensor_arg(softmax_max, "softmax_max", _FLOAT_DTYPES)  # the core checks float32
    ssum = _tensor_arg(softmax_sum, "softmax_sum", _FLOAT_DTYPES)
    out_in = _tensor_arg(attention_in, "attention_in", _FLOAT_DTYPES)
    if softmax_in is not None and not (isinstance(softmax_in, np.ndarray) or _is_torch_tensor(softmax_in)):
        raise TypeError(f"softmax_in must be a numpy.ndarray, a torch.Tensor or None, got {_describe(softmax_in)}")
    saved = {"softmax_max": smax.spec, "softmax_sum": ssum.spec, "attention_in": out_in.spec, **saved_ints}
    plan = _core.backward_plan(q.spec, k.spec, v.spec, g.spec, opts, saved)
    _checked_templates.add(atten_mask, opts["sparse_mode"])

    alloc = _Alloc(query)
    dq, dq_ptr = alloc.empty(plan.dq_spec)
    dk, dk_ptr = alloc.empty(plan.dk_spec)
    dv, dv_ptr = alloc.empty(plan.dv_spec)
    dpse, dpse_ptr = alloc.empty(plan.dpse_spec)
    plan.run(dq_ptr, dk_ptr, dv_ptr, dpse_ptr)
    del keep, q, k, v, g, smax, ssum, out_in  # alive until here
    return dq, dk, dv, dpse


def manual_seed(seed) -> None:
    """Seed the process-wide dropout generator (seed s, offset 0)."""
    _core.manual_seed(_check_int("seed", seed))


def rng_state():
    """The generator's current (seed, offset)."""
    return tuple(_core.rng_state())


def reserve_rng(numels):
    """Takes the generator's current (seed, offset) and advances it by ceil(numels / 4)."""
    return tuple(_core.reserve_rng(_check_int("numels", numels)))


def set_num_threads(n) -> None:
    """Worker threads used by the CPU kernels (n >= 1)."""
    n = _check_int("n", n)
    if not 1 <= n <= 2**31 - 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())
