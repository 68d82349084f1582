"""Run the fuzzers of tests/fuzz/ and print the executions of each.

    python scripts/fuzz.py [--minutes N] [test ...]   the long run: N minutes (default 10)
                                                       shared among the fuzz tests
    python scripts/fuzz.py --ci [test ...]             the bounded run the suite does

Tests: trial names under tests.fuzz (default: all of them). Failing examples are kept in
/tmp/mailsuite-hypothesis and tried first the next time. Ends with run_tests.py's line
``N passed, N failed``; the exit status is non-zero when a fuzzer found something.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fuzz_tests(names: list[str]) -> list[str]:
    """The dotted names of the fuzz tests (methods made by tests.fuzz.fuzz) under ``names``."""
    sys.path.insert(0, ROOT)
    package = importlib.import_module("tests.fuzz")
    found = []
    for info in pkgutil.iter_modules(package.__path__, "tests.fuzz."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            for attr, value in vars(cls).items():
                if getattr(value, "fuzz_test", False):
                    found.append(f"{module.__name__}.{cls.__name__}.{attr}")
    return [t for t in found if any(t == n or t.startswith(n + ".") for n in names)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ci", action="store_true", help="the ci profile (bounded examples)")
    parser.add_argument("tests", nargs="*", default=["tests.fuzz"])
    args = parser.parse_args(argv)
    tests = fuzz_tests(args.tests)
    if not tests:
        print(f"fuzz.py: no fuzz tests under {' '.join(args.tests)}", file=sys.stderr)
        return 2
    stats = f"/tmp/mailsuite-fuzz-stats-{os.getpid()}.json"
    env = dict(os.environ, MAILSUITE_FUZZ="ci" if args.ci else "long",
               MAILSUITE_FUZZ_SECONDS=str(args.minutes * 60 / len(tests)),
               MAILSUITE_FUZZ_STATS=stats)
    start = time.monotonic()
    status = subprocess.call([sys.executable, os.path.join(ROOT, "scripts", "run_tests.py"),
                              *args.tests], env=env)
    elapsed = time.monotonic() - start
    try:
        with open(stats) as f:
            counts: dict[str, int] = json.load(f)
        os.unlink(stats)
    except OSError:
        counts = {}
    print(f"\nexecutions per fuzz test ({'ci' if args.ci else 'long'} profile, "
          f"{elapsed:.0f} s in all):")
    for name, count in counts.items():
        print(f"  {count:>9}  {name}")
    print(f"  {sum(counts.values()):>9}  total")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
