"""Driving a server protocol over a StringTransport the way the fuzzers need it: bytes cut into
arbitrary reads, pending store calls and producers run to the end, replies read back."""

from __future__ import annotations

import itertools
import re
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport


def cut(data: bytes, offsets: list[int]) -> list[bytes]:
    """``data`` cut at ``offsets`` (those inside it), in order."""
    bounds = [0, *sorted({o for o in offsets if 0 < o < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def reads(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into reads at drawn offsets (one byte per read up to one read for all)."""
    if len(data) < 2:
        return [data] if data else []
    return cut(data, draw(st.lists(st.integers(1, len(data) - 1), max_size=30)))


def settle(transport: StringTransport, clock: Clock | None = None, rounds: int = 2000) -> None:
    """Let a producer registered on the transport (a FETCH, RETR being streamed) run and the
    clock's due calls fire, until nothing is left to do (bounded)."""
    for _ in range(rounds):
        producer = transport.producer
        if producer is not None and not transport.disconnecting:
            producer.resumeProducing()
        elif clock is not None and any(
                c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            clock.advance(0)
        else:
            return
    raise AssertionError("the session did not settle")


def feed(proto: Any, transport: StringTransport, pieces: list[bytes],
         clock: Clock | None = None) -> bytes:
    """Every piece as one read, then settle; what the server wrote meanwhile."""
    transport.clear()
    for piece in pieces:
        if transport.disconnecting:
            break
        proto.dataReceived(piece)
    settle(transport, clock)
    out: bytes = transport.value()
    transport.clear()
    return out


_LITERAL_END = re.compile(rb"\{(\d+)\}\Z")


def imap_responses(out: bytes) -> list[bytes]:
    """IMAP server output as responses: a line, and where it ends in ``{N}`` the N bytes of
    the literal and the rest of the response after it. Each must end in CRLF."""
    responses, pos = [], 0
    while pos < len(out):
        start = pos
        while True:
            eol = out.find(b"\r\n", pos)
            assert eol >= 0, f"response without CRLF: {out[start:start + 200]!r}"
            m = _LITERAL_END.search(out, pos, eol)
            if m is None:
                pos = eol + 2
                break
            pos = eol + 2 + int(m.group(1))
            assert pos <= len(out), f"literal cut short: {out[start:start + 200]!r}"
        responses.append(out[start:pos])
    return responses


def tagged(response: bytes) -> tuple[bytes, bytes] | None:
    """(tag, OK|NO|BAD) of a tagged IMAP response, or None for ``*`` and ``+``."""
    tag, _, rest = response.partition(b" ")
    if tag in (b"*", b"+"):
        return None
    status = rest.split(b" ", 1)[0].rstrip(b"\r\n")
    assert status in (b"OK", b"NO", b"BAD"), f"not a response: {response[:200]!r}"
    return tag, status


def check_imap_output(out: bytes) -> list[tuple[bytes, bytes]]:
    """Every response well-formed; the tagged ones, in order."""
    found = []
    for response in imap_responses(out):
        assert response[:2] in (b"* ", b"+ ") or tagged(response), response[:200]
        t = tagged(response)
        if t is not None:
            found.append(t)
    return found


_SMTP_LINE = re.compile(rb"([2-5]\d\d)([ -])[^\r\n]*\r\n")


def smtp_replies(out: bytes) -> list[bytes]:
    """SMTP server output as replies (their codes), each line ``ddd-text`` or ``ddd text``,
    every line of a multi-line reply with the same code."""
    codes, pos, current = [], 0, None
    while pos < len(out):
        m = _SMTP_LINE.match(out, pos)
        assert m is not None, f"not a reply line: {out[pos:pos + 200]!r}"
        assert current in (None, m.group(1)), f"code changes in a reply: {out[:300]!r}"
        current = m.group(1)
        if m.group(2) == b" ":
            codes.append(current)
            current = None
        pos = m.end()
    assert current is None, f"reply not finished: {out[-200:]!r}"
    return codes


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Trace allocations in the block; the callable gives their peak in bytes (after it)."""
    peak = [0]
    tracemalloc.start()
    try:
        yield lambda: peak[0]
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
