#!/usr/bin/env python3
"""The benchmark's named shape sets (defined in speedattn.bench, so `speedattn bench` has them too).

    python bench/shapes.py            # list every set: dtypes, timing budget, cases, GFLOP per call

Sets: default (the headline comparison), quick (CI smoke, < 30 s), seqlen (S sweep for --plot),
memory (extra memory at S1 = S2 = 131072). Each is a dict with "cases" (speedattn.bench.Case),
"dtypes", "budget_s" (timing seconds per case) and "min_reps".
"""

import sys
from pathlib import Path

try:
    from speedattn.bench import SHAPE_SETS, Case
except ImportError:  # run from a source tree whose package was built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
    from speedattn.bench import SHAPE_SETS, Case

__all__ = ["SHAPE_SETS", "Case"]


def describe() -> str:
    lines = []
    for name, spec in SHAPE_SETS.items():
        lines.append(f"{name}: dtypes {','.join(spec['dtypes'])}, {spec['budget_s']} s per case, "
                     f">= {spec['min_reps']} reps")
        for c in spec["cases"]:
            lines.append(f"  {c.label:40s} {c.forward_flops() / 1e9:10.2f} GFLOP forward")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
