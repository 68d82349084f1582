"""Dovecot's ``pop3_uidl_format``: the POP3 UIDL of a message from its UID and UIDVALIDITY.

The syntax is Dovecot's variable expansion: ``%[0][width][modifiers]variable``, or
``%[offset.][0]width...``, with the variable a letter or ``%{name}``, and ``%%`` for ``%``.

- Variables: ``%u`` / ``%{uid}`` the IMAP UID, ``%v`` / ``%{uidvalidity}`` the mailbox's
  UIDVALIDITY. Dovecot's others need what an mbox store does not keep (``%m`` the MD5 of the
  headers, ``%g`` the GUID) or a maildir (``%f``): they are refused, not left empty, so a UIDL
  never silently changes.
- Modifiers: ``X`` the decimal value in hexadecimal (lower case, as Dovecot prints it), ``L``
  lower case, ``U`` upper case, ``R`` reversed, ``T`` trailing white space removed.
- Width: ``%08Xu`` pads with ``0`` on the left to 8 characters (never cuts); ``%4u`` keeps the
  first 4 characters, ``%2.4u`` 4 characters from the third on.

Dovecot's default, ``%08Xu%08Xv``, gives ``000000016b0f25fe`` for UID 1 in UIDVALIDITY
1796154878: what Debian's dovecot-pop3d answers, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT = "%08Xu%08Xv"
MAX_UIDL = 70  # RFC 1939 7: 1 to 70 characters in 0x21..0x7E

_NAMES = {"u": "uid", "uid": "uid", "v": "uidvalidity", "uidvalidity": "uidvalidity"}
_UNSUPPORTED = {
    "m": "%m (the MD5 of the headers) is not kept by mailsuite's mbox store",
    "md5": "%{md5} (the MD5 of the headers) is not kept by mailsuite's mbox store",
    "g": "%g (a GUID) is not kept by mailsuite's mbox store",
    "guid": "%{guid} is not kept by mailsuite's mbox store",
    "f": "%f (the file name) exists only for maildir",
    "filename": "%{filename} exists only for maildir",
}
_MODIFIERS: dict[str, Callable[[str], str]] = {
    "X": lambda s: f"{int(s):x}",
    "L": str.lower,
    "U": str.upper,
    "R": lambda s: s[::-1],
    "T": str.rstrip,
}


@dataclass(frozen=True)
class _Var:
    name: str  # "uid" or "uidvalidity"
    modifiers: str
    offset: int
    width: int  # 0: the whole value
    zero_pad: bool

    def expand(self, values: dict[str, int]) -> str:
        text = str(values[self.name])
        for m in self.modifiers:
            text = _MODIFIERS[m](text)
        if self.zero_pad:
            return text.rjust(self.width, "0")
        if self.offset or self.width:
            text = text[self.offset:]
            return text[: self.width] if self.width else text
        return text


def _number(text: str, i: int) -> tuple[int, bool, int]:
    """(value, zero padded, position after) of the digits at ``text[i:]``."""
    zero = text.startswith("0", i)
    j = i
    while j < len(text) and text[j].isdigit():
        j += 1
    return (int(text[i:j]) if j > i else 0), zero, j


class UidlFormat:
    """A checked ``pop3_uidl_format``; ``format(uid, uid_validity)`` gives the UIDL.
    ValueError with the reason for a template Dovecot would not expand the same way."""

    def __init__(self, template: str = DEFAULT) -> None:
        self.template = template
        self._pieces: list[str | _Var] = []
        self._parse(template)
        longest = sum(len(p) if isinstance(p, str) else max(p.width, 10) for p in self._pieces)
        if not any(isinstance(p, _Var) for p in self._pieces):
            raise ValueError("names no variable (%u, %v): every message would have the same UIDL")
        if longest > MAX_UIDL:
            raise ValueError(f"can give UIDLs longer than {MAX_UIDL} characters (RFC 1939)")

    def _parse(self, text: str) -> None:
        i = 0
        while i < len(text):
            c = text[i]
            if c != "%":
                if not "\x21" <= c <= "\x7e":
                    raise ValueError(f"{c!r}: a UIDL may hold only printable ASCII, no spaces")
                self._pieces.append(c)
                i += 1
                continue
            i = self._variable(text, i + 1)

    def _variable(self, text: str, i: int) -> int:
        """Parse the variable after a ``%`` at ``text[i:]``; the position after it."""
        if text.startswith("%", i):
            self._pieces.append("%")
            return i + 1
        offset, width, zero = 0, 0, False
        value, zero, i = _number(text, i)
        if text.startswith(".", i):
            offset = value
            width, zero, i = _number(text, i + 1)
        else:
            width = value
        start = i
        while i < len(text) and text[i] in _MODIFIERS:
            i += 1
        modifiers = text[start:i]
        if i >= len(text):
            raise ValueError("ends inside a variable (a lone '%')")
        if text[i] == "{":
            end = text.find("}", i)
            if end < 0:
                raise ValueError("'%{' without its '}'")
            name, i = text[i + 1 : end], end + 1
        else:
            name, i = text[i], i + 1
        if name in _UNSUPPORTED:
            raise ValueError(_UNSUPPORTED[name])
        if name not in _NAMES:
            raise ValueError(f"unknown variable %{name if len(name) == 1 else '{' + name + '}'}"
                             " (known: %u, %v)")
        self._pieces.append(_Var(_NAMES[name], modifiers, offset, width, zero))
        return i

    def format(self, uid: int, uid_validity: int) -> str:
        values = {"uid": uid, "uidvalidity": uid_validity}
        return "".join(p if isinstance(p, str) else p.expand(values) for p in self._pieces)


def uidl_format(template: str) -> str:
    """The config check of ``pop3_uidl_format``: the template, if it can be used."""
    UidlFormat(template)
    return template
