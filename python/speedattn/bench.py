"""Benchmark speedattn against PyTorch's CPU SDPA, after validating both against the reference.

    from speedattn import bench
    results = bench.run("default", dtypes=["bf16"], threads=2, json="out.json", plot=None, progress=True)

or from a shell: ``python bench/attention.py --shapes default`` (see bench/README.md). For every case
(shape x dtype):

1. **validate** on a reduced copy of the case (S -> 256, at most 2 kv heads and batch 2): speedattn
   (backend "auto") and torch SDPA are both compared with speedattn's float64 reference
   (backend "reference"); the max abs error is reported, and a case above tolerance is marked FAIL;
2. **time** speedattn and ``torch.nn.functional.scaled_dot_product_attention`` on identical torch
   tensors (layout BNSD), alternating the two (A B, B A, ...), and report medians;
3. report TFLOP/s (convention below), % of the ceiling measured in the same run by bench/peaks.cpp,
   the speedup over PyTorch and the peak extra memory of one call.

FLOP convention (FlashAttention's): forward = 4 * B * N1 * S1 * S2 * D, halved when causal with
S1 == S2; for a band (or causal with S1 != S2) 4 * D * B * N1 * (exact number of kept (i, j) pairs).
Backward = 2.5 x forward, forward + backward = 3.5 x forward. GQA counts query heads N1.

Memory: the growth of the process's resident set during one call. Free heap pages are returned to the
OS first (malloc_trim(0)), the peak RSS is reset (``echo 5 > /proc/self/clear_refs``) and
VmHWM - VmRSS(before) is read after the call. It includes the call's outputs and counts C++
allocations (which tracemalloc would not see); it does not count caches a library keeps resident from
an earlier call. For torch with an explicit S1 x S2 mask (band, ALiBi) the mask's size is added,
since torch needs it as an input where speedattn generates the mask on the fly.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib.util
import json as _json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = ["Case", "SHAPE_SETS", "DTYPES", "run", "add_arguments", "run_from_args", "main", "measure_peaks"]

# ---------------------------------------------------------------------------------------------
# cases and named shape sets


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem. mask: "none" (sparse_mode 0, no mask), "causal" (sparse_mode 3 with the
    2048x2048 template; torch is_causal=True), "band" (sparse_mode 4 with the template and
    pre_tokens / next_tokens). alibi: pse_type 2 with slopes 2^(-8(n+1)/N1) (torch gets the
    equivalent additive S1 x S2 bias)."""

    B: int
    N1: int
    N2: int
    S1: int
    S2: int
    D: int
    mask: str = "none"
    alibi: bool = False
    pre_tokens: int = 2147483647
    next_tokens: int = 2147483647

    def __post_init__(self):
        if self.mask not in ("none", "causal", "band"):
            raise ValueError(f"Case.mask must be 'none', 'causal' or 'band', got {self.mask!r}")
        if self.N1 % self.N2:
            raise ValueError(f"Case: N1 ({self.N1}) must be a multiple of N2 ({self.N2})")

    @property
    def label(self) -> str:
        heads = f"N{self.N1}" if self.N1 == self.N2 else f"N{self.N1}/{self.N2}"
        seq = f"S{self.S1}" if self.S1 == self.S2 else f"S{self.S1}x{self.S2}"
        extra = []
        if self.mask == "causal":
            extra.append("causal")
        elif self.mask == "band":
            extra.append(f"band({self.pre_tokens},{self.next_tokens})")
        if self.alibi:
            extra.append("alibi")
        return " ".join([f"B{self.B}", heads, seq, f"D{self.D}"] + (["+".join(extra)] if extra else []))

    def reduced(self, s: int = 256) -> "Case":
        """The same configuration with sequence lengths scaled down to about s (for validation):
        S1 == 1 stays 1, the band window scales with the sequence, at most 2 kv heads, batch 2."""
        f = min(1.0, s / max(self.S1, self.S2))
        S1 = self.S1 if self.S1 == 1 else max(1, round(self.S1 * f))
        S2 = max(1, round(self.S2 * f))
        pre, nxt = self.pre_tokens, self.next_tokens
        if self.mask == "band":
            pre = pre if pre >= 2147483647 else max(0, round(pre * f))
            nxt = nxt if nxt >= 2147483647 else max(0, round(nxt * f))
        n2 = min(self.N2, 2)
        return dataclasses.replace(self, B=min(self.B, 2), N1=n2 * (self.N1 // self.N2), N2=n2, S1=S1, S2=S2,
                                   pre_tokens=pre, next_tokens=nxt)

    def kept_pairs(self) -> int:
        """Per (batch, head): S1*S2, S1*S2/2 for causal with S1 == S2 (the standard convention), else
        the exact count of kept (i, j)."""
        if self.mask == "none":
            return self.S1 * self.S2
        if self.mask == "causal" and self.S1 == self.S2:
            return self.S1 * self.S2 // 2
        d = self.S2 - self.S1
        if self.mask == "causal":
            lo_off, hi_off = -(2**62), d
        else:  # band, aligned bottom-right (SPEC section 3, mode 4)
            lo_off, hi_off = d - self.pre_tokens, d + self.next_tokens
        total = 0
        for i in range(self.S1):  # O(S1); S1 <= 512k
            lo = max(0, i + lo_off)
            hi = min(self.S2 - 1, i + hi_off)
            if hi >= lo:
                total += hi - lo + 1
        return total

    def forward_flops(self) -> int:
        return 4 * self.B * self.N1 * self.D * self.kept_pairs()


def _square(B, N1, N2, S, D, **kw) -> Case:
    return Case(B=B, N1=N1, N2=N2, S1=S, S2=S, D=D, **kw)


SHAPE_SETS: dict[str, dict] = {
    # The headline comparison. fp32 at S4096 N16 is ~0.5 s a call here: reps adapt to the budget.
    "default": {
        "dtypes": ["bf16", "fp16", "fp32"],
        "budget_s": 3.0,
        "min_reps": 3,
        "cases": [
            _square(1, 16, 16, 4096, 128),
            _square(1, 16, 16, 4096, 128, mask="causal"),
            _square(2, 16, 16, 2048, 64),
            _square(1, 32, 8, 2048, 128),                               # GQA, G = 4
            _square(1, 4, 4, 16384, 128, mask="causal"),                # long sequence
            Case(B=1, N1=32, N2=8, S1=1, S2=32768, D=128),              # decode
            _square(1, 16, 16, 4096, 128, mask="band", pre_tokens=1023, next_tokens=0),  # sliding window
            _square(1, 8, 8, 2048, 128, mask="causal", alibi=True),     # BLOOM-style ALiBi
        ],
    },
    # The backward targets (run with --backward): B1 N16 S2048 D128, full and causal.
    "backward": {
        "dtypes": ["bf16", "fp16", "fp32"],
        "budget_s": 3.0,
        "min_reps": 3,
        "cases": [_square(1, 16, 16, 2048, 128), _square(1, 16, 16, 2048, 128, mask="causal")],
    },
    # CI smoke test: every feature on small shapes, < 30 s in all.
    "quick": {
        "dtypes": ["bf16", "fp16", "fp32"],
        "budget_s": 0.15,
        "min_reps": 3,
        "peaks_reps": 3,
        "peaks_seconds": 0.05,
        "cases": [
            _square(1, 4, 4, 512, 64),
            _square(1, 4, 4, 512, 64, mask="causal"),
            _square(1, 8, 2, 512, 128),
            Case(B=1, N1=8, N2=2, S1=1, S2=2048, D=128),
            _square(1, 4, 4, 512, 64, mask="band", pre_tokens=127, next_tokens=0),
            _square(1, 4, 4, 512, 64, mask="causal", alibi=True),
        ],
    },
    # Sequence-length sweep for the plot (TFLOP/s vs S), full and causal.
    "seqlen": {
        "dtypes": ["bf16", "fp16", "fp32"],
        "budget_s": 2.0,
        "min_reps": 3,
        "cases": [_square(1, 8, 8, s, 128, mask=m) for m in ("none", "causal")
                  for s in (512, 1024, 2048, 4096, 8192)],
    },
    # Extra memory at 128k tokens (S1 = S2 = 131072): O(S) vs O(S^2). One call each (the warm-up is
    # the timing); takes minutes.
    "memory": {
        "dtypes": ["bf16"],
        "budget_s": 0.0,
        "min_reps": 0,
        "cases": [_square(1, 1, 1, 131072, 128, mask="causal")],
    },
}

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_DTYPE_ALIASES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
                  "fp32": "fp32", "float32": "fp32", "float": "fp32"}
