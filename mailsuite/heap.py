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


def _load(name: str, *argtypes: Any) -> Callable[..., int] | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        fn = getattr(ctypes.CDLL(None), name)
    except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS...)
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_trim = _load("malloc_trim", ctypes.c_size_t)
_mallopt = _load("mallopt", ctypes.c_int, ctypes.c_int)

#: glibc's M_MMAP_THRESHOLD, and the size it is fixed at
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024


def fixed_mmap_threshold() -> bool:
    """Blocks of MMAP_THRESHOLD bytes or more always mapped on their own, so that each goes
    back to the system when freed. glibc starts at 128 KiB and raises the threshold to the
    size of each mapped block freed (up to 32 MB): after one very big buffer (a compaction's,
    a THREAD's), such buffers come from the heap and what they leave free stays in the
    process. An agent with the 100k INBOX, after the sorts, a THREAD and an EXPUNGE's
    compaction: 197 -> 180 MB (bench/mem_probe.py), the same at 128 KiB and at 4 MiB. Not
    lower: the transport's joins of a big listing's output (a few MB at a time) each mapped
    afresh made a header re-fetch of the 100k INBOX 0.1 s slower. Called once at a
    process's start; True if it was set."""
    return _mallopt is not None and _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


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
