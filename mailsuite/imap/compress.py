"""COMPRESS=DEFLATE (RFC 4978): ``CompressCommands``, the command for ``IMAPServer``.

After the tagged OK of ``COMPRESS DEFLATE`` both directions are raw deflate (RFC 1951, zlib's
``wbits`` -15). The reply itself is the last thing sent in clear; whatever the client sent
after the command's CRLF (already read, pipelined behind it) is compressed input. Every batch
of output ends with a Z_SYNC_FLUSH, so each response (an IDLE push, a keep-alive) reaches the
client whole at once.

Where it happens: between the session's command reader and its transport (TLS, after STARTTLS
or on port 993, is below it). Under privilege separation that is the agent, where the session
runs: the network process passes the compressed bytes through unchanged. A compressed session
is never hibernated (``hibernate.hibernatable``): the process keeping a hibernated client
writes its keep-alives in clear, and zlib's state is not part of the snapshot.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import Cursor
from mailsuite.imap.reader import MAX_LITERAL
from mailsuite.imap.session import states

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

WBITS = -15  # raw deflate, no zlib header (RFC 4978 4)


class Deflate:
    """The two zlib streams of one compressed session."""

    def __init__(self) -> None:
        self._out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, WBITS)
        self._in = zlib.decompressobj(WBITS)

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed and sync-flushed: the client can inflate all of it now."""
        return self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def decompress(self, data: bytes, limit: int) -> bytes:
        """``data`` inflated; ``ValueError`` if it is no deflate stream or inflates to more
        than ``limit`` bytes (a decompression bomb) or the client ended its stream."""
        try:
            out = self._in.decompress(data, limit)
        except zlib.error as e:
            raise ValueError(f"bad deflate data: {e}") from None
        if self._in.unconsumed_tail:
            raise ValueError("compressed input expands too much")
        if self._in.eof:
            raise ValueError("the client ended its deflate stream")
        return out


class CompressCommands(_Base):
    """COMPRESS (RFC 4978) for ``IMAPServer``: ``_deflate`` (None until COMPRESS) is used by
    its ``dataReceived`` (``inflate``) and its writes (``deflated``)."""

    _deflate: Deflate | None  # set in IMAPServer (class attribute None)
    _corked: list[bytes] | None
    _buffer: bytes  # LineReceiver's: received, not yet read

    def own_capabilities(self) -> dict[bytes, Any]:
        return {} if self.state == "unauth" else {b"COMPRESS=DEFLATE": None}

    @states("auth", "select")
    def cmd_COMPRESS(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        mechanism = args.atom().upper()
        args.end()
        if self._deflate is not None:
            self.sendNegativeResponse(tag, b"[COMPRESSIONACTIVE] DEFLATE active")
            return
        if mechanism != b"DEFLATE":
            self.sendBadResponse(tag, b"Unknown compression mechanism.")
            return
        self.sendPositiveResponse(tag, b"DEFLATE active")
        pending, self._buffer = self._buffer, b""  # pipelined behind COMPRESS: compressed
        corked = self._corked is not None
        self.uncork()  # the OK in clear, before any compressed byte
        self._deflate = Deflate()
        if corked:
            self._corked = []  # the outer dataReceived sends the rest (compressed)
        if pending:
            plain = self.inflate(pending)
            if plain is not None:
                self._buffer = plain  # LineReceiver's loop reads on from here

    def deflated(self, data: bytes) -> bytes:
        """What goes to the transport for ``data`` (answers, literals)."""
        return data if self._deflate is None or not data else self._deflate.compress(data)

    def inflate(self, data: bytes) -> bytes | None:
        """The client's bytes as the command reader reads them; None (and the connection
        closing, with a BYE) when they cannot be inflated."""
        if self._deflate is None:
            return data
        limit = self.config.imap.imap_max_line_length + (
            self.config.mail.message_size_limit or MAX_LITERAL)
        try:
            return self._deflate.decompress(data, limit)
        except ValueError as e:
            self._buffer = b""
            self.sendLine(b"* BYE " + str(e).encode("ascii", "replace"))
            self.uncork()
            self.transport.loseConnection()
            return None
