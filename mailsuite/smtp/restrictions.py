"""Postfix's SMTP restriction lists: ``smtpd_client_restrictions``, ``smtpd_helo_restrictions``,
``smtpd_sender_restrictions``, ``smtpd_relay_restrictions``, ``smtpd_recipient_restrictions``
and ``smtpd_data_restrictions``, with Postfix's names, syntax and order.

As with Postfix's ``smtpd_delay_reject = yes`` the client, HELO and sender lists are evaluated
at RCPT, with the relay and recipient lists after them; the data list at DATA. In each list
the first restriction that decides ends it: ``permit`` (``OK``) ends that list only, a reject
or deferral ends everything; a list that ends undecided goes on to the next. ``DEFER_IF_PERMIT``
defers unless something later rejects; ``DEFER_IF_REJECT`` turns a later reject into a
deferral; ``warn_if_reject R`` logs what R would reject (``reject_warning``) and goes on.

A ``permit`` from the relay list lets the recipient be relayed (the avatar's relay rule, in
mta/accept.py, stays as the safety net for lists that end undecided). The restrictions are in
RESTRICTIONS; an unknown one is a config error naming the key. The policy client is
smtp/policy.py, the DNSBL look-ups smtp/dnsbl.py, access tables and actions smtp/access.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.mail import smtp

from mailsuite.mta.address import has_routing
from mailsuite.mta.dns import PermanentDNSError, TemporaryDNSError
from mailsuite.net import parse_ip
from mailsuite.smtp import access, dnsbl
from mailsuite.smtp.access import DUNNO, PERMIT, Action
from mailsuite.smtp.policy import PolicyService, parse_endpoint
from mailsuite.startup import StartupError, describe_os_error, unreadable_by

STAGES = ("client", "helo", "sender", "relay", "recipient", "data")
SIMPLE = frozenset({
    "permit", "reject", "defer", "dunno", "permit_mynetworks", "permit_sasl_authenticated",
    "reject_unauth_destination", "defer_unauth_destination", "reject_unlisted_recipient",
    "reject_non_fqdn_helo_hostname", "reject_invalid_helo_hostname", "reject_non_fqdn_sender",
    "reject_non_fqdn_recipient", "reject_unknown_recipient_domain",
    "reject_unknown_sender_domain",
})
WITH_ARGUMENT = frozenset({
    "check_policy_service", "reject_rbl_client", "reject_rhsbl_sender", "check_client_access",
    "check_helo_access", "check_sender_access", "check_recipient_access",
})
RESTRICTIONS = SIMPLE | WITH_ARGUMENT | {"warn_if_reject"}
DEFAULT_RBL_REPLY = ("$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using"
                     " $rbl_domain${rbl_reason?; $rbl_reason}")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")


@dataclass(frozen=True)
class Restriction:
    name: str
    arg: str = ""
    warn: bool = False  # under warn_if_reject


def parse_restrictions(value: str) -> tuple[Restriction, ...]:
    """A restriction list (commas or white space between words); ValueError naming what is
    unknown or missing its argument."""
    words = value.replace(",", " ").split()
    out: list[Restriction] = []
    warn = False
    i = 0
    while i < len(words):
        name = words[i].lower()
        i += 1
        if name not in RESTRICTIONS:
            raise ValueError(f"unknown restriction {words[i - 1]!r}")
        if name == "warn_if_reject":
            warn = True
            continue
        arg = ""
        if name in WITH_ARGUMENT:
            if i >= len(words):
                raise ValueError(f"{name} needs an argument")
            arg, i = words[i], i + 1
            _check_argument(name, arg)
        out.append(Restriction(name, arg, warn))
        warn = False
    if warn:
        raise ValueError("warn_if_reject must be followed by a restriction")
    return tuple(out)


def _check_argument(name: str, arg: str) -> None:
    if name == "check_policy_service":
        parse_endpoint(arg)
    elif name in ("reject_rbl_client", "reject_rhsbl_sender"):
        dnsbl.parse_site(arg)
    else:
        access.table_path(arg)


def parse_delay_reject(value: str) -> bool:
    if value.strip().lower() != "yes":
        raise ValueError(f"{value.strip()!r}: only yes is supported (every list at RCPT)")
    return True


def parse_rbl_reply(value: str) -> str:
    """default_rbl_reply: a template that expands to ``CODE text``."""
    expanded = expand_rbl({"rbl_code": "554"}, value)
    if not re.match(r"^[45]\d\d ", expanded):
        raise ValueError(f"{value.strip()!r} does not start with a reply code ($rbl_code)")
    return value.strip()


def parse_policy_action(value: str) -> Action:
    return access.parse_action(value)


DEFAULT_POLICY_ACTION = parse_policy_action("451 4.3.5 Server configuration problem")


_TEMPLATE = re.compile(r"\$(\w+)|\$\{(\w+)(?:([?:])([^}]*))?\}|\$\((\w+)\)")


def expand_rbl(values: dict[str, str], template: str) -> str:
    """$name, ${name}, ${name?text} (text when name is set), ${name:text} (when it is not)."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(5)
        value = values.get(name, "")
        if m.group(3) == "?":
            return expand_rbl(values, m.group(4)) if value else ""
        if m.group(3) == ":":
            return "" if value else expand_rbl(values, m.group(4))
        return value
    return _TEMPLATE.sub(one, template)


