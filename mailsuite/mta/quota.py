"""Quotas at the doors (mailsuite/store/quota.py keeps the usage and admits every write).

- RCPT (SMTP and submission): a local recipient whose every mailbox is over quota with the
  message's ``SIZE=`` (or one more byte and message without it) is refused with
  ``[mailbox] quota_status_overquota`` (``552 5.2.2 <rcpt>: Recipient address rejected:
  Mailbox is full``), as Postfix with Dovecot's quota-status policy service answers.
- DATA (SMTP): the real size checked again; when every recipient is over, the DATA reply is
  that refusal. A copy the store refuses all the same (one recipient of several, a race)
  bounces with 5.2.2 (a 4xx quota_status_overquota: it is queued and retried).
- LMTP: each recipient over quota at DATA gets the refusal as its own reply.

The usage comes from the store (``quota_report``): the mbox store itself, or, under privilege
separation, the account's agent (wire.Quota), which keeps the usage record with the user's
rights.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.mail import smtp

from mailsuite.accounts import Account
from mailsuite.mta.transaction import DEFERRED, REFUSED, Result
from mailsuite.startup import StartupError
from mailsuite.store.quota import DEFAULT_REPLY, over, read_rule_file


def check_at_start(mailbox: Any, agents: bool = False) -> None:
    """``[mailbox] quota_rule_file`` parses (a broken line named by file and line); with
    ``agents`` (privilege separation: each user's agent reads it) every user may read it."""
    path = mailbox.quota_rule_file
    if path:
        try:
            read_rule_file(path)
            if agents and not os.stat(path).st_mode & stat.S_IROTH:
                raise StartupError(f"[mailbox] quota_rule_file: {path}: not readable by the"
                                   " users (their mail processes read it): chmod 644 it")
        except ValueError as e:
            raise StartupError(f"[mailbox] quota_rule_file: {e}") from None
        except OSError as e:
            raise StartupError(f"[mailbox] quota_rule_file: {mailbox.quota_rule_file}:"
                               f" {e.strerror}") from None


def _accounts(route: Any) -> list[Account]:
    """The accounts of an accepted local recipient when it goes to mailboxes only."""
    dests = getattr(route, "accounts", route)
    if not isinstance(dests, list) or not dests:
        return []
    return dests if all(isinstance(d, Account) for d in dests) else []


def full(store: Any, route: Any, size: int) -> defer.Deferred[bool] | None:
    """Deferred[bool]: whether every mailbox of the recipient ``route`` is over quota with a
    message of ``size`` bytes; None when there is nothing to check (no quota, not a mailbox)."""
    report = getattr(store, "quota_report", None)
    accounts = _accounts(route)
    if report is None or not accounts:
        return None
    reports = [report(a) for a in accounts]
    if any(r is None for r in reports):
        return None
    d: defer.Deferred[Any] = defer.gatherResults(reports, consumeErrors=True)
    d.addCallback(lambda found: all(over(u, limit, max(size, 1)) for u, limit in found))
    return d.addErrback(lambda _: False)  # the agent cannot say: the delivery will


def refusal(reply: tuple[int, str, str], address: str) -> smtp.SMTPServerError:
    code, dsn, text = reply
    return smtp.SMTPServerError(code, f"{dsn} <{address}>: Recipient address rejected: {text}")


def _reply_of(factory: Any) -> tuple[int, str, str]:
    mailbox = getattr(getattr(factory, "config", None), "mailbox", None)
    return getattr(mailbox, "quota_status_overquota", DEFAULT_REPLY)


def rcpt_check(factory: Any, route: Any, size: int | None,
               address: str) -> defer.Deferred[None] | None:
    """An SMTP door's RCPT (``factory``: its SMTPFactory): see ``at_rcpt``."""
    store = getattr(getattr(factory, "delivery", None), "store", None)
    return at_rcpt(store, route, size or 0, address, _reply_of(factory))


def data_check(factory: Any, envelope: Any, size: int,
               deliver: Callable[[], defer.Deferred[Any]]) -> defer.Deferred[Any]:
    """An SMTP door's DATA: see ``at_data``; a refusal is logged as Postfix's smtpd logs one
    at the end of DATA (``QUEUEID: reject: END-OF-MESSAGE from ...``)."""
    store = getattr(getattr(factory, "delivery", None), "store", None)
    reply = _reply_of(factory)

    def logged(results: Any) -> Any:
        maillog = getattr(factory, "maillog", None)
        if maillog is not None and results and not any(r.accepted for r in results):
            c, to = envelope.client, envelope.recipients[0].address
            maillog.write("smtpd", f"{envelope.queue_id}: reject: END-OF-MESSAGE from"
                          f" {c.label}: {' '.join(map(str, reply))}; from=<{envelope.sender}>"
                          f" to=<{to}> proto={c.protocol} helo=<{c.helo or c.name}>")
        return results

    went_on: list[bool] = []  # the pipeline ran: its results are not the quota's refusal

    def deliver_now() -> defer.Deferred[Any]:
        went_on.append(True)
        return deliver()

    d = at_data(store, envelope.recipients, size, reply, deliver_now)
    return d.addCallback(lambda results: results if went_on else logged(results))


def at_rcpt(store: Any, route: Any, size: int, address: str,
            reply: tuple[int, str, str]) -> defer.Deferred[None] | None:
    """RCPT: a Deferred that fails with the refusal when the recipient is over quota."""
    d = full(store, route, size)
    if d is None:
        return None

    def check(is_full: bool) -> None:
        if is_full:
            raise refusal(reply, address)

    return d.addCallback(check)


def at_data(store: Any, recipients: list[Any], size: int, reply: tuple[int, str, str],
            deliver: Callable[[], defer.Deferred[Any]]) -> defer.Deferred[Any]:
    """SMTP DATA: ``deliver()`` unless every recipient is over quota: then each one's Result
    is the refusal (the door answers DATA with it)."""
    checks = [full(store, r.route, size) for r in recipients]
    if not recipients or any(c is None for c in checks):
        for c in checks:
            if c is not None:
                c.addErrback(lambda _: None)
        return deliver()

    def decide(found: list[bool]) -> Any:
        if all(found):
            code, dsn, text = reply
            return [Result(REFUSED if code >= 500 else DEFERRED, code, dsn, text)
                    for _ in recipients]
        return deliver()

    return defer.gatherResults([c for c in checks if c is not None]).addCallback(decide)


def per_recipient(store: Any, routes: list[Any], size: int,
                  reply: tuple[int, str, str]) -> defer.Deferred[list[Result | None]]:
    """LMTP DATA: for each recipient, its refusal Result when over quota, else None."""
    checks = [full(store, route, size) or defer.succeed(False) for route in routes]

    def results(found: list[bool]) -> list[Result | None]:
        code, dsn, text = reply
        return [Result(REFUSED if code >= 500 else DEFERRED, code, dsn, text) if f else None
                for f in found]

    return defer.gatherResults(checks).addCallback(results)
