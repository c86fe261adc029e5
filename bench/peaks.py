#!/usr/bin/env python3
"""Build and run the hardware-ceiling probes of bench/peaks.cpp; standard library only.

    python bench/peaks.py [--reps 7] [--seconds 0.1] [--threads 2] [--probes amx_bf16,fp32_fma,...]

prints one JSON object (see peaks.cpp for the probes and the method). The probe is compiled once
with `$CXX -O3 -march=native -pthread` (CXX defaults to g++) into build/bench/peaks and rebuilt
when peaks.cpp is newer. speedattn.bench loads this file to measure the ceilings of a benchmark run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("peaks.cpp")
BUILD_DIR = SOURCE.parent.parent / "build" / "bench"
BINARY = BUILD_DIR / "peaks"
PROBES = ("amx_bf16", "fp32_fma", "dram_read", "clock")


def build(force: bool = False) -> Path:
    """Compile peaks.cpp (if needed) and return the executable's path; RuntimeError on failure."""
    if not force and BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cxx = shlex.split(os.environ.get("CXX", "g++"))
    tmp = BINARY.with_name(f"peaks.tmp{os.getpid()}")
    cmd = [*cxx, "-O3", "-march=native", "-pthread", str(SOURCE), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the peak probe failed: {shlex.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, BINARY)  # atomic: a concurrent run never sees a half-written binary
    return BINARY


def measure(reps: int = 7, seconds: float = 0.1, threads: int | None = None,
            probes: tuple[str, ...] | list[str] = PROBES, dram_mib: int = 1024) -> dict:
    """Run the probes; returns peaks.cpp's JSON as a dict.

    result["probes"][name][str(t)] = {"max", "median", "min"} for t = 1 and t = threads
    (GFLOP/s for amx_bf16 / fp32_fma, GB/s for dram_read, GHz per core for clock).
    """
    cmd = [str(build()), "--reps", str(reps), "--seconds", str(seconds),
           "--probes", ",".join(probes), "--dram-mib", str(dram_mib)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peak probe failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="timed runs per probe and thread count")
    ap.add_argument("--seconds", type=float, default=0.1, help="length of one timed run")
    ap.add_argument("--threads", type=int, default=None, help="the larger thread count (default: all CPUs)")
    ap.add_argument("--probes", default=",".join(PROBES), help="comma-separated subset of " + ",".join(PROBES))
    ap.add_argument("--dram-mib", type=int, default=1024, help="size of the DRAM read buffer")
    ap.add_argument("--rebuild", action="store_true", help="recompile peaks.cpp first")
    args = ap.parse_args(argv)
    if args.rebuild:
        build(force=True)
    result = measure(args.reps, args.seconds, args.threads, args.probes.split(","), args.dram_mib)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
