"""`speedattn demo`: Llama-style grouped-query causal attention, validated, timed, compared.

The problem (defaults): B=1, N1=32 query heads, N2=8 kv heads (GQA, group 4), S=2048, D=128,
bfloat16, layout BSND, sparse_mode 3 (bottom-right causal) with the (2048, 2048) template mask,
scale 1/sqrt(D) — the attention of one Llama-3-8B layer on a 2k-token prompt.

Steps:

1. validate: the float64 reference (``backend="reference"``) is slow plain loops, so it runs on the
   first ``--check-seq`` tokens (default 256). With causal attention and S1 == S2, row i only sees
   keys j <= i, so the first 256 output rows of the timed full-size run ARE the output of the
   256-token prefix problem: those rows are compared with the reference directly. The backward
   (whose dK / dV depend on every later row) is validated on the prefix problem itself.
   torch SDPA is checked against the same reference when torch is installed.
2. time: median of ``--repeats`` runs of the forward and the backward (speedattn_grad), and of
   ``torch.nn.functional.scaled_dot_product_attention`` (+ autograd backward) on the same data with
   the same thread count.
3. report shapes, kernels, max errors and tolerances, times, TFLOP/s (FlashAttention's convention:
   forward 4*B*N1*S1*S2*D, halved for causal; backward 2.5x) and the speedup over PyTorch.

Exit status: 0 when every validation passes, 1 otherwise.
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import numpy as np

__all__ = ["add_arguments", "run_from_args", "main"]

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}
# unit roundoff u of each output dtype: both sides round once, so they may differ by 2u|x|
_UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}
_FLOOR_REL = 2.0**-15  # float32 accumulation differences (tests/python/twin.py uses the same floor)
_FLOOR_ABS = 1e-6
_LAYOUTS = ("BSND", "BNSD", "BSH", "SBH")
_SEQ_AXIS = {"BSND": 1, "BNSD": 2, "BSH": 1, "SBH": 0}


def add_arguments(ap) -> None:
    ap.add_argument("--seq", type=int, default=2048, metavar="S",
                    help="sequence length S1 = S2 of the timed problem (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=1, metavar="B", help="batch size (default: %(default)s)")
    ap.add_argument("--heads", type=int, default=32, metavar="N1", help="query heads (default: %(default)s)")
    ap.add_argument("--kv-heads", type=int, default=8, metavar="N2",
                    help="key/value heads, must divide N1 (default: %(default)s)")
    ap.add_argument("--head-dim", type=int, default=128, metavar="D", help="head size (default: %(default)s)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES), help="input dtype (default: %(default)s)")
    ap.add_argument("--layout", default="BSND", choices=_LAYOUTS, help="input_layout (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for speedattn and torch (default: speedattn's, = physical cores)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median; default: %(default)s)")
    ap.add_argument("--check-seq", type=int, default=256, metavar="S",
                    help="tokens validated against the float64 reference (default: %(default)s)")
    ap.add_argument("--no-backward", action="store_true", help="skip the backward")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: %(default)s)")


# ----------------------------------------------------------------------------------------------
# arrays


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """(B, N, S, D) -> the layout's shape, contiguous."""
    B, N, S, D = x.shape
    if layout == "BNSD":
        return np.ascontiguousarray(x)
    bsnd = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
    if layout == "BSND":
        return bsnd
    if layout == "BSH":
        return bsnd.reshape(B, S, N * D)
    return np.ascontiguousarray(bsnd.reshape(B, S, N * D).transpose(1, 0, 2))  # SBH


def _prefix(x: np.ndarray, layout: str, s: int) -> np.ndarray:
    """The first s tokens (a strided view: speedattn takes it without copying)."""
    idx = [slice(None)] * x.ndim
    idx[_SEQ_AXIS[layout]] = slice(0, s)
    return x[tuple(idx)]


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        return x.detach().float().numpy().astype(np.float64)
    return np.asarray(x).astype(np.float64)


def _tolerance(ref, dtype: str, floor_rel: float = _FLOOR_REL) -> float:
    amax = float(np.max(np.abs(ref))) if ref.size else 0.0
    return (2.0 * _UNIT_ROUNDOFF[dtype] + floor_rel) * amax + _FLOOR_ABS


def _err(got, ref) -> float:
    return float(np.max(np.abs(_f64(got) - _f64(ref)))) if np.size(ref) else 0.0


