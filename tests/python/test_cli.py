"""The `speedattn` command: info, demo (tiny sizes), bench --help, python -m speedattn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

DTYPES = ("float16", "bfloat16", "float32")
# A demo small enough for CI: a few hundred ms with the reference validation included.
TINY_DEMO = ["demo", "--seq", "96", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--repeats", "1",
             "--check-seq", "48"]


@pytest.fixture(scope="module")
def cli():
    from speedattn import cli  # noqa: PLC0415

    return cli


def _run(*argv, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "speedattn", *argv], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_info_mentions_kernels(sa, cli, capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"speedattn {sa.__version__}" in text
    for label in ("CPU features", "ISA cap", "SPEEDATTN_MAX_ISA", "threads", "forward", "backward"):
        assert label in text
    for dt in DTYPES:
        assert dt in text
        assert sa.forward_kernel_for(dt) in text
        assert sa.backward_kernel_for(dt) in text


def test_info_json(sa, cli, capsys):
    assert cli.main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["version"] == sa.__version__
    assert facts["threads"] == sa.get_num_threads()
    assert facts["cpu_features"] == list(sa.cpu_features())
    assert set(facts["kernels"]) == set(DTYPES)
    for dt in DTYPES:
        assert facts["kernels"][dt] == {"forward": sa.forward_kernel_for(dt), "backward": sa.backward_kernel_for(dt)}


def test_info_reports_isa_cap():
    env = dict(os.environ, SPEEDATTN_MAX_ISA="scalar")
    r = _run("info", "--json", env=env)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["SPEEDATTN_MAX_ISA"] == "scalar"
    assert facts["isa_cap"] == "scalar"


def test_info_invalid_isa_cap():
    env = dict(os.environ, SPEEDATTN_MAX_ISA="bogus")
    r = _run("info", env=env)
    assert r.returncode == 1
    assert "SPEEDATTN_MAX_ISA" in r.stdout and "bogus" in r.stdout and "Traceback" not in r.stderr
    r = _run("info", "--json", env=env)
    assert r.returncode == 1 and "bogus" in json.loads(r.stdout)["error"]


def test_no_command_prints_help(cli, capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for cmd in ("demo", "info", "bench"):
        assert cmd in out


@pytest.mark.parametrize("cmd, words", [
    ("bench", ("--shapes", "--dtype", "--threads", "--backward", "--json", "--plot")),
    ("demo", ("--seq", "--dtype", "--layout", "--threads", "--check-seq", "--no-backward")),
    ("info", ("--json",)),
])
def test_command_help(cli, capsys, cmd, words):
    with pytest.raises(SystemExit) as ei:
        cli.main([cmd, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for w in words:
        assert w in out


def test_demo_tiny_no_torch(cli, capsys):
    assert cli.main(TINY_DEMO + ["--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "OK" in out and "FAIL" not in out
    assert "TFLOP/s" in out
    assert "backward" in out


@pytest.mark.parametrize("layout, dtype", [("BNSD", "fp16"), ("BSH", "fp32"), ("SBH", "bf16")])
def test_demo_tiny_layouts(cli, capsys, layout, dtype):
    args = TINY_DEMO + ["--no-torch", "--no-backward", "--layout", layout, "--dtype", dtype]
    assert cli.main(args) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert layout in out and "result: OK" in out


def test_demo_tiny_with_torch(cli, capsys):
    pytest.importorskip("torch")
    assert cli.main(TINY_DEMO) == 0
    out = capsys.readouterr().out
    assert "PyTorch SDPA" in out and "speedup" in out and "result: OK" in out


def test_demo_rejects_bad_sizes(cli):
    with pytest.raises(SystemExit, match="multiple of --kv-heads"):
        cli.main(["demo", "--heads", "6", "--kv-heads", "4"])
    with pytest.raises(SystemExit, match="--seq must be >= 1"):
        cli.main(["demo", "--seq", "0"])


def test_python_dash_m():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert "kernels" in r.stdout
    r = _run("bench", "--help")
    assert r.returncode == 0, r.stderr
    assert "--shapes" in r.stdout


def test_bench_pairs_causal_with_its_non_causal_twin():
    """bench.run on a custom set: the causal case whose non-causal twin is in the set is timed
    paired with it (causal_pairs); a causal case without its twin, or with ALiBi, is not."""
    pytest.importorskip("torch")
    import io

    from speedattn import bench

    C = bench.Case
    cases = [C(B=1, N1=2, N2=2, S1=96, S2=96, D=32), C(B=1, N1=2, N2=2, S1=96, S2=96, D=32, mask="causal"),
             C(B=1, N1=2, N2=2, S1=64, S2=64, D=32, mask="causal"),  # no twin
             C(B=1, N1=2, N2=2, S1=96, S2=96, D=32, mask="causal", alibi=True)]
    out = io.StringIO()
    import torch

    import speedattn as sa

    threads = (sa.get_num_threads(), torch.get_num_threads())
    try:  # bench.run sets both libraries' thread counts
        rep = bench.run(cases, dtypes="bf16", threads=1, progress=False, budget_s=0.02, peaks=False, out=out)
    finally:
        sa.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    assert rep["failed_validations"] == 0
    (pair,) = rep["causal_pairs"]
    assert pair["label"] == cases[1].label and pair["dtype"] == "bf16" and pair["pairs"] >= 5
    assert pair["min"] <= pair["median_pair_ratio"] <= pair["max"] and 0 < pair["min"]
    assert "causal / non-causal time, paired" in out.getvalue()
