"""No unit test binds a socket: those tests live in tests/integration/ (issue 10).

``install()`` (run by ``tests/__init__``) wraps ``socket.socket.bind``: a bind made with a
module of ``tests/`` on the stack and none of ``tests/integration/`` raises
``UnitTestBoundSocket``. Unit tests use fakes (tests/fakes.py), StringTransport, MemoryReactor
and Clock instead; a bind by the code under test counts as the test's own.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

TESTS = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(TESTS, "integration")


class UnitTestBoundSocket(AssertionError):
    """A unit test (a module of tests/ outside tests/integration/) bound a socket."""


def unit_caller() -> str | None:
    """The innermost file of the test suite on the stack (this module left out) when no frame
    of tests/integration/ is on it (a helper such as tests/fakemx.py serves both); else None."""
    found = None
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(INTEGRATION + os.sep):
            return None
        if found is None and path.startswith(TESTS + os.sep) and path != os.path.abspath(__file__):
            found = path
        frame = frame.f_back  # type: ignore[assignment]
    return found


def install() -> None:
    real = socket.socket.bind
    if getattr(real, "guarded", False):
        return

    def bind(self: socket.socket, address: Any) -> None:
        path = unit_caller()
        if path is not None:
            raise UnitTestBoundSocket(
                f"{os.path.relpath(path, os.path.dirname(TESTS))} binds a socket ({address!r}):"
                " move the test to tests/integration/ or use a fake")
        real(self, address)

    bind.guarded = True  # type: ignore[attr-defined]
    socket.socket.bind = bind  # type: ignore[method-assign]
