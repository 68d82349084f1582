"""Micro-benchmark of the inbound authentication checks' stage (mailsuite/filter/authcheck.py):
CPU time per message of SPF (MAIL FROM + HELO) + DKIM + ARC + DMARC + the header, with the
blocking parts run inline and DNS answered at once by a fake resolver (tests/authfakes), so
the figure is the checks' own work, without thread hops or a DNS server. Run from the
checkout: ``python bench/authcheck_micro.py [N]``; prints µs per message, unsigned and
DKIM-signed (2048-bit RSA)."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mailsuite.configschema import AuthChecksConfig
from mailsuite.filter.authcheck import AuthCheckStage
from mailsuite.mta.dnsquery import DNSQuery, FromThread
from mailsuite.mta.transaction import SMTP, Client, Envelope, Message, Recipient
from mailsuite.threads import inline
from tests.authfakes import Key, add, now, txt
from tests.fakemx import ZoneResolver

BODY = b"From: Alice <alice@sender.example>\nTo: bob@example.net\nSubject: hi\n" \
       b"Date: Wed, 02 Dec 2026 04:00:00 +0000\n\n" + b"x" * 4000 + b"\n"


class Log:
    def write(self, program: str, text: str) -> None:
        pass


def per_message(stage: AuthCheckStage, data: bytes, n: int) -> float:
    client = Client(SMTP, "198.51.100.7", "mx.sender.example", "mx.sender.example")
    start = time.process_time()
    for i in range(n):
        env = Envelope(f"Q{i}", "alice@sender.example", [Recipient("bob@example.net")], client)
        stage(Message(env, data))
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    key = Key("sender.example", bits=2048)
    zone = add({}, "sender.example", txt("v=spf1 ip4:198.51.100.0/24 -all"))
    add(zone, "mx.sender.example", txt("v=spf1 ip4:198.51.100.0/24 -all"))
    add(zone, "_dmarc.sender.example", txt("v=DMARC1; p=reject"))
    key.publish(zone)
    from twisted.internet.task import Clock
    for cache in (False, True):
        query = DNSQuery(ZoneResolver(zone), Clock(), cache=cache)
        stage = AuthCheckStage(AuthChecksConfig(), "mx.example.net", [], query, inline, Log(),
                               lookup=FromThread(query, call=now))
        unsigned = per_message(stage, BODY, n)
        signed = per_message(stage, key.sign(BODY), n // 4)
        print(f"cache={'on ' if cache else 'off'}: unsigned {unsigned:.0f} µs/msg,"
              f" DKIM-signed {signed:.0f} µs/msg")


if __name__ == "__main__":
    main()
