"""Freed heap given back to the system after a big transient (glibc's ``malloc_trim``).

A first parse of a big mbox or a compaction frees tens of MB at once; glibc keeps most of it in
its arenas (a worker thread's among them), so the process's RSS stays at its peak. ``release``
returns the free pages (``malloc_trim(0)``: every arena, free pages in the middle too). A no-op
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import threads
from twisted.logger import Logger

log = Logger()

#: what ``release`` waits for: smaller transients are left to the allocator
BIG = 10_000  # messages parsed or moved


def _load() -> Callable[[int], int] | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        fn = ctypes.CDLL(None).malloc_trim
    except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS...)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_trim = _load()


def release(messages: int = BIG) -> bool:
    """Give free heap back after a transient over ``messages`` messages (nothing below
    ``BIG``); True if it was done. Blocking: call it in a thread. It takes each arena's lock
    while it trims that arena: 20 to 90 ms with 100 to 600 MB free, during which the reactor
    thread waits at an allocation only if the free memory is in its own (main) arena; the big
    transients are made in the store's threads, whose arenas are others (about 4 ms)."""
    if _trim is None or messages < BIG:
        return False
    _trim(0)
    return True


#: seconds without another big command before ``release_when_quiet`` gives the heap back
QUIET = 2.0

#: the pending call of each clock (a process has one reactor; tests their own Clocks)
_later: dict[Any, Any] = {}


def release_when_quiet(clock: Any, messages: int,
                       run: Callable[..., Any] = threads.deferToThread) -> None:
    """``release`` (in a thread: ``run``) once ``clock`` has seen QUIET seconds without
    another call: after a big command (a SORT, THREAD or FETCH of 100,000 messages leaves
    tens of MB free in the arenas, 20 MB of an agent), not between the commands of a client
    that is busy (the trim takes each arena's lock)."""
    if _trim is None or messages < BIG:
        return
    call = _later.get(clock)
    if call is not None and call.active():
        call.reset(QUIET)
        return
    _later[clock] = clock.callLater(QUIET, _quiet, clock, run, messages)


def _quiet(clock: Any, run: Callable[..., Any], messages: int) -> None:
    _later.pop(clock, None)
    run(release, messages).addErrback(lambda f: log.failure("malloc_trim failed", f))
