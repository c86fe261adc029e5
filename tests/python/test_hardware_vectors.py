"""SPEC section 12: values produced on Ascend hardware by MindSpore's system test.

Inputs: numpy.random.seed(1967515154); randn(1, 2, 4, 4).astype(float16) (re-seeded before each
draw, so q = k = v = pse), layout BNSD, head_num 2, slopes [0.0625, 0.0039] float32 (N1,),
dy = ones. Statistics (pre-dropout, so reproducible) are compared to 2e-6 relative; outputs and
gradients of case C to fp16 rounding (4e-4 relative + 4e-4 absolute: one fp16 ulp at |x| < 2).
"""

import numpy as np
import pytest
from conftest import BACKENDS, as_int

import twin

SEED = 1967515154
SLOPES = np.array([0.0625, 0.0039], dtype=np.float32)

CASES = {
    "A": dict(kw=dict(sparse_mode=2, pse_type=2, scale=0.3, keep_prob=0.7), mask="template",
              pse="slopes",
              max=[[1.45018446, 0.09358247, 1.49721396, 0.78424454],
                   [0.30972376, 0.81006205, 0.22907121, 1.46355951]],
              sum=[[1, 1.62510896, 1.36333108, 2.40727997],
                   [1, 1.54749846, 2.43408227, 1.79947615]]),
    "B": dict(kw=dict(sparse_mode=3, pse_type=3, scale=0.4, keep_prob=0.9), mask="template",
              pse="slopes",
              max=[[1.93357933, 0.12477662, 1.99628532, 1.04565942],
                   [0.41296503, 1.08008277, 0.30542827, 1.95141256]],
              sum=[[1, 1.54574370, 1.23072267, 2.19226146],
                   [1, 1.44847870, 2.28967285, 1.53119659]]),
    "C": dict(kw=dict(sparse_mode=4, pre_tokens=2, next_tokens=2, pse_type=3, scale=0.5,
                      keep_prob=1.0), mask=None, pse="slopes",
              max=[[2.41697407, 0.50237018, 2.49535656, 1.30707419],
                   [0.51620626, 1.35010338, 0.90221488, 2.43926573]],
              sum=[[1.11589324, 2.63446760, 1.32268143, 1.99203920],
                   [2.62266779, 1.89210248, 2.28339052, 1.35696399]]),
    "D": dict(kw=dict(sparse_mode=1, pse_type=1, scale=0.2, keep_prob=0.5), mask="zeros",
              pse="x",
              max=[[1.33612561, 0.15099691, 0.83408016, 0.51408333],
                   [0.29119930, 0.77636951, 0.33583462, 1.00331867]],
              sum=[[1.59921753, 3.39330482, 2.08144379, 2.87661767],
                   [3.14441872, 2.64547515, 3.30701256, 2.45223570]]),
}

C_OUT = [[[1.60644531, 0.46069336, 0.82568359, -0.42773438],
          [-0.45385742, -0.73193359, -0.14514160, -0.49487305],
          [-1.10156250, -1.07910156, -0.56250000, -0.80664062],
          [-0.45629883, -1.02734375, 0.12396240, -0.37084961]],
         [[0.47729492, 0.31445312, 0.27221680, 0.45141602],
          [0.60351562, 0.55029297, 0.42407227, 0.43774414],
          [0.26367188, -0.02201843, 1.12304688, 0.21533203],
          [0.18151855, -0.29492188, 1.70605469, 0.14526367]]]
C_DQ = [[[0.49267578, 0.31079102, 0.19604492, -0.03540039],
         [1.16992188, 0.62255859, 0.68994141, 0.35034180],
         [0.40087891, 0.13977051, 0.34790039, 0.29345703],
         [0.80175781, 0.33374023, 0.56396484, 0.29785156]],
        [[0.15905762, 0.25561523, 0.14624023, 0.01330566],
         [0.18554688, 0.28979492, 0.03869629, 0.04693604],
         [0.11383057, 0.10272217, 0.11828613, 0.04751587],
         [0.05209351, 0.01346588, 0.09991455, 0.02937317]]]
C_DK = [[[0.16845703, -0.23095703, 0.17211914, -0.17211914],
         [-0.375, -0.28417969, -0.18676758, -0.11450195],
         [0.65576172, 0.97851562, 0.15136719, 0.42822266],
         [-0.44921875, -0.46313477, -0.13659668, -0.14172363]],
        [[-0.20739746, -0.15429688, -0.02813721, -0.20104980],
         [0.32446289, 0.26440430, 0.10656738, 0.28930664],
         [-0.12634277, -0.06414795, -0.28540039, -0.10491943],
         [0.00929260, -0.04586792, 0.20727539, 0.01663208]]]
C_DV_ROWS = [[1.11328125, 0.54882812, 1.43359375, 0.90429688],
             [0.74121094, 1.09179688, 0.71679688, 1.45019531]]


def hw_input():
    np.random.seed(SEED)
    return np.random.randn(1, 2, 4, 4).astype(np.float16)


def case_args(name):
    c = CASES[name]
    x = hw_input()
    q, k, v = hw_input(), hw_input(), hw_input()
    assert np.array_equal(q, x) and np.array_equal(k, x)
    kw = dict(c["kw"])
    if c["mask"] == "template":
        kw["atten_mask"] = twin.causal_template()
    elif c["mask"] == "zeros":
        kw["atten_mask"] = np.zeros((1, 2, 4, 4), dtype=bool)
    kw["pse"] = SLOPES.copy() if c["pse"] == "slopes" else hw_input()
    return q, k, v, kw