# Validation tolerance on max |out - reference|, relative to max(1, max |reference|): a few ulps of
# the output dtype (both outputs are rounded once to it; SPEC section 11).
_TOLERANCE = {"bf16": 2.0**-6, "fp16": 2.0**-9, "fp32": 2.0**-19}
_VALIDATION_S = 256
# Pause before each timed call. torch's libgomp workers spin after a parallel region (GOMP_SPINCOUNT,
# 300000 pause instructions by default: milliseconds on this core) and would steal the 2 cores from
# the next call of the other library; the pause lets them park, so each call starts on a quiet machine.
_SETTLE_S = 0.01

# ---------------------------------------------------------------------------------------------
# peaks (bench/peaks.cpp via bench/peaks.py, found in the source tree)


def _peaks_module():
    """bench/peaks.py of the source tree this package sits in (or $SPEEDATTN_BENCH_DIR), or None."""
    candidates = []
    if os.environ.get("SPEEDATTN_BENCH_DIR"):
        candidates.append(Path(os.environ["SPEEDATTN_BENCH_DIR"]) / "peaks.py")
    candidates.append(Path(__file__).resolve().parents[2] / "bench" / "peaks.py")
    for path in candidates:
        if path.is_file() and path.with_name("peaks.cpp").is_file():
            spec = importlib.util.spec_from_file_location("_speedattn_bench_peaks", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def measure_peaks(threads: int, reps: int = 5, seconds: float = 0.1) -> dict | None:
    """Hardware ceilings for 1 and `threads` threads (bench/peaks.cpp), or None if unavailable."""
    mod = _peaks_module()
    if mod is None:
        print("speedattn bench: bench/peaks.py not found (set SPEEDATTN_BENCH_DIR to the source tree's "
              "bench/); % of peak is not reported", file=sys.stderr)
        return None
    try:
        return mod.measure(reps=reps, seconds=seconds, threads=threads)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"speedattn bench: peak probe unavailable: {e}", file=sys.stderr)
        return None


