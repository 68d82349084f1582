"""What a failed local delivery was, for the doors and the queue: the failures of a copy
(a command or file target, a mailbox over quota, a dotlock that timed out) and what each
becomes (mailsuite.mta.delivery and mailsuite.mta.transaction ask here).
"""

from __future__ import annotations


from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsuite.mta import forward
from mailsuite.mta.relay import Outcome
from mailsuite.store.locking import LockTimeout
from mailsuite.store.quota import QuotaExceeded

log = Logger()

#: How long a successful recipient look-up is reused, and how many are kept.
RESOLVE_CACHE_TTL = 2.0
RESOLVE_CACHE_SIZE = 10000
#: Group commit: at most this many messages / bytes in one write to one mailbox.
BATCH_MESSAGES = 200
BATCH_BYTES = 32 * 1024 * 1024


class DeliveryFailed(Exception):
    """At least one copy could not be written; the message must not be acknowledged.
    ``failures``: the Failure of each copy that failed."""

    failures: list[Failure]


def is_special(user: str | None) -> bool:
    """A queued local recipient's ``user`` naming a |command or /file target, not an account."""
    return bool(user) and user[0] in "|/"  # type: ignore[index]


def target_failure(failure: Failure) -> forward.TargetFailed | None:
    """The forward.TargetFailed behind a failed deliver() of one command/file copy, if any."""
    if failure.check(forward.TargetFailed):
        return failure.value  # type: ignore[no-any-return]
    for inner in getattr(failure.value, "failures", None) or ():
        if inner.check(forward.TargetFailed):
            return inner.value  # type: ignore[no-any-return]
    return None


def quota_reply(failure: Failure) -> tuple[int, str, str] | None:
    """The SMTP reply of a mailbox copy refused over quota (store/quota.py), else None."""
    for inner in [failure, *(getattr(failure.value, "failures", None) or ())]:
        if inner.check(QuotaExceeded):
            return inner.value.reply  # type: ignore[no-any-return]
    return None


def over_quota(failure: Failure) -> forward.TargetFailed | None:
    """A mailbox copy refused over quota as a failure to bounce (a 5xx
    quota_status_overquota; a 4xx one is None: queued and retried, as any mailbox failure)."""
    reply = quota_reply(failure)
    return None if reply is None or reply[0] < 500 else forward.TargetFailed(True, *reply[1:])


def failure_outcome(failure: Failure) -> Outcome:
    """A failed command/file delivery as the queue's Outcome: 5xx bounces, the rest retried."""
    error = target_failure(failure)
    if error is None:
        return Outcome(451, "4.3.0", f"cannot deliver: {failure.value}", "local")
    return Outcome(550 if error.permanent else 451, error.dsn, error.text, "local")


def lock_of(failure: Failure) -> str:
    """The dotlock that made a mailbox copy time out (``LockTimeout``), else ''."""
    for inner in [failure, *(getattr(failure.value, "failures", None) or ())]:
        if inner.check(LockTimeout):
            return str(inner.value.lock_path)
    return ""
