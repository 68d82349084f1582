"""How blocking work (file I/O, password hashing, NSS, DNS by name) leaves the reactor thread.

A ``Blocking`` is a callable ``blocking(f, *args, **kwargs) -> Deferred`` that runs ``f`` away
from the reactor thread and delivers its result on it. ``tap.makeService`` makes one,
``InPool(reactor)``, for the reactor it was given, and passes it to every part that blocks;
nothing here reaches for the global reactor. Tests pass ``inline`` (the work runs at once, on the
calling thread) or an ``InPool`` of the reactor they run on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads

T = TypeVar("T")

#: ``blocking(f, *args, **kwargs) -> Deferred[f's result]``.
Blocking = Callable[..., "defer.Deferred[Any]"]


class InPool:
    """Runs blocking work in the thread pool of ``reactor`` (an IReactorThreads)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def __call__(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f,
                                         *args, **kwargs)


def inline(f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Runs the work at once on the calling thread (tests)."""
    return defer.maybeDeferred(f, *args, **kwargs)
