"""What a milter's modification requests do to a mailsuite.mta.transaction.Message, with
Postfix's (cleanup_milter.c's) semantics: headers are counted from the top of the message,
all of them (our Received: too, which milters are shown); SMFIR_ADDHEADER appends at the end
of the header block; SMFIR_INSHEADER index 0 is the top; SMFIR_CHGHEADER changes the nth field
of that name (index 0 counts as 1), an empty value deletes it, and a change of a field that is
not there adds it (rspamd sets its headers that way); SMFIR_REPLBODY replaces everything below
the header block (CRLF from the wire made LF).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mailsuite.filter.milter import protocol as p
from mailsuite.mta.transaction import Message, Recipient

_ENC = "surrogateescape"


def split(data: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and its LF) and the body (below the
    empty line; b"" when there is none)."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line_end = len(data) if end < 0 else end + 1
        line = data[pos:line_end]
        if line in (b"\n", b"\r\n"):
            return fields, data[line_end:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif b":" not in line:  # not a header: the body starts here (no empty line)
            return fields, data[pos:]
        else:
            fields.append(line)
        pos = line_end
    return fields, b""


def name_value(field: bytes, leading_space: bool) -> tuple[str, str]:
    """A field as SMFIC_HEADER sends it: the name, and the value without the space after the
    colon (kept with SMFIP_HDR_LEADSPC) and without the last line end."""
    name, _, value = field.decode("utf-8", _ENC).partition(":")
    value = value.rstrip("\r\n")
    if not leading_space and value[:1] == " ":
        value = value[1:]
    return name, value


def headers(data: bytes, leading_space: bool) -> Iterator[tuple[str, str]]:
    for field in split(data)[0]:
        yield name_value(field, leading_space)


def body_chunks(data: bytes) -> Iterator[bytes]:
    """The body as milters get it: CRLF line ends, in SMFIC_BODY-sized pieces."""
    body = split(data)[1].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for start in range(0, len(body), p.CHUNK):
        yield body[start:start + p.CHUNK]


def _field(name: str, value: str, leading_space: bool) -> bytes:
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    return f"{name}:{'' if leading_space else ' '}{text}\n".encode("utf-8", _ENC)


def _address(text: str) -> str:
    text = text.strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


class Editor:
    """Applies one milter's modification requests (in the order it sent them) to ``message``;
    ``leading_space``: the milter negotiated SMFIP_HDR_LEADSPC. Returns a quarantine reason."""

    def __init__(self, message: Message, leading_space: bool) -> None:
        self.message = message
        self.leading_space = leading_space
        self.fields, self.body = split(message.data)
        self.new_body: list[bytes] | None = None
        self.quarantine: str | None = None

    def apply(self, edits: list[tuple[bytes, bytes]]) -> None:
        for code, data in edits:
            self._one(code, data)
        if self.new_body is not None:
            self.body = b"".join(self.new_body).replace(b"\r\n", b"\n")
        self.message.data = b"".join(self.fields) + b"\n" + self.body

    def _one(self, code: bytes, data: bytes) -> None:
        if code in (p.SMFIR_CHGHEADER, p.SMFIR_INSHEADER):
            if len(data) < 4:
                raise p.ProtocolError("input packet too short for network long")
            index = int.from_bytes(data[:4], "big")
            name, value = p.split_strings(data[4:], 2)
            if not name:
                raise p.ProtocolError("null change header name")
            if code == p.SMFIR_CHGHEADER:
                self.change(index, name, value)
            else:
                self.insert(index, name, value)
        elif code == p.SMFIR_ADDHEADER:
            name, value = p.split_strings(data, 2)
            self.fields.append(_field(name, value, self.leading_space))
        elif code == p.SMFIR_REPLBODY:
            if self.new_body is None:
                self.new_body = []
            self.new_body.append(data)
        else:
            self._envelope(code, data)

    def _envelope(self, code: bytes, data: bytes) -> None:
        env = self.message.envelope
        if code == p.SMFIR_QUARANTINE:
            self.quarantine = p.split_strings(data)[0] or "milter quarantine"
        elif code == p.SMFIR_CHGFROM:
            env.sender = _address(p.split_strings(data)[0])
        elif code in (p.SMFIR_ADDRCPT, p.SMFIR_ADDRCPT_PAR):
            address = _address(p.split_strings(data)[0])
            if address:
                env.recipients.append(Recipient(address))
        elif code == p.SMFIR_DELRCPT:
            gone = _address(p.split_strings(data)[0]).lower()
            env.recipients[:] = [r for r in env.recipients if r.address.lower() != gone]

    def _positions(self, name: str) -> list[int]:
        wanted = name.lower()
        return [i for i, f in enumerate(self.fields)
                if f.split(b":", 1)[0].decode("utf-8", _ENC).strip().lower() == wanted]

    def change(self, index: int, name: str, value: str) -> None:
        places = self._positions(name)
        nth = max(index, 1)
        if nth > len(places):
            if value:
                self.fields.append(_field(name, value, self.leading_space))
            return
        at = places[nth - 1]
        if value:
            self.fields[at] = _field(name, value, self.leading_space)
        else:
            del self.fields[at]

    def insert(self, index: int, name: str, value: str) -> None:
        self.fields.insert(min(index, len(self.fields)), _field(name, value, self.leading_space))


_CODE = re.compile(r"^([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3}) )?(.*)$")


def reply_parts(text: str) -> tuple[int, str, str]:
    """An SMFIR_REPLYCODE text as (code, enhanced status, text): further lines of a
    multi-line reply follow in ``text`` after LF, each with its own status."""
    lines = text.split("\n")
    first = _CODE.match(lines[0])
    assert first is not None  # check_replycode has passed it
    code = int(first.group(1))
    dsn = first.group(2) or f"{code // 100}.7.1"
    rest = []
    for line in lines[1:]:
        m = _CODE.match(line)
        rest.append(f"{m.group(2) or dsn} {m.group(3)}" if m else line)
    return code, dsn, "\n".join([first.group(3), *rest])
