"""Shared fixtures and helpers for the Python test suite.

- `sa`: the speedattn package. The import is NOT guarded: if the package is missing or broken,
  every library test errors (it never silently skips).
- `Spec` / `build` / `random_spec`: a compact description of one test case and the arrays for it
  (in any layout, dtype, strided or not, numpy or torch).
- `run_forward_check` / `run_backward_check`: call the library and compare with the twin
  (tests/python/twin.py) using the SPEC section 11 tolerance (twin.tolerance).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import twin  # noqa: E402

INT_MAX = twin.INT_MAX
BACKENDS = ("reference", "auto")
DTYPES = ("float16", "bfloat16", "float32")


@pytest.fixture(scope="session")
def sa():
    import speedattn  # noqa: PLC0415  (deliberately unguarded: failure = test error)

    return speedattn


# ----------------------------------------------------------------------------------------------
# Case description
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Spec:
    layout: str = "BNSD"
    B: int = 1
    N1: int = 1
    N2: int = 1
    S1: int = 4
    S2: int = 4
    D: int = 8
    dtype: str = "float32"
    seqs: tuple | None = None  # TND: ((sq, skv), ...)
    mode: int = 0
    mask: str = "none"  # none | BN | B1 | 11 | 2d | template
    mask_dtype: str = "bool"
    density: float = 0.25
    empty_rows: bool = False  # force fully masked rows in a user mask
    pre: int = INT_MAX
    nxt: int = INT_MAX
    prefix: tuple | None = None
    pse: str = "none"  # none | t0 | t1 | t0b | t1b (row broadcast) | t1c (compressed) | t2 | t3
    pse_b1: bool = False  # pse batch dim 1 (types 0/1) / slopes of shape (N1,) (types 2/3)
    q_start: int | None = None
    kv_start: int | None = None
    scale: float = 0.5
    keep_prob: float = 1.0
    inner_precise: int = 0
    strided: str = "none"  # none | rows | lastdim | outer | transposed (torch)
    torch: bool = False
    seed: int = 0

    def id(self):
        s = f"{self.layout}-m{self.mode}-{self.mask}-{self.pse}-{self.dtype}"
        if self.layout == "TND":
            s += f"-seqs{'_'.join(f'{a}x{b}' for a, b in self.seqs)}-N{self.N1}.{self.N2}"
        else:
            s += f"-B{self.B}N{self.N1}.{self.N2}S{self.S1}.{self.S2}"
        s += f"D{self.D}"
        if self.keep_prob < 1:
            s += f"-kp{self.keep_prob}"
        if self.inner_precise:
            s += f"-ip{self.inner_precise}"
        if self.strided != "none":
            s += f"-{self.strided}"
        if self.torch:
            s += "-torch"
        return s + f"-s{self.seed}"


def to_layout(X, layout):
    """Logical (B, N, S, D) -> layout array (a contiguous copy)."""
    if layout == "BNSD":
        return np.ascontiguousarray(X)
    if layout == "BSND":
        return np.ascontiguousarray(X.transpose(0, 2, 1, 3))
    B, N, S, D = X.shape
    bsh = X.transpose(0, 2, 1, 3).reshape(B, S, N * D)
    if layout == "BSH":
        return np.ascontiguousarray(bsh)
    if layout == "SBH":
        return np.ascontiguousarray(bsh.transpose(1, 0, 2))
    raise ValueError(layout)


def _strided_np(a, how, rng):
    """Return a view of a bigger array with the same values as `a`."""
    if how == "rows":  # unit last stride, padded rows, nonzero offset
        big = np.zeros(a.shape[:-1] + (a.shape[-1] + 5,), dtype=a.dtype)
        big[..., 2:2 + a.shape[-1]] = a
        return big[..., 2:2 + a.shape[-1]]
    if how == "lastdim":  # non-unit last stride
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if how == "outer":
        big = np.zeros((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
        big[1::2] = a
        return big[1::2]
    return a


def _torch_dtype(name):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
            "bool": torch.bool, "uint8": torch.uint8}[name]


def to_torch(a, how="none"):
    """numpy (any supported dtype) -> torch tensor with the same values, optionally a transposed
    (non-contiguous) view."""
    import torch

    name = str(a.dtype)
    if name in ("bool", "uint8"):
        base = np.ascontiguousarray(a)
        tdt = _torch_dtype(name)
        src = base
    else:
        name = twin.dtype_name(a)
        tdt = _torch_dtype(name)
        src = np.ascontiguousarray(a.astype(np.float32))
    if how == "transposed" and src.ndim >= 3:
        d0, d1 = (1, 2) if src.ndim == 4 else (0, 1)
        t = torch.from_numpy(np.ascontiguousarray(np.swapaxes(src, d0, d1))).to(tdt)
        return t.transpose(d0, d1)
    if how == "outer":
        t = torch.from_numpy(src).to(tdt)
        big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=tdt)
        big[1::2] = t
        return big[1::2]
    return torch.from_numpy(src).to(tdt)


@dataclasses.dataclass
class Built:
    spec: Spec
    q: object
    k: object
    v: object
    kwargs: dict  # library keyword arguments (pse, atten_mask, ...)
    twin_kwargs: dict  # the same for the twin (numpy)

    @property
    def head_num(self):
        return self.spec.N1


def build(spec: Spec) -> Built:
    rng = np.random.default_rng(spec.seed)
    dt = twin.np_dtype(spec.dtype)
    s = spec
    if s.layout == "TND":
        T1 = sum(a for a, _ in s.seqs)
        T2 = sum(b for _, b in s.seqs)
        q = rng.standard_normal((T1, s.N1, s.D))
        k = rng.standard_normal((T2, s.N2, s.D))
        v = rng.standard_normal((T2, s.N2, s.D))
        B = len(s.seqs)
        S1 = max(a for a, _ in s.seqs)
        S2 = max(b for _, b in s.seqs)
    else:
        B, S1, S2 = s.B, s.S1, s.S2
        q = to_layout(rng.standard_normal((B, s.N1, S1, s.D)), s.layout)
        k = to_layout(rng.standard_normal((B, s.N2, S2, s.D)), s.layout)
        v = to_layout(rng.standard_normal((B, s.N2, S2, s.D)), s.layout)
    q, k, v = (x.astype(dt) for x in (q, k, v))

    kw = dict(scale=float(s.scale), keep_prob=float(s.keep_prob), sparse_mode=int(s.mode),
              inner_precise=int(s.inner_precise))
    if s.pre != INT_MAX:
        kw["pre_tokens"] = int(s.pre)
    if s.nxt != INT_MAX:
        kw["next_tokens"] = int(s.nxt)
    if s.layout == "TND":
        cq = np.cumsum([a for a, _ in s.seqs]).tolist()
        ck = np.cumsum([b for _, b in s.seqs]).tolist()
        kw["actual_seq_qlen"] = [int(x) for x in cq]
        kw["actual_seq_kvlen"] = [int(x) for x in ck]
    if s.prefix is not None:
        kw["prefix"] = [int(x) for x in s.prefix]

    # atten_mask
    mask = None
    mdt = np.uint8 if s.mask_dtype == "uint8" else np.bool_
    if s.mask == "template":
        mask = twin.prefix_template(mdt) if s.mode == 6 else twin.causal_template(mdt)
    elif s.mask != "none":
        shape = {"BN": (B, s.N1, S1, S2), "B1": (B, 1, S1, S2), "11": (1, 1, S1, S2),
                 "2d": (S1, S2)}[s.mask]
        m = rng.random(shape) < s.density
        if s.empty_rows and S1 > 0:
            rows = rng.choice(S1, size=max(1, S1 // 3), replace=False)
            m[..., rows, :] = True
        mask = m.astype(mdt)
    if mask is not None:
        kw["atten_mask"] = mask

    # pse
    pse = None
    if s.pse in ("t0", "t1", "t0b", "t1b", "t1c"):
        bb = 1 if s.pse_b1 else B
        rows = {"t0": S1, "t1": S1, "t0b": 1, "t1b": 1, "t1c": 1024}[s.pse]
        if s.pse == "t1c":  # a genuine ALiBi (Toeplitz) bias's last 1024 rows plus noise-free
            slope = rng.uniform(0.01, 0.2, size=(bb, s.N1, 1, 1))
            i = np.arange(S1 - 1024, S1)[:, None]
            j = np.arange(S2)[None, :]
            pse = -slope * np.abs(j - i)[None, None]
        else:
            pse = rng.standard_normal((bb, s.N1, rows, S2))
        pse = pse.astype(dt)
        kw["pse_type"] = 0 if s.pse.startswith("t0") else 1
    elif s.pse in ("t2", "t3"):
        shape = (s.N1,) if s.pse_b1 else (B, s.N1)
        pse = rng.uniform(0.01, 0.5, size=shape).astype(np.float32)
        kw["pse_type"] = 2 if s.pse == "t2" else 3
        if s.q_start is not None:
            kw["q_start_idx"] = [int(s.q_start)]
        if s.kv_start is not None:
            kw["kv_start_idx"] = [int(s.kv_start)]
    if pse is not None:
        kw["pse"] = pse

    twin_kw = dict(kw)
    if s.strided in ("rows", "lastdim", "outer") and not s.torch:
        q, k, v = (_strided_np(x, s.strided, rng) for x in (q, k, v))
    if s.torch:
        how = s.strided if s.strided in ("transposed", "outer") else "none"
        q, k, v = (to_torch(x, how) for x in (q, k, v))
        for name in ("pse", "atten_mask"):
            if name in kw:
                kw[name] = to_torch(kw[name])
    return Built(spec, q, k, v, kw, twin_kw)


def make_dy(built: Built, seed=12345):
    rng = np.random.default_rng(seed)
    shape = tuple(built.q.shape)
    dy = rng.standard_normal(shape).astype(twin.np_dtype(built.spec.dtype))
    if built.spec.strided in ("rows", "lastdim", "outer") and not built.spec.torch:
        dy = _strided_np(dy, built.spec.strided, rng)
    if built.spec.torch:
        how = built.spec.strided if built.spec.strided in ("transposed", "outer") else "none"
        dy = to_torch(dy, how)
    return dy


# ----------------------------------------------------------------------------------------------
# Library calls and comparisons
# ----------------------------------------------------------------------------------------------
def dtype_of(x):
    return twin.dtype_name(x)


def as_int(x):
    if hasattr(x, "item"):
        return int(x.item())
    return int(x)


def lib_forward(sa, built: Built, backend, manual_seed=None):
    if manual_seed is not None:
        sa.manual_seed(manual_seed)
    return sa.speed_fusion_attention(built.q, built.k, built.v, built.head_num,
                                     built.spec.layout, backend=backend, **built.kwargs)


def check_forward_result(res, built: Built, what=""):
    """Compare a library forward result with the twin (using the returned seed/offset)."""
    s = built.spec
    assert len(res) == 7, f"{what}: expected 7 outputs, got {len(res)}"
    out, smax, ssum, sout, seed, offset, numels = res
    is_torch = s.torch
    if is_torch:
        import torch

        assert isinstance(out, torch.Tensor), f"{what}: torch in -> torch out"
    else:
        assert isinstance(out, np.ndarray), f"{what}: numpy in -> numpy out, got {type(out)}"
    assert tuple(out.shape) == tuple(built.q.shape), f"{what}: out shape"
    assert dtype_of(out) == s.dtype, f"{what}: out dtype {out.dtype} != {s.dtype}"
    assert dtype_of(smax) == "float32" and dtype_of(ssum) == "float32", f"{what}: stats dtype"
    assert tuple(sout.shape) == (0,), f"{what}: softmax_out shape {tuple(sout.shape)}"
    assert dtype_of(sout) == s.dtype, f"{what}: softmax_out dtype"
    ref_out, ref_max, ref_sum = twin.forward(
        built.q, built.k, built.v, built.head_num, s.layout, seed=as_int(seed),
        offset=as_int(offset), **built.twin_kwargs)
    exp_numels = twin.numels(built.q, built.k, built.v, built.head_num, s.layout,
                             built.twin_kwargs.get("actual_seq_qlen"),
                             built.twin_kwargs.get("actual_seq_kvlen"))
    assert as_int(numels) == exp_numels, f"{what}: numels {as_int(numels)} != {exp_numels}"
    twin.assert_stats_close(smax, ref_max, f"{what} softmax_max")
    twin.assert_stats_close(ssum, ref_sum, f"{what} softmax_sum")
    twin.assert_close(out, ref_out, s.dtype, f"{what} attention_out")
    return ref_out


def run_forward_check(sa, spec: Spec, backend):
    built = build(spec)
    res = lib_forward(sa, built, backend, manual_seed=1000 + spec.seed)
    check_forward_result(res, built, f"[{backend}] {spec.id()}")
    return built, res


def run_backward_check(sa, spec: Spec, backend):
    built = build(spec)
    what = f"[{backend}] {spec.id()}"
    res = lib_forward(sa, built, backend, manual_seed=2000 + spec.seed)
    out, smax, ssum, _sout, seed, offset, numels = res
    dy = make_dy(built)
    grads = sa.speed_fusion_attention_grad(
        built.q, built.k, built.v, dy, built.head_num, spec.layout, softmax_max=smax,
        softmax_sum=ssum, attention_in=out, seed=seed, offset=offset, numels=numels,
        backend=backend, **built.kwargs)
    assert len(grads) == 4, f"{what}: expected (dq, dk, dv, dpse)"
    dq, dk, dv, dpse = grads
    (rq, rk, rv, rp), (mq, mk, mv, mp) = twin.backward(
        built.q, built.k, built.v, dy, built.head_num, spec.layout, attention_in=out,
        seed=as_int(seed), offset=as_int(offset), magnitudes=True, **built.twin_kwargs)
    for name, got, ref, mag, src in (("dq", dq, rq, mq, built.q), ("dk", dk, rk, mk, built.k),
                                     ("dv", dv, rv, mv, built.v)):
        assert tuple(got.shape) == tuple(src.shape), f"{what}: {name} shape"
        assert dtype_of(got) == spec.dtype, f"{what}: {name} dtype {got.dtype}"
        twin.assert_close(got, ref, spec.dtype, f"{what} {name}", magnitude=mag)
    pse = built.kwargs.get("pse")
    if pse is None:
        assert tuple(dpse.shape) == (0,), f"{what}: dpse shape {tuple(dpse.shape)} without pse"
    else:
        assert tuple(dpse.shape) == tuple(pse.shape), f"{what}: dpse shape"
        assert dtype_of(dpse) == dtype_of(pse), f"{what}: dpse dtype {dpse.dtype}"
        twin.assert_close(dpse, rp, dtype_of(pse), f"{what} dpse", magnitude=mp)
    return built, res, grads


# ----------------------------------------------------------------------------------------------
# Random case generation
# ----------------------------------------------------------------------------------------------
ODD_S = (1, 2, 3, 5, 7, 8, 11, 13, 16, 17, 31)
ODD_D = (1, 3, 8, 16, 17, 32, 64, 80)
NON_TND_MODES = (0, 1, 2, 3, 4, 5, 6)
TND_MODES = (0, 1, 2, 3, 4, 6, 7, 8)
PSE_KINDS = ("none", "t0", "t1", "t0b", "t1b", "t2", "t3")
TND_PSE_KINDS = ("none", "t2", "t3")


def band_legal(pre, nxt, S1, S2):
    """SPEC section 3's legality rule for (pre, next) (already shifted for mode 4)."""
    if pre < 0 and nxt < 0:
        return False
    if pre < 0 <= nxt:
        return nxt >= -pre and -pre < S2
    if nxt < 0 <= pre:
        return -nxt <= pre and -nxt < S1
    return True


