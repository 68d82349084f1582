"""Property-based fuzzers (hypothesis) for every parser that reads Internet or user input.

Each fuzz test is a method decorated with :func:`fuzz` (instead of ``@given``): it runs under the
hypothesis profile that ``MAILSUITE_FUZZ`` names, and counts its executions.

- ``ci`` (the default): a bounded number of examples per test, so the whole set adds about a
  minute to the normal suite (``scripts/run_tests.py``).
- ``long``: each test runs batches of examples until ``MAILSUITE_FUZZ_SECONDS`` have passed
  (``scripts/fuzz.py --minutes N`` shares N minutes among the tests and sets both).

The example database (failing examples, replayed first on the next run) is in /tmp, never in the
checkout. ``MAILSUITE_FUZZ_STATS=FILE``: at exit, the executions of each test are written to
FILE as JSON (``scripts/fuzz.py`` prints them as a table).
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("MAILSUITE_FUZZ", "ci")
#: long profile: how long each fuzz test runs
SECONDS = float(os.environ.get("MAILSUITE_FUZZ_SECONDS", "30"))
#: ci profile: the examples of a test of weight 1
CI_EXAMPLES = 150

_common: dict[str, Any] = {
    "deadline": None,  # 2 shared cores: the time of one example says nothing
    "database": DirectoryBasedExampleDatabase("/tmp/mailsuite-hypothesis"),
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=CI_EXAMPLES, **_common)
# one batch of a long run (the batches go on until SECONDS)
settings.register_profile("long", max_examples=300, **_common)
if PROFILE not in ("ci", "long"):
    raise SystemExit(f"MAILSUITE_FUZZ={PROFILE!r}: ci or long")
settings.load_profile(PROFILE)

#: test name -> examples run (generation, replay and shrinking alike)
EXECUTIONS: collections.Counter[str] = collections.Counter()


def _write_stats() -> None:
    path = os.environ.get("MAILSUITE_FUZZ_STATS")
    if path and EXECUTIONS:
        with open(path, "w") as f:
            json.dump(dict(sorted(EXECUTIONS.items())), f, indent=1)


atexit.register(_write_stats)


def fuzz(*args: Any, weight: float = 1.0, **kwargs: Any) -> Callable[..., Any]:
    """``@given(*args, **kwargs)`` under the profile; ``weight`` scales the examples of a ci run
    (cheap pure parsers take more, whole sessions fewer)."""

    def decorate(test: Callable[..., Any]) -> Callable[..., Any]:
        name = f"{test.__module__.rsplit('.', 1)[-1]}.{test.__qualname__}"

        @functools.wraps(test)
        def counted(*a: Any, **k: Any) -> Any:
            EXECUTIONS[name] += 1
            return test(*a, **k)

        examples = max(10, int(settings.default.max_examples * weight))
        if PROFILE == "long":
            examples = settings.default.max_examples
        run = settings(max_examples=examples)(given(*args, **kwargs)(counted))

        @functools.wraps(test, assigned=("__module__", "__name__", "__qualname__", "__doc__"),
                         updated=())
        def batches(self: Any) -> None:
            end = time.monotonic() + SECONDS
            try:
                run(self)
                while PROFILE == "long" and time.monotonic() < end:
                    run(self)
            except BaseException as e:
                # trial shows neither exception notes (hypothesis puts the failing input
                # there) nor the members of an ExceptionGroup (several distinct failures)
                sys.stderr.write(f"\n{name}:\n" + "".join(traceback.format_exception(e)))
                raise

        batches.fuzz_test = True  # type: ignore[attr-defined]
        return batches

    return decorate
