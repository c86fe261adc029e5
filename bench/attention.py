#!/usr/bin/env python3
"""speedattn vs PyTorch SDPA on the CPU: validate, time, report (TFLOP/s, % of peak, memory).

    .venv/bin/python bench/attention.py --shapes default [--dtype bf16] [--threads 2] [--backward]
                                        [--json out.json] [--plot seqlen.png]

A thin entry point: the benchmark itself is speedattn.bench (also `speedattn bench`). Shape sets are
listed by bench/shapes.py; what the columns mean is in bench/README.md.
"""

import sys
from pathlib import Path

try:
    import speedattn.bench as bench
except ImportError:  # run from a source tree whose package was built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
    import speedattn.bench as bench

if __name__ == "__main__":
    sys.exit(bench.main())
