"""SPEC section 10: every error, with the right exception class (TypeError for wrong types,
ValueError for wrong values) and a message that names the argument."""

import numpy as np
import pytest
from conftest import BACKENDS

import twin

B, N1, N2, S1, S2, D = 2, 4, 2, 6, 8, 16


def _base(layout="BNSD", dtype=np.float32):
    rng = np.random.default_rng(0)
    shapes = {"BNSD": ((B, N1, S1, D), (B, N2, S2, D)), "BSND": ((B, S1, N1, D), (B, S2, N2, D)),
              "BSH": ((B, S1, N1 * D), (B, S2, N2 * D)), "SBH": ((S1, B, N1 * D), (S2, B, N2 * D)),
              "TND": ((10, N1, D), (12, N2, D))}
    qs, ks = shapes[layout]
    q = rng.standard_normal(qs).astype(dtype)
    k = rng.standard_normal(ks).astype(dtype)
    v = rng.standard_normal(ks).astype(dtype)
    kw = {}
    if layout == "TND":
        kw = dict(actual_seq_qlen=[4, 10], actual_seq_kvlen=[5, 12])
    return q, k, v, kw


def _bad_template():
    t = twin.causal_template()
    t[5, 100] = False  # one wrong cell (upper triangle not masked)
    return t


def _bad_prefix_template():
    t = twin.prefix_template()
    t[2500, 10] = True
    return t


