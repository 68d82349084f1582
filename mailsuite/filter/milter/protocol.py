"""The Sendmail milter protocol, version 6, as Postfix speaks it (its milter8.c): the command
and reply codes, the negotiation bits, packets (a 4-byte length, a code byte, data), and the
``inet:host:port`` / ``unix:/path`` milter names of ``smtpd_milters``.

This is the MTA (client) side, written here: the Python milter libraries (pymilter,
purepythonmilter, ppymilter) implement the filter (server) side only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# commands (MTA -> milter)
SMFIC_ABORT, SMFIC_BODY, SMFIC_CONNECT, SMFIC_MACRO = b"A", b"B", b"C", b"D"
SMFIC_BODYEOB, SMFIC_HELO, SMFIC_QUIT_NC, SMFIC_HEADER = b"E", b"H", b"K", b"L"
SMFIC_MAIL, SMFIC_EOH, SMFIC_OPTNEG, SMFIC_QUIT = b"M", b"N", b"O", b"Q"
SMFIC_RCPT, SMFIC_DATA, SMFIC_UNKNOWN = b"R", b"T", b"U"

COMMAND_NAMES = {
    SMFIC_ABORT: "SMFIC_ABORT", SMFIC_BODY: "SMFIC_BODY", SMFIC_CONNECT: "SMFIC_CONNECT",
    SMFIC_MACRO: "SMFIC_MACRO", SMFIC_BODYEOB: "SMFIC_BODYEOB", SMFIC_HELO: "SMFIC_HELO",
    SMFIC_QUIT_NC: "SMFIC_QUIT_NC", SMFIC_HEADER: "SMFIC_HEADER", SMFIC_MAIL: "SMFIC_MAIL",
    SMFIC_EOH: "SMFIC_EOH", SMFIC_OPTNEG: "SMFIC_OPTNEG", SMFIC_QUIT: "SMFIC_QUIT",
    SMFIC_RCPT: "SMFIC_RCPT", SMFIC_DATA: "SMFIC_DATA", SMFIC_UNKNOWN: "SMFIC_UNKNOWN",
}

# replies (milter -> MTA)
SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_ADDRCPT_PAR, SMFIR_SHUTDOWN = b"+", b"-", b"2", b"4"
SMFIR_ACCEPT, SMFIR_REPLBODY, SMFIR_CONTINUE, SMFIR_DISCARD = b"a", b"b", b"c", b"d"
SMFIR_CHGFROM, SMFIR_CONN_FAIL, SMFIR_ADDHEADER, SMFIR_INSHEADER = b"e", b"f", b"h", b"i"
SMFIR_SETSYMLIST, SMFIR_CHGHEADER, SMFIR_PROGRESS, SMFIR_QUARANTINE = b"l", b"m", b"p", b"q"
SMFIR_REJECT, SMFIR_SKIP, SMFIR_TEMPFAIL, SMFIR_REPLYCODE = b"r", b"s", b"t", b"y"

REPLY_NAMES = {
    SMFIR_ADDRCPT: "SMFIR_ADDRCPT", SMFIR_DELRCPT: "SMFIR_DELRCPT",
    SMFIR_ADDRCPT_PAR: "SMFIR_ADDRCPT_PAR", SMFIR_SHUTDOWN: "SMFIR_SHUTDOWN",
    SMFIR_ACCEPT: "SMFIR_ACCEPT", SMFIR_REPLBODY: "SMFIR_REPLBODY",
    SMFIR_CONTINUE: "SMFIR_CONTINUE", SMFIR_DISCARD: "SMFIR_DISCARD",
    SMFIR_CHGFROM: "SMFIR_CHGFROM", SMFIR_CONN_FAIL: "SMFIR_CONN_FAIL",
    SMFIR_ADDHEADER: "SMFIR_ADDHEADER", SMFIR_INSHEADER: "SMFIR_INSHEADER",
    SMFIR_SETSYMLIST: "SMFIR_SETSYMLIST", SMFIR_CHGHEADER: "SMFIR_CHGHEADER",
    SMFIR_PROGRESS: "SMFIR_PROGRESS", SMFIR_QUARANTINE: "SMFIR_QUARANTINE",
    SMFIR_REJECT: "SMFIR_REJECT", SMFIR_SKIP: "SMFIR_SKIP", SMFIR_TEMPFAIL: "SMFIR_TEMPFAIL",
    SMFIR_REPLYCODE: "SMFIR_REPLYCODE",
}

# actions the milter may ask for (SMFIF_*), all of which we offer, as Postfix does
SMFIF_ADDHDRS, SMFIF_CHGBODY, SMFIF_ADDRCPT, SMFIF_DELRCPT = 0x01, 0x02, 0x04, 0x08
SMFIF_CHGHDRS, SMFIF_QUARANTINE, SMFIF_CHGFROM, SMFIF_ADDRCPT_PAR = 0x10, 0x20, 0x40, 0x80
SMFIF_SETSYMLIST = 0x100
MY_ACTIONS = 0x1FF

#: the action flag a modification reply needs (refused when the milter did not negotiate it)
NEEDS_ACTION = {
    SMFIR_ADDHEADER: SMFIF_ADDHDRS, SMFIR_INSHEADER: SMFIF_ADDHDRS,
    SMFIR_CHGHEADER: SMFIF_CHGHDRS, SMFIR_REPLBODY: SMFIF_CHGBODY,
    SMFIR_ADDRCPT: SMFIF_ADDRCPT, SMFIR_ADDRCPT_PAR: SMFIF_ADDRCPT_PAR,
    SMFIR_DELRCPT: SMFIF_DELRCPT, SMFIR_CHGFROM: SMFIF_CHGFROM,
    SMFIR_QUARANTINE: SMFIF_QUARANTINE,
}

# protocol flags (SMFIP_*): events the milter does not want, replies it will not send
SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT = 0x1, 0x2, 0x4, 0x8
SMFIP_NOBODY, SMFIP_NOHDRS, SMFIP_NOEOH, SMFIP_NR_HDR = 0x10, 0x20, 0x40, 0x80
SMFIP_NOUNKNOWN, SMFIP_NODATA, SMFIP_SKIP, SMFIP_RCPT_REJ = 0x100, 0x200, 0x400, 0x800
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
SMFIP_NR_DATA, SMFIP_NR_UNKN, SMFIP_NR_EOH, SMFIP_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
SMFIP_HDR_LEADSPC = 0x100000

_V2 = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY \
    | SMFIP_NOHDRS | SMFIP_NOEOH
_V4 = _V2 | SMFIP_NOUNKNOWN | SMFIP_NODATA
_NR = SMFIP_NR_HDR | SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT \
    | SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY
#: the events (and protocol extensions) we offer per milter_protocol version (milter8.c)
EVENT_MASKS = {2: _V2, 3: _V2 | SMFIP_NOUNKNOWN, 4: _V4,
               6: _V4 | SMFIP_SKIP | SMFIP_RCPT_REJ | _NR | SMFIP_HDR_LEADSPC}

#: per event: the flag that turns it off, and the one that says it gets no reply
EVENT_FLAGS = {
    SMFIC_CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN), SMFIC_HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL), SMFIC_RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIP_NODATA, SMFIP_NR_DATA), SMFIC_HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIP_NOEOH, SMFIP_NR_EOH), SMFIC_BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
    SMFIC_UNKNOWN: (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN), SMFIC_BODYEOB: (0, 0),
}

#: macro stage numbers of SMFIR_SETSYMLIST -> the event whose macros they set
MACRO_STAGES = {0: SMFIC_CONNECT, 1: SMFIC_HELO, 2: SMFIC_MAIL, 3: SMFIC_RCPT,
                4: SMFIC_DATA, 5: SMFIC_BODYEOB, 6: SMFIC_EOH}

MAX_PACKET = 2**31 // 2  # the bound Postfix's milter8.c puts on a packet (INT_MAX / 2)
CHUNK = 65535  # MILTER_CHUNK_SIZE: body bytes per SMFIC_BODY


class ProtocolError(Exception):
    """The milter broke the protocol (the text is Postfix's warning, without the name)."""


def packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + code + data


def strings(*values: str) -> bytes:
    """NUL-terminated strings, as the protocol sends text (UTF-8 kept, nothing lost)."""
    return b"".join(v.encode("utf-8", "surrogateescape") + b"\0" for v in values)


def optneg(version: int, actions: int, events: int) -> bytes:
    return packet(SMFIC_OPTNEG, struct.pack("!III", version, actions, events))


def macro(event: bytes, pairs: list[tuple[str, str]]) -> bytes:
    return packet(SMFIC_MACRO, event + strings(*(x for pair in pairs for x in pair)))


def connect_data(name: str, address: str, port: int) -> bytes:
    """SMFIC_CONNECT's data: the client's name, family, port and address."""
    family = b"6" if ":" in address else b"4"
    return strings(name) + family + struct.pack("!H", port) + strings(address)


class Decoder:
    """Splits the bytes a milter sends into (code, data) packets."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack("!I", self.buffer[:4])
            if length < 1:
                raise ProtocolError(f"bad packet length: {length}")
            if length > MAX_PACKET:
                raise ProtocolError(f"unreasonable packet length: {length} > {MAX_PACKET}")
            if len(self.buffer) < 4 + length:
                return
            code, data = self.buffer[4:5], self.buffer[5:4 + length]
            self.buffer = self.buffer[4 + length:]
            yield code, data


def split_strings(data: bytes, count: int | None = None) -> list[str]:
    """The NUL-terminated strings of a reply (``count``: exactly that many)."""
    if not data.endswith(b"\0"):
        raise ProtocolError("missing string null terminator")
    parts = [p.decode("utf-8", "surrogateescape") for p in data[:-1].split(b"\0")]
    if count is not None and len(parts) != count:
        raise ProtocolError(f"expected {count} strings, got {len(parts)}")
    return parts


@dataclass(frozen=True)
class Negotiated:
    """The milter's side of SMFIC_OPTNEG: its version, the actions it asks for, its protocol
    flags, and the macro lists it wants instead of ours (event code -> names)."""

    version: int
    actions: int
    flags: int
    macros: dict[bytes, str]


def parse_optneg(data: bytes, version: int) -> Negotiated:
    """The milter's SMFIC_OPTNEG reply, checked against what we offered (as milter8.c)."""
    if len(data) < 12:
        raise ProtocolError("input packet too short for network long")
    theirs, actions, flags = struct.unpack("!III", data[:12])
    if theirs > version:
        raise ProtocolError(f"protocol version {theirs} conflict with MTA protocol version"
                            f" {version}")
    if actions & MY_ACTIONS != actions:
        raise ProtocolError(f"request mask 0x{actions:x} conflict with MTA request mask"
                            f" 0x{MY_ACTIONS:x}")
    macros: dict[bytes, str] = {}
    rest = data[12:]
    while len(rest) >= 4:
        (stage,) = struct.unpack("!I", rest[:4])
        end = rest.find(b"\0", 4)
        if end < 0:
            raise ProtocolError("missing string null terminator")
        if stage in MACRO_STAGES:
            macros[MACRO_STAGES[stage]] = rest[4:end].decode("ascii", "replace")
        rest = rest[end + 1:]
    return Negotiated(theirs, actions, flags, macros)


def event_mask(version: int) -> int:
    """The events we offer for ``milter_protocol`` ``version``."""
    return EVENT_MASKS.get(version, EVENT_MASKS[6])


_REPLY = re.compile(r"[45]\d\d[ -]")


def check_replycode(text: str) -> str:
    """An SMFIR_REPLYCODE text ("550 5.7.1 text", multi-line with CRLF), '%%' made '%'
    (Postfix: sendmail uses it as a format); a malformed one is a ProtocolError."""
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    for line in lines:
        if not _REPLY.match(line[:4]) or (line[4:5].isdigit() and line[4] != line[0]):
            raise ProtocolError(f"malformed reply: {text}")
    return "\n".join(re.sub(r"%(.?)", r"\1", line) for line in lines)
