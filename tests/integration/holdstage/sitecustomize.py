"""A tiny test Stage for the hold-queue tests: Python imports this at the start of every
process of a server whose PYTHONPATH names this directory (Site.python_path), the network
process included, and it puts a stage first in mailsuite.filter.stages that holds each message
whose header has ``HOLD-ME`` (as a filter's ``Hold(reason)``)."""

from __future__ import annotations

from typing import Any

import mailsuite.filter
from mailsuite.mta.transaction import Hold, Message

_configured = mailsuite.filter.stages


def _hold_me(message: Message) -> Hold | None:
    header = message.data.split(b"\n\n", 1)[0]
    return Hold("test stage: HOLD-ME") if b"HOLD-ME" in header else None


def stages(cfg: Any, reactor: Any, maillog: Any, blocking: Any) -> list[Any]:
    return [_hold_me, *_configured(cfg, reactor, maillog, blocking)]


mailsuite.filter.stages = stages  # type: ignore[assignment]
