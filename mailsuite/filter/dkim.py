"""DKIM signing (RFC 6376; RSA-SHA256, Ed25519-SHA256 of RFC 8463): a stage of the accept
pipeline, what opendkim does for Postfix as a signing milter.

Signed: mail of our own users (authenticated SMTP, a client in mynetworks, local submission:
filter.audit.from_our_users) whose From: domain, or its nearest parent, has a ``[dkim]`` line
(mailsuite.dkimconf). Mail of anyone else on port 25 is never signed, nor is LMTP's. The
signature (c=relaxed/relaxed; dkimpy's header list: RFC 6376's "should sign" fields that the
message has, and From: once more, so that no From: can be added: opendkim's
``OversignHeaders From``) is computed by dkimpy in the thread pool, over the message as it
goes on the wire (CRLF line ends: the pipeline's message has LF), and put on top of it. This
stage runs after every stage that changes the message, and before the BCC copies (they are of
the signed message).

The keys are read once, at start: by the root master (``check_at_start``: each parses, and
mail_owner may read it) and by the process that runs the stages (``DkimStage.from_config``);
``mailsuite dkim keygen`` writes a key that mail_owner owns, mode 0600, as opendkim-genkey's
keys are the opendkim user's. A new key takes a restart.
"""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.config import Config, ConfigError
from mailsuite.dkimconf import DkimConfig, SigningKey, UnusableKey, load_key
from mailsuite.filter.audit import from_our_users
from mailsuite.mta.transaction import Decision, Message, Verdict
from mailsuite.net import Network
from mailsuite.startup import StartupError, describe_os_error, unreadable_by

log = Logger()

CANONICALIZATION = (b"relaxed", b"relaxed")  # opendkim's Canonicalization relaxed/relaxed


def load_keys(cfg: Config) -> dict[str, SigningKey]:
    """{domain: its key} of ``[dkim]``; keys that cannot be read or used are a ConfigError
    (refused as mail.ini's errors are: exit 78), a line for each, naming the file, the
    section and the line's key."""
    keys: dict[str, SigningKey] = {}
    problems = []
    for domain, entry in cfg.dkim.domains.items():
        try:
            keys[domain] = load_key(entry.path)
        except OSError as e:
            problems.append(f"{cfg.path}: [dkim] {domain}: {describe_os_error(e)}")
        except UnusableKey as e:
            problems.append(f"{cfg.path}: [dkim] {domain}: {entry.path}: {e}")
    if problems:
        raise ConfigError(problems)
    return keys


def check_at_start(cfg: Config, owner: tuple[int, int]) -> None:
    """(The root master) every key parses, and mail_owner (the signing process) may read it."""
    load_keys(cfg)
    paths = {entry.path: domain for domain, entry in reversed(cfg.dkim.domains.items())}
    for path, why in unreadable_by(list(paths), *owner).items():
        raise StartupError(f"{cfg.path}: [dkim] {paths[path]}: {path}: {why} (read by"
                           " mail_owner: `mailsuite dkim keygen` makes keys it owns, mode 0600)")


def author_domain(data: bytes) -> str | None:
    """The domain of the From: address of an LF message (its first mailbox); None without
    exactly one From: field or an address with a domain."""
    head = data.split(b"\n\n", 1)[0] + b"\n\n"
    fields = BytesHeaderParser(policy=compat32).parsebytes(head).get_all("From") or []
    if len(fields) != 1:
        return None
    for _, address in email.utils.getaddresses([str(fields[0])]):
        local, at, domain = address.rpartition("@")
        if at and local and domain:
            return domain.lower().rstrip(".")
    return None


def signature(data: bytes, config: DkimConfig, keys: dict[str, SigningKey]
              ) -> tuple[str, str, str] | None:
    """(The thread pool) (domain, selector, the DKIM-Signature field's value, LF folded) for
    the LF message ``data``, None when no [dkim] domain signs its From:."""
    author = author_domain(data)
    domain = config.signing_domain(author) if author else None
    if domain is None:
        return None
    import dkim  # here: dkimpy is not imported by the master, which only checks the keys

    key, selector = keys[domain], config.domains[domain].selector
    signer = dkim.DKIM(data.replace(b"\n", b"\r\n"), signature_algorithm=key.algorithm)
    field = signer.sign(selector.encode(), domain.encode(), key.material,
                        canonicalize=CANONICALIZATION)
    value = field.removeprefix(b"DKIM-Signature: ").rstrip(b"\r\n").replace(b"\r\n", b"\n")
    return domain, selector, value.decode("ascii")


class DkimStage:
    """The stage (see the module doc)."""

    # a held message (an audit rule's HOLD) is signed as it is kept: released, it goes out as
    # it was held (in Postfix too a held message has what the milters, opendkim, added)
    runs_when_held = True

    def __init__(self, config: DkimConfig, keys: dict[str, SigningKey],
                 mynetworks: list[Network], maillog: Any, blocking: Any) -> None:
        self.config = config
        self.keys = keys
        self.mynetworks = mynetworks
        self.maillog = maillog
        self.blocking = blocking

    @classmethod
    def from_config(cls, cfg: Config, maillog: Any, blocking: Any) -> DkimStage | None:
        """The stage of ``[dkim]`` (None: no line); the keys are read now (ConfigError)."""
        if not cfg.dkim.domains:
            return None
        return cls(cfg.dkim, load_keys(cfg), cfg.mail.mynetworks, maillog, blocking)

    def __call__(self, message: Message) -> defer.Deferred[Decision | None] | None:
        if not from_our_users(message.envelope, self.mynetworks):
            return None
        d = self.blocking(signature, message.data, self.config, self.keys)
        return d.addCallbacks(self._signed, self._failed, callbackArgs=(message,),
                              errbackArgs=(message,))

    def _signed(self, signed: tuple[str, str, str] | None, message: Message) -> None:
        if signed is None:
            return
        domain, selector, value = signed
        message.add_header("DKIM-Signature", value)
        self.maillog.write("dkim", f"{message.envelope.queue_id}: DKIM-Signature field added"
                           f" (s={selector}, d={domain})")

    def _failed(self, failure: Any, message: Message) -> Decision | None:
        """dkimpy refused the message (a header it cannot parse): it goes unsigned, with a
        warning, as opendkim lets a message it cannot sign through; anything else is a bug:
        the client tries again later (451), nothing is lost."""
        import dkim  # (imported already by ``signature``)

        queue_id = message.envelope.queue_id
        if failure.check(defer.CancelledError):
            return failure  # type: ignore[no-any-return]
        if failure.check(dkim.DKIMException):
            self.maillog.write("dkim", f"{queue_id}: warning: not signed: {failure.value}")
            return None
        log.failure("DKIM signing of {id} failed", failure, id=queue_id)
        return Verdict(451, "4.7.0", "DKIM signing failed, try again later")