BOOL_FULL = np.zeros((B, N1, S1, S2), dtype=bool)
# (id, exception, names (any may appear), layout, fn(q, k, v, kw) -> (q, k, v, head_num, layout))
CASES = [
    # ---------------- TypeError ----------------
    ("qkv-dtype-differ", TypeError, ("key", "query", "dtype"), "BNSD",
     lambda q, k, v, kw: (q, k.astype(np.float16), v, N1, "BNSD")),
    ("value-dtype-differ", TypeError, ("value", "query", "dtype"), "BNSD",
     lambda q, k, v, kw: (q, k, v.astype(np.float16), N1, "BNSD")),
    # (float64 is a project extension, accepted by the float64 reference; int32 is never valid)
    ("query-int32", TypeError, ("query", "dtype"), "BNSD",
     lambda q, k, v, kw: (q.astype(np.int32), k.astype(np.int32), v.astype(np.int32),
                          N1, "BNSD")),
    ("mask-float", TypeError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL.astype(np.float32)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("mask-int32", TypeError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL.astype(np.int32)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("scale-str", TypeError, ("scale",), "BNSD",
     lambda q, k, v, kw: (kw.update(scale="0.5"), (q, k, v, N1, "BNSD"))[1]),
    ("keep_prob-str", TypeError, ("keep_prob",), "BNSD",
     lambda q, k, v, kw: (kw.update(keep_prob="0.5"), (q, k, v, N1, "BNSD"))[1]),
    ("layout-not-str", TypeError, ("input_layout",), "BNSD",
     lambda q, k, v, kw: (q, k, v, N1, 3)),
    ("head_num-float", TypeError, ("head_num",), "BNSD",
     lambda q, k, v, kw: (q, k, v, float(N1), "BNSD")),
    ("head_num-str", TypeError, ("head_num",), "BNSD",
     lambda q, k, v, kw: (q, k, v, "4", "BNSD")),
    ("sparse_mode-float", TypeError, ("sparse_mode",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=0.0), (q, k, v, N1, "BNSD"))[1]),
    ("pse_type-str", TypeError, ("pse_type",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse_type="1"), (q, k, v, N1, "BNSD"))[1]),
    ("pse-list", TypeError, ("pse",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse=[[0.0]]), (q, k, v, N1, "BNSD"))[1]),
    ("padding_mask-list", TypeError, ("padding_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(padding_mask=[0]), (q, k, v, N1, "BNSD"))[1]),
    ("atten_mask-list", TypeError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=[[False]]), (q, k, v, N1, "BNSD"))[1]),
    ("pse-dtype-differs", TypeError, ("pse",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse=np.zeros((B, N1, S1, S2), np.float16)),
                          (q, k, v, N1, "BNSD"))[1]),
    # ---------------- ValueError ----------------
    ("layout-unknown", ValueError, ("input_layout",), "BNSD",
     lambda q, k, v, kw: (q, k, v, N1, "BHSD")),
    ("sparse_mode-9", ValueError, ("sparse_mode",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=9), (q, k, v, N1, "BNSD"))[1]),
    ("sparse_mode-neg", ValueError, ("sparse_mode",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=-1), (q, k, v, N1, "BNSD"))[1]),
    ("sparse_mode-7-non-TND", ValueError, ("sparse_mode",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=7, atten_mask=twin.causal_template()),
                          (q, k, v, N1, "BNSD"))[1]),
    ("sparse_mode-5-TND", ValueError, ("sparse_mode",), "TND",
     lambda q, k, v, kw: (kw.update(sparse_mode=5, prefix=[4, 5],
                                    atten_mask=np.zeros((6, 7), bool)),
                          (q, k, v, N1, "TND"))[1]),
    ("pse_type-4", ValueError, ("pse_type",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse_type=4, pse=np.zeros((B, N1, S1, S2), np.float32)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("pse_type-0-without-pse", ValueError, ("pse",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse_type=0), (q, k, v, N1, "BNSD"))[1]),
    ("query-ndim", ValueError, ("query",), "BNSD",
     lambda q, k, v, kw: (q[0], k, v, N1, "BNSD")),
    ("head_num-not-N", ValueError, ("head_num",), "BNSD",
     lambda q, k, v, kw: (q, k, v, N1 + 1, "BNSD")),
    ("BSH-H-not-divisible", ValueError, ("head_num",), "BSH",
     lambda q, k, v, kw: (q, k, v, 5, "BSH")),
    ("key-value-shape", ValueError, ("value", "key"), "BNSD",
     lambda q, k, v, kw: (q, k, v[:, :, :-1], N1, "BNSD")),
    ("key-batch", ValueError, ("key",), "BNSD",
     lambda q, k, v, kw: (q, k[:1], v[:1], N1, "BNSD")),
    ("key-D", ValueError, ("key",), "BNSD",
     lambda q, k, v, kw: (q, k[..., :-1], v[..., :-1], N1, "BNSD")),
    ("N1-mod-N2", ValueError, ("head_num", "key", "N2"), "BNSD",
     lambda q, k, v, kw: (q[:, :3], k, v, 3, "BNSD")),
    ("mask-shape", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=np.zeros((B, N1, S1, S2 + 1), bool)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("mask-shape-mode2", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=2, atten_mask=np.zeros((S1, S2), bool)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("template-content-mode2", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=2, atten_mask=_bad_template()),
                          (q, k, v, N1, "BNSD"))[1]),
    ("template-content-mode4", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=4, atten_mask=np.zeros((2048, 2048), bool)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("template-content-mode6", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=6, prefix=[4, 8],
                                    atten_mask=_bad_prefix_template()),
                          (q, k, v, N1, "BNSD"))[1]),
    ("template-shape-mode6", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=6, prefix=[4, 8],
                                    atten_mask=twin.causal_template()),
                          (q, k, v, N1, "BNSD"))[1]),
    ("mode5-mask-2d", ValueError, ("atten_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=5, prefix=[4, 8],
                                    atten_mask=np.zeros((S1, S2), bool)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("pse-shape", ValueError, ("pse",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse=np.zeros((B, N1, S1, S2 + 1), np.float32)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("pse-compressed-not-allowed", ValueError, ("pse",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse=np.zeros((B, N1, 1024, S2), np.float32)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("slopes-shape", ValueError, ("pse",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse_type=2, pse=np.zeros((N1 + 1,), np.float32)),
                          (q, k, v, N1, "BNSD"))[1]),
    ("q_start_idx-length", ValueError, ("q_start_idx",), "BNSD",
     lambda q, k, v, kw: (kw.update(pse_type=2, pse=np.zeros((N1,), np.float32),
                                    q_start_idx=[1, 2]), (q, k, v, N1, "BNSD"))[1]),
    ("pre-next-both-negative", ValueError, ("pre_tokens", "next_tokens"), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL, pre_tokens=-1, next_tokens=-1),
                          (q, k, v, N1, "BNSD"))[1]),
    ("pre-negative-next-too-small", ValueError, ("pre_tokens", "next_tokens"), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL, pre_tokens=-3, next_tokens=2),
                          (q, k, v, N1, "BNSD"))[1]),
    ("pre-negative-beyond-S2", ValueError, ("pre_tokens", "next_tokens"), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL, pre_tokens=-S2, next_tokens=100),
                          (q, k, v, N1, "BNSD"))[1]),
    ("next-negative-beyond-pre", ValueError, ("pre_tokens", "next_tokens"), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL, pre_tokens=1, next_tokens=-2),
                          (q, k, v, N1, "BNSD"))[1]),
    ("next-negative-beyond-S1", ValueError, ("pre_tokens", "next_tokens"), "BNSD",
     lambda q, k, v, kw: (kw.update(atten_mask=BOOL_FULL, pre_tokens=100, next_tokens=-S1),
                          (q, k, v, N1, "BNSD"))[1]),
    ("mode4-shifted-illegal", ValueError, ("pre_tokens", "next_tokens"), "BNSD",
     # pre' = pre + S1 - S2 = -1 - 2 = -3 < 0, next' = next + S2 - S1 = 0 + 2 = 2 < 3
     lambda q, k, v, kw: (kw.update(sparse_mode=4, atten_mask=twin.causal_template(),
                                    pre_tokens=-1, next_tokens=0), (q, k, v, N1, "BNSD"))[1]),
    ("prefix-out-of-range-low", ValueError, ("prefix",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=5, atten_mask=BOOL_FULL, prefix=[1, 8]),
                          (q, k, v, N1, "BNSD"))[1]),  # S1 <= S2: range [S2-S1, S2] = [2, 8]
    ("prefix-out-of-range-high", ValueError, ("prefix",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=5, atten_mask=BOOL_FULL, prefix=[3, 9]),
                          (q, k, v, N1, "BNSD"))[1]),
    ("prefix-wrong-length", ValueError, ("prefix",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=5, atten_mask=BOOL_FULL, prefix=[3]),
                          (q, k, v, N1, "BNSD"))[1]),
    ("prefix-in-mode-0", ValueError, ("prefix",), "BNSD",
     lambda q, k, v, kw: (kw.update(prefix=[3, 3]), (q, k, v, N1, "BNSD"))[1]),
    ("prefix-missing-mode-5", ValueError, ("prefix",), "BNSD",
     lambda q, k, v, kw: (kw.update(sparse_mode=5, atten_mask=BOOL_FULL),
                          (q, k, v, N1, "BNSD"))[1]),
    ("keep_prob-0", ValueError, ("keep_prob",), "BNSD",
     lambda q, k, v, kw: (kw.update(keep_prob=0.0), (q, k, v, N1, "BNSD"))[1]),
    ("keep_prob-above-1", ValueError, ("keep_prob",), "BNSD",
     lambda q, k, v, kw: (kw.update(keep_prob=1.5), (q, k, v, N1, "BNSD"))[1]),
    ("keep_prob-negative", ValueError, ("keep_prob",), "BNSD",
     lambda q, k, v, kw: (kw.update(keep_prob=-0.1), (q, k, v, N1, "BNSD"))[1]),
    ("TND-without-actual_seq", ValueError, ("actual_seq_qlen", "actual_seq_kvlen"), "TND",
     lambda q, k, v, kw: (kw.clear(), (q, k, v, N1, "TND"))[1]),
    ("TND-qlen-decreasing", ValueError, ("actual_seq_qlen",), "TND",
     lambda q, k, v, kw: (kw.update(actual_seq_qlen=[6, 4]), (q, k, v, N1, "TND"))[1]),
    ("TND-kvlen-decreasing", ValueError, ("actual_seq_kvlen",), "TND",
     lambda q, k, v, kw: (kw.update(actual_seq_kvlen=[7, 5]), (q, k, v, N1, "TND"))[1]),
    ("TND-lengths-differ", ValueError, ("actual_seq_qlen", "actual_seq_kvlen"), "TND",
     lambda q, k, v, kw: (kw.update(actual_seq_kvlen=[5, 8, 12]), (q, k, v, N1, "TND"))[1]),
    ("TND-qlen-beyond-T1", ValueError, ("actual_seq_qlen",), "TND",
     lambda q, k, v, kw: (kw.update(actual_seq_qlen=[4, 11]), (q, k, v, N1, "TND"))[1]),
    ("TND-kvlen-beyond-T2", ValueError, ("actual_seq_kvlen",), "TND",
     lambda q, k, v, kw: (kw.update(actual_seq_kvlen=[5, 13]), (q, k, v, N1, "TND"))[1]),
    ("TND-query-without-keys", ValueError, ("actual_seq_kvlen",), "TND",
     lambda q, k, v, kw: (kw.update(actual_seq_kvlen=[0, 12]), (q, k, v, N1, "TND"))[1]),
    ("actual_seq-non-TND", ValueError, ("actual_seq_qlen", "actual_seq_kvlen"), "BNSD",
     lambda q, k, v, kw: (kw.update(actual_seq_qlen=[6, 12], actual_seq_kvlen=[8, 16]),
                          (q, k, v, N1, "BNSD"))[1]),
    ("padding_mask-given", ValueError, ("padding_mask",), "BNSD",
     lambda q, k, v, kw: (kw.update(padding_mask=np.zeros((B, N1, S1, S2), np.float32)),
                          (q, k, v, N1, "BNSD"))[1]),
]


