"""Every benchmark script runs end to end in ``--quick`` mode, so none can rot.

Each script in bench/ (except the shared ``common.py``) is run as a user would
run it; a script whose database is unreachable exits with status 3, which is
a skip locally and a failure under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import unavailable

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(path for path in BENCH.glob("*.py") if path.name != "common.py")
UNAVAILABLE_EXIT_CODE = 3  # bench/common.py UNAVAILABLE_EXIT_CODE


def test_there_are_benchmarks() -> None:
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_runs_in_quick_mode(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if result.returncode == UNAVAILABLE_EXIT_CODE:
        unavailable(f"the database of {script.name}", RuntimeError(result.stderr.strip()))
    assert result.returncode == 0, result.stderr
    rows = re.findall(
        r"^(W1|W2|W2c|W4)\s.*?([\d,]+)\s+([\d,]+)\s+\S+/s\s+(\d+\.\d+)x$",
        result.stdout,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["W1", "W2", "W2c", "W4"], result.stdout
    for _, store, raw, ratio in rows:
        store_rate, raw_rate = (float(x.replace(",", "")) for x in (store, raw))
        assert store_rate > 0
        assert raw_rate > 0
        assert float(ratio) == pytest.approx(store_rate / raw_rate, rel=0.05, abs=0.01)