def _peak_for(peaks: dict | None, probe: str, threads: int) -> float | None:
    try:
        return float(peaks["probes"][probe][str(threads)]["max"]) * 1e9
    except (TypeError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------
# memory: RSS growth of one call


_libc = None


def _malloc_trim() -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _with_memory(fn: Callable[[], object]) -> tuple[object, int | None]:
    """(fn(), peak RSS growth in bytes during fn) or (fn(), None) where /proc cannot tell."""
    gc.collect()
    _malloc_trim()
    rss0 = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    result = fn()
    hwm = _status_kib("VmHWM")
    if not reset or rss0 is None or hwm is None:
        return result, None
    return result, max(0, hwm - rss0) * 1024


# ---------------------------------------------------------------------------------------------
# inputs and the two implementations


class _Inputs:
    """Torch tensors (BNSD) of one case and the keyword arguments of both implementations."""

    def __init__(self, case: Case, dtype: str, torch, seed: int = 0, grad: bool = False):
        tdt = getattr(torch, DTYPES[dtype])
        g = torch.Generator().manual_seed(seed)
        c = case
        self.case, self.dtype = c, dtype
        self.q = torch.randn(c.B, c.N1, c.S1, c.D, generator=g).to(tdt)
        self.k = torch.randn(c.B, c.N2, c.S2, c.D, generator=g).to(tdt)
        self.v = torch.randn(c.B, c.N2, c.S2, c.D, generator=g).to(tdt)
        self.dy = torch.randn(c.B, c.N1, c.S1, c.D, generator=g).to(tdt) if grad else None
        self.scale = 1.0 / math.sqrt(c.D)
        # speedattn
        sa = {"head_num": c.N1, "input_layout": "BNSD", "scale": self.scale}
        if c.mask != "none":
            sa["atten_mask"] = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
            sa["sparse_mode"] = 3 if c.mask == "causal" else 4
        if c.mask == "band":
            sa["pre_tokens"], sa["next_tokens"] = c.pre_tokens, c.next_tokens
        slopes = None
        if c.alibi:
            slopes = torch.tensor([2.0 ** (-8.0 * (n + 1) / c.N1) for n in range(c.N1)], dtype=torch.float32)
            sa["pse"], sa["pse_type"] = slopes, 2
        self.sa_kwargs = sa
        # torch SDPA: is_causal for causal with S1 == S2 (top-left == bottom-right), else an explicit
        # additive (1, N1 or 1, S1, S2) mask in the input dtype: 0 kept, -inf masked, + ALiBi bias.
        th = {"scale": self.scale}
        if c.N1 != c.N2:
            th["enable_gqa"] = True
        self.torch_mask_bytes = 0
        if c.mask == "causal" and c.S1 == c.S2 and not c.alibi:
            th["is_causal"] = True
        elif c.mask != "none" or c.alibi:
            i = torch.arange(c.S1).view(-1, 1)
            j = torch.arange(c.S2).view(1, -1)
            d = c.S2 - c.S1
            bias = torch.zeros(1, c.N1 if c.alibi else 1, c.S1, c.S2, dtype=torch.float32)
            if c.alibi:
                bias -= slopes.view(1, -1, 1, 1) * (j - i).abs().to(torch.float32)
            if c.mask == "causal":
                bias.masked_fill_(j > i + d, float("-inf"))
            elif c.mask == "band":
                bias.masked_fill_((j < i + d - c.pre_tokens) | (j > i + d + c.next_tokens), float("-inf"))
            th["attn_mask"] = bias.to(tdt)
            self.torch_mask_bytes = th["attn_mask"].numel() * th["attn_mask"].element_size()
        self.torch_kwargs = th

    def byte_count(self) -> int:
        """Compulsory traffic of a forward: q, k, v read, out written."""
        return (2 * self.q.numel() + self.k.numel() + self.v.numel()) * self.q.element_size()


def _sa_forward(sa, x: _Inputs, backend: str = "auto"):
    return sa.speed_fusion_attention(x.q, x.k, x.v, backend=backend, **x.sa_kwargs)


def _sa_backward(sa, x: _Inputs, fwd, backend: str = "auto"):
    out, smax, ssum, _, seed, offset, numels = fwd
    return sa.speed_fusion_attention_grad(x.q, x.k, x.v, x.dy, softmax_max=smax, softmax_sum=ssum,
                                          attention_in=out, seed=seed, offset=offset, numels=numels,
                                          backend=backend, **x.sa_kwargs)


def _torch_forward(F, x: _Inputs, q=None, k=None, v=None):
    return F.scaled_dot_product_attention(x.q if q is None else q, x.k if k is None else k,
                                          x.v if v is None else v, **x.torch_kwargs)


# ---------------------------------------------------------------------------------------------
# validation


def _max_err(a, ref) -> float:
    return float((a.float() - ref.float()).abs().max()) if a.numel() else 0.0


def _validate(sa, torch, F, case: Case, dtype: str, backward: bool) -> dict:
    """Errors of speedattn (auto) and torch vs the reference on case.reduced()."""
    small = case.reduced(_VALIDATION_S)
    x = _Inputs(small, dtype, torch, seed=1, grad=backward)
    ref = _sa_forward(sa, x, "reference")
    got = _sa_forward(sa, x)
    with torch.no_grad():
        th = _torch_forward(F, x)
    ref_max = float(ref[0].float().abs().max())
    tol = _TOLERANCE[dtype] * max(1.0, ref_max)
    res = {"shape": small.label, "tolerance": tol,
           "speedattn_err": _max_err(got[0], ref[0]), "torch_err": _max_err(th, ref[0])}
    res["ok"] = res["speedattn_err"] <= tol
    if backward:
        try:
            gref = _sa_backward(sa, x, ref, "reference")
            ggot = _sa_backward(sa, x, got)
        except Exception as e:  # noqa: BLE001 - a missing/unfinished backward is reported, not fatal
            res["backward_error"] = f"{type(e).__name__}: {e}"
            return res
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (x.q, x.k, x.v))
        tg = torch.autograd.grad(_torch_forward(F, x, q, k, v), (q, k, v), x.dy)
        scale = max([1.0] + [float(t.float().abs().max()) for t in gref[:3]])
        res["grad_tolerance"] = 4 * _TOLERANCE[dtype] * scale
        res["speedattn_grad_err"] = max(_max_err(a, b) for a, b in zip(ggot[:3], gref[:3]))
        res["torch_grad_err"] = max(_max_err(a, b) for a, b in zip(tg, gref[:3]))
        res["ok"] = res["ok"] and res["speedattn_grad_err"] <= res["grad_tolerance"]
    return res


