"""The ``speedattn`` command (also ``python -m speedattn``).

    speedattn demo   Llama-style GQA causal attention: validate vs the reference, time, compare with torch
    speedattn info   version, CPU features, ISA cap, threads, the kernel chosen per dtype
    speedattn bench  the benchmark of speedattn.bench (progress on stderr, table on stdout)

Run ``speedattn COMMAND --help`` for a command's options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main", "build_parser", "info"]

_DTYPES = ("float16", "bfloat16", "float32")


def info() -> dict:
    """The facts `speedattn info` prints, as a dict. "error" is set (and the ISA cap and kernels are
    None) when SPEEDATTN_MAX_ISA holds an unknown value."""
    import speedattn as sa
    from speedattn import _core

    facts = {
        "version": sa.__version__,
        "package": os.path.dirname(os.path.abspath(sa.__file__)),
        "cpu_features": list(_core.cpu_features()),
        "isa_cap": None,
        "SPEEDATTN_MAX_ISA": os.environ.get("SPEEDATTN_MAX_ISA"),
        "threads": int(sa.get_num_threads()),
        "kernels": None,
        "error": None,
    }
    try:
        facts["isa_cap"] = str(_core.isa_cap())
        facts["kernels"] = {dt: {"forward": str(_core.forward_kernel_for(dt)),
                                 "backward": str(_core.backward_kernel_for(dt))} for dt in _DTYPES}
    except ValueError as e:  # an unknown SPEEDATTN_MAX_ISA: every call would fail the same way
        facts["error"] = str(e)
    return facts


def _cmd_info(args) -> int:
    facts = info()
    if args.json:
        print(json.dumps(facts, indent=1))
        return 1 if facts["error"] else 0
    print(f"speedattn {facts['version']}  ({facts['package']})")
    feats = facts["cpu_features"]
    print(f"CPU features : {' '.join(feats) if feats else '(none beyond baseline x86-64)'}")
    env = facts["SPEEDATTN_MAX_ISA"]
    print(f"threads      : {facts['threads']}  (speedattn.set_num_threads to change)")
    if facts["error"]:
        print(f"ISA cap      : invalid: {facts['error']}")
        print("kernels      : none can run until SPEEDATTN_MAX_ISA is fixed or unset")
        return 1
    print(f"ISA cap      : {facts['isa_cap']}  (SPEEDATTN_MAX_ISA={env if env is not None else 'unset'}; "
          "scalar | avx2 | avx512 | amx)")
    print("kernels      :")
    w = max(len(k["forward"]) for k in facts["kernels"].values())
    print(f"  {'dtype':10}{'forward':{w + 3}}backward")
    for dt, k in facts["kernels"].items():
        print(f"  {dt:10}{k['forward']:{w + 3}}{k['backward']}")
    return 0


def _cmd_demo(args) -> int:
    from speedattn import demo

    return demo.run_from_args(args)


def _cmd_bench(args) -> int:
    from speedattn import bench

    try:
        return int(bench.run_from_args(args) or 0)
    except (RuntimeError, ValueError) as e:
        print(f"speedattn bench: {e}", file=sys.stderr)
        return 2


def _bench_arguments(p) -> None:
    try:
        from speedattn import bench
    except ImportError as e:  # pragma: no cover - the package itself failed to import
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(_bench_import_error=str(e))
        return
    bench.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="speedattn",
        description="speedattn: MindSpore's speed_fusion_attention (fused attention forward and "
                    "backward) on the CPU.",
        epilog="Run 'speedattn COMMAND --help' for a command's options.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    from speedattn import demo

    p = sub.add_parser("demo", help="Llama-style GQA causal attention: validate, time, compare with PyTorch",
                       description=demo.__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="version, CPU features, ISA cap, threads, kernel per dtype",
                       description="Print what speedattn detected and which kernel it will run for each dtype.")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="benchmark vs PyTorch SDPA (table on stdout, progress on stderr)",
                       description="Validate against the reference, then time speedattn and "
                                   "torch.nn.functional.scaled_dot_product_attention on a named shape set. "
                                   "Progress goes to stderr, the table to stdout.")
    _bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "func", None) is None:
        ap.print_help()
        return 2
    if getattr(args, "_bench_import_error", None):
        print(f"speedattn bench: cannot import speedattn.bench: {args._bench_import_error}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `speedattn info | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
