"""What a check of ``mailsuite doctor`` says: a :class:`Result` per thing looked at, printed as
one line (``ok``, ``warn`` or ``FAIL``, the check's name, what was found) and, when not ok, a
second line with the fix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Result:
    """One verdict: ``check`` names what was looked at (``spf example.com``), ``found`` what
    was seen, ``fix`` (not ok) what to publish or change, in one line."""

    status: str
    check: str
    found: str
    fix: str = ""


def ok(check: str, found: str) -> Result:
    return Result(OK, check, found)


def warn(check: str, found: str, fix: str = "") -> Result:
    return Result(WARN, check, found, fix)


def fail(check: str, found: str, fix: str) -> Result:
    return Result(FAIL, check, found, fix)


def cannot_run(check: str, why: str) -> Result:
    """A check that could not be made (no permission, nothing to test): a warning, as it proves
    nothing wrong; the line says why."""
    return Result(WARN, check, f"could not run: {why}")


def text(results: list[Result]) -> str:
    """The report for a terminal: a line per verdict, the fix indented under it."""
    width = max((len(r.check) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.status:<4}  {r.check:<{width}}  {r.found}")
        if r.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    passed = sum(r.status == OK for r in results)
    warned = sum(r.status == WARN for r in results)
    failed = sum(r.status == FAIL for r in results)
    lines.append(f"{len(results)} checks: {passed} ok, {warned} warn, {failed} FAIL")
    return "\n".join(lines)


def as_json(results: list[Result]) -> str:
    return json.dumps([asdict(r) for r in results], indent=1)


def exit_status(results: list[Result], strict: bool = False) -> int:
    """0 when nothing failed (``strict``: and nothing warned), else 1."""
    bad = {FAIL, WARN} if strict else {FAIL}
    return 1 if any(r.status in bad for r in results) else 0