# ---------------------------------------------------------------------------------------------
# timing


def _time_pair(fns: dict[str, Callable[[], object]], budget_s: float, min_reps: int, max_reps: int = 50):
    """Warm up each (measuring memory), then alternate them (ABBA...) for about budget_s in total.

    Returns {name: {"median_s", "min_s", "reps", "mem_bytes"}}; with min_reps 0 and no budget the
    warm-up call is the only timed one (reps 0).
    """
    names = list(fns)
    mem, first = {}, {}
    for n in names:
        t0 = time.perf_counter()
        r, mem[n] = _with_memory(fns[n])
        first[n] = time.perf_counter() - t0
        del r
    per_round = sum(first.values())
    reps = max(min_reps, min(max_reps, int(budget_s / per_round) if per_round > 0 else max_reps))
    times = {n: [] for n in names}
    for rep in range(reps):
        for n in (names if rep % 2 == 0 else names[::-1]):
            time.sleep(_SETTLE_S)
            t0 = time.perf_counter()
            r = fns[n]()
            times[n].append(time.perf_counter() - t0)
            del r
    if reps == 0:
        times = {n: [first[n]] for n in names}
    return {n: {"median_s": statistics.median(times[n]), "min_s": min(times[n]), "reps": reps,
                "mem_bytes": mem[n], "times_s": times[n]} for n in names}


