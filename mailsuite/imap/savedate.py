"""SAVEDATE (RFC 8514): the FETCH item SAVEDATE and the SEARCH keys SAVEDBEFORE, SAVEDON,
SAVEDSINCE and SAVEDATESUPPORTED.

The save date is when the message was saved into the mailbox it is in now (a delivery, APPEND,
COPY, MOVE: ``mailsuite.store.savedate``), not its internal date. The stores keep it on every
mailbox, but not for every message: for one the server did not write itself (an mbox indexed
for the first time, a message another program appended, an index older than save dates)
FETCH SAVEDATE is NIL (RFC 8514 4.2), and the SAVED* keys compare its internal date instead
(RFC 8514 4.3, as Dovecot and mox). Dates are compared as BEFORE / ON / SINCE do: the day in
the date's own zone (the server's, at the time it was saved), time and zone disregarded.
SAVEDATESUPPORTED matches every message of a mailbox whose store keeps save dates (both do).

The listing FETCH (``fetchfields.Listing``) does not know SAVEDATE: a FETCH with it takes the
general path, which asks this module through ``fetch.register_atom``.
"""

from __future__ import annotations

from typing import Any

from mailsuite.imap.encode import internal_date
from mailsuite.imap.fetch import register_atom
from mailsuite.imap.search import _EPOCH_DAY, Candidate, ExtraKey, _internal_day, _parse_date
from mailsuite.imap.search import register_key
from mailsuite.store.savedate import saved_date
from mailsuite.store.zones import local_offset


def _fetch(view: Any, uid: int) -> bytes:
    when = saved_date(view.info(uid))
    return b"SAVEDATE " + (b"NIL" if when is None else internal_date(when))


def _saved_day(info: Any) -> int:
    """The day (since 1970-01-01) of the save date in its zone, of the internal date when the
    save date is not known."""
    saved = getattr(info, "saved", 0)
    if not saved:
        return _internal_day(info)
    return (saved + local_offset(saved)) // 86400  # type: ignore[no-any-return]


def _parse(parser: Any) -> tuple[int]:
    return (_parse_date(parser.next()).toordinal() - _EPOCH_DAY,)


def _before(key: tuple[Any, ...], c: Candidate) -> bool:
    return _saved_day(c.when) < key[1]


def _on(key: tuple[Any, ...], c: Candidate) -> bool:
    return _saved_day(c.when) == key[1]


def _since(key: tuple[Any, ...], c: Candidate) -> bool:
    return _saved_day(c.when) >= key[1]


def _supported(key: tuple[Any, ...], c: Candidate) -> bool:
    return hasattr(c.when, "saved")  # a message info of a store that keeps save dates


register_atom("SAVEDATE", _fetch)
register_key("SAVEDBEFORE", ExtraKey(_parse, _before))
register_key("SAVEDON", ExtraKey(_parse, _on))
register_key("SAVEDSINCE", ExtraKey(_parse, _since))
register_key("SAVEDATESUPPORTED", ExtraKey(lambda parser: (), _supported))


class SavedateCommands:
    """Advertises SAVEDATE for ``IMAPServer``: its FETCH item and search keys are registered
    above, with the ones of the core."""

    def own_capabilities(self) -> dict[bytes, Any]:
        return {b"SAVEDATE": None}


__all__ = ["SavedateCommands"]