def _stats_ok(got, want, what):
    got = twin.to64(got)
    assert got.shape == (1, 2, 4, 8), f"{what}: shape {got.shape}"
    # the 8 trailing values are identical
    assert np.all(got == got[..., :1]), f"{what}: trailing 8 values differ"
    np.testing.assert_allclose(got[0, :, :, 0], np.array(want), rtol=2e-6, atol=0,
                               err_msg=what)


def _fp16_ok(got, want, what):
    np.testing.assert_allclose(twin.to64(got), np.array(want, dtype=np.float64), rtol=4e-4,
                               atol=4e-4, err_msg=what)


# ------------------------------------------------------------------------------------------------
# the twin alone
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", "ABCD")
def test_oracle_hardware_statistics(name):
    q, k, v, kw = case_args(name)
    _, mx, sm = twin.forward(q, k, v, 2, "BNSD", seed=10, offset=0, **kw)
    _stats_ok(mx, CASES[name]["max"], f"twin case {name} softmax_max")
    _stats_ok(sm, CASES[name]["sum"], f"twin case {name} softmax_sum")


def test_oracle_hardware_case_c_outputs_and_gradients():
    q, k, v, kw = case_args("C")
    out, _, _ = twin.forward(q, k, v, 2, "BNSD", **kw)
    _fp16_ok(out[0], C_OUT, "twin case C out")
    out16 = out.astype(np.float16)
    dq, dk, dv, _ = twin.backward(q, k, v, np.ones_like(q), 2, "BNSD", attention_in=out16, **kw)
    _fp16_ok(dq[0], C_DQ, "twin case C dq")
    _fp16_ok(dk[0], C_DK, "twin case C dk")
    _fp16_ok(dv[0], np.repeat(np.array(C_DV_ROWS)[..., None], 4, axis=-1), "twin case C dv")


def test_oracle_hardware_case_d_pins_pse_type_1():
    """SPEC: pse_type 0 semantics would be off by ~200 % in case D."""
    q, k, v, kw = case_args("D")
    kw["pse_type"] = 0
    _, mx, _ = twin.forward(q, k, v, 2, "BNSD", **kw)
    assert not np.allclose(mx[0, :, :, 0], CASES["D"]["max"], rtol=0.1)


# ------------------------------------------------------------------------------------------------
# the library, both backends
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", "ABCD")
def test_hardware_statistics(sa, name, backend):
    q, k, v, kw = case_args(name)
    sa.manual_seed(10)
    res = sa.speed_fusion_attention(q, k, v, 2, "BNSD", backend=backend, **kw)
    out, mx, sm, sout, seed, offset, numels = res
    assert out.dtype == np.float16 and out.shape == (1, 2, 4, 4)
    _stats_ok(mx, CASES[name]["max"], f"[{backend}] case {name} softmax_max")
    _stats_ok(sm, CASES[name]["sum"], f"[{backend}] case {name} softmax_sum")
    assert as_int(numels) == 32
    if name == "D":
        assert (as_int(seed), as_int(offset), as_int(numels)) == (10, 0, 32)
    if kw["keep_prob"] < 1.0:  # dropout: bit-exact against the twin's mask
        ref = twin.forward(q, k, v, 2, "BNSD", seed=as_int(seed), offset=as_int(offset),
                           **kw)[0]
        twin.assert_close(out, ref, "float16", f"[{backend}] case {name} out")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hardware_case_c_outputs_and_gradients(sa, backend):
    q, k, v, kw = case_args("C")
    res = sa.speed_fusion_attention(q, k, v, 2, "BNSD", backend=backend, **kw)
    out, mx, sm, _, seed, offset, numels = res
    _fp16_ok(out[0], C_OUT, f"[{backend}] case C out")
    dq, dk, dv, dpse = sa.speed_fusion_attention_grad(
        q, k, v, np.ones_like(q), 2, "BNSD", softmax_max=mx, softmax_sum=sm, attention_in=out,
        seed=seed, offset=offset, numels=numels, backend=backend, **kw)
    for g in (dq, dk, dv):
        assert g.dtype == np.float16 and g.shape == (1, 2, 4, 4)
    _fp16_ok(dq[0], C_DQ, f"[{backend}] case C dq")
    _fp16_ok(dk[0], C_DK, f"[{backend}] case C dk")
    _fp16_ok(dv[0], np.repeat(np.array(C_DV_ROWS)[..., None], 4, axis=-1),
             f"[{backend}] case C dv")
    assert dpse.shape == (2,) and dpse.dtype == np.float32  # slopes gradient
    refs, mags = twin.backward(q, k, v, np.ones_like(q), 2, "BNSD", attention_in=out,
                               magnitudes=True, **kw)
    twin.assert_close(dpse, refs[3], "float32", f"[{backend}] case C dpse (slopes)",
                      magnitude=mags[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hardware_case_c_torch(sa, backend):
    torch = pytest.importorskip("torch")
    q, k, v, kw = case_args("C")
    kw["pse"] = torch.from_numpy(kw["pse"])
    t = torch.from_numpy(q)
    res = sa.speed_fusion_attention(t, t.clone(), t.clone(), 2, "BNSD", backend=backend, **kw)
    assert isinstance(res[0], torch.Tensor) and res[0].dtype == torch.float16
    _fp16_ok(res[0][0], C_OUT, f"[{backend}] torch case C out")
    _stats_ok(res[1], CASES["C"]["max"], f"[{backend}] torch case C softmax_max")