def _bench_case(sa, torch, F, case: Case, dtype: str, backward: bool, budget_s: float, min_reps: int) -> dict:
    x = _Inputs(case, dtype, torch, seed=0, grad=backward)
    res = {}
    with torch.no_grad():
        res["fwd"] = _time_pair({"speedattn": lambda: _sa_forward(sa, x), "torch": lambda: _torch_forward(F, x)},
                                budget_s, min_reps)
    res["fwd"]["torch"]["mem_bytes_mask"] = x.torch_mask_bytes
    res["bytes"] = x.byte_count()
    if not backward:
        return res
    if not hasattr(sa, "speed_fusion_attention_grad"):
        res["backward_error"] = "speedattn has no speed_fusion_attention_grad"
        return res
    fwd = _sa_forward(sa, x)
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (x.q, x.k, x.v))

    def torch_fwd():  # builds the autograd graph
        return _torch_forward(F, x, q, k, v)

    tout = torch_fwd()
    try:
        res["bwd"] = _time_pair({
            "speedattn": lambda: _sa_backward(sa, x, fwd),
            "torch": lambda: torch.autograd.grad(tout, (q, k, v), x.dy, retain_graph=True),
        }, budget_s, min_reps)
        res["fwdbwd"] = _time_pair({
            "speedattn": lambda: _sa_backward(sa, x, _sa_forward(sa, x)),
            "torch": lambda: torch.autograd.grad(torch_fwd(), (q, k, v), x.dy),
        }, budget_s, min_reps)
    except Exception as e:  # noqa: BLE001 - a missing/unfinished backward is reported, not fatal
        res["backward_error"] = f"{type(e).__name__}: {e}"
    return res


def _causal_pairs(sa, torch, cases: Sequence[Case], dtype: str, budget_s: float, min_reps: int) -> list[dict]:
    """speedattn's causal / non-causal time, measured paired: for every causal case (no ALiBi)
    whose non-causal twin is in the set, both calls alternate (ABBA) on the same tensors and the
    ratio is taken per pair (two rows of the table are timed minutes apart: their ratio carries
    the host's drift, +-0.03 on a shared machine)."""
    labels = {c.label for c in cases}
    out = []
    for c in cases:
        twin = dataclasses.replace(c, mask="none")
        if c.mask != "causal" or c.alibi or twin.label not in labels:
            continue
        xc, xf = _Inputs(c, dtype, torch), _Inputs(twin, dtype, torch)
        with torch.no_grad():
            t = _time_pair({"causal": lambda: _sa_forward(sa, xc), "full": lambda: _sa_forward(sa, xf)},
                           budget_s, max(min_reps, 5))
        pairs = [a / b for a, b in zip(t["causal"]["times_s"], t["full"]["times_s"])]
        out.append({"label": c.label, "dtype": dtype, "pairs": len(pairs),
                    "median_pair_ratio": statistics.median(pairs), "min": min(pairs), "max": max(pairs),
                    "ratio_of_medians": t["causal"]["median_s"] / t["full"]["median_s"]})
    return out


def _causal_line(c: dict) -> str:
    return (f"causal / non-causal time, paired ({c['pairs']} alternations): {c['label']} {c['dtype']} "
            f"{c['median_pair_ratio']:.3f} (pairs {c['min']:.3f}-{c['max']:.3f})")


# ---------------------------------------------------------------------------------------------
# reporting


def _kernel_name(sa, direction: str, dtype: str) -> str | None:
    fn = getattr(sa, f"{direction}_kernel_for", None)
    try:
        return str(fn(DTYPES[dtype])) if fn else None
    except Exception:  # noqa: BLE001 - informational only
        return None


def _ceiling(peaks, dtype: str, kernel: str | None, threads: int) -> tuple[str, float | None]:
    """The peak a dtype is measured against: AMX-BF16 for bf16, and for fp16 when its kernel uses AMX
    (fp16 split into bf16 parts); the FP32 FMA peak otherwise."""
    if dtype == "bf16" or (dtype == "fp16" and kernel and "amx" in kernel):
        return "amx", _peak_for(peaks, "amx_bf16", threads)
    return "fma", _peak_for(peaks, "fp32_fma", threads)


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


_COLUMNS = [  # (header, width)
    ("case", 36), ("dtype", 5), ("dir", 6), ("sa ms", 9), ("torch ms", 9), ("speedup", 7), ("sa TF/s", 7),
    ("th TF/s", 7), ("%peak", 9), ("sa GB/s", 7), ("sa MiB", 8), ("th MiB", 8), ("sa err", 8), ("th err", 8),
]


def _row(cells: Sequence[str]) -> str:
    out = []
    for (h, w), c in zip(_COLUMNS, cells):
        out.append(c.ljust(w) if h in ("case", "dtype", "dir") else c.rjust(w))
    return "  ".join(out).rstrip()


