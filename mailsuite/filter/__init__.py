"""The filters of the accept pipeline: each is a mailsuite.mta.transaction.Stage, run once per
message for every door (SMTP, submission, LMTP, sendmail pickup) before the door answers.

``stages`` puts them in their order, Postfix's cleanup order where it has one: the content
checks (header_checks, body_checks...) as the message is taken, then the milters, then the
audit rules over the decoded text, then the BCC copies (so a copy is of the final message).
"""

from __future__ import annotations

from typing import Any

from mailsuite.config import Config
from mailsuite.filter import checks
from mailsuite.mta.transaction import Stage


def stages(cfg: Config, reactor: Any, maillog: Any, blocking: Any) -> list[Stage]:
    """The stages ``cfg`` turns on, in the order they run (none: the pipeline's fast path)."""
    out: list[Stage] = []
    # content checks (checks.py)
    out += [s for s in [checks.from_config(cfg.mail, maillog, blocking)] if s is not None]
    # milters (milter/)
    # audit rules (audit.py)
    # BCC maps (bcc.py)
    return out


def check_at_start(cfg: Config, owner: tuple[int, int]) -> None:
    """In the root master of a privilege-separated server, before the network process (which
    runs ``stages``) starts: what would make the stages fail there is a StartupError here."""
    # content checks (checks.py)
    checks.check_at_start(cfg.mail, owner)
