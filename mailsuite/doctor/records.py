"""``mailsuite doctor``'s checks of what the domains publish for the mail they send: SPF (RFC
7208, evaluated by pyspf against the addresses our mail leaves from), the DKIM key of each
``[dkim]`` line (RFC 6376 3.6.1: ``p=`` must be the configured key's) and DMARC (RFC 7489).
Each verdict that is not ok gives the record to publish."""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, threads

from mailsuite.dkimcmd import dns_record
from mailsuite.dkimconf import DkimEntry, UnusableKey, load_key, txt_record
from mailsuite.doctor.context import Context
from mailsuite.doctor.resolve import LookupFailed, Lookups, spf_lookup
from mailsuite.doctor.verdict import Result, cannot_run, fail, ok, warn
from mailsuite.filter import spfcheck
from mailsuite.filter.dmarc import organizational_domain

# RFC 7208 4.5: a record is SPF when it begins with "v=spf1" followed by a space or its end
_SPF = re.compile(r"v=spf1(?:\s|$)", re.IGNORECASE)
_DMARC = re.compile(r"v\s*=\s*DMARC1\s*(?:;|$)")  # RFC 7489 6.4: v= first, case-sensitive
_ALL = re.compile(r"(?:^|\s)([-~?+]?all|redirect=\S+)(?:\s|$)", re.IGNORECASE)


def domains(ctx: Context) -> list[str]:
    """The domains our mail is From: mydomain and every [dkim] domain."""
    return list(dict.fromkeys([ctx.cfg.mail.mydomain.lower(), *ctx.cfg.dkim.domains]))


def mechanisms(addresses: list[str]) -> str:
    return " ".join(f"ip6:{a}" if ":" in a else f"ip4:{a}" for a in addresses)


def amended(record: str, addresses: list[str]) -> str:
    """``record`` with ip4:/ip6: mechanisms for ``addresses`` before its ``all`` (or redirect)."""
    found = list(_ALL.finditer(record))
    if not found:
        return f"{record.rstrip()} {mechanisms(addresses)}"
    at = found[-1].start(1)
    return f"{record[:at]}{mechanisms(addresses)} {record[at:]}"


def evaluate_spf(lookups: Lookups, address: str, domain: str, helo: str) -> tuple[str, str]:
    """(result, explanation) of SPF for mail from ``postmaster@domain`` sent by ``address``,
    by pyspf as the inbound checks run it (mailsuite.filter.spfcheck), in a thread; its DNS
    goes through ``lookups`` on the reactor."""
    found = spfcheck.check(spf_lookup(lookups), address, f"postmaster@{domain}", helo,
                           receiver=helo, querytime=20)
    return found.result, found.explanation


@defer.inlineCallbacks
def _suggestion(ctx: Context, domain: str, addresses: list[str]) -> Any:
    """``v=spf1 mx -all`` when the domain's MX hosts have every address, else ip4:/ip6:."""
    try:
        mx = yield ctx.lookups.mx(domain)
        of_mx: set[str] = set()
        for _, host in mx:
            of_mx.update((yield ctx.lookups.addresses(host)))
    except LookupFailed:
        of_mx = set()
    if addresses and set(addresses) <= of_mx:
        return "v=spf1 mx -all"
    return f"v=spf1 {mechanisms(addresses) or 'ip4:YOUR-ADDRESS'} -all"


@defer.inlineCallbacks
def _senders(ctx: Context) -> Any:
    """(addresses our mail leaves from, how we know)."""
    relayhost = ctx.cfg.mail.relayhost
    if relayhost:
        # Postfix's [host]:port, host:port, [host], host (configvalues.parse_relayhost)
        match = re.fullmatch(r"\[(?:ipv6:)?([^\]]+)\](?::.*)?|([^:]+)(?::.*)?", relayhost)
        host = (match.group(1) or match.group(2)) if match else relayhost
        found = yield ctx.lookups.addresses(host)
        return found, f" (mail leaves through relayhost {relayhost})"
    return ctx.outbound(), ""


@defer.inlineCallbacks
def check_spf(ctx: Context, domain: str) -> Any:
    check = f"SPF {domain}"
    records = yield ctx.lookups.txt(domain)
    spf = [r for r in records if _SPF.match(r)]
    addresses, how = yield _senders(ctx)
    if not spf:
        suggestion = yield _suggestion(ctx, domain, addresses)
        return fail(check, "no v=spf1 TXT record: receivers cannot tell our mail from forgeries",
                    f'publish {domain}. IN TXT "{suggestion}"')
    if len(spf) > 1:
        return fail(check, f"{len(spf)} v=spf1 records: a permerror for every receiver (RFC"
                    " 7208 4.5)", "merge them into one record")
    record = spf[0]
    if not addresses:
        return cannot_run(check, f'"{record}": no address of ours to evaluate it for')
    helo = ctx.cfg.mail.myhostname
    refused = []
    for address in addresses:
        result, explanation = yield threads.deferToThread(
            evaluate_spf, ctx.lookups, address, domain, helo)
        if result != "pass":
            refused.append((address, result, explanation))
    if not refused:
        return ok(check, f'"{record}" authorizes {", ".join(addresses)}{how}')
    address, result, explanation = refused[0]
    if result == "temperror":
        return fail(check, f'"{record}": {result} for {address} ({explanation})',
                    "check the name servers of the domains the record names")
    if result == "permerror":
        suggestion = yield _suggestion(ctx, domain, addresses)
        return fail(check, f'"{record}": permerror ({explanation}): receivers treat it as'
                    " broken", f'publish {domain}. IN TXT "{suggestion}" instead')
    provider = " (or the include: your relay provider documents)" if how else ""
    return fail(check, f'"{record}" gives {result} for {address}{how}: our mail fails SPF',
                f'publish {domain}. IN TXT "{amended(record, [a for a, _, _ in refused])}"'
                f"{provider}")


