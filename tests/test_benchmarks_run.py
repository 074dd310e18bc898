"""Every benchmark script still starts (its imports follow the engine): ``--help`` of each, in
one fresh process."""

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

_HELP_ALL = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            failed.append((path, e.code))
    except Exception as e:  # an import that no longer exists, a renamed function
        failed.append((path, repr(e)))
print("FAILED", failed)
"""


def test_every_benchmark_starts():
    scripts = sorted(str(p) for p in BENCH.glob("bench_*.py"))
    assert len(scripts) >= 10
    out = subprocess.run([sys.executable, "-c", _HELP_ALL, *scripts], capture_output=True,
                         text=True, timeout=600, cwd=BENCH,
                         env={**os.environ, "PYTHONPATH": str(BENCH) + ":" +
                              str(BENCH.parent / "src")})
    assert "FAILED []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
