"""WITHIN (RFC 5032): the search keys OLDER n and YOUNGER n, messages whose internal date is
more than (OLDER) or at most (YOUNGER) n seconds before the time of the command."""

from __future__ import annotations

import time
from typing import Any

from mailsuite.imap.search import Candidate, ExtraKey, SearchSyntaxError, register_key


def _internal_epoch(when: Any) -> float:
    epoch = getattr(when, "date", None)
    if type(epoch) is int:
        return epoch
    internal = getattr(when, "internal_date", when)
    return float(internal.timestamp())


def _parse(parser: Any) -> tuple[float]:
    arg = parser.next().value
    if not arg.isdigit() or int(arg) < 1 or len(arg) > 10:  # nz-number
        raise SearchSyntaxError("OLDER and YOUNGER need a number of seconds")
    return (time.time() - int(arg),)


def _older(key: tuple[Any, ...], c: Candidate) -> bool:
    return _internal_epoch(c.when) < key[1]


def _younger(key: tuple[Any, ...], c: Candidate) -> bool:
    return _internal_epoch(c.when) >= key[1]


register_key("OLDER", ExtraKey(_parse, _older))
register_key("YOUNGER", ExtraKey(_parse, _younger))