def _table_rows(r: dict) -> list[str]:
    if "error" in r:
        return [_row([r["label"], r["dtype"], "error", r["error"]])]
    rows = []
    v = r.get("validation", {})
    for direction in ("fwd", "bwd", "fwdbwd"):
        t = r.get(direction)
        if not t:
            continue
        sa_t, th_t = t["speedattn"], t["torch"]
        mib = (lambda b: None if b is None else b / 2**20)
        th_mem = th_t["mem_bytes"]
        if th_mem is not None and th_t.get("mem_bytes_mask"):
            th_mem += th_t["mem_bytes_mask"]
        err_key = "speedattn_err" if direction == "fwd" else "speedattn_grad_err"
        th_err_key = "torch_err" if direction == "fwd" else "torch_grad_err"
        sa_err = _fmt(v.get(err_key), ".1e")
        if direction == "fwd" and not v.get("ok", True):
            sa_err += "!"
        pct = t.get("pct_peak")
        rows.append(_row([
            r["label"] if direction == "fwd" else "", r["dtype"] if direction == "fwd" else "", direction,
            _fmt(sa_t["median_s"] * 1e3, ".2f"), _fmt(th_t["median_s"] * 1e3, ".2f"),
            _fmt(t["speedup"], ".2f") + "x", _fmt(sa_t["tflops"], ".3f"), _fmt(th_t["tflops"], ".3f"),
            (_fmt(pct, ".1f") + "% " + r["peak"]) if pct is not None else "-",
            _fmt(sa_t.get("gbps"), ".1f"), _fmt(mib(sa_t["mem_bytes"]), ".1f"), _fmt(mib(th_mem), ".1f"),
            sa_err if direction != "fwdbwd" else "", _fmt(v.get(th_err_key), ".1e") if direction != "fwdbwd" else "",
        ]))
    if r.get("backward_error"):
        rows.append(_row(["", "", "bwd", "n/a: " + r["backward_error"]]))
    return rows


def _header_lines(report: dict) -> list[str]:
    lines = [f"speedattn {report['versions']['speedattn']} vs torch {report['versions']['torch']} "
             f"(scaled_dot_product_attention), {report['threads']} thread(s), {report['machine']['cpu']}"]
    p = report.get("peaks")
    t = report["threads"]
    if p:
        def pk(name, fmt=".0f"):
            x = p["probes"].get(name, {}).get(str(t))
            return "-" if not x else f"{x['max']:{fmt}} (median {x['median']:{fmt}})"
        lines.append(f"peaks, {t} thread(s), max of {p['reps']} runs: AMX-BF16 {pk('amx_bf16')} GFLOP/s, "
                     f"FP32 FMA {pk('fp32_fma')} GFLOP/s, DRAM {pk('dram_read')} GB/s, clock {pk('clock', '.2f')} GHz")
        clock = p["probes"].get("clock", {}).get(str(t), {}).get("max")
        nominal = report["machine"].get("nominal_ghz")
        if clock and nominal and clock < 0.9 * nominal:
            lines.append(f"WARNING: the machine is busy (the probe's clock, {clock:.2f} GHz, is below the nominal "
                         f"{nominal:.2f} GHz): peaks and timings are low and noisy")
    ks = ", ".join(f"{d}: {k['forward']}" + (f" / {k['backward']}" if k.get("backward") else "")
                   for d, k in report["kernels"].items())
    lines.append(f"kernels (forward / backward): {ks}")
    lines.append("TFLOP/s: fwd 4*B*N1*S1*S2*D (causal S1==S2: /2; band: kept pairs), bwd 2.5x, fwd+bwd 3.5x; "
                 "%peak: of the max peak above")
    lines.append(f"MiB: peak RSS growth of one call; err: max abs vs the reference at S~{_VALIDATION_S} "
                 "('!' = above tolerance); times are medians")
    return lines