def tags(record: str) -> dict[str, str]:
    """The tag=value list of a DKIM key or DMARC record (RFC 6376 3.2), names lower-cased."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out.setdefault(name.strip().lower(), value.strip())
    return out


@defer.inlineCallbacks
def check_dkim(ctx: Context, domain: str, entry: DkimEntry) -> Any:
    name = f"{entry.selector}._domainkey.{domain}"
    check = f"DKIM {name}"
    try:
        key = load_key(entry.path)
    except OSError as e:
        if isinstance(e, PermissionError) and os.geteuid() != 0:
            return cannot_run(check, f"{entry.path} is not readable by this user (run as root)")
        return fail(check, f"cannot read the key {entry.path}: {e.strerror}",
                    f"mailsuite dkim keygen {domain} --selector {entry.selector}"
                    f" --out {entry.path}, then publish the record it prints")
    except UnusableKey as e:
        return fail(check, f"{entry.path}: {e}", f"mailsuite dkim keygen {domain}")
    publish = f"publish {dns_record(entry.selector, domain, txt_record(key))}"
    records = yield ctx.lookups.txt(name)
    if not records:
        return fail(check, "no record: receivers cannot verify our signatures", publish)
    if len(records) > 1:
        return fail(check, f"{len(records)} TXT records: verifiers take any one", publish)
    found = tags(records[0])
    public = re.sub(r"\s", "", found.get("p", ""))
    kind = "rsa" if key.algorithm == b"rsa-sha256" else "ed25519"
    if "v" in found and found["v"] != "DKIM1":
        return fail(check, f"v={found['v']}: not a DKIM key record", publish)
    if not public:
        return fail(check, "p= is empty (a revoked key) or missing", publish)
    if public != key.public:
        return fail(check, f"p= is not the public key of {entry.path}: our signatures fail",
                    publish)
    if found.get("k", "rsa").lower() != kind:
        return fail(check, f"k={found.get('k', 'rsa')}, the key is {kind}", publish)
    return ok(check, f"p= is the key of {entry.path} ({kind})")


def _organizational(domain: str) -> list[str]:
    """Where a receiver looks for the DMARC record of mail from ``domain`` (RFC 7489 6.6.3):
    the domain, then its organizational domain (the Public Suffix List, as the inbound
    checks find it)."""
    org = organizational_domain(domain)
    return [domain] if org == domain else [domain, org]


@defer.inlineCallbacks
def check_dmarc(ctx: Context, domain: str) -> Any:
    check = f"DMARC {domain}"
    suggestion = (f'publish _dmarc.{domain}. IN TXT "v=DMARC1; p=quarantine;'
                  f' rua=mailto:postmaster@{domain}"')
    for where in _organizational(domain):
        records = [r for r in (yield ctx.lookups.txt(f"_dmarc.{where}")) if _DMARC.match(r)]
        if records:
            break
    else:
        return fail(check, "no v=DMARC1 record at _dmarc: Gmail and Yahoo require one of"
                    " bulk senders, and forgeries of the domain are not refused", suggestion)
    name = f"_dmarc.{where}"
    if len(records) > 1:
        return fail(check, f"{len(records)} v=DMARC1 records at {name}: receivers apply none"
                    " (RFC 7489 6.6.3)", f"keep one; {suggestion}")
    policy = tags(records[0]).get("p", "")
    if policy.lower() not in ("none", "quarantine", "reject"):
        return fail(check, f'"{records[0]}" at {name}: p= missing or invalid', suggestion)
    note = " (monitoring only)" if policy.lower() == "none" else ""
    return ok(check, f'"{records[0]}" at {name}: p={policy}{note}')


@defer.inlineCallbacks
def check_records(ctx: Context) -> Any:
    """SPF and DMARC of every sending domain, the DKIM key of each [dkim] line."""
    results: list[Result] = []
    steps: list[tuple[str, Any]] = []
    for domain in domains(ctx):
        steps.append((f"SPF {domain}", lambda d=domain: check_spf(ctx, d)))
    for domain, entry in ctx.cfg.dkim.domains.items():
        name = f"DKIM {entry.selector}._domainkey.{domain}"
        steps.append((name, lambda d=domain, e=entry: check_dkim(ctx, d, e)))
    for domain in domains(ctx):
        steps.append((f"DMARC {domain}", lambda d=domain: check_dmarc(ctx, d)))
    if not ctx.cfg.dkim.domains:
        results.append(warn("DKIM", "no [dkim] section: our mail is not signed; Gmail and"
                            " Outlook.com spam-folder unsigned mail",
                            f"mailsuite dkim keygen {ctx.cfg.mail.mydomain}, then add the line"
                            " it prints and publish its record"))

    def one(check: str, step: Any) -> Any:
        def no_answer(reason: Any) -> Result:
            if not reason.check(LookupFailed):
                reason.trap(Exception)  # CancelledError (a BaseException) goes on
                return fail(check, f"the check itself failed: {reason.getErrorMessage()}"
                            f" ({reason.type.__name__})", "report this bug of mailsuite doctor")
            return fail(check, reason.getErrorMessage(), "check [mail] dns_resolver and the"
                        " domain's name servers")
        return defer.maybeDeferred(step).addErrback(no_answer)

    # at once: a dead name server costs one timeout, not one per record
    found = yield defer.gatherResults([one(c, s) for c, s in steps], consumeErrors=True)
    return results + list(found)
