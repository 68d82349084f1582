"""The AMP commands between the processes of a privilege-separated server (see __init__).

Every command names what crosses a boundary between two rights: the network process (the
``mail_owner`` user) asks the master (root) to check a password, to open a session or a
delivery channel; the master hands an agent (one user's rights) a channel; the network process
asks an agent to deliver. Nothing is pickled on a channel the less-privileged side writes to.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from mailsuite.mta.asuser import OPEN_TIME_LIMIT
from mailsuite.mta.forward import COMMAND_TIME_LIMIT


class Refused(Exception):
    """What a responder answers instead of raising anything else (an error AMP does not know
    would close the channel): the request is refused, the reason is in the text."""


class Full(Exception):
    """An agent serves default_client_limit streams already (Attach): start another one."""


#: the errors every command may answer with
ERRORS: dict[type[Exception], bytes] = {Refused: b"REFUSED"}


class CheckPassword(amp.Command):
    """net -> master: the one password check (shadow or PAM, the auth cache). ``verdict``:
    ``ok`` (``name`` is the account), ``fail`` (wrong password, no such user) or ``temp`` (the
    check itself failed, or the session could not be opened).

    With ``tag`` (an IMAP or POP3 login: ``service`` ``imap`` or ``pop3``), a success also
    opens the session, in the same round trip: ``fd`` is a stream to an agent of that
    account, which runs the rest of it (``tag`` answered there), and ``session`` names it from
    now on (Hibernate, Thaw, Forget: the master binds it to the account). ``method``,
    ``secure``, ``rip`` and ``lip`` are what the agent logs and shows; none of them grants
    anything."""

    arguments = [(b"user", amp.Unicode()), (b"password", amp.String()),
                 (b"service", amp.Unicode()), (b"rip", amp.Unicode()),
                 (b"tag", amp.String(optional=True)), (b"method", amp.Unicode(optional=True)),
                 (b"secure", amp.Boolean(optional=True)), (b"lip", amp.Unicode(optional=True))]
    response = [(b"verdict", amp.Unicode()), (b"name", amp.Unicode()),
                (b"fd", amp.Descriptor(optional=True)), (b"session", amp.String(optional=True))]
    errors = ERRORS


class OpenDelivery(amp.Command):
    """net -> master: a channel to the agent of ``user`` that takes mail for its INBOX and the
    deliveries of its own .forward (the agent checks that a command or file is in it)."""

    arguments = [(b"user", amp.Unicode())]
    response = [(b"fd", amp.Descriptor())]
    errors = ERRORS


class Attach(amp.Command):
    """master -> agent: serve this stream: ``role`` is ``imap``, ``pop3`` (a logged-in session
    of the agent's account, with CheckPassword's fields) or ``delivery``."""

    arguments = [(b"role", amp.Unicode()), (b"fd", amp.Descriptor()),
                 (b"tag", amp.String()), (b"method", amp.Unicode()), (b"secure", amp.Boolean()),
                 (b"rip", amp.Unicode()), (b"lip", amp.Unicode()),
                 (b"session", amp.String(optional=True))]
    response = []  # type: ignore[var-annotated]
    errors = {**ERRORS, Full: b"FULL"}


class Retire(amp.Command):
    """agent -> master: idle; spawn a new agent for the next request. The agent still serves
    what was attached before the answer, then exits."""

    arguments = []  # type: ignore[var-annotated]
    response = []  # type: ignore[var-annotated]
    errors = ERRORS


class RootForward(amp.Command):
    """agent -> master, of the agent of default_privs only: the targets of root's
    ``~/.forward`` (``path``), which that agent runs and cannot read itself."""

    arguments = []  # type: ignore[var-annotated]
    response = [(b"path", amp.Unicode()), (b"items", amp.ListOf(amp.Unicode()))]
    errors = ERRORS


class Deliver(amp.Command):
    """net -> agent: group commit of messages to the agent account's INBOX (the store's
    deliver_many). The messages are concatenated in ``data`` (a sealed memfd); ``sizes`` and
    ``senders`` split it. ``status``: ``ok``, ``refused``, ``locked`` (``lock_path``) or
    ``error``; ``text`` what the store said."""

    arguments = [(b"data", amp.Descriptor()), (b"sizes", amp.ListOf(amp.Integer())),
                 (b"senders", amp.ListOf(amp.Unicode()))]
    response = [(b"status", amp.Unicode()), (b"text", amp.Unicode()),
                (b"lock_path", amp.Unicode())]
    errors = ERRORS


class Quota(amp.Command):
    """net -> agent: the account's quota (mailsuite/store/quota.py), for the RCPT check:
    usage and limits in bytes and messages (a limit 0: none; ``on`` False: no quota)."""

    arguments = []  # type: ignore[var-annotated]
    response = [(b"on", amp.Boolean()), (b"storage", amp.Integer()),
                (b"messages", amp.Integer()), (b"storage_limit", amp.Integer()),
                (b"messages_limit", amp.Integer())]
    errors = ERRORS


class OpenDropped(amp.Command):
    """net -> master: ``maildrop/QUEUE_ID`` opened read-only (no symlink), for the pickup."""

    arguments = [(b"queue_id", amp.Unicode())]
    response = [(b"fd", amp.Descriptor())]
    errors = {FileNotFoundError: b"ENOENT", OSError: b"OSERROR", Refused: b"REFUSED"}


class DeliverSpecial(amp.Command):
    """net -> agent: one copy to a ``program`` or ``file`` target, run with the agent's rights,
    of the agent account's own ``~/.forward`` or (an agent of OpenPrivs) of the alias file
    ``origin``: the agent reads that file again and refuses a target that is not in it.
    ``status``: ``sent`` (``text``: what local(8) logs), ``failed`` (``permanent``, ``dsn``,
    ``text``)."""

    arguments = [(b"kind", amp.Unicode()), (b"target", amp.Unicode()),
                 (b"origin", amp.Unicode()),
                 (b"data", amp.Descriptor()), (b"sender", amp.Unicode()),
                 (b"original", amp.Unicode()), (b"final", amp.Unicode()),
                 (b"when", amp.Float())]
    response = [(b"status", amp.Unicode()), (b"permanent", amp.Boolean()),
                (b"dsn", amp.Unicode()), (b"text", amp.Unicode())]
    errors = ERRORS


class ReadForward(amp.Command):
    """net -> agent: the items of the account's ``~/.forward`` as the account reads it (the
    home may be closed to mail_owner); ``path`` is the file's name for log lines."""

    arguments = []  # type: ignore[var-annotated]
    response = [(b"path", amp.Unicode()), (b"items", amp.ListOf(amp.Unicode())),
                (b"lines", amp.ListOf(amp.Integer()))]
    errors = ERRORS