def _random_band(rng, S1, S2, bottom_right, allow_negative=True):
    for _ in range(100):
        if rng.random() < 0.25:
            pre, nxt = INT_MAX, INT_MAX
        else:
            lo = -3 if allow_negative else 0
            pre = int(rng.integers(lo, max(S1, S2) + 2))
            nxt = int(rng.integers(lo, max(S1, S2) + 2))
        p, n = (pre + S1 - S2, nxt + S2 - S1) if bottom_right else (pre, nxt)
        if pre == INT_MAX or band_legal(p, n, S1, S2):
            return pre, nxt
    return INT_MAX, INT_MAX


def random_prefix(rng, S1, S2, B):
    lo, hi = (0, S2) if S1 > S2 else (S2 - S1, S2)
    return tuple(int(rng.integers(lo, hi + 1)) for _ in range(B))


def random_seqs(rng, nseq, causal_ok, allow_empty=True, smax=9):
    seqs = []
    for _ in range(nseq):
        r = rng.random()
        if allow_empty and r < 0.12:
            seqs.append((0, 0))
        elif allow_empty and r < 0.2:
            seqs.append((0, int(rng.integers(1, smax))))
        else:
            sq = int(rng.integers(1, smax))
            skv = int(rng.integers(1, smax))
            if causal_ok and sq > skv:
                sq, skv = skv, sq
            seqs.append((sq, skv))
    if all(a == 0 for a, _ in seqs):
        seqs[-1] = (2, 3)
    return tuple(seqs)


