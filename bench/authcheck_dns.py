"""The DNS server of the smtp-authcheck workload (bench/run.py): twisted.names on 127.0.0.1,
UDP and TCP, holding what the inbound checks ask about mailbench's mail: the SPF record of its
MAIL FROM and HELO domain (``mailbench.test``, loopback allowed: spf=pass for both) and its
DMARC record (p=none, so the mail is delivered as in smtp-deliver). No DKIM: mailbench does
not sign. ``python3 authcheck_dns.py PORT``; runs until killed."""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.names import authority, dns, server


class Zone(authority.FileAuthority):
    """A zone from a dict, without a zone file (FileAuthority answers NXDOMAIN and NODATA)."""

    def __init__(self) -> None:
        super().__init__("mailbench.test")
        soa = dns.Record_SOA(mname="ns.mailbench.test", rname="root.mailbench.test",
                             serial=1, refresh=3600, retry=600, expire=86400, minimum=60)
        self.soa = (b"mailbench.test", soa)
        self.records = {
            b"mailbench.test": [soa, dns.Record_TXT(b"v=spf1 ip4:127.0.0.0/8 -all")],
            b"_dmarc.mailbench.test": [dns.Record_TXT(b"v=DMARC1; p=none")],
        }

    def loadFile(self, filename: str) -> None:
        pass


def main() -> None:
    port = int(sys.argv[1])
    factory = server.DNSServerFactory(authorities=[Zone()])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
