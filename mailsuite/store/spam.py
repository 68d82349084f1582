"""Spam into Junk (``[mailbox] spam_header``): whether a filter marked a message as spam.

rspamd's milter adds ``X-Spam: Yes`` for its "add header" action; SpamAssassin writes
``X-Spam-Flag: YES`` and ``X-Spam-Status: Yes, score=...``, and others a ``*``-score
(``X-Spam-Level: *****``). A message is spam when any field named ``spam_header`` (any case)
has a value that starts with the word ``yes`` (any case) or with ``*``. Any field counts, not
only the first: a sender's own ``X-Spam: No`` above the filter's ``X-Spam: Yes`` must not keep
spam out of Junk (and a sender who marks their own mail as spam only sends it to Junk).
Only the message header is read (up to the first empty line; LF line ends, as stored).
"""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=16)
def _pattern(header: str) -> re.Pattern[bytes]:
    name = re.escape(header.encode("ascii"))
    return re.compile(rb"^" + name + rb"[ \t]*:[ \t]*(?:\n[ \t]+)?(?:\*|yes(?![^\s,;]))",
                      re.IGNORECASE | re.MULTILINE)


def spam_marked(data: bytes, header: str) -> bool:
    """Whether the header of ``data`` marks it as spam through the field ``header`` ('' off)."""
    if not header:
        return False
    end = data.find(b"\n\n")
    return _pattern(header).search(data, 0, len(data) if end < 0 else end + 1) is not None


def parse_spam_header(value: str) -> str:
    """``[mailbox] spam_header``: a header field name (RFC 5322: printable ASCII but ':');
    empty turns the spam check off."""
    value = value.strip()
    if value and not re.fullmatch(r"[!-9;-~]+", value):
        raise ValueError(f"not a header field name: {value!r}")
    return value
