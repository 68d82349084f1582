"""The filters of the accept pipeline: each is a mailsuite.mta.transaction.Stage, run once per
message for every door (SMTP, submission, LMTP, sendmail pickup) before the door answers.

``stages`` puts them in their order, Postfix's cleanup order where it has one: the content
checks (header_checks, body_checks...) as the message is taken, then the milters, then the
audit rules over the decoded text, then DKIM signing, then the BCC copies (so a copy is of
the final, signed message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailsuite.config import Config
from mailsuite.filter import checks, dkim
from mailsuite.filter.audit import AuditStage
from mailsuite.filter.bcc import BccStage
from mailsuite.filter.dkim import DkimStage
from mailsuite.tablefile import TableError
from mailsuite.mta.transaction import Stage
from mailsuite.startup import StartupError, describe_os_error, unreadable_by


def stages(cfg: Config, reactor: Any, maillog: Any, blocking: Any) -> list[Stage]:
    """The stages ``cfg`` turns on, in the order they run (none: the pipeline's fast path).
    The inbound checks and the milters are imported here: the master, which only runs
    ``check_at_start``, does without dnspython and dkimpy (12 MB)."""
    from mailsuite.filter import milter
    from mailsuite.filter.authcheck import AuthCheckStage

    out: list[Stage] = []
    # inbound SPF/DKIM/DMARC/ARC of strangers' mail, first: it sees the message as sent
    _add(out, "[auth_checks]", lambda: AuthCheckStage.from_config(cfg, reactor, maillog, blocking))
    # content checks (checks.py)
    out += [s for s in [checks.from_config(cfg.mail, maillog, blocking)] if s is not None]
    # milters (milter/)
    out.extend(s for s in [milter.from_config(cfg, reactor, maillog)] if s is not None)
    # audit rules (audit.py)
    _add(out, "[audit] rules", lambda: AuditStage.from_config(cfg, maillog, blocking))
    # DKIM signing (dkim.py): of the final message, before the BCC copies are made of it
    _add(out, "[dkim]", lambda: DkimStage.from_config(cfg, maillog, blocking))
    # BCC maps (bcc.py)
    _add(out, "[mail] *_bcc_maps", lambda: BccStage.from_config(cfg.mail, maillog, blocking))
    return out


def check_at_start(cfg: Config, owner: tuple[int, int]) -> None:
    """In the root master of a privilege-separated server, before the network process (which
    runs ``stages``) starts: what would make the stages fail there is a StartupError here."""
    # content checks (checks.py)
    checks.check_at_start(cfg.mail, owner)
    # DKIM keys (dkim.py): they parse, and mail_owner may read them
    dkim.check_at_start(cfg, owner)
    # audit rules and BCC maps: they parse, and mail_owner may read them
    m = cfg.mail
    _add([], "[audit] rules", lambda: AuditStage.from_config(cfg, None, None))
    _add([], "[mail] *_bcc_maps", lambda: BccStage.from_config(m, None, None))
    named = [("[audit] rules", cfg.audit.rules)] if cfg.audit.rules else []
    named += [("[mail] sender_bcc_maps", p) for p in m.sender_bcc_maps]
    named += [("[mail] recipient_bcc_maps", p) for p in m.recipient_bcc_maps]
    named += [("[auth_checks] arc_key", k.split(":", 2)[2]) for k in [cfg.auth_checks.arc_key] if k]
    where = {path: key for key, path in reversed(named)}
    for path, why in unreadable_by(list(where), *owner).items():
        raise StartupError(f"{where[path]}: {path}: {why} (read by mail_owner)")


def _add(out: list[Stage], what: str, make: Callable[[], Stage | None]) -> None:
    """Append the stage ``make`` gives (None: not configured); a table it cannot read or
    parse refuses the start, naming the file and line."""
    try:
        stage = make()
    except TableError as e:
        raise StartupError(f"{what}: {e}") from None
    except OSError as e:
        raise StartupError(f"{what}: {describe_os_error(e)}") from None
    if stage is not None:
        out.append(stage)