def _median_time(fn, repeats: int, budget_s: float = 8.0) -> tuple[float, int]:
    """(median seconds, runs) of fn() after one warm-up run; fewer runs if a run is slow (a warm-up
    longer than half the budget is the only sample)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > budget_s / 2:
        return first, 1
    n = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:8.2f} ms" if s < 10 else f"{s:8.2f} s "


def _torch_view(x: np.ndarray, torch):
    """Zero-copy torch tensor of a contiguous numpy array (bfloat16 via a uint16 view)."""
    x = np.ascontiguousarray(x)
    if x.dtype == _np_dtype("bfloat16"):
        return torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(x)


# ----------------------------------------------------------------------------------------------
# the demo


def run_from_args(args, out=None) -> int:
    import speedattn as sa

    out = sys.stdout if out is None else out

    def say(line: str = "") -> None:
        print(line, file=out)
        out.flush()

    dtype = _DTYPES[args.dtype]
    B, N1, N2, S, D = args.batch, args.heads, args.kv_heads, args.seq, args.head_dim
    for name, v in (("--seq", S), ("--batch", B), ("--heads", N1), ("--kv-heads", N2), ("--head-dim", D),
                    ("--repeats", args.repeats), ("--check-seq", args.check_seq)):
        if v < 1:
            raise SystemExit(f"speedattn demo: {name} must be >= 1, got {v}")
    if N1 % N2:
        raise SystemExit(f"speedattn demo: --heads ({N1}) must be a multiple of --kv-heads ({N2})")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"speedattn demo: --threads must be >= 1, got {args.threads}")
        sa.set_num_threads(args.threads)
    threads = sa.get_num_threads()
    layout = args.layout
    scale = 1.0 / math.sqrt(D)
    check_s = min(args.check_seq, S)
    do_bwd = not args.no_backward and hasattr(sa, "speed_fusion_attention_grad")

    # inputs: logical (B, N, S, D), then the chosen layout
    rng = np.random.default_rng(args.seed)
    npdt = _np_dtype(dtype)
    q4 = rng.standard_normal((B, N1, S, D), dtype=np.float32).astype(npdt)
    k4 = rng.standard_normal((B, N2, S, D), dtype=np.float32).astype(npdt)
    v4 = rng.standard_normal((B, N2, S, D), dtype=np.float32).astype(npdt)
    dy4 = rng.standard_normal((B, N1, S, D), dtype=np.float32).astype(npdt) if do_bwd else None
    q, k, v = (_to_layout(x, layout) for x in (q4, k4, v4))
    dy = _to_layout(dy4, layout) if do_bwd else None
    template = np.triu(np.ones((2048, 2048), dtype=np.bool_), k=1)
    kw = dict(head_num=N1, input_layout=layout, atten_mask=template, sparse_mode=3, scale=scale)

    def fwd(qq, kk, vv, backend="auto"):
        return sa.speed_fusion_attention(qq, kk, vv, backend=backend, **kw)

    def bwd(qq, kk, vv, gg, f, backend="auto"):
        o, smax, ssum, _, seed, offset, numels = f
        return sa.speed_fusion_attention_grad(qq, kk, vv, gg, softmax_max=smax, softmax_sum=ssum, attention_in=o,
                                              seed=seed, offset=offset, numels=numels, backend=backend, **kw)

    fk = sa.forward_kernel_for(dtype)
    bk = sa.backward_kernel_for(dtype) if do_bwd else None
    cap = sa.isa_cap()
    say(f"speedattn {sa.__version__} demo: Llama-style grouped-query causal attention")
    say(f"  query {layout} {tuple(q.shape)}, key/value {tuple(k.shape)}, {dtype}")
    say(f"  B={B} N1={N1} N2={N2} (GQA group {N1 // N2}) S1=S2={S} D={D}; sparse_mode=3 (causal, bottom-right) "
        f"with the (2048, 2048) template; scale=1/sqrt({D})")
    say(f"  kernels: forward {fk}" + (f", backward {bk}" if bk else "") +
        f"; {threads} thread(s); ISA cap {cap}")

    # ---- the timed-size forward (its first check_s rows are validated below)
    full = fwd(q, k, v)

    # ---- validation
    ok = True
    say()
    say(f"validation against backend=\"reference\" (float64 loops) on the first {check_s} tokens:")
    qs, ks, vs = (_prefix(x, layout, check_s) for x in (q, k, v))
    ref = fwd(qs, ks, vs, backend="reference")
    got_out = _prefix(full[0], layout, check_s)
    e_out, tol_out = _err(got_out, ref[0]), _tolerance(_f64(ref[0]), dtype)
    e_max = _err(full[1][:, :, :check_s], ref[1])
    e_sum = _err(full[2][:, :, :check_s], ref[2])
    tol_stat = _tolerance(_f64(ref[2]), "float32")
    f_ok = e_out <= tol_out and e_max <= _tolerance(_f64(ref[1]), "float32") and e_sum <= tol_stat
    ok &= f_ok
    say(f"  forward  (rows 0..{check_s - 1} of the S={S} run; causal, so they equal the {check_s}-token problem)")
    say(f"           out max|err| {e_out:.2e} (tol {tol_out:.2e}), softmax_max {e_max:.1e}, "
        f"softmax_sum {e_sum:.1e}  {'OK' if f_ok else 'FAIL'}")
    if do_bwd:
        gs = _prefix(dy, layout, check_s)
        g_ref = bwd(qs, ks, vs, gs, ref, backend="reference")
        g_got = bwd(qs, ks, vs, gs, ref)  # same saved forward state: checks the backward alone
        parts, b_ok = [], True
        for name, a, r in zip(("dq", "dk", "dv"), g_got[:3], g_ref[:3]):
            r64 = _f64(r)
            e, tol = _err(a, r64), _tolerance(r64, dtype, floor_rel=4 * _FLOOR_REL)
            b_ok &= e <= tol
            parts.append(f"{name} {e:.2e} (tol {tol:.2e})")
        ok &= b_ok
        say(f"  backward ({check_s}-token problem) max|err| " + ", ".join(parts) + f"  {'OK' if b_ok else 'FAIL'}")
    say(f"  tolerance = (2u + 2^-15) * max|ref|: both sides round once to {dtype} (unit roundoff u = 2^"
        f"{int(math.log2(_UNIT_ROUNDOFF[dtype]))}), plus float32 accumulation (4x that floor for gradients)")

    # ---- torch
    torch = F = None
    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            say("  (torch is not installed: no PyTorch comparison; pip install torch)")
    if torch is not None:
        torch.set_num_threads(threads)
        tq, tk, tv = (_torch_view(x, torch) for x in (q4, k4, v4))
        tkw = {"is_causal": True, "scale": scale}  # S1 == S2: top-left == bottom-right causal
        if N1 != N2:
            tkw["enable_gqa"] = True
        with torch.no_grad():
            th_small = F.scaled_dot_product_attention(tq[:, :, :check_s], tk[:, :, :check_s], tv[:, :, :check_s],
                                                      **tkw)
        ref_bnsd = _to_layout_back(ref[0], layout, N1)
        say(f"  torch SDPA forward max|err| vs the same reference {_err(th_small, ref_bnsd):.2e} (for comparison)")

    # ---- timing
    say()
    say(f"timing (median of up to {args.repeats} runs after a warm-up, {threads} thread(s)):")
    flops_f = 4.0 * B * N1 * S * S * D / 2  # causal: half of the S x S pairs
    rows = []
    t_sa_f, _ = _median_time(lambda: fwd(q, k, v), args.repeats)
    rows.append(["forward", t_sa_f, flops_f])
    if do_bwd:
        saved = full
        t_sa_b, _ = _median_time(lambda: bwd(q, k, v, dy, saved), args.repeats)
        rows.append(["backward", t_sa_b, 2.5 * flops_f])
    if torch is not None:
        with torch.no_grad():
            t_th_f, _ = _median_time(lambda: F.scaled_dot_product_attention(tq, tk, tv, **tkw), args.repeats)
        rows[0].append(t_th_f)
        if do_bwd:
            tq2, tk2, tv2 = (x.detach().clone().requires_grad_(True) for x in (tq, tk, tv))
            tout = F.scaled_dot_product_attention(tq2, tk2, tv2, **tkw)
            tdy = _torch_view(dy4, torch)
            t_th_b, _ = _median_time(
                lambda: torch.autograd.grad(tout, (tq2, tk2, tv2), tdy, retain_graph=True), args.repeats)
            rows[1].append(t_th_b)
    head = f"  {'':9}{'speedattn':>12}{'TFLOP/s':>9}"
    if torch is not None:
        head += f"{'PyTorch SDPA':>16}{'TFLOP/s':>9}{'speedup':>9}"
    say(head)
    for row in rows:
        name, t_sa, fl = row[:3]
        line = f"  {name:9}{_fmt_time(t_sa):>12}{fl / t_sa / 1e12:9.3f}"
        if len(row) > 3:
            t_th = row[3]
            line += f"{_fmt_time(t_th):>16}{fl / t_th / 1e12:9.3f}{t_th / t_sa:8.2f}x"
        say(line)
    say(f"  FLOPs: forward 4*B*N1*S1*S2*D/2 = {flops_f / 1e9:.1f} GFLOP (causal), backward 2.5x"
        + (f"; torch {torch.__version__} with enable_gqa / is_causal" if torch is not None else ""))
    say()
    say("result: " + ("OK — speedattn matches the reference" if ok else "FAIL — a validation exceeded its tolerance"))
    return 0 if ok else 1


def _to_layout_back(x, layout: str, N: int) -> np.ndarray:
    """A layout-shaped array -> (B, N, S, D)."""
    a = _f64(x)
    if layout == "BNSD":
        return a
    if layout == "SBH":
        a = a.transpose(1, 0, 2)
    if a.ndim == 3:  # BSH
        Bb, Ss, H = a.shape
        a = a.reshape(Bb, Ss, N, H // N)
    return a.transpose(0, 2, 1, 3)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="speedattn demo", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
