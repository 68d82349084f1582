"""Time zones of the index: one shared tzinfo per UTC offset, the server's local offset at a
time (cached per quarter hour), and the offset of an aware datetime."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

_ZONES: dict[int, timezone] = {0: UTC}


def zone(offset: int) -> timezone:
    """One shared tzinfo per offset (seconds east of UTC)."""
    found = _ZONES.get(offset)
    if found is None:
        found = timezone(timedelta(seconds=offset))
        if len(_ZONES) < 256:
            _ZONES[offset] = found
    return found


_LOCAL: dict[int, int] = {}


def local_offset(epoch: int) -> int:
    """The server's local UTC offset at ``epoch`` (seconds east): the zone of mail delivered
    here (as Dovecot) and of dates read from ``From `` lines. Zone changes fall on quarter
    hours: one ``localtime`` per quarter hour of dates, not per message."""
    key = epoch // 900
    found = _LOCAL.get(key)
    if found is None:
        found = time.localtime(epoch).tm_gmtoff
        if len(_LOCAL) > 65536:
            _LOCAL.clear()
        _LOCAL[key] = found
    return found


def offset_of(when: datetime) -> int:
    """The UTC offset of an aware datetime in whole seconds (0 for a naive one)."""
    off = when.utcoffset()
    return int(off.total_seconds()) if off is not None else 0
