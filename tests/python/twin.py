"""NumPy float64 oracle ("twin") of speed_fusion_attention, written from SPEC.md only.

This module never imports speedattn and never looks at the C++ sources: it is an independent
second reading of the contract (docs: shared/SPEC.md; section numbers below refer to it), so that
the library's C++ reference and its fast kernels can both be checked against something that was
not derived from them.

Public entry points
-------------------
forward(q, k, v, head_num, layout, **options)
    -> (out, softmax_max, softmax_sum), all float64. `out` has the query's layout shape and is NOT
    rounded to the input dtype (use round_to / tolerance to compare). softmax_max / softmax_sum are
    (B, N1, S1, 8) for BSH/SBH/BSND/BNSD, or (T1, N1, 8) with Ascend's per-sequence head-major data
    order for TND (SPEC section 6).
backward(q, k, v, dy, head_num, layout, *, attention_in=None, magnitudes=False, **options)
    -> (dq, dk, dv, dpse), float64 (dpse has pse's shape, (0,) without pse). Dsum uses
    `attention_in` (the forward's stored, rounded output) when given, else the twin's own exact out.
    magnitudes=True returns ((dq, dk, dv, dpse), (their term magnitudes)) for tolerance().
philox4x32_10(ctr, key) / dropout_keep(seed, offset, e, keep_prob): SPEC section 7.
round_to(x, dtype), tolerance(ref, dtype, magnitude), assert_close(...): SPEC section 11.

Options are those of the library (pse, atten_mask, scale, keep_prob, pre_tokens, next_tokens,
inner_precise, prefix, actual_seq_qlen, actual_seq_kvlen, sparse_mode, pse_type, q_start_idx,
kv_start_idx) plus `seed` and `offset` for dropout (the library takes them from its generator and
returns them). padding_mask / gen_mask_parallel / sync / backend are accepted and ignored.

Project decisions beyond SPEC that the twin follows (from the brief):
- Mode 5: keep = (not M[b,n,i,j]) and (j <= i + S2 - S1 or j < prefix[b]).
- Mode 6: the template is only validated; keep = (j <= i + S2 - S1 or j < prefix[b]).
- Modes 2, 3, 4, 7, 8: the (2048, 2048) template is only validated; keep comes from the formula.
- No atten_mask: full attention in every mode; pre/next ignored.
- Automatic invalid-line handling (section 4) applies when ANY sequence meets the condition
  (TND: per-sequence lengths). For TND modes 7/8 (not listed in SPEC) the twin extends the rule
  naturally (bottom-right band -> the mode-4 rule, bottom-right causal -> the mode-3 rule); tests
  only use 7/8 configurations where this choice cannot matter.
- Backward of a fully masked "uniform" row (inner_precise 0): every logit is the constant -FLT_MAX,
  so the TRUE gradient w.r.t. q, k and pse is zero there (dS = 0 at masked positions, as SPEC
  section 9 states for dpse); dV still receives P'^T dy since out = mean(V) depends on V.
- Slope gradient (pse_type 2/3): -sum_j dS_ij (dist_ij - c_i) per row, c_i = sum_j P_ij dist_ij /
  sum_j P_ij over kept keys: the true gradient -sum_j dS_ij dist_ij (sum_j dS_ij = 0 exactly), with
  the error of the stored, rounded out in Dsum (an offset of dS proportional to P) cancelled instead
  of amplified ~S2 times (finding F13 in docs/reliability.md; the library does the same).
"""

from __future__ import annotations

import math

import numpy as np

try:  # bfloat16 rounding; ml_dtypes ships with the project's environment
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    ml_dtypes = None
    BF16 = None

FLT_MAX = float(np.finfo(np.float32).max)  # 3.4028234663852886e38
INT_MAX = 2147483647
LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")

# ----------------------------------------------------------------------------------------------
# Philox4x32-10 (Random123), SPEC section 7
# ----------------------------------------------------------------------------------------------
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SH32 = np.uint64(32)