def random_spec(rng, layout, mode, pse, dtype=None, seed=0, **over):
    """A random but valid case for (layout, sparse mode, pse kind)."""
    dtype = dtype or DTYPES[int(rng.integers(3))]
    N2 = int(rng.choice([1, 1, 2]))
    G = int(rng.choice([1, 1, 2, 3]))
    N1 = N2 * G
    D = int(rng.choice(ODD_D))
    s = Spec(layout=layout, N1=N1, N2=N2, D=D, dtype=dtype, mode=mode, pse=pse, seed=seed)
    s.scale = float(rng.choice([1.0 / math.sqrt(D), 0.5, 1.0, 0.125]))
    s.mask_dtype = "uint8" if rng.random() < 0.3 else "bool"
    s.pse_b1 = bool(rng.random() < 0.3)
    if pse in ("t2", "t3") and rng.random() < 0.5:
        s.q_start = int(rng.integers(-3, 4))
        s.kv_start = int(rng.integers(-3, 4))
    if rng.random() < 0.2:
        s.keep_prob = float(rng.choice([0.5, 0.8, 0.9]))
    if rng.random() < 0.2:
        s.inner_precise = 2
    no_mask = rng.random() < 0.12
    if layout == "TND":
        causal = mode in (3, 6, 7, 8)
        s.seqs = random_seqs(rng, int(rng.integers(1, 4)), causal)
        S1 = max(a for a, _ in s.seqs)
        S2 = max(b for _, b in s.seqs)
    else:
        s.B = int(rng.integers(1, 3))
        s.S1 = int(rng.choice(ODD_S))
        s.S2 = int(rng.choice(ODD_S))
        S1, S2 = s.S1, s.S2
    if mode in (0, 1):
        s.mask = "2d" if layout == "TND" else str(rng.choice(["BN", "B1", "11", "2d"]))
        s.density = float(rng.choice([0.1, 0.3, 0.6]))
        s.empty_rows = bool(rng.random() < 0.25)
        if mode == 0:
            s.pre, s.nxt = _random_band(rng, S1, S2, False, allow_negative=layout != "TND")
    elif mode == 5:
        s.mask = str(rng.choice(["BN", "B1"]))
        s.density = float(rng.choice([0.1, 0.3]))
        s.prefix = random_prefix(rng, S1, S2, s.B)
    elif mode == 6:
        s.mask = "template"
        if layout == "TND":
            s.prefix = tuple(int(rng.integers(max(0, b - a), b + 1)) for a, b in s.seqs)
        else:
            s.prefix = random_prefix(rng, S1, S2, s.B)
    else:  # 2, 3, 4, 7, 8
        s.mask = "template"
        if mode == 4:
            s.pre, s.nxt = _random_band(rng, S1, S2, True, allow_negative=layout != "TND")
            if layout == "TND" and s.pre == INT_MAX:
                s.pre, s.nxt = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        if mode in (7, 8):
            s.pre, s.nxt = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    if no_mask and mode not in (5, 6):
        s.mask = "none"
        s.empty_rows = False
    for key, val in over.items():
        setattr(s, key, val)
    return s
