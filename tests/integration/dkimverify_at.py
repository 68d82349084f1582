"""dkimpy's own ``dkimverify`` command (``dkim.dkimverify.main``, unchanged) with dnspython's
default resolver pointed at a test DNS server on 127.0.0.1 (dkimverify has no option for a
server or a port; it asks the resolver of /etc/resolv.conf)::

    python dkimverify_at.py PORT [dkimverify options] < message

Prints ``signature ok`` and exits 0, or ``signature verification failed`` and exits 1.
"""

from __future__ import annotations

import sys

import dns.resolver
from dkim import dkimverify


def main() -> None:
    port = int(sys.argv.pop(1))
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    dns.resolver.default_resolver = resolver
    dkimverify.main()


if __name__ == "__main__":
    main()