def philox4x32_10(ctr, key):
    """Philox4x32 with 10 rounds. ctr: (..., 4) uint32-like, key: (..., 2) -> (..., 4) uint32.

    Round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2,
           c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); key bumped by (W0, W1) between rounds.
    """
    ctr = np.asarray(ctr, dtype=np.uint64) & _MASK32
    key = np.asarray(key, dtype=np.uint64) & _MASK32
    c0, c1, c2, c3 = (ctr[..., i].copy() for i in range(4))
    k0 = np.broadcast_to(key[..., 0], c0.shape).copy()
    k1 = np.broadcast_to(key[..., 1], c0.shape).copy()
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(_W0)) & _MASK32
            k1 = (k1 + np.uint64(_W1)) & _MASK32
        p0 = _M0 * c0  # < 2^64: exact in uint64
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _SH32, p0 & _MASK32
        hi1, lo1 = p1 >> _SH32, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def dropout_words(seed, offset, e):
    """The uniform uint32 word for element indices e (int array), SPEC section 7."""
    e = np.asarray(e, dtype=np.uint64)
    seed_u = int(seed) & 0xFFFFFFFFFFFFFFFF
    c = (np.uint64(int(offset) & 0xFFFFFFFFFFFFFFFF) + e // np.uint64(4))  # wraps mod 2^64
    ctr = np.stack([c & _MASK32, c >> _SH32, np.zeros_like(c), np.zeros_like(c)], axis=-1)
    key = np.array([seed_u & 0xFFFFFFFF, seed_u >> 32], dtype=np.uint64)
    words = philox4x32_10(ctr, key)
    lane = (e % np.uint64(4)).astype(np.intp)
    return np.take_along_axis(words, lane[..., None], axis=-1)[..., 0]


def keep_threshold(keep_prob):
    return int(math.floor(float(keep_prob) * 4294967296.0))


def dropout_keep(seed, offset, e, keep_prob):
    """Boolean keep decisions for element indices e."""
    if keep_prob >= 1.0:
        return np.ones(np.shape(e), dtype=bool)
    return dropout_words(seed, offset, e).astype(np.uint64) < np.uint64(keep_threshold(keep_prob))


# ----------------------------------------------------------------------------------------------
# dtype helpers and the SPEC section 11 tolerance
# ----------------------------------------------------------------------------------------------
def to64(x):
    """numpy (incl. ml_dtypes bfloat16) or torch tensor -> float64 numpy array (None passes)."""
    if x is None:
        return None
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch, without importing it
        import torch

        t = x.detach().cpu()
        if t.dtype in (torch.bool, torch.uint8):
            return t.numpy().copy()
        return t.to(torch.float64).numpy().copy()
    a = np.asarray(x)
    if a.dtype == np.bool_ or a.dtype == np.uint8:
        return a.copy()
    return a.astype(np.float64)


def dtype_name(x):
    """'float16' | 'bfloat16' | 'float32' for numpy, ml_dtypes or torch arrays (or a dtype)."""
    d = getattr(x, "dtype", x)
    s = str(d)
    for name in ("bfloat16", "float16", "float32", "float64"):
        if s.endswith(name):
            return name
    raise ValueError(f"unsupported dtype {d}")


def round_to(x, dtype):
    """Round float64 x to `dtype` ('float16', 'bfloat16', 'float32' or a dtype) and back."""
    name = dtype_name(dtype) if not isinstance(dtype, str) else dtype
    x = np.asarray(x, dtype=np.float64)
    if name == "float16":
        return x.astype(np.float16).astype(np.float64)
    if name == "bfloat16":
        return x.astype(BF16).astype(np.float64)
    if name == "float32":
        return x.astype(np.float32).astype(np.float64)
    return x


def np_dtype(name):
    return {"float16": np.dtype(np.float16), "bfloat16": BF16, "float32": np.dtype(np.float32)}[name]


# Tolerance (SPEC section 11): the library must match the float64 reference to within twice the
# error of the reference rounded to the output dtype. Per tensor:
#     tol = 2 * max|round_dtype(ref) - ref|            (the SPEC's rounding term)
#           + FLOOR_REL * max|ref|                      (float32 arithmetic on the result's scale)
#           + FLOOR_MAG * max(magnitude)                (float32 cancellation, gradients only)
#           + FLOOR_ABS
# The floor models the float32 arithmetic SPEC section 1 prescribes ("float32 or wider"), which
# no float32 implementation can beat; it is the same for every dtype because the internal
# arithmetic is float32 in every case. For float16/bfloat16 outputs the rounding term dominates;
# for float32 outputs the floor does (the rounding term alone is ~1 ulp).
# - FLOOR_REL = 2^-15 (256 float32 ulps) of the tensor's largest magnitude.
# - FLOOR_MAG = 2^-23 (ONE float32 ulp) of the largest "term magnitude" (the same sums evaluated
#   on absolute values, twin.backward(magnitudes=True)). A float32 sum's error scales with
#   sum|terms|, not with a cancelled result: dS = P * (dP - Dsum) is exactly 0 when a row keeps a
#   single key, yet every float32 evaluation leaves ~eps32 * |dP| there, which dQ = scale*dS K
#   then carries. Without this term such cancelled gradients would need better than float32.
# - FLOOR_ABS = 1e-6 for tensors that are (nearly) all zero.
# Why "twice": if the library's float32 result is within delta of ref and then rounded,
# |got - ref| <= |round(ref) - ref| + 2*delta elementwise.
FLOOR_REL = 2.0**-15
FLOOR_MAG = 2.0**-23
FLOOR_ABS = 1e-6


def tolerance(ref, dtype, magnitude=None):
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    amax = float(np.max(np.abs(ref)))
    mag = float(np.max(np.abs(magnitude))) if magnitude is not None and np.size(magnitude) else 0
    return (2.0 * float(np.max(np.abs(round_to(ref, dtype) - ref))) + FLOOR_REL * amax
            + FLOOR_MAG * mag + FLOOR_ABS)


def assert_close(got, ref, dtype, what="", magnitude=None):
    got = to64(got)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != expected {ref.shape}"
    if ref.size == 0:
        return
    assert np.all(np.isfinite(got)), f"{what}: non-finite values in result"
    tol = tolerance(ref, dtype, magnitude)
    err = np.abs(got - ref)
    worst = int(np.argmax(err))
    assert err.flat[worst] <= tol, (
        f"{what}: max |got-ref| = {err.flat[worst]:.3e} > tol {tol:.3e} at flat index {worst} "
        f"(got {got.flat[worst]!r}, ref {ref.flat[worst]!r}, dtype {dtype})")


def assert_stats_close(got, ref, what=""):
    """softmax_max / softmax_sum (float32 outputs). Rows whose reference is one of the special
    values of SPEC section 4 (+-FLT_MAX) must match exactly; the others within tolerance()."""
    got = to64(got)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != expected {ref.shape}"
    if ref.size == 0:
        return
    assert not np.any(np.isnan(got)), f"{what}: NaN in result"
    special = np.abs(ref) >= FLT_MAX
    if special.any():
        bad = special & (got != round_to(ref, "float32"))
        assert not bad.any(), (f"{what}: special value mismatch at {np.argwhere(bad)[:4].tolist()}: "
                               f"got {got[bad][:4]}, ref {ref[bad][:4]}")
    if (~special).any():
        assert_close(got[~special], ref[~special], "float32", what)


# ----------------------------------------------------------------------------------------------
# Layouts (SPEC section 2) and TND sequences (section 6)
# ----------------------------------------------------------------------------------------------
def _cum(xs):
    return [int(v) for v in xs]


class _Problem:
    """Split of the inputs into independent sequences: per b, Q (N1, sq, D), K/V (N2, skv, D)."""

    def __init__(self, q, k, v, head_num, layout, actual_seq_qlen, actual_seq_kvlen):
        self.layout = layout
        self.qshape, self.kshape = q.shape, k.shape
        n1 = int(head_num)
        if layout in ("BSH", "SBH"):
            if layout == "SBH":
                q, k, v = (x.transpose(1, 0, 2) for x in (q, k, v))
            B, S1, H1 = q.shape
            D = H1 // n1
            S2, H2 = k.shape[1], k.shape[2]
            n2 = H2 // D
            Q = q.reshape(B, S1, n1, D).transpose(0, 2, 1, 3)
            K = k.reshape(B, S2, n2, D).transpose(0, 2, 1, 3)
            V = v.reshape(B, S2, n2, D).transpose(0, 2, 1, 3)
        elif layout == "BSND":
            Q, K, V = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        elif layout == "BNSD":
            Q, K, V = q, k, v
        elif layout == "TND":
            Q = K = V = None
        else:
            raise ValueError(layout)
        self.N1 = n1
        if layout != "TND":
            self.B, _, self.S1, self.D = Q.shape
            self.N2, self.S2 = K.shape[1], K.shape[2]
            self.qs = [Q[b] for b in range(self.B)]
            self.ks = [K[b] for b in range(self.B)]
            self.vs = [V[b] for b in range(self.B)]
            self.sq = [self.S1] * self.B
            self.skv = [self.S2] * self.B
            self.q0 = [0] * self.B
            self.k0 = [0] * self.B
        else:
            cq, ck = _cum(actual_seq_qlen), _cum(actual_seq_kvlen)
            self.B = len(cq)
            self.D = q.shape[2]
            self.N2 = k.shape[1]
            self.q0 = [0] + cq[:-1]
            self.k0 = [0] + ck[:-1]
            self.sq = [cq[b] - self.q0[b] for b in range(self.B)]
            self.skv = [ck[b] - self.k0[b] for b in range(self.B)]
            self.qs = [q[self.q0[b]:cq[b]].transpose(1, 0, 2) for b in range(self.B)]
            self.ks = [k[self.k0[b]:ck[b]].transpose(1, 0, 2) for b in range(self.B)]
            self.vs = [v[self.k0[b]:ck[b]].transpose(1, 0, 2) for b in range(self.B)]
            self.S1 = max(self.sq) if self.B else 0  # maxSq, maxSkv
            self.S2 = max(self.skv) if self.B else 0
        self.G = self.N1 // self.N2

    def numels(self):
        return self.N1 * sum(a * b for a, b in zip(self.sq, self.skv))

    def elem_base(self, b):
        """First dropout element index of sequence b (SPEC section 7)."""
        return self.N1 * sum(self.sq[x] * self.skv[x] for x in range(b))

    def assemble_q(self, per_b):
        """per_b[b]: (N1, sq_b, D) -> array in the query's layout shape."""
        return self._assemble(per_b, self.qshape, self.q0, self.sq)

    def assemble_k(self, per_b):
        return self._assemble(per_b, self.kshape, self.k0, self.skv)

    def _assemble(self, per_b, shape, starts, lens):
        L = self.layout
        if L == "TND":
            out = np.zeros(shape, dtype=np.float64)
            for b, x in enumerate(per_b):
                out[starts[b]:starts[b] + lens[b]] = x.transpose(1, 0, 2)
            return out
        X = np.stack(per_b)  # (B, N, S, D)
        if L == "BNSD":
            return X
        if L == "BSND":
            return X.transpose(0, 2, 1, 3).copy()
        Bn, N, S, D = X.shape
        bsh = X.transpose(0, 2, 1, 3).reshape(Bn, S, N * D)
        return bsh if L == "BSH" else bsh.transpose(1, 0, 2).copy()

    def assemble_stats(self, per_b):
        """per_b[b]: (N1, sq_b) -> (B, N1, S1, 8) or TND (T1, N1, 8), head-major per sequence."""
        if self.layout != "TND":
            X = np.stack(per_b)
            return np.repeat(X[..., None], 8, axis=-1)
        T1 = self.qshape[0]
        flat = np.zeros(T1 * self.N1 * 8, dtype=np.float64)
        pos = 0
        for x in per_b:
            blk = np.repeat(x[..., None], 8, axis=-1).reshape(-1)
            flat[pos:pos + blk.size] = blk
            pos += blk.size
        return flat.reshape(T1, self.N1, 8)


# ----------------------------------------------------------------------------------------------
# Masks (SPEC section 3), invalid lines (section 4), pse (section 5)
# ----------------------------------------------------------------------------------------------
def _band_topleft(sq, skv, pre, nxt):
    i = np.arange(sq)[:, None]
    j = np.arange(skv)[None, :]
    return (j >= i - pre) & (j <= i + nxt)


def _band_bottomright(sq, skv, pre, nxt):
    i = np.arange(sq)[:, None]
    j = np.arange(skv)[None, :]
    d = skv - sq
    return (j >= i + d - pre) & (j <= i + d + nxt)


def _causal_topleft(sq, skv):
    return np.arange(skv)[None, :] <= np.arange(sq)[:, None]


def _causal_bottomright(sq, skv):
    return np.arange(skv)[None, :] <= np.arange(sq)[:, None] + (skv - sq)


def _read_full_mask(M, P, b, sq, skv):
    """Full user mask -> (N1|1, sq, skv) bool, True = masked out. Broadcast dims stride 0."""
    M = np.asarray(M).astype(bool)
    if M.ndim == 2:
        return M[None, :sq, :skv]
    bb = 0 if M.shape[0] == 1 else b
    return M[bb, :, :sq, :skv]


def _first_last_nonempty(P):
    ne = [b for b in range(P.B) if P.sq[b] > 0]
    return (ne[0] if ne else None), (ne[-1] if ne else None)


def _seq_keep(P, b, atten_mask, sparse_mode, pre, nxt, prefix):
    """keep (N1|1, sq, skv) bool for sequence b."""
    sq, skv = P.sq[b], P.skv[b]
    if atten_mask is None:
        return np.ones((1, sq, skv), dtype=bool)
    m = sparse_mode
    if m == 0:
        return ~_read_full_mask(atten_mask, P, b, sq, skv) & _band_topleft(sq, skv, pre, nxt)[None]
    if m == 1:
        return ~_read_full_mask(atten_mask, P, b, sq, skv)
    if m == 2:
        return _causal_topleft(sq, skv)[None]
    if m == 3:
        return _causal_bottomright(sq, skv)[None]
    if m == 4:
        return _band_bottomright(sq, skv, pre, nxt)[None]
    if m in (5, 6):
        pfx = np.arange(skv)[None, :] < int(prefix[b])
        k = (_causal_bottomright(sq, skv) | pfx)[None]
        if m == 5:
            k = k & ~_read_full_mask(atten_mask, P, b, sq, skv)
        return k
    if m in (7, 8):
        first, last = _first_last_nonempty(P)
        if m == 7:
            if b == last:
                return _band_bottomright(sq, skv, pre, nxt)[None]
            return _causal_bottomright(sq, skv)[None]
        if b == first:
            return _band_bottomright(sq, skv, pre, nxt)[None]
        return _causal_topleft(sq, skv)[None]
    raise ValueError(f"sparse_mode {m}")


def _band_leaves_empty_rows(sq, skv, pre, nxt, bottom_right):
    if bottom_right:
        pre, nxt = pre + sq - skv, nxt + skv - sq
    return nxt < 0 or pre + skv < sq


def auto_invalid_line(P, atten_mask, sparse_mode, pre, nxt, prefix):
    """SPEC section 4's parameter-only conditions, true if ANY non-empty sequence meets them."""
    if atten_mask is None:
        return False
    m = sparse_mode
    first, last = _first_last_nonempty(P)
    for b in range(P.B):
        sq, skv = P.sq[b], P.skv[b]
        if sq == 0:
            continue
        if m == 0 and _band_leaves_empty_rows(sq, skv, pre, nxt, False):
            return True
        if m == 4 and _band_leaves_empty_rows(sq, skv, pre, nxt, True):
            return True
        if m == 3 and sq > skv:
            return True
        if m in (5, 6) and sq > skv and any(int(p) == 0 for p in prefix):
            return True
        if m == 7:  # extension, see module docstring
            if b == last and _band_leaves_empty_rows(sq, skv, pre, nxt, True):
                return True
            if b != last and sq > skv:
                return True
        if m == 8 and b == first and _band_leaves_empty_rows(sq, skv, pre, nxt, True):
            return True
    return False


class _Pse:
    """pse addressing for one (b, n): bias(sq, skv) and the adjoint accumulate(grad)."""

    def __init__(self, P, pse, pse_type, q_start_idx, kv_start_idx):
        self.P = P
        self.type = int(pse_type)
        self.pse = None if pse is None else to64(pse)
        self.qs = int(q_start_idx[0]) if q_start_idx is not None else 0
        self.ks = int(kv_start_idx[0]) if kv_start_idx is not None else 0
        self.grad = None if self.pse is None else np.zeros_like(self.pse)

    # --- types 0/1: an explicit tensor -------------------------------------------------------
    def _compressed(self, sq, skv):
        return (self.P.layout != "TND" and self.pse.shape[2] == 1024 and sq == skv
                and sq > 1024)

    def _cindex(self, sq, skv):
        """Compressed form (SPEC section 5): with t = S1 - 1024, row i >= t reads c[i - t][j];
        row i < t reads c[i mod 1024][j - i + (i mod 1024) + (S2 - 1024)].
        Returns rows (sq, 1), cols (sq, skv) clipped, valid (sq, skv)."""
        t = sq - 1024
        i = np.arange(sq)[:, None]
        j = np.arange(skv)[None, :]
        rows = np.where(i >= t, i - t, i % 1024)
        cols = np.where(i >= t, j, j - i + (i % 1024) + (skv - 1024))
        valid = (cols >= 0) & (cols < self.pse.shape[3])
        return rows, np.clip(cols, 0, self.pse.shape[3] - 1), valid

    def _bb(self, b):
        return 0 if self.pse.shape[0] == 1 else b

    def bias(self, b, n, sq, skv):
        """The bias term: x = scale*qk + bias (types 0, 2, 3) or scale*(qk + bias) (type 1).
        Full (S1 rows) and row-broadcast (1 row) forms read pse[b|0, n, i|0, j]."""
        if self.type in (2, 3):
            return -self.slope(b, n) * self.dist(sq, skv)
        p = self.pse[self._bb(b), n]
        if self._compressed(sq, skv):
            rows, cols, valid = self._cindex(sq, skv)
            return np.where(valid, p[rows, cols], 0.0)
        return np.broadcast_to(p[:sq, :skv] if p.shape[0] != 1 else p[:1, :skv], (sq, skv))

    def accumulate(self, b, n, sq, skv, dlogit_bias, keep, prob=None):
        """Adjoint of bias(): dlogit_bias is d(loss)/d(bias) (sq, skv); only kept positions
        contribute (SPEC section 9). Slopes: with prob (P, without dropout) each row's distances
        are centred on their P-weighted mean over the kept keys (module docstring)."""
        if self.grad is None:
            return
        g = np.where(keep, dlogit_bias, 0.0)
        if self.type in (2, 3):
            d = self.dist(sq, skv)
            if prob is not None:
                w = np.where(keep, prob, 0.0)
                z = w.sum(axis=1, keepdims=True)
                d = d - np.divide((w * d).sum(axis=1, keepdims=True), z, out=np.zeros_like(z), where=z > 0)
            val = -float(np.sum(g * d))
            if self.pse.ndim == 1:
                self.grad[n] += val
            else:
                self.grad[b, n] += val
            return
        acc = self.grad[self._bb(b), n]
        if self._compressed(sq, skv):
            rows, cols, valid = self._cindex(sq, skv)
            sel = valid & keep
            np.add.at(acc, (np.broadcast_to(rows, sel.shape)[sel], cols[sel]), g[sel])
        elif acc.shape[0] == 1:
            acc[0, :skv] += g.sum(axis=0)
        else:
            acc[:sq, :skv] += g

    # --- types 2/3: internal ALiBi --------------------------------------------------------------
    def slope(self, b, n):
        s = self.pse
        return float(s[n]) if s.ndim == 1 else float(s[b, n])

    def dist(self, sq, skv):
        i = np.arange(sq, dtype=np.float64)[:, None]
        j = np.arange(skv, dtype=np.float64)[None, :]
        d = np.abs((j + self.ks) - (i + self.qs))
        return np.sqrt(d) if self.type == 3 else d


# ----------------------------------------------------------------------------------------------
# forward / backward (SPEC sections 1 and 9)
# ----------------------------------------------------------------------------------------------
_IGNORED = ("padding_mask", "gen_mask_parallel", "sync", "backend")


def _setup(q, k, v, head_num, layout, opts):
    for name in _IGNORED:
        opts.pop(name, None)
    o = dict(pse=None, atten_mask=None, scale=1.0, keep_prob=1.0, pre_tokens=INT_MAX,
             next_tokens=INT_MAX, inner_precise=0, prefix=None, actual_seq_qlen=None,
             actual_seq_kvlen=None, sparse_mode=0, pse_type=1, q_start_idx=None,
             kv_start_idx=None, seed=0, offset=0)
    unknown = set(opts) - set(o)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    o.update(opts)
    q64, k64, v64 = to64(q), to64(k), to64(v)
    P = _Problem(q64, k64, v64, head_num, layout, o["actual_seq_qlen"], o["actual_seq_kvlen"])
    mask = o["atten_mask"]
    if mask is not None:
        mask = to64(mask) if hasattr(mask, "detach") else np.asarray(mask)
        if mask.dtype != np.bool_:
            mask = mask != 0
    o["atten_mask"] = mask
    pse = o["pse"]
    if pse is not None and int(o["pse_type"]) not in (0, 1, 2, 3):
        raise ValueError("pse_type")
    o["_pse"] = _Pse(P, pse, o["pse_type"], o["q_start_idx"], o["kv_start_idx"]) \
        if pse is not None else None
    o["_invalid"] = int(o["inner_precise"]) == 2 or auto_invalid_line(
        P, mask, int(o["sparse_mode"]), int(o["pre_tokens"]), int(o["next_tokens"]), o["prefix"])
    return P, o


def _head_pass(P, o, b, n):
    """Everything for one (b, n): logits' pieces, P, dropout factor, keep and row validity."""
    sq, skv = P.sq[b], P.skv[b]
    g = n // P.G
    Q, K, V = P.qs[b][n], P.ks[b][g], P.vs[b][g]
    scale = float(o["scale"])
    keep = _seq_keep(P, b, o["atten_mask"], int(o["sparse_mode"]), int(o["pre_tokens"]),
                     int(o["next_tokens"]), o["prefix"])
    keep = np.broadcast_to(keep[n if keep.shape[0] > 1 else 0], (sq, skv))
    qk = Q @ K.T
    ps = o["_pse"]
    if ps is None:
        x = scale * qk
    elif ps.type == 1:
        x = scale * (qk + ps.bias(b, n, sq, skv))
    else:
        x = scale * qk + ps.bias(b, n, sq, skv)
    x = np.where(keep, x, -FLT_MAX)
    mx = x.max(axis=1) if skv else np.full(sq, -FLT_MAX)
    ex = np.exp(x - mx[:, None])
    sm = ex.sum(axis=1)
    prob = ex / sm[:, None]
    kp = float(o["keep_prob"])
    if kp < 1.0:
        e = P.elem_base(b) + (n * sq + np.arange(sq)[:, None]) * skv + np.arange(skv)[None, :]
        drop = dropout_keep(o["seed"], o["offset"], e, kp).astype(np.float64) / kp
    else:
        drop = np.ones((sq, skv))
    empty = ~keep.any(axis=1) if skv else np.ones(sq, dtype=bool)
    invalid = empty & o["_invalid"]
    return dict(Q=Q, K=K, V=V, g=g, keep=keep, prob=prob, drop=drop, mx=mx, sm=sm,
                invalid=invalid, scale=scale)


def forward(q, k, v, head_num, layout, **opts):
    P, o = _setup(q, k, v, head_num, layout, opts)
    outs, mxs, sms = [], [], []
    for b in range(P.B):
        sq = P.sq[b]
        out_b = np.zeros((P.N1, sq, P.D))
        mx_b = np.zeros((P.N1, sq))
        sm_b = np.zeros((P.N1, sq))
        for n in range(P.N1):
            h = _head_pass(P, o, b, n)
            o_bn = (h["prob"] * h["drop"]) @ h["V"]
            inv = h["invalid"]
            o_bn[inv] = 0.0
            out_b[n] = o_bn
            mx_b[n] = np.where(inv, -FLT_MAX, h["mx"])
            sm_b[n] = np.where(inv, FLT_MAX, h["sm"])
        outs.append(out_b)
        mxs.append(mx_b)
        sms.append(sm_b)
    return P.assemble_q(outs), P.assemble_stats(mxs), P.assemble_stats(sms)


def numels(q, k, v, head_num, layout, actual_seq_qlen=None, actual_seq_kvlen=None):
    P = _Problem(to64(q), to64(k), to64(v), head_num, layout, actual_seq_qlen, actual_seq_kvlen)
    return P.numels()


def backward(q, k, v, dy, head_num, layout, *, attention_in=None, magnitudes=False, **opts):
    """(dq, dk, dv, dpse) in float64 (SPEC section 9).

    With magnitudes=True, also returns a 4-tuple of same-shaped "term magnitude" arrays: the same
    sums evaluated on absolute values (|dS| replaced by P * (|dY| |V|^T * drop + |dY . Y|),
    then |dS| |K|, |dS|^T |Q|, |P'|^T |dY|). They bound the size of the terms a float32
    evaluation adds up, which is the scale of its rounding error even where the result cancels
    to (almost) zero -- see tolerance(..., magnitude=) and FLOOR_MAG."""
    for name in ("softmax_max", "softmax_sum", "softmax_in", "numels"):
        opts.pop(name, None)  # the twin recomputes P exactly; Dsum uses attention_in
    P, o = _setup(q, k, v, head_num, layout, dict(opts))
    dy64 = to64(dy)
    if attention_in is None:
        attention_in = forward(q, k, v, head_num, layout, **opts)[0]
    out64 = to64(attention_in)
    # split dy and out the same way as q
    Pd = _Problem(dy64, to64(k), to64(v), head_num, layout,
                  o["actual_seq_qlen"], o["actual_seq_kvlen"])
    Po = _Problem(out64, to64(k), to64(v), head_num, layout,
                  o["actual_seq_qlen"], o["actual_seq_kvlen"])
    dqs, dks, dvs = [], [], []
    mqs, mks, mvs = [], [], []
    ps = o["_pse"]
    ps_mag = None
    if ps is not None and magnitudes:
        ps_mag = _Pse(P, opts.get("pse"), o["pse_type"], o["q_start_idx"], o["kv_start_idx"])
    for b in range(P.B):
        sq, skv = P.sq[b], P.skv[b]
        dq_b = np.zeros((P.N1, sq, P.D))
        dk_b = np.zeros((P.N2, skv, P.D))
        dv_b = np.zeros((P.N2, skv, P.D))
        mq_b, mk_b, mv_b = np.zeros_like(dq_b), np.zeros_like(dk_b), np.zeros_like(dv_b)
        for n in range(P.N1):
            h = _head_pass(P, o, b, n)
            dY, Y = Pd.qs[b][n], Po.qs[b][n]
            prob, drop, keep = h["prob"], h["drop"], h["keep"]
            valid = ~h["invalid"]
            live = keep & valid[:, None]
            pdrop = prob * drop * valid[:, None]
            dv_b[h["g"]] += pdrop.T @ dY
            dP = (dY @ h["V"].T) * drop
            dsum = np.sum(dY * Y, axis=1)
            dS = prob * (dP - dsum[:, None])
            dS = np.where(live, dS, 0.0)
            dq_b[n] = h["scale"] * dS @ h["K"]
            dk_b[h["g"]] += h["scale"] * dS.T @ h["Q"]
            if ps is not None:
                gb = h["scale"] * dS if ps.type == 1 else dS
                ps.accumulate(b, n, sq, skv, gb, live, prob)
            if magnitudes:
                sc = abs(h["scale"])
                aS = prob * ((np.abs(dY) @ np.abs(h["V"]).T) * drop
                             + np.sum(np.abs(dY * Y), axis=1)[:, None])
                aS = np.where(live, aS, 0.0)
                mv_b[h["g"]] += np.abs(pdrop).T @ np.abs(dY)
                mq_b[n] = sc * aS @ np.abs(h["K"])
                mk_b[h["g"]] += sc * aS.T @ np.abs(h["Q"])
                if ps_mag is not None:
                    # (slopes: accumulate() adds -sum(g * dist), so pass -|dS| to get +)
                    g_mag = sc * aS if ps.type == 1 else (-aS if ps.type in (2, 3) else aS)
                    ps_mag.accumulate(b, n, sq, skv, g_mag, live)
        dqs.append(dq_b)
        dks.append(dk_b)
        dvs.append(dv_b)
        mqs.append(mq_b)
        mks.append(mk_b)
        mvs.append(mv_b)
    dpse = ps.grad if ps is not None else np.zeros((0,))
    grads = (P.assemble_q(dqs), P.assemble_k(dks), P.assemble_k(dvs), dpse)
    if not magnitudes:
        return grads
    mpse = np.abs(ps_mag.grad) if ps_mag is not None else np.zeros((0,))
    mags = (P.assemble_q(mqs), P.assemble_k(mks), P.assemble_k(mvs), mpse)
    return grads, mags


# ----------------------------------------------------------------------------------------------
# Templates (SPEC section 3) for tests
# ----------------------------------------------------------------------------------------------
def causal_template(dtype=bool):
    return np.triu(np.ones((2048, 2048), dtype=dtype), k=1)


def prefix_template(dtype=bool):
    t = np.zeros((3072, 2048), dtype=dtype)
    t[:2048] = np.triu(np.ones((2048, 2048), dtype=dtype), k=1)
    t[2048:, 1024:] = 1
    return t
