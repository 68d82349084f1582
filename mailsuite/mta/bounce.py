"""Delivery status notifications (RFC 3464 multipart/report), as Postfix's bounce(8) writes them.

:func:`make_dsn` builds the message the queue sends from ``MAILER-DAEMON`` with the null sender
``<>`` (so a notification is never itself bounced: no loops). Kinds:

- ``failed``: bounce, the original message attached (``RET=HDRS``: headers only);
- ``delayed``: delay warning (``delay_warning_time``), headers only;
- ``delivered`` / ``relayed``: success notices for ``NOTIFY=SUCCESS``, headers only.
"""

from __future__ import annotations

import email.utils
import secrets
from dataclasses import dataclass

from mailsuite.mta.queuefile import Envelope, QueuedRecipient

SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}

INTRO = {
    "failed": (
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "For further assistance, please send mail to postmaster.\n\n"
        "If you do so, please include this problem report. You can\n"
        "delete your own text from the attached returned message.\n"
    ),
    "delayed": (
        "####################################################################\n"
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
        "####################################################################\n\n"
        "Your message could not be delivered for {delay}.\n"
        "It will be retried until it is {lifetime} old.\n"
    ),
    "delivered": (
        "Your message was successfully delivered to the destination(s)\n"
        "listed below. If the message was delivered to mailbox you will\n"
        "receive no further notifications. Otherwise you may still receive\n"
        "notifications of mail delivery errors from other systems.\n"
    ),
}
INTRO["relayed"] = INTRO["delivered"]


@dataclass
class Entry:
    """One recipient in a report: what happened (``dsn`` X.Y.Z, ``diagnostic``) and where."""

    recipient: QueuedRecipient
    dsn: str
    diagnostic: str
    remote_mta: str = ""  # host name of the server that answered, if any


def _hours(seconds: float) -> str:
    if seconds >= 86400:
        n = round(seconds / 86400)
        return f"{n} day" + ("s" if n != 1 else "")
    n = max(1, round(seconds / 3600))
    return f"{n} hour" + ("s" if n != 1 else "")


def headers_of(data: bytes) -> bytes:
    end = data.find(b"\n\n")
    return data if end < 0 else data[: end + 1]


def make_dsn(
    kind: str,
    envelope: Envelope,
    entries: list[Entry],
    original: bytes,
    hostname: str,
    now: float,
    lifetime: float = 0.0,
) -> bytes:
    """The notification message (LF line ends) for ``entries`` of ``envelope``."""
    boundary = f"{envelope.queue_id}.{int(now)}/{hostname}"
    utf8 = envelope.smtputf8
    human = _human_part(kind, envelope, entries, hostname, now, lifetime)
    status = _status_part(kind, envelope, entries, hostname, lifetime)
    whole = kind == "failed" and envelope.ret != "HDRS"
    attached = original if whole else headers_of(original)
    if utf8:
        status_type, part_type = "message/global-delivery-status", (
            "message/global" if whole else "message/global-headers")
    else:
        status_type, part_type = "message/delivery-status", (
            "message/rfc822" if whole else "text/rfc822-headers")
    description = "Undelivered Message" if whole else "Message Headers"
    head = [
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: {envelope.sender}",
        f"Subject: {SUBJECTS[kind]}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-Id: <{secrets.token_hex(8)}.{envelope.queue_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        f"Content-Type: {status_type}",
        "",
        status,
        f"--{boundary}",
        f"Content-Description: {description}",
        f"Content-Type: {part_type}",
        "",
    ]
    text = "\n".join(head).encode("utf-8")
    if not attached.endswith(b"\n"):
        attached += b"\n"
    return text + attached + f"\n--{boundary}--\n".encode()


def _human_part(kind: str, envelope: Envelope, entries: list[Entry], hostname: str, now: float,
                lifetime: float) -> str:
    """The text/plain part: Postfix's introduction and one line per recipient."""
    intro = INTRO[kind].format(delay=_hours(now - envelope.arrival), lifetime=_hours(lifetime))
    lines = [f"This is the mail system at host {hostname}.", "", intro]
    for e in entries:
        lines.append(f"<{e.recipient.address}>: {e.diagnostic}")
    return "\n".join(lines) + "\n"


def _status_part(kind: str, envelope: Envelope, entries: list[Entry], hostname: str,
                 lifetime: float) -> str:
    """The delivery-status part: the per-message fields, then a block per recipient."""
    fields = [f"Reporting-MTA: dns; {hostname}", f"X-Postfix-Queue-ID: {envelope.queue_id}",
              f"X-Postfix-Sender: rfc822; {envelope.sender}"]
    if envelope.envid:
        fields.append(f"Original-Envelope-Id: {envelope.envid}")
    fields.append(f"Arrival-Date: {email.utils.formatdate(envelope.arrival, localtime=True)}")
    status = "\n".join(fields) + "\n"
    for e in entries:
        status += "\n" + "\n".join(_recipient_fields(kind, envelope, e, lifetime)) + "\n"
    return status


def _recipient_fields(kind: str, envelope: Envelope, e: Entry, lifetime: float) -> list[str]:
    """The per-recipient fields of RFC 3464 for one entry."""
    r = e.recipient
    kind_word = "utf-8" if envelope.smtputf8 and not r.address.isascii() else "rfc822"
    block = [f"Final-Recipient: {kind_word}; {r.address}"]
    if r.orcpt:
        block.append(f"Original-Recipient: {r.orcpt.replace(';', '; ', 1)}")
    block.append(f"Action: {kind}")
    block.append(f"Status: {e.dsn}")
    if e.remote_mta:
        block.append(f"Remote-MTA: dns; {e.remote_mta}")
    if e.diagnostic:
        block.append(f"Diagnostic-Code: smtp; {' '.join(e.diagnostic.split())}")
    if kind == "delayed":
        until = email.utils.formatdate(envelope.arrival + lifetime, localtime=True)
        block.append(f"Will-Retry-Until: {until}")
    return block
