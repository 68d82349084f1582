"""FETCH of header fields through the store's header cache (``IMailbox.header_fields``).

A FETCH whose only header items are ``BODY[HEADER.FIELDS (...)]`` of the message itself (what
Thunderbird and most clients send to list a mailbox) asks the store for just those fields: the
block it gets back is rendered by ``fetch`` exactly as the whole header would be.
"""

from __future__ import annotations

from typing import Any

#: off: every header item reads the whole header (tests compare both ways)
USE_CACHE = True


def field_names(items: Any) -> list[bytes] | None:
    """The field names a FETCH's header items ask for when they are all top-level
    ``HEADER.FIELDS`` (no part, no ``.NOT``, no ENVELOPE or whole header); else None."""
    names: dict[bytes, None] = {}
    for item in items:
        if not item.needs_header():
            continue
        section = item.section
        if item.name != "BODY[]" or section is None or section.part or \
                section.spec != "HEADER.FIELDS":
            return None
        names.update(dict.fromkeys(section.fields))
    return list(names) or None


def read_headers(mailbox: Any, uids: list[int], items: Any) -> Any:
    """Deferred[{uid: header block}] for rendering ``items``: the header cut down to the
    fields asked for when the items allow it, else the whole header."""
    names = field_names(items) if USE_CACHE else None
    if names is None:
        return mailbox.read_headers(uids)
    return mailbox.header_fields(uids, names)
