"""The filters of the accept pipeline: each is a mailsuite.mta.transaction.Stage, run once per
message for every door (SMTP, submission, LMTP, sendmail pickup) before the door answers.

``stages`` puts them in their order, Postfix's cleanup order where it has one: the content
checks (header_checks, body_checks...) as the message is taken, then the milters, then the
audit rules over the decoded text, then the BCC copies (so a copy is of the final message).
"""

from __future__ import annotations

from typing import Any

from mailsuite.config import Config
from mailsuite.filter import milter
from mailsuite.mta.transaction import Stage


def stages(cfg: Config, reactor: Any, maillog: Any, blocking: Any) -> list[Stage]:
    """The stages ``cfg`` turns on, in the order they run (none: the pipeline's fast path)."""
    out: list[Stage] = []
    # content checks (checks.py)
    # milters (milter/)
    out.extend(s for s in [milter.from_config(cfg, reactor, maillog)] if s is not None)
    # audit rules (audit.py)
    # BCC maps (bcc.py)
    return out