def _plot(results: list[dict], path: str) -> None:
    """Forward TFLOP/s vs sequence length, one line per (library, dtype, configuration) that has at
    least two sequence lengths (the "seqlen" set); a bar chart per case when no configuration has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in results:
        c = r["case"]
        fam = (c["B"], c["N1"], c["N2"], c["D"], c["mask"], c["alibi"], c["S1"] == 1)
        x = c["S2"] if c["S1"] == 1 else c["S1"]  # decode: the key length
        for impl in ("speedattn", "torch"):
            series.setdefault((r["dtype"], fam, impl), []).append((x, r["fwd"][impl]["tflops"]))
    series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
    colors = {"bf16": "tab:blue", "fp16": "tab:green", "fp32": "tab:red"}
    names = {"speedattn": "speedattn", "torch": "PyTorch"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if series:
        shapes = {k[1][:4] for k in series}
        markers = {"none": "o", "causal": "^", "band": "s"}
        for (dtype, fam, impl), pts in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1][4] != "none",
                                                                              kv[0][1], kv[0][2])):
            B, N1, N2, D, mask, alibi, decode = fam
            tag = " ".join(t for t in (mask if mask != "none" else "", "alibi" if alibi else "",
                                       "decode" if decode else "") if t)
            if len(shapes) > 1:
                tag += f" B{B} N{N1}" + (f"/{N2}" if N1 != N2 else "") + f" D{D}"
            m = "D" if alibi else markers[mask]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=m, color=colors.get(dtype),
                    linestyle="-" if impl == "speedattn" else "--", label=f"{names[impl]} {dtype} {tag}".strip())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length S (decode: key length)")
    else:
        labels = [f"{r['label']} {r['dtype']}" for r in results]
        y = list(range(len(results)))
        for off, impl in ((-0.2, "speedattn"), (0.2, "torch")):
            ax.barh([v + off for v in y], [r["fwd"][impl]["tflops"] for r in results], height=0.4,
                    label=names[impl])
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
    ax.set_ylabel("forward TFLOP/s") if series else ax.set_xlabel("forward TFLOP/s")
    ax.set_title("speedattn vs PyTorch SDPA (CPU, forward)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if series else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Progress:
    """Progress on stderr: a bar when stderr is a terminal, else one line per case."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def start(self, what: str) -> None:
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        if self.tty:
            w = 24
            fill = w * self.done // max(1, self.total)
            sys.stderr.write(f"\r[{'#' * fill}{'.' * (w - fill)}] {self.done}/{self.total} {el:5.0f}s {what}"[:150]
                             .ljust(100))
        else:
            sys.stderr.write(f"[{self.done + 1}/{self.total}] {el:.0f}s {what}\n")
        sys.stderr.flush()

    def step(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# entry points


def _normalize_dtypes(dtypes) -> list[str]:
    out = []
    for d in ([dtypes] if isinstance(dtypes, str) else dtypes):
        for part in str(d).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in _DTYPE_ALIASES:
                raise ValueError(f"unknown dtype {part!r}; use bf16, fp16 or fp32")
            if _DTYPE_ALIASES[part] not in out:
                out.append(_DTYPE_ALIASES[part])
    return out


def run(shapes: str | Iterable[Case] = "default", dtypes: Sequence[str] | str | None = None,
        threads: int | None = None, json: str | None = None, plot: str | None = None,
        progress: bool = True, backward: bool = False, budget_s: float | None = None,
        peaks: bool = True, out=None) -> dict:
    """Validate, time and report (table on `out`, default stdout). Returns the report dict.

    shapes: a name in SHAPE_SETS or Case objects; dtypes: subset of bf16/fp16/fp32 (default: the set's);
    threads: for both libraries (default: all CPUs); json / plot: output paths (json "-" = stdout);
    progress: report progress on stderr (a bar when it is a terminal); backward: also time the backward and
    forward+backward; budget_s: timing seconds per case (default: the set's); peaks: run peaks.cpp.
    """
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("speedattn bench compares against PyTorch: install torch (pip install "
                           "speedattn[torch])") from e
    import speedattn as sa

    out = sys.stdout if out is None else out
    if isinstance(shapes, str):
        if shapes not in SHAPE_SETS:
            raise ValueError(f"unknown shape set {shapes!r}; choose from {', '.join(SHAPE_SETS)}")
        spec = SHAPE_SETS[shapes]
        set_name = shapes
    else:
        spec = {"cases": list(shapes), "dtypes": ["bf16"], "budget_s": 2.0, "min_reps": 3}
        set_name = "custom"
    cases = list(spec["cases"])
    dts = _normalize_dtypes(dtypes) if dtypes else list(spec["dtypes"])
    budget = spec["budget_s"] if budget_s is None else float(budget_s)
    threads = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    sa.set_num_threads(threads)

    report = {
        "shape_set": set_name,
        "threads": threads,
        "machine": {"cpu": _cpu_model(), "nominal_ghz": _cpu_nominal_ghz(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {"speedattn": getattr(sa, "__version__", "?"), "torch": torch.__version__,
                     "python": platform.python_version()},
        "flop_convention": "forward 4*B*N1*S1*S2*D, halved for causal with S1 == S2; band / causal with "
                           "S1 != S2: 4*B*N1*D*(kept (i,j) pairs); backward 2.5x forward; fwd+bwd 3.5x",
        "memory_method": "peak RSS growth during one call: malloc_trim(0), reset VmHWM via "
                         "/proc/self/clear_refs, VmHWM - VmRSS(before); torch's explicit mask added",
        "kernels": {d: {"forward": _kernel_name(sa, "forward", d),
                        "backward": _kernel_name(sa, "backward", d) if backward else None} for d in dts},
        "peaks": None,
        "results": [],
        "causal_pairs": [],
    }
    if peaks:
        report["peaks"] = measure_peaks(threads, reps=spec.get("peaks_reps", 5),
                                        seconds=spec.get("peaks_seconds", 0.1))
    prog = _Progress(len(cases) * len(dts), progress)
    for line in _header_lines(report):
        print(line, file=out)
    print(_row([h for h, _ in _COLUMNS]), file=out)
    out.flush()
    failed = 0
    for dtype in dts:
        for case in cases:
            prog.start(f"{case.label} {dtype}")
            try:
                r = _run_case(sa, torch, F, case, dtype, backward, budget, spec["min_reps"], report)
            except Exception as e:  # noqa: BLE001 - report the case and go on with the others
                r = {"case": dataclasses.asdict(case), "label": case.label, "dtype": dtype,
                     "error": f"{type(e).__name__}: {e}"}
            failed += not r.get("validation", {}).get("ok", False)
            report["results"].append(r)
            prog.step()
            prog.close()
            for line in _table_rows(r):
                print(line, file=out)
            out.flush()
        try:
            pairs = _causal_pairs(sa, torch, cases, dtype, budget, spec["min_reps"])
        except Exception as e:  # noqa: BLE001 - a failing call is already reported in its case row
            pairs = [{"dtype": dtype, "error": f"{type(e).__name__}: {e}"}]
        report["causal_pairs"].extend(pairs)
        for c in pairs:
            if "error" not in c:
                print(_causal_line(c), file=out)
        out.flush()
    prog.close()
    report["failed_validations"] = failed
    if failed:
        print(f"{failed} case(s) failed: an error, or speedattn above tolerance vs the reference ('!')",
              file=out)
    if json:
        text = _json.dumps(report, indent=1)
        if json == "-":
            print(text, file=out)
        else:
            Path(json).write_text(text + "\n")
    if plot:
        _plot([r for r in report["results"] if "fwd" in r], plot)
    return report


def _run_case(sa, torch, F, case: Case, dtype: str, backward: bool, budget_s: float, min_reps: int,
              report: dict) -> dict:
    """Validate, time and derive the rates of one case; returns its result record."""
    r = {"case": dataclasses.asdict(case), "label": case.label, "dtype": dtype}
    has_grad = hasattr(sa, "speed_fusion_attention_grad")
    r["validation"] = _validate(sa, torch, F, case, dtype, backward and has_grad)
    r.update(_bench_case(sa, torch, F, case, dtype, backward, budget_s, min_reps))
    threads = report["threads"]
    r["peak"], ceiling = _ceiling(report["peaks"], dtype, report["kernels"][dtype]["forward"], threads)
    r["flops"] = fl = case.forward_flops()
    for direction, mult in (("fwd", 1.0), ("bwd", 2.5), ("fwdbwd", 3.5)):
        t = r.get(direction)
        if not t:
            continue
        for impl in ("speedattn", "torch"):
            t[impl]["tflops"] = mult * fl / t[impl]["median_s"] / 1e12
        t["speedup"] = t["torch"]["median_s"] / t["speedattn"]["median_s"]
        t["pct_peak"] = (100.0 * t["speedattn"]["tflops"] * 1e12 / ceiling) if ceiling else None
    r["fwd"]["speedattn"]["gbps"] = r["bytes"] / r["fwd"]["speedattn"]["median_s"] / 1e9
    return r


def _cpuinfo(key: str) -> str | None:
    """The first `key` value of /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def _cpu_nominal_ghz() -> float | None:
    """/proc/cpuinfo's MHz (the TSC rate in this VM); the clock probe reads at least this when idle."""
    mhz = _cpuinfo("cpu MHz")
    try:
        return float(mhz) / 1000.0 if mhz else None
    except ValueError:
        return None


def add_arguments(ap) -> None:
    """The benchmark's options, for bench/attention.py and `speedattn bench`."""
    ap.add_argument("--shapes", default="default", choices=list(SHAPE_SETS),
                    help="named shape set (default: %(default)s)")
    ap.add_argument("--dtype", default=None,
                    help="comma-separated subset of bf16,fp16,fp32 (default: the set's dtypes)")
    ap.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: all CPUs)")
    ap.add_argument("--backward", action="store_true", help="also time the backward and forward+backward")
    ap.add_argument("--json", metavar="FILE", default=None, help="write the full report as JSON ('-': stdout)")
    ap.add_argument("--plot", metavar="FILE.png", default=None, help="plot TFLOP/s vs sequence length")
    ap.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                    help="timing seconds per case (default: the set's)")
    ap.add_argument("--no-peaks", action="store_true", help="skip the hardware peak probes")
    ap.add_argument("--no-progress", action="store_true", help="no progress output on stderr")


def run_from_args(args) -> int:
    """Runs the benchmark for parsed add_arguments() options; returns the exit status (1 if a case
    failed validation)."""
    report = run(args.shapes, dtypes=args.dtype, threads=args.threads, json=args.json, plot=args.plot,
                 progress=not args.no_progress, backward=args.backward, budget_s=args.budget,
                 peaks=not args.no_peaks)
    return 1 if report["failed_validations"] else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="speedattn bench", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_from_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