def _call(sa, case, backend, grad=False):
    name, exc, names, layout, fn = case
    q, k, v, kw = _base(layout)
    args = fn(q, k, v, kw)
    if grad:
        q0 = args[0]
        dy = np.zeros(q0.shape, dtype=q0.dtype)
        if layout == "TND":
            st = np.ones((q0.shape[0], q0.shape[1], 8), np.float32)
        else:
            st = np.ones((q0.shape[0], q0.shape[1], q0.shape[2], 8), np.float32)
        return sa.speed_fusion_attention_grad(
            args[0], args[1], args[2], dy, args[3], args[4], softmax_max=st, softmax_sum=st,
            attention_in=dy, seed=0, offset=0, numels=0, backend=backend, **kw)
    return sa.speed_fusion_attention(*args, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_error(sa, case, backend):
    name, exc, names, _, _ = case
    with pytest.raises(exc) as info:
        _call(sa, case, backend)
    # exactly the class asked for (a ValueError must not satisfy a TypeError check and v.v.)
    other = ValueError if exc is TypeError else TypeError
    assert not isinstance(info.value, other), f"{name}: got {type(info.value).__mro__}"
    msg = str(info.value)
    assert any(n in msg for n in names), f"{name}: message {msg!r} names none of {names}"


# the gradient entry point validates the same arguments (a representative subset)
GRAD_CASES = [c for c in CASES if c[0] in (
    "qkv-dtype-differ", "mask-float", "layout-not-str", "head_num-float", "layout-unknown",
    "sparse_mode-9", "pse_type-4", "head_num-not-N", "N1-mod-N2", "template-content-mode2",
    "pre-next-both-negative", "prefix-out-of-range-low", "keep_prob-0", "TND-qlen-decreasing",
    "padding_mask-given")]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_grad_error(sa, case):
    name, exc, names, _, _ = case
    with pytest.raises(exc) as info:
        _call(sa, case, "auto", grad=True)
    msg = str(info.value)
    assert any(n in msg for n in names), f"{name}: message {msg!r} names none of {names}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_base_calls_do_not_raise(sa, backend):
    """Guard against the error tests passing for the wrong reason: the unmodified base calls
    (and the boundary values next to each error) are accepted."""
    for layout in ("BNSD", "BSND", "BSH", "SBH", "TND"):
        q, k, v, kw = _base(layout)
        sa.speed_fusion_attention(q, k, v, N1, layout, backend=backend, **kw)
    q, k, v, kw = _base()
    ok = [dict(keep_prob=1.0), dict(keep_prob=1e-3), dict(scale=2.0),
          dict(sparse_mode=5, atten_mask=BOOL_FULL, prefix=[2, 8]),
          dict(sparse_mode=6, atten_mask=twin.prefix_template(), prefix=[2, 8]),
          dict(atten_mask=BOOL_FULL, pre_tokens=-2, next_tokens=2),
          dict(atten_mask=BOOL_FULL, pre_tokens=2, next_tokens=-2),
          dict(atten_mask=BOOL_FULL.astype(np.uint8)),
          dict(sparse_mode=2, atten_mask=twin.causal_template(np.uint8)),
          dict(pse_type=2, pse=np.zeros((N1,), np.float32), q_start_idx=[3], kv_start_idx=[-1]),
          dict(gen_mask_parallel=False, sync=True), dict(padding_mask=None)]
    for extra in ok:
        sa.speed_fusion_attention(q, k, v, N1, "BNSD", backend=backend, **extra)


def test_grad_dy_shape_error(sa):
    q, k, v, kw = _base()
    out, mx, sm, _, seed, offset, numels = sa.speed_fusion_attention(q, k, v, N1, "BNSD")
    with pytest.raises(ValueError) as info:
        sa.speed_fusion_attention_grad(q, k, v, out[:, :, :-1], N1, "BNSD", softmax_max=mx,
                                       softmax_sum=sm, attention_in=out, seed=seed,
                                       offset=offset, numels=numels)
    assert "dy" in str(info.value)


def _template_variants():
    """(id, mask, accepted) for sparse_mode 3: every cell role of the template checked in both
    directions, non-0/1 values, and a strided (non-contiguous) view."""
    good = twin.causal_template()
    out = [("exact", good, True), ("uint8-nonzero-2", good.astype(np.uint8) * 2, True)]
    for i, j, what in ((5, 100, "upper-kept"), (100, 5, "lower-masked"), (7, 7, "diagonal-masked"),
                       (2047, 2047, "last-diagonal-masked"), (0, 2047, "corner-kept")):
        t = good.copy()
        t[i, j] = not t[i, j]
        out.append((what, t, False))
    wide = np.zeros((2048, 4096), dtype=bool)
    wide[:, ::2] = good
    out.append(("strided", wide[:, ::2], True))
    wide = wide.copy()
    wide[4, 2 * 3] = True  # (4, 3) masked: below the diagonal
    out.append(("strided-wrong", wide[:, ::2], False))
    return out


@pytest.mark.parametrize("name,mask,accepted", _template_variants(), ids=[v[0] for v in _template_variants()])
def test_causal_template_check(sa, name, mask, accepted):
    q, k, v, _ = _base()
    call = lambda: sa.speed_fusion_attention(q, k, v, N1, "BNSD", sparse_mode=3, atten_mask=mask)  # noqa: E731
    if accepted:
        call()
    else:
        with pytest.raises(ValueError, match="atten_mask"):
            call()


@pytest.mark.parametrize("mode", [3, 6])
def test_torch_template_checked_again_after_in_place_change(mode):
    """A torch template that passed is not re-read while unchanged (_CheckedTemplates); an
    in-place torch write bumps its version and the next call, forward or backward, checks it
    again and fails; a template that failed is never remembered."""
    torch = pytest.importorskip("torch")
    import speedattn as sa
    from speedattn._api import _checked_templates

    q, k, v = (torch.from_numpy(x) for x in _base()[:3])
    good = twin.prefix_template() if mode == 6 else twin.causal_template()
    extra = {"prefix": [S2] * B} if mode == 6 else {}
    mask = torch.from_numpy(good.copy())
    call = lambda m: sa.speed_fusion_attention(q, k, v, N1, "BNSD", sparse_mode=mode, atten_mask=m, **extra)  # noqa: E731
    assert not _checked_templates.holds(mask, mode)
    out = call(mask)
    assert _checked_templates.holds(mask, mode)
    call(mask)  # verified path
    mask[100, 5] = True  # below the diagonal: not the template any more
    assert not _checked_templates.holds(mask, mode)
    with pytest.raises(ValueError, match="atten_mask"):
        call(mask)
    with pytest.raises(ValueError, match="atten_mask"):
        call(mask)  # the failure was not remembered
    dy = torch.ones_like(q)
    with pytest.raises(ValueError, match="atten_mask"):
        sa.speed_fusion_attention_grad(q, k, v, dy, N1, "BNSD", sparse_mode=mode, atten_mask=mask,
                                       softmax_max=out[1], softmax_sum=out[2], attention_in=out[0],
                                       seed=out[4], offset=out[5], numels=out[6], **extra)
    mask[100, 5] = False  # the template again (new version): checked, then remembered
    call(mask)
    assert _checked_templates.holds(mask, mode)
    # same content, another tensor: checked on its own; the wrong shape is checked every call
    other = torch.from_numpy(good.copy())
    assert not _checked_templates.holds(other, mode)
    call(other)
    with pytest.raises(ValueError, match="atten_mask"):
        call(mask[:-1])
    # the documented limit: a write through a numpy alias bypasses torch's version counter, so
    # the remembered tensor is not re-read (the kernel never reads a template's content)
    mask.numpy()[100, 5] = True
    assert _checked_templates.holds(mask, mode)
    call(mask)


def test_numpy_template_is_checked_every_call():
    from speedattn._api import _checked_templates

    mask = twin.causal_template()
    q, k, v, _ = _base()
    import speedattn as sa

    sa.speed_fusion_attention(q, k, v, N1, "BNSD", sparse_mode=3, atten_mask=mask)
    assert not _checked_templates.holds(mask, 3)
    mask[100, 5] = True  # numpy has no version counter: the next call re-reads the mask
    with pytest.raises(ValueError, match="atten_mask"):
        sa.speed_fusion_attention(q, k, v, N1, "BNSD", sparse_mode=3, atten_mask=mask)


def test_checked_templates_remember_the_last_eight():
    torch = pytest.importorskip("torch")
    import speedattn as sa
    from speedattn._api import _CheckedTemplates, _checked_templates

    q, k, v = (torch.from_numpy(x) for x in _base()[:3])
    masks = [torch.from_numpy(twin.causal_template()) for _ in range(_CheckedTemplates._SIZE + 1)]
    for m in masks:
        sa.speed_fusion_attention(q, k, v, N1, "BNSD", sparse_mode=2, atten_mask=m)
    assert not _checked_templates.holds(masks[0], 2)  # the oldest was dropped
    assert all(_checked_templates.holds(m, 2) for m in masks[1:])
    assert not _checked_templates.holds(masks[1], 0)  # remembered for the template modes only