class NewLog(amp.Command):
    """master -> net, agents: ``kill -HUP`` reopened the maillog: write to this descriptor."""

    arguments = [(b"fd", amp.Descriptor())]
    response = []  # type: ignore[var-annotated]
    errors = ERRORS


class NewTLS(amp.Command):
    """master -> net: ``kill -HUP`` read the certificate and key again (memfds of them)."""

    arguments = [(b"cert", amp.Descriptor()), (b"key", amp.Descriptor())]
    response = [(b"loaded", amp.Boolean())]
    errors = ERRORS


class Listen(amp.Command):
    """master -> net, before Reload: a listening socket the reload bound (``name`` as tap's
    listeners: ``imap@127.0.0.1``)."""

    arguments = [(b"name", amp.Unicode()), (b"fd", amp.Descriptor())]
    response = []  # type: ignore[var-annotated]
    errors = ERRORS


class Reload(amp.Command):
    """master -> net: ``kill -HUP`` read mail.ini again: new sessions get this configuration
    (a memfd of the pickled Config: the master's, checked; mailsuite.reload)."""

    arguments = [(b"cfg", amp.Descriptor())]
    response = []  # type: ignore[var-annotated]
    errors = ERRORS


class OpenPrivs(amp.Command):
    """net -> master: a channel to an agent with ``uid``'s rights for the commands and files
    of the alias files: ``uid`` must be default_privs' or the owner of one of alias_maps."""

    arguments = [(b"uid", amp.Integer())]
    response = [(b"fd", amp.Descriptor())]
    errors = ERRORS


