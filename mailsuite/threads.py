"""The one helper through which blocking work (file I/O, password hashing) leaves the reactor."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet import defer, threads

T = TypeVar("T")

#: Tests may set this to True to run blocking work inline (synchronously) instead of in a thread.
run_inline = False


def blocking(f: Callable[..., T], *args: Any, **kwargs: Any) -> "defer.Deferred[T]":
    """Run ``f(*args, **kwargs)`` in the reactor's thread pool; the result arrives as a Deferred."""
    if run_inline:
        return defer.maybeDeferred(f, *args, **kwargs)
    return threads.deferToThread(f, *args, **kwargs)