@dataclass
class Outcome:
    """What the lists decided: ``reply`` (code, text) to refuse with, or None; whether the
    relay list permitted; headers to prepend; maillog lines (kind, text)."""

    reply: tuple[int, str] | None = None
    relay_permitted: bool = False
    prepend: list[str] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)


CLASSES = {"client": "Client host", "helo": "Helo command", "sender": "Sender address",
           "relay": "Recipient address", "recipient": "Recipient address",
           "data": "Data command"}


def what_of(req: dict[str, str], klass: str) -> str:
    return {"Client host": f"{req.get('client_name', 'unknown')}[{req.get('client_address')}]",
            "Helo command": req.get("helo_name", ""), "Sender address": req.get("sender", ""),
            "Recipient address": req.get("recipient", ""), "Data command": "DATA"}[klass]


def formatted(action: Action, klass: str, req: dict[str, str]) -> Action:
    """A refusal's text as Postfix words it: ``<what>: Class rejected: text``."""
    if action.kind not in ("REJECT", "DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
        return action
    text = f"<{what_of(req, klass)}>: {klass} rejected: {action.text}"
    return Action(action.kind, action.code, action.dsn, text)


def _refuse(code: int, dsn: str, text: str) -> Action:
    return Action("REJECT", code, dsn, text)


class Restrictions:
    """The lists of one server, shared by its SMTP doors. ``delivery`` answers mynetworks and
    the domain and recipient look-ups (mta/delivery.py's LocalDelivery), ``names`` is the
    MXResolver (DNS), ``log(text)`` writes a maillog line under smtpd."""

    def __init__(self, mail: Any, delivery: Any, reactor: Any, names: Any,
                 log: Callable[[str], None]) -> None:
        self.lists = {s: getattr(mail, f"smtpd_{s}_restrictions") for s in STAGES}
        self.delivery = delivery
        self.names = names
        self.rbl_reply: str = mail.default_rbl_reply
        self.tables = read_tables(mail)
        self.policies: dict[str, PolicyService] = {}
        self.blocklists = dnsbl.Blocklists(lambda: names.resolver, reactor, log)
        for restriction in (r for rs in self.lists.values() for r in rs):
            if restriction.name == "check_policy_service":
                self.policies.setdefault(
                    restriction.arg, PolicyService(restriction.arg, mail, reactor, log))

    @classmethod
    def at_start(cls, mail: Any, delivery: Any, reactor: Any, names: Any,
                 maillog: Any) -> Restrictions:
        """The server's lists; the access tables are read now (as mail_owner under privilege
        separation): one that cannot be read or parsed is a StartupError naming it."""
        try:
            return cls(mail, delivery, reactor, names, lambda text: maillog.write("smtpd", text))
        except ValueError as e:
            raise StartupError(str(e)) from None

    @property
    def data_checked(self) -> bool:
        return bool(self.lists["data"])

    def check(self, stages: tuple[str, ...], req: dict[str, str]) -> Any:
        """The Outcome of ``stages``' lists for one request (policy attributes, see
        request_of), or a Deferred of it when a restriction needs a look-up."""
        return _Run(self, stages, req).go()

    def evaluate(self, r: Restriction, stage: str, req: dict[str, str]) -> Any:
        """One restriction: an Action (its refusal worded) or a Deferred of one."""
        klass = CLASSES[stage]
        name = r.name
        if name in ("permit", "dunno"):
            return PERMIT if name == "permit" else DUNNO
        if name in ("reject", "defer"):
            return formatted(access.parse_action(name.upper()) if name == "reject" else
                             Action("REJECT", 450, "4.7.1", "Try again later"), klass, req)
        if name == "permit_mynetworks":
            return PERMIT if self.delivery.in_mynetworks(req["client_address"]) else DUNNO
        if name == "permit_sasl_authenticated":
            return PERMIT if req.get("sasl_username") else DUNNO
        if name in ("reject_unauth_destination", "defer_unauth_destination"):
            return self._destination(name, req.get("recipient", ""))
        if name == "check_policy_service":
            return self.policies[r.arg].query(req).addCallback(formatted, klass, req)
        if name in ("reject_rbl_client", "reject_rhsbl_sender"):
            return self._rbl(name, r.arg, req)
        if name.endswith("_access"):
            return self._access(name, r.arg, req)
        return self._syntax(name, req)

    def _destination(self, name: str, rcpt: str) -> Action:
        if not rcpt:
            return DUNNO
        _, at, domain = rcpt.rpartition("@")
        local = not at or self.delivery.is_local_domain(domain) or \
            self.delivery.is_relay_domain(domain)
        if local and not has_routing(rcpt):
            return DUNNO
        if name == "reject_unauth_destination":
            return _refuse(554, "5.7.1", f"<{rcpt}>: Relay access denied")
        return _refuse(454, "4.7.1", f"<{rcpt}>: Relay access denied")

    def _syntax(self, name: str, req: dict[str, str]) -> Any:
        helo = req.get("helo_name", "")
        if name == "reject_invalid_helo_hostname":
            if helo and not (_HOSTNAME.match(helo) or _literal(helo)):
                return _refuse(501, "5.5.2", f"<{helo}>: Helo command rejected: Invalid name")
            return DUNNO
        if name == "reject_non_fqdn_helo_hostname":
            if helo and not _literal(helo) and "." not in helo.strip("."):
                return _refuse(504, "5.5.2", f"<{helo}>: Helo command rejected: need"
                               " fully-qualified hostname")
            return DUNNO
        who = "sender" if name.endswith("_sender") or "sender_domain" in name else "recipient"
        address = req.get(who, "")
        klass = CLASSES[who]
        domain = address.rpartition("@")[2] if "@" in address else ""
        if name.startswith("reject_non_fqdn_"):
            if address and ("@" not in address or "." not in domain.strip(".")):
                return _refuse(504, "5.5.2", f"<{address}>: {klass} rejected: need"
                               " fully-qualified address")
            return DUNNO
        if name == "reject_unlisted_recipient":
            return self._unlisted(address)
        if not domain or self.delivery.is_local_domain(domain) or _literal(f"[{domain}]"):
            return DUNNO
        return self._domain_exists(domain, address, klass)

    def _unlisted(self, rcpt: str) -> Any:
        _, at, domain = rcpt.rpartition("@")
        if not rcpt or (at and not self.delivery.is_local_domain(domain)):
            return DUNNO

        def refused(failure: Any) -> Action:
            e = failure.trap(smtp.SMTPServerError) and failure.value
            text = e.resp if isinstance(e.resp, str) else e.resp.decode("utf-8", "replace")
            dsn, _, rest = text.partition(" ")
            return _refuse(e.code, dsn, rest)

        return self.delivery.resolve(rcpt).addCallbacks(lambda _: DUNNO, refused)

    def _domain_exists(self, domain: str, address: str, klass: str) -> Any:
        text = f"<{address}>: {klass} rejected: Domain not found"

        def failed(failure: Any) -> Action:
            if failure.check(PermanentDNSError):
                return _refuse(450, "4.1.2", text)
            failure.trap(TemporaryDNSError)
            return Action("DEFER_IF_PERMIT", 450, "4.1.2", text)

        return self.names.hosts(domain).addCallbacks(lambda _: DUNNO, failed)

    def _rbl(self, name: str, arg: str, req: dict[str, str]) -> Any:
        site = dnsbl.parse_site(arg)
        if name == "reject_rbl_client":
            what, klass = req.get("client_address", ""), "Client host"
            query = dnsbl.reversed_name(what, site.domain)
        else:
            what, klass = req.get("sender", "").rpartition("@")[2], "Sender address"
            query = f"{what.rstrip('.')}.{site.domain}" if what else None
        if query is None:
            return DUNNO

        def listed(found: dnsbl.Listing) -> Action:
            if not site.matches(found.addresses):
                return DUNNO
            values = dict(req, rbl_code="554", rbl_class=klass, rbl_what=what,
                          rbl_domain=site.domain, rbl_reason=found.reason,
                          rbl_txt=found.reason)
            code, _, rest = expand_rbl(values, self.rbl_reply).partition(" ")
            dsn, text = access.split_dsn(rest, f"{code[0]}.7.1")
            return _refuse(int(code), dsn, text)

        return self.blocklists.listed(query, site.domain, reason=True).addCallback(listed)

    def _access(self, name: str, arg: str, req: dict[str, str]) -> Action:
        table = self.tables[access.table_path(arg)]
        stage = name.split("_")[1]
        if stage == "client":
            keys = access.client_keys(req.get("client_address", ""), req.get("client_name", ""))
        elif stage == "helo":
            keys = access.address_keys(req.get("helo_name", ""))[:-1] \
                if req.get("helo_name") else []
        else:
            value = req.get(stage, "")
            if stage == "recipient" and not value:
                return DUNNO
            keys = access.address_keys(value)
        found = access.look_up(table, keys)
        return DUNNO if found is None else formatted(found, CLASSES[stage], req)


def read_tables(mail: Any) -> dict[str, dict[str, Action]]:
    """Every access table the lists name, read: {path: entries}; a ValueError ``[mail] KEY:
    FILE: why`` (FILE:LINE for a bad entry) for one that cannot be."""
    tables: dict[str, dict[str, Action]] = {}
    for stage in STAGES:
        key = f"smtpd_{stage}_restrictions"
        for r in getattr(mail, key):
            if r.name.startswith("check_") and r.name.endswith("_access"):
                path = access.table_path(r.arg)
                if path in tables:
                    continue
                try:
                    tables[path] = access.read_table(path)
                except OSError as e:
                    raise ValueError(f"[mail] {key}: {describe_os_error(e)}") from None
                except ValueError as e:
                    raise ValueError(f"[mail] {key}: {e}") from None
    return tables


def check_tables(mail: Any, owner: tuple[int, int] | None = None) -> None:
    """The access tables read, or a StartupError naming the one that cannot be (also called
    by the root master before the network process starts, which could not say why; with
    ``owner``, mail_owner's uid and gid: that user must be able to read them too)."""
    try:
        paths = list(read_tables(mail))
    except ValueError as e:
        raise StartupError(str(e)) from None
    if owner is not None:
        for path, why in unreadable_by(paths, *owner).items():
            raise StartupError(f"[mail] smtpd_*_restrictions: {path}: {why} (the access"
                               " tables are read by mail_owner)")


def _literal(text: str) -> bool:
    return text.startswith("[") and text.endswith("]") and parse_ip(
        text[1:-1].removeprefix("IPv6:").removeprefix("ipv6:")) is not None


class _Run:
    """One evaluation of some lists, resumed after each look-up that is not answered at once."""

    def __init__(self, owner: Restrictions, stages: tuple[str, ...], req: dict[str, str]):
        self.owner, self.req = owner, req
        self.items = [(s, r) for s in stages for r in owner.lists[s]]
        self.pos = 0
        self.done: set[str] = set()  # lists ended by a permit
        self.outcome = Outcome()
        self.if_permit: Action | None = None
        self.if_reject: Action | None = None

    def go(self) -> Any:
        while self.pos < len(self.items):
            stage, r = self.items[self.pos]
            self.pos += 1
            if stage in self.done:
                continue
            result = self.owner.evaluate(r, stage, self.req)
            if isinstance(result, defer.Deferred):
                return result.addCallback(self._resume, stage, r)
            if self._apply(result, stage, r):
                return self.outcome
        if self.if_permit is not None:
            self.outcome.reply = (self.if_permit.code, f"{self.if_permit.dsn} "
                                  f"{self.if_permit.text}")
        return self.outcome

    def _resume(self, result: Action, stage: str, r: Restriction) -> Any:
        return self.outcome if self._apply(result, stage, r) else self.go()

    def _apply(self, a: Action, stage: str, r: Restriction) -> bool:
        """Take one decision; True when it ends the evaluation."""
        if a.kind == "PERMIT":
            self.done.add(stage)
            self.outcome.relay_permitted |= stage == "relay"
        elif a.kind in ("REJECT", "DEFER_IF_PERMIT") and r.warn:
            self.outcome.logs.append(("reject_warning", f"{a.code} {a.dsn} {a.text}"))
        elif a.kind == "REJECT":
            final = self.if_reject if self.if_reject is not None and a.code >= 500 else a
            self.outcome.reply = (final.code, f"{final.dsn} {final.text}")
            return True
        elif a.kind == "DEFER_IF_PERMIT":
            self.if_permit = self.if_permit or a
        elif a.kind == "DEFER_IF_REJECT":
            self.if_reject = self.if_reject or a
        elif a.kind == "PREPEND":
            self.outcome.prepend.append(a.text)
        elif a.kind in ("WARN", "INFO"):
            self.outcome.logs.append((a.kind.lower(), a.text))
        elif a.kind == "UNSUPPORTED":
            self.outcome.logs.append(("warning", f"unsupported access action: {a.text}"))
        return False


def request_of(session: Any, state: str, recipient: str = "") -> dict[str, str]:
    """The policy attributes of an SMTP session (smtp/server.py's) in ``state``."""
    host = session.transport.getHost()
    peer = session.transport.getPeer()
    user = session.auth_user or getattr(session._avatar, "user", None)  # the avatar's login
    return {
        "request": "smtpd_access_policy", "protocol_state": state,
        "protocol_name": session._proto, "helo_name": session._helo_name or "",
        "queue_id": session._queue_id or "", "sender": session._sender or "",
        "recipient": recipient,
        "recipient_count": str(len(session._recipients)) if state == "DATA" else "0",
        "client_address": session.client_ip, "client_name": session.client_name,
        "reverse_client_name": session.client_name, "client_port": str(getattr(peer, "port", "")),
        "server_address": str(getattr(host, "host", "")),
        "server_port": str(getattr(host, "port", "")),
        "instance": session._instance,
        "sasl_method": (session.auth_method or "") if user else "",
        "sasl_username": user or "", "sasl_sender": "",
        "size": str(session._mail_params.size or 0),
        "ccert_subject": "", "ccert_issuer": "", "ccert_fingerprint": "",
        "encryption_protocol": "TLS" if session.secure else "",
        "encryption_cipher": "", "encryption_keysize": "0",
        "etrn_domain": "", "stress": "", "policy_context": "",
    }


DEFAULT_RELAY_RESTRICTIONS = parse_restrictions(
    "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination")
