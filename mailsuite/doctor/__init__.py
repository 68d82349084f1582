"""``mailsuite doctor``: why can't Outlook reach my server, why does Gmail put my mail in spam?

    mailsuite doctor [-C mail.ini] [--json] [--strict] [--skip GROUP]...

Checks, in groups (``--skip`` leaves a group out):

- ``host`` (hostdns.py): myhostname is a FQDN, its A/AAAA are this host's, mydomain's MX names
  it, the PTR of its address names it back; autoconfig./autodiscover. names lead here when
  an autoconfig site is on;
- ``records`` (records.py): SPF authorizes our address (pyspf), each [dkim] key is published
  as configured, DMARC has a policy;
- ``ports`` (services.py): each configured port listens and greets; ``relay``: the relay is
  closed to a client outside mynetworks;
- ``files`` (local.py): the certificate, the spool and the queue, every table.

Each verdict is one line, ``ok``, ``warn`` or ``FAIL``, what was found, and under a line that is
not ok the fix. A check that cannot run says so (a ``warn``). Exit status: 0 when no check
FAILed (``--strict``: and none warned), 1 otherwise; 78 for a refused mail.ini.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any, TextIO

from twisted.internet import defer, task

from mailsuite.cmdbase import ArgParser, load, parse_args
# argparse whose usage errors are EX_USAGE and whose --help returns: the admin command's
from mailsuite.doctor import hostdns, local, records, services
from mailsuite.doctor.context import Context, NoAddresses, host_addresses
from mailsuite.doctor.resolve import Lookups
from mailsuite.doctor.verdict import Result, as_json, exit_status, fail, text
from mailsuite.mta.dns import shared

GROUPS = ("host", "records", "ports", "relay", "files")


def parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="mailsuite doctor", description="Check that the mail server can be"
                " reached and that its mail is trusted: DNS (A, MX, PTR, SPF, DKIM, DMARC),"
                " ports and greetings, the certificate, files, tables, the relay. Exit 0 when"
                " no check FAILs.")
    p.add_argument("-C", "--config", help="mail.ini (else $MAILSUITE_CONFIG, else"
                   " /etc/mailsuite/mail.ini)")
    p.add_argument("--json", action="store_true", help="the verdicts as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--skip", action="append", default=[], choices=GROUPS,
                   help="leave a group of checks out (repeatable)")
    return p


def _guarded(check: str, make: Callable[[], Any]) -> defer.Deferred[list[Result]]:
    """``make()``'s verdicts (a Result, a list, or a Deferred of either); an exception is a FAIL
    line naming it, never a traceback."""
    d = defer.maybeDeferred(make)

    def listed(value: Any) -> list[Result]:
        return value if isinstance(value, list) else [value]

    def failed(reason: Any) -> list[Result]:
        if reason.check(defer.CancelledError):
            return reason  # type: ignore[no-any-return]
        return [fail(check, f"the check itself failed: {reason.getErrorMessage()}"
                     f" ({reason.type.__name__})", "report this as a bug of mailsuite doctor")]
    return d.addCallbacks(listed, failed)


@defer.inlineCallbacks
def run_checks(ctx: Context, skip: tuple[str, ...] = ()) -> Any:
    """Every verdict, in order (host first: the others use the addresses it found)."""
    groups: list[tuple[str, str, Callable[[], Any]]] = [
        ("host", "host", lambda: hostdns.check_host(ctx)),
        ("host", "autoconfig names", lambda: hostdns.check_autoconfig_names(ctx)),
        ("records", "records", lambda: records.check_records(ctx)),
        ("ports", "ports", lambda: services.check_ports(ctx)),
        ("relay", "relay", lambda: services.check_relay(ctx)),
        ("files", "certificate", lambda: local.check_certificate(ctx)),
        ("files", "mail spool", lambda: local.check_spool(ctx)),
        ("files", "queue", lambda: local.check_queue(ctx)),
        ("files", "tables", lambda: local.check_tables(ctx)),
    ]
    results: list[Result] = []
    for group, check, make in groups:
        if group not in skip:
            results.extend((yield _guarded(check, make)))
    return results


def context(cfg: Any, reactor: Any) -> Context:
    lookups = Lookups(shared(cfg.mail.dns_resolver, reactor), reactor)
    try:
        return Context(cfg, lookups, reactor, host_addresses())
    except NoAddresses as e:
        return Context(cfg, lookups, reactor, None, str(e))


def parse(argv: list[str], out: TextIO) -> argparse.Namespace | int:
    """The options, or the exit status after ``--help`` (printed on ``out``)."""
    return parse_args(parser(), argv, out)


def main(argv: list[str], out: TextIO) -> int:
    """``mailsuite doctor ...``: the report on ``out``, the exit status."""
    args = parse(argv, out)
    if isinstance(args, int):
        return args
    cfg = load(args.config)
    results: list[Result] = []

    @defer.inlineCallbacks
    def go(reactor: Any) -> Any:
        results.extend((yield run_checks(context(cfg, reactor), tuple(args.skip))))

    with contextlib.suppress(SystemExit):
        task.react(go)  # ends with sys.exit: the status is ours, from the results
    print(as_json(results) if args.json else text(results), file=out)
    return exit_status(results, args.strict)
