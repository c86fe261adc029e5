"""speedattn.torch: the custom op passes torch.library.opcheck, its autograd passes gradcheck in
float64 (reference backend) and agrees with speed_fusion_attention_grad; dropout uses one mask
in forward and backward."""

import pytest

torch = pytest.importorskip("torch")

import speedattn  # noqa: E402
import speedattn.torch as sat  # noqa: E402

TEMPLATE = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)


def _inputs(dtype, B=1, N1=4, N2=2, S1=5, S2=7, D=3, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N1, S1, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, N2, S2, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, N2, S2, D, generator=g, dtype=torch.float64).to(dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


CASES = [
    dict(name="full"),
    dict(name="causal_gqa", sparse_mode=3, atten_mask=TEMPLATE),
    dict(name="dropout", keep_prob=0.7),
    dict(name="band_dropout", sparse_mode=4, atten_mask=TEMPLATE, pre_tokens=2, next_tokens=1, keep_prob=0.8),
]


def _op_args(q, k, v, pse=None, atten_mask=None, scale=0.4, keep_prob=1.0, pre_tokens=2147483647,
             next_tokens=2147483647, sparse_mode=0, pse_type=1, seed=3, offset=5):
    return (q, k, v, pse, atten_mask, q.shape[1], "BNSD", scale, keep_prob, pre_tokens, next_tokens, 0, None, None,
            None, sparse_mode, pse_type, None, None, seed, offset)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(case, dtype):
    kw = {k: v for k, v in case.items() if k != "name"}
    q, k, v = _inputs(dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.speedattn.fwd.default, _op_args(q, k, v, **kw))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_gradcheck_float64(case):
    kw = {k: v for k, v in case.items() if k != "name"}
    q, k, v = _inputs(torch.float64, requires_grad=True)

    def f(q, k, v):
        return torch.ops.speedattn.fwd(*_op_args(q, k, v, **kw))[0]

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("pse_type", [0, 1])
def test_gradcheck_pse(pse_type):
    q, k, v = _inputs(torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    pse = torch.randn(1, 4, 1, 7, generator=g, dtype=torch.float64, requires_grad=True)  # row-broadcast form

    def f(q, k, v, pse):
        return torch.ops.speedattn.fwd(*_op_args(q, k, v, pse=pse, pse_type=pse_type))[0]

    assert torch.autograd.gradcheck(f, (q, k, v, pse), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_matches_grad_api(dtype):
    """out.backward(dy) through the public wrapper equals speed_fusion_attention_grad with the
    forward's saved outputs, dropout included (same seed/offset -> same mask)."""
    speedattn.manual_seed(7)
    q, k, v = _inputs(dtype, S1=9, S2=9, D=16, requires_grad=True)
    kw = dict(sparse_mode=3, atten_mask=TEMPLATE, keep_prob=0.75, scale=0.25)
    out, smax, ssum, _, seed, offset, numels = sat.speed_fusion_attention(q, k, v, 4, "BNSD", **kw)
    dy = torch.randn_like(out, dtype=torch.float32).to(dtype)
    out.backward(dy)
    dq, dk, dv, _ = speedattn.speed_fusion_attention_grad(
        q.detach(), k.detach(), v.detach(), dy, 4, "BNSD", softmax_max=smax, softmax_sum=ssum,
        attention_in=out.detach(), seed=seed, offset=offset, numels=numels, **kw)
    assert torch.equal(q.grad, dq) and torch.equal(k.grad, dk) and torch.equal(v.grad, dv)


def test_wrapper_draws_and_advances_generator():
    speedattn.manual_seed(11)
    q, k, v = _inputs(torch.float32)
    *_, seed, offset, numels = sat.speed_fusion_attention(q, k, v, 4, "BNSD", keep_prob=0.5)
    assert (int(seed), int(offset), int(numels)) == (11, 0, 4 * 5 * 7)
    *_, seed2, offset2, _ = sat.speed_fusion_attention(q, k, v, 4, "BNSD", keep_prob=0.5)
    assert (int(seed2), int(offset2)) == (11, (4 * 5 * 7 + 3) // 4)


def test_wrapper_matches_numpy_api():
    speedattn.manual_seed(3)
    q, k, v = _inputs(torch.float32)
    a = sat.speed_fusion_attention(q, k, v, 4, "BNSD", keep_prob=0.6, scale=0.3)
    speedattn.manual_seed(3)
    b = speedattn.speed_fusion_attention(q, k, v, 4, "BNSD", keep_prob=0.6, scale=0.3)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_pse_grad_through_wrapper():
    q, k, v = _inputs(torch.float32, requires_grad=True)
    pse = torch.randn(1, 4, 5, 7, requires_grad=True)
    out = sat.speed_fusion_attention(q, k, v, 4, "BNSD", pse=pse, scale=0.5)[0]
    out.sum().backward()
    assert pse.grad is not None and pse.grad.shape == pse.shape and torch.isfinite(pse.grad).all()


def test_wrapper_rejects_bad_input_before_drawing():
    speedattn.manual_seed(5)
    q, k, v = _inputs(torch.float32)
    with pytest.raises(ValueError, match="keep_prob"):
        sat.speed_fusion_attention(q, k, v, 4, "BNSD", keep_prob=1.5)
    with pytest.raises(TypeError, match="input_layout"):
        sat.speed_fusion_attention(q, k, v, 4, 3)
    assert speedattn.rng_state() == (5, 0)