class ReadInclude(amp.Command):
    """net -> agent: ``INCLUDE_PIECE`` characters from ``start`` of an :include: file read with
    the agent's rights (``more``: there are more); ``via``: the file its rights come from (its
    account's ``~/.forward``; for an agent of OpenPrivs an alias file with its rights; or an
    :include: file its user owns) and the :include: files from there to the one naming
    ``path``: the agent reads them again and refuses a path they do not name so.
    ``errno`` non-zero: open(2) failed so."""

    arguments = [(b"path", amp.Unicode()), (b"start", amp.Integer()),
                 (b"via", amp.ListOf(amp.Unicode()))]
    response = [(b"errno", amp.Integer()), (b"mode", amp.Integer()), (b"owner", amp.Integer()),
                (b"text", amp.Unicode()), (b"more", amp.Boolean())]
    errors = ERRORS

#: characters of an :include: file per ReadInclude answer (an AMP value holds 64 KB)
INCLUDE_PIECE = 16000


# Hibernation of IMAP sessions in IDLE (mailsuite/imap/hibernate.py): the agent gives the
# session's state up, the network process keeps the client, and a byte from the client or a
# change to the mailbox brings the session back into an agent of the same account.

class Hibernate(amp.Command):
    """agent -> master, then master -> net (with the same fields): the IMAP session
    ``session`` (one the master attached to this agent's account) would leave its agent:
    ``state`` a memfd of its snapshot, ``watch`` an inotify descriptor of its mailbox, and
    ``received`` the bytes the agent has read from the session's stream. ``ok`` False: the
    network process has sent more than that (the client spoke): the session stays."""

    arguments = [(b"session", amp.String()), (b"state", amp.Descriptor()),
                 (b"watch", amp.Descriptor()), (b"received", amp.Integer())]
    response = [(b"ok", amp.Boolean())]
    errors = ERRORS


class Thaw(amp.Command):
    """net -> master: the hibernated ``session`` back into an agent of its account (the one
    the master bound it to): ``fd`` the new stream, the session answering from ``state``."""

    arguments = [(b"session", amp.String()), (b"state", amp.Descriptor()),
                 (b"secure", amp.Boolean()), (b"rip", amp.Unicode()), (b"lip", amp.Unicode())]
    response = [(b"fd", amp.Descriptor())]
    errors = ERRORS


class Revive(amp.Command):
    """master -> agent: serve this stream as the IMAP session of ``state`` (Thaw)."""

    arguments = [(b"fd", amp.Descriptor()), (b"session", amp.String()),
                 (b"state", amp.Descriptor()), (b"secure", amp.Boolean()),
                 (b"rip", amp.Unicode()), (b"lip", amp.Unicode())]
    response = []  # type: ignore[var-annotated]
    errors = {**ERRORS, Full: b"FULL"}


class Forget(amp.Command):
    """net -> master: ``session`` has ended (its name opens nothing any more)."""

    arguments = [(b"session", amp.String())]
    response = []  # type: ignore[var-annotated]
    errors = ERRORS


#: how long an answer may take before the process that owes it counts as hung (its channel
#: is dropped, the master kills it): a password check, a channel opened, a file read
CALL_TIMEOUT = 30.0
#: the longer ones: an agent attaching a stream (less than what the network process waits
#: for the master's answer, so the master kills the agent first), a password check that
#: opens a session (the check, then an Attach), a group commit (mailbox locks are waited
#: for), a command (command_time_limit), an :include: opened on a hung NFS
TIMEOUTS: dict[Any, float] = {Attach: 20.0, CheckPassword: CALL_TIMEOUT + 20.0, Deliver: 600.0,
                              DeliverSpecial: COMMAND_TIME_LIMIT + 60.0,
                              ReadInclude: OPEN_TIME_LIMIT + 30.0,
                              ReadForward: OPEN_TIME_LIMIT + 30.0}


def timeout_of(command: Any) -> float:
    return TIMEOUTS.get(command, CALL_TIMEOUT)
