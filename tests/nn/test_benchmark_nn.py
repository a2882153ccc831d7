"""benchmarks/nn.py keeps running and its variants keep agreeing (a small problem)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_variants_agree():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/nn.py",
            "--batch",
            "3",
            "--anchors-size",
            "128",
            "--gts",
            "6",
            "--repeat",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = [
        line
        for line in out.stdout.splitlines()
        if line.split()[:1] in (["hard"], ["ohem"], ["quota"])
    ]
    assert len(rows) == 3, out.stdout
    for row in rows:
        assert "True" in row and "False" not in row, row
