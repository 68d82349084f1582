"""``mailsuite doctor``'s host checks: is ``myhostname`` a name the world can find, does it
point at this host, does ``mydomain``'s MX point at it, and does the address's PTR name it back
(forward-confirmed reverse DNS: Gmail and Microsoft refuse or spam-folder mail without it)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailsuite.autoconfig import our_domains
from mailsuite.doctor.context import Context, is_public
from mailsuite.doctor.resolve import LookupFailed
from mailsuite.doctor.verdict import Result, fail, ok, warn


def fqdn(name: str) -> Result:
    """myhostname has a dot and is not localhost."""
    check = "myhostname"
    if name in ("localhost", "localhost.localdomain") or name.startswith("localhost."):
        return fail(check, f"{name} is localhost", "set [mail] myhostname = mail.YOURDOMAIN (the"
                    " name clients and other servers use)")
    if "." not in name:
        return fail(check, f"{name} is not a fully qualified name (no dot)",
                    f"set [mail] myhostname = {name}.YOURDOMAIN (or fix the host's name)")
    return ok(check, f"{name} is a fully qualified name")


def _record(name: str, address: str) -> str:
    return f"{name}. IN {'AAAA' if ':' in address else 'A'} {address}"


def address_verdict(ctx: Context, name: str, published: list[str]) -> Result:
    """myhostname's A/AAAA exist and one is an address of this host."""
    check = f"A/AAAA {name}"
    local = ctx.local
    example = next((a for a in local or [] if is_public(a)), "ADDRESS-OF-THIS-HOST")
    if not published:
        return fail(check, "no A or AAAA record: clients cannot find the server",
                    f"publish {_record(name, example)}")
    shown = ", ".join(published)
    if local is None:
        return warn(check, f"{shown} (cannot compare with this host's: {ctx.local_problem})")
    mine = [a for a in published if a in local]
    if not mine:
        if not any(is_public(a) for a in local):  # only private addresses: behind NAT?
            return warn(check, f"{shown}: not an address of this host (behind NAT?)",
                        f"forward ports 25, 587, 993... of {published[0]} to this host")
        return fail(check, f"{shown}: none is an address of this host"
                    f" ({', '.join(a for a in local if is_public(a))})",
                    f"publish {_record(name, example)}")
    private = [a for a in mine if not is_public(a)]
    if private:
        return warn(check, f"{shown}: this host's, but {', '.join(private)} is not reachable"
                    " from the Internet", "publish the host's public address")
    return ok(check, f"{shown}: this host's")


def mx_verdict(domain: str, hostname: str, hosts: list[tuple[int, str]]) -> Result:
    """mydomain's MX names myhostname."""
    check = f"MX {domain}"
    if not hosts:
        return fail(check, "no MX record: mail for the domain goes to its A record, if any",
                    f"publish {domain}. IN MX 10 {hostname}.")
    if any(h in ("", ".") for _, h in hosts):
        return fail(check, "a null MX (0 .): the domain refuses all mail (RFC 7505)",
                    f"replace it with {domain}. IN MX 10 {hostname}.")
    shown = ", ".join(f"{p} {h}" for p, h in hosts)
    if hostname.lower() not in (h for _, h in hosts):
        return fail(check, f"{shown}: not {hostname}, mail goes to another host",
                    f"publish {domain}. IN MX 10 {hostname}. (and remove the others unless"
                    " they relay to this host)")
    return ok(check, f"{shown}")


def ptr_verdict(name: str, address: str, names: list[str]) -> Result:
    """The PTR of ``address`` is ``name`` (its A/AAAA gave the address: confirmed)."""
    check = f"PTR {address}"
    fix = (f"ask whoever runs {address} (the hosting provider) to set its reverse DNS (PTR)"
           f" to {name}")
    if not names:
        return fail(check, "no PTR record: Gmail and Outlook.com refuse or spam mail from it", fix)
    if name.lower() not in names:
        return fail(check, f"{', '.join(names)}, not {name}", fix)
    return ok(check, f"{name} (forward-confirmed)")


@defer.inlineCallbacks
def check_host(ctx: Context) -> Any:
    """The verdicts of myhostname, its addresses, mydomain's MX and the PTRs; sets
    ``ctx.published``."""
    mail = ctx.cfg.mail
    name, domain = mail.myhostname.lower(), mail.mydomain.lower()
    results = [fqdn(name)]
    addresses, mx = ctx.lookups.addresses(name), ctx.lookups.mx(domain)  # both asked at once
    try:
        ctx.published = yield addresses
        results.append(address_verdict(ctx, name, ctx.published))
    except LookupFailed as e:
        results.append(fail(f"A/AAAA {name}", str(e), "check [mail] dns_resolver or"
                            " /etc/resolv.conf, and the domain's name servers"))
    try:
        hosts = yield mx
        results.append(mx_verdict(domain, name, hosts))
    except LookupFailed as e:
        results.append(fail(f"MX {domain}", str(e), "check the domain's name servers"))
    for address in ctx.published:
        if ctx.local is not None and address not in ctx.local and any(
                a in ctx.local for a in ctx.published):
            continue  # another host's address (a second server): its PTR is not ours to check
        try:
            names = yield ctx.lookups.ptr(address)
            results.append(ptr_verdict(name, address, names))
        except LookupFailed as e:
            results.append(fail(f"PTR {address}", str(e), "ask the hosting provider to set the"
                                f" reverse DNS of {address} to {name}"))
    return results


@defer.inlineCallbacks
def check_autoconfig_names(ctx: Context) -> Any:
    """With an autoconfig site on: ``autoconfig.DOMAIN`` (Thunderbird) and
    ``autodiscover.DOMAIN`` (Outlook) of each of our domains lead to this host."""
    listen = ctx.cfg.listen
    if listen.autoconfig is None and listen.autoconfigs is None:
        return []
    ours = set(ctx.published) | set(ctx.local or [])
    host = ctx.cfg.mail.myhostname
    results = []
    for domain in our_domains(ctx.cfg):
        for name in (f"autoconfig.{domain}", f"autodiscover.{domain}"):
            check = f"A/AAAA {name}"
            fix = f"publish {name}. IN CNAME {host}."
            try:
                found = yield ctx.lookups.addresses(name)
            except LookupFailed as e:
                results.append(fail(check, str(e), fix))
                continue
            if not found:
                results.append(fail(check, "no address: mail clients set up by hand only", fix))
            elif ours and not set(found) & ours:
                results.append(fail(check, f"{', '.join(found)}: not this host", fix))
            else:
                results.append(ok(check, ", ".join(found)))
    return results
