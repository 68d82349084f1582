"""Run the whole trial suite from the checkout and end with the line ``N passed, N failed``.

    python scripts/run_tests.py [test ...]      (default: tests)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys


def summary(output: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from trial's closing line, e.g. FAILED (failures=1, successes=9)."""
    found = re.findall(r"^(?:PASSED|FAILED) \(([^)]*)\)\s*$", output, re.M)
    if not found:
        return 0, 1, 0
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found[-1])}
    failed = counts.get("failures", 0) + counts.get("errors", 0)
    failed += counts.get("unexpectedSuccesses", 0)
    return counts.get("successes", 0), failed, counts.get("skips", 0)


def main(argv: list[str]) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    env = dict(os.environ, PYTHONPATH=root)
    tests = argv or ["tests"]
    # A directory of this run's own: two runs at once (two checkouts) must not collide.
    temp = f"/tmp/mailsuite-trial-{os.getpid()}"
    cmd = [sys.executable, "-m", "twisted.trial", f"--temp-directory={temp}", *tests]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode == 0:
        shutil.rmtree(temp, ignore_errors=True)
    sys.stdout.write(proc.stdout)
    passed, failed, skipped = summary(proc.stdout)
    if proc.returncode != 0 and failed == 0:
        failed = 1  # trial failed without a summary (import error, crash)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
